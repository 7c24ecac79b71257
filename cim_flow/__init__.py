"""cim_flow: a Numba-compiled read side for event-sourced CIM graph systems."""
from ._schema import EVENT_SCHEMA, EventType
from ._projection import ApplyResult
from .engine import Engine, read_events
from ._decode import DecodeError, decode_json

__all__ = ["EVENT_SCHEMA", "EventType", "ApplyResult", "Engine", "read_events", "decode_json", "DecodeError"]
__version__ = "0.1.0"
