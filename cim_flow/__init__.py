"""cim_flow: a Numba-compiled read side for event-sourced CIM graph systems."""
from ._schema import EVENT_SCHEMA, EventType
from ._projection import ApplyResult
from .engine import Engine, read_events

__all__ = ["EVENT_SCHEMA", "EventType", "ApplyResult", "Engine", "read_events"]
__version__ = "0.1.0"
