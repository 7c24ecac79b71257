"""cim_flow: a Numba-compiled read side for event-sourced CIM graph systems."""
from ._schema import EVENT_SCHEMA, EventType
from ._projection import ApplyResult, BatchRefused
from .engine import Engine, read_events
from ._decode import DecodeError, decode_json
from ._alloc import tune_allocator

__all__ = ["EVENT_SCHEMA", "EventType", "ApplyResult", "BatchRefused", "Engine", "read_events", "decode_json", "DecodeError",
           "tune_allocator",
           "Client", "SyncClient", "ServiceError"]
__version__ = "0.1.0"


def __getattr__(name):
    # the NATS client imports nats-py: only for those who use it (embedded use need not pay)
    if name in ("Client", "SyncClient", "ServiceError"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'cim_flow' has no attribute {name!r}")
