"""cim_flow: a Numba-compiled read side for event-sourced CIM graph systems."""
from ._schema import EVENT_SCHEMA, EventType
from ._projection import ApplyResult

__all__ = ["EVENT_SCHEMA", "EventType", "ApplyResult"]
__version__ = "0.1.0"
