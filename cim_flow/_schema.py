"""The canonical event schema (ARCHITECTURE.md) and the event type codes."""
from __future__ import annotations

import enum
import functools

import numpy as np
import pyarrow as pa

UUID_TYPE = pa.binary(16)
TIME_TYPE = pa.timestamp("us", tz="UTC")
DICT_TYPE = pa.dictionary(pa.int32(), pa.utf8())

EVENT_SCHEMA = pa.schema(
    [
        pa.field("seq", pa.uint64()),
        pa.field("event_id", UUID_TYPE),
        pa.field("event_type", pa.int8(), nullable=False),
        pa.field("occurred_at", TIME_TYPE),
        pa.field("graph_id", UUID_TYPE, nullable=False),
        pa.field("node_id", UUID_TYPE),
        pa.field("edge_id", UUID_TYPE),
        pa.field("source_id", UUID_TYPE),
        pa.field("target_id", UUID_TYPE),
        pa.field("x", pa.float64()),
        pa.field("y", pa.float64()),
        pa.field("z", pa.float64()),
        pa.field("name", pa.utf8()),
        pa.field("node_type", DICT_TYPE),
        pa.field("edge_type", DICT_TYPE),
        pa.field("weight", pa.float32()),
        pa.field("metadata", pa.large_utf8()),
        pa.field("correlation_id", UUID_TYPE),
        pa.field("causation_id", UUID_TYPE),
    ]
)


class EventType(enum.IntEnum):
    """int8 codes of the ``event_type`` column."""

    GraphCreated = 1
    GraphUpdated = 2
    GraphArchived = 3
    GraphDeleted = 4
    NodeAdded = 10
    NodeUpdated = 11
    NodeMoved = 12
    NodeRemoved = 13
    EdgeAdded = 20
    EdgeUpdated = 21
    EdgeRemoved = 23


#: Names seen in CIM code, mapped onto the canonical codes.
EVENT_ALIASES: dict[str, EventType] = {e.name: e for e in EventType}
EVENT_ALIASES.update(
    {
        "GraphRenamed": EventType.GraphUpdated,
        "GraphMetadataUpdated": EventType.GraphUpdated,
        "GraphTagged": EventType.GraphUpdated,
        "GraphUntagged": EventType.GraphUpdated,
        "GraphRemoved": EventType.GraphDeleted,
        "NodeCreated": EventType.NodeAdded,
        "NodeInserted": EventType.NodeAdded,
        "NodeDeleted": EventType.NodeRemoved,
        "NodeContentUpdated": EventType.NodeUpdated,
        "NodeMetadataUpdated": EventType.NodeUpdated,
        "NodeRelabeled": EventType.NodeUpdated,
        "NodePositionChanged": EventType.NodeMoved,
        "NodeRepositioned": EventType.NodeMoved,
        "EdgeCreated": EventType.EdgeAdded,
        "EdgeConnected": EventType.EdgeAdded,
        "EdgeDeleted": EventType.EdgeRemoved,
        "EdgeDisconnected": EventType.EdgeRemoved,
        "EdgeWeightChanged": EventType.EdgeUpdated,
        "EdgeMetadataUpdated": EventType.EdgeUpdated,
    }
)
# snake_case and dotted forms (node_added, graph.created, node.created ...)
for _name, _code in list(EVENT_ALIASES.items()):
    _snake = "".join("_" + c.lower() if c.isupper() else c for c in _name).lstrip("_")
    EVENT_ALIASES.setdefault(_snake, _code)
    EVENT_ALIASES.setdefault(_snake.replace("_", "."), _code)
del _name, _code, _snake

#: every name and alias as an Arrow string array, and their codes in the same order plus
#: a trailing 0 (the code for "not found", for lookups by ``index_in``)
ALIAS_NAMES = pa.array(list(EVENT_ALIASES), pa.utf8())
ALIAS_CODES = np.array([int(v) for v in EVENT_ALIASES.values()] + [0], np.int8)

#: subject suffix (event.graph.<kind>.<verb>) for each code
SUBJECT_OF = {
    EventType.GraphCreated: "event.graph.graph.created",
    EventType.GraphUpdated: "event.graph.graph.updated",
    EventType.GraphArchived: "event.graph.graph.archived",
    EventType.GraphDeleted: "event.graph.graph.deleted",
    EventType.NodeAdded: "event.graph.node.created",
    EventType.NodeUpdated: "event.graph.node.updated",
    EventType.NodeMoved: "event.graph.node.moved",
    EventType.NodeRemoved: "event.graph.node.removed",
    EventType.EdgeAdded: "event.graph.edge.created",
    EventType.EdgeUpdated: "event.graph.edge.updated",
    EventType.EdgeRemoved: "event.graph.edge.removed",
}


_NULL_BLOCK = 1 << 16


def null_array(typ: pa.DataType, n: int) -> pa.Array:
    """``n`` nulls of type ``typ``: a zero-copy slice of a cached block when ``n`` is at
    most 65,536 rows (arrays are immutable, so one block serves every batch).  Batches
    without some of the 19 columns need one per missing column; ``pa.nulls`` allocates
    and zeroes its buffers each time (1 MB, 15-27 µs, for an id column of 64k rows)."""
    return _null_block(typ).slice(0, n) if n <= _NULL_BLOCK else pa.nulls(n, typ)


@functools.lru_cache(maxsize=32)
def _null_block(typ: pa.DataType) -> pa.Array:
    return pa.nulls(_NULL_BLOCK, typ)
