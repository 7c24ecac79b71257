"""Projection state: owns the columnar arrays, grows them, calls the kernels.

A :class:`Projection` is a stateful object with explicit hooks: :meth:`apply`
(a record batch), :meth:`state` / :meth:`load_state` (snapshot and restore).
Queries live in :mod:`cim_flow.engine`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from kernels import intern as kintern
from kernels import projection as kp

from ._ids import fsb_words
from ._schema import EVENT_SCHEMA
from ._strings import StringPool

# field -> (dtype, fill, scale, trailing shape)
_GRAPH_FIELDS = {
    "keys": (np.uint64, 0, 1, (3,)),
    "alive": (np.uint8, 0, 1, ()),
    "name": (np.int32, -1, 1, ()),
    "created": (np.int64, 0, 1, ()),
    "lastmod": (np.int64, 0, 1, ()),
    "archived": (np.uint8, 0, 1, ()),
    "ncount": (np.int64, 0, 1, ()),
    "ecount": (np.int64, 0, 1, ()),
    "nhead": (np.int64, -1, 1, ()),
    "order": (np.int64, -1, 1, ()),
    "pos": (np.int64, -1, 1, ()),
    "touched": (np.uint8, 0, 1, ()),
    "tlist": (np.int64, 0, 1, ()),
}
_NODE_FIELDS = {
    "keys": (np.uint64, 0, 1, (3,)),
    "alive": (np.uint8, 0, 1, ()),
    "graph": (np.int64, -1, 1, ()),
    "x": (np.float64, np.nan, 1, ()),
    "y": (np.float64, np.nan, 1, ()),
    "z": (np.float64, np.nan, 1, ()),
    "haspos": (np.uint8, 0, 1, ()),
    "ntype": (np.int32, -1, 1, ()),
    "label": (np.int32, -1, 1, ()),
    "gnext": (np.int64, -1, 1, ()),
    "gprev": (np.int64, -1, 1, ()),
    "ihead": (np.int64, -1, 1, ()),
    "dirty": (np.uint8, 0, 1, ()),
    "dlist": (np.int64, 0, 1, ()),
}
_EDGE_FIELDS = {
    "keys": (np.uint64, 0, 1, (3,)),
    "alive": (np.uint8, 0, 1, ()),
    "graph": (np.int64, -1, 1, ()),
    "src": (np.int64, -1, 1, ()),
    "dst": (np.int64, -1, 1, ()),
    "weight": (np.float32, np.nan, 1, ()),
    "etype": (np.int32, -1, 1, ()),
    "hnext": (np.int64, -1, 2, ()),
    "hprev": (np.int64, -1, 2, ()),
}
_META_LEN = {"Graphs": 4, "Nodes": 3, "Edges": 2}

REASONS = {
    kp.IGNORED_UNKNOWN_TYPE: "unknown event type",
    kp.IGNORED_MISSING_FIELD: "required field missing",
    kp.IGNORED_UNKNOWN_GRAPH: "unknown or deleted graph",
    kp.IGNORED_UNKNOWN_NODE: "unknown or removed node",
    kp.IGNORED_UNKNOWN_EDGE: "unknown or removed edge",
    kp.IGNORED_MISSING_ENDPOINT: "edge endpoint is not a live node of the graph",
    kp.IGNORED_BAD_POSITION: "position must be 3 finite numbers",
}


def _alloc(fields, cap):
    return {
        name: np.full((cap * scale,) + shape, fill, dtype)
        for name, (dtype, fill, scale, shape) in fields.items()
    }


def _grow_arrays(arrays, fields, new_cap):
    out = {}
    for name, (dtype, fill, scale, shape) in fields.items():
        old = arrays[name]
        new = np.full((new_cap * scale,) + shape, fill, dtype)
        new[: old.shape[0]] = old
        out[name] = new
    return out


def _new_slots(keys, n, cap):
    slots = np.full(2 * cap, -1, np.int64)
    return kintern.rehash(keys, n, slots)


def _next_cap(need, cap):
    while cap < need:
        cap *= 2
    return cap


@dataclass
class ApplyResult:
    """What one :meth:`Engine.apply` did."""

    applied: int
    ignored: int
    skipped: int
    version: int
    status: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.int8))
    seq: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.uint64))

    def ignored_rows(self) -> list[tuple[int, str]]:
        """``(row, reason)`` of every ignored row, in row order."""
        rows = np.flatnonzero(self.status >= 2)
        return [(int(r), REASONS[int(self.status[r])]) for r in rows]

    def __add__(self, other: "ApplyResult") -> "ApplyResult":
        return ApplyResult(
            self.applied + other.applied,
            self.ignored + other.ignored,
            self.skipped + other.skipped,
            max(self.version, other.version),
            np.concatenate([self.status, other.status]),
            np.concatenate([self.seq, other.seq]),
        )


def normalize_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch in EVENT_SCHEMA order and types; ``ValueError`` naming the bad column."""
    names = batch.schema.names
    unknown = [n for n in names if EVENT_SCHEMA.get_field_index(n) < 0]
    if unknown:
        raise ValueError(f"unknown column {unknown[0]!r} (not in cim_flow.EVENT_SCHEMA)")
    if len(set(names)) != len(names):
        raise ValueError("duplicate column names in event batch")
    cols = []
    n = batch.num_rows
    for f in EVENT_SCHEMA:
        if f.name not in names:
            if not f.nullable:
                raise ValueError(f"missing required column {f.name!r}")
            cols.append(pa.nulls(n, f.type))
            continue
        arr = batch.column(f.name)
        if not arr.type.equals(f.type):
            try:
                arr = arr.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise ValueError(
                    f"column {f.name!r} has type {arr.type}, expected {f.type} ({exc})"
                ) from None
        cols.append(arr)
    return pa.RecordBatch.from_arrays(cols, schema=EVENT_SCHEMA)


def _num(arr, dtype, fill):
    if arr.null_count:
        arr = arr.fill_null(fill)
    return np.ascontiguousarray(arr.to_numpy(zero_copy_only=False), dtype=dtype)


def _valid(arr):
    if arr.null_count == 0:
        return np.ones(len(arr), np.bool_)
    return arr.is_valid().to_numpy(zero_copy_only=False)


def events_of(batch: pa.RecordBatch, strings: StringPool) -> kp.Events:
    """Kernel view of a normalised batch (ids are zero-copy views)."""
    c = batch.column
    gid, gid_ok = fsb_words(c("graph_id"))
    nid, nid_ok = fsb_words(c("node_id"))
    eid, eid_ok = fsb_words(c("edge_id"))
    sid, sid_ok = fsb_words(c("source_id"))
    tid, tid_ok = fsb_words(c("target_id"))
    x, y, z = c("x"), c("y"), c("z")
    pos_ok = _valid(x) & _valid(y) & _valid(z)
    t = c("occurred_at")
    return kp.Events(
        seq=_num(c("seq"), np.uint64, 0),
        seq_ok=_valid(c("seq")),
        kind=_num(c("event_type"), np.int8, 0),
        t=_num(t.cast(pa.int64()), np.int64, 0),
        t_ok=_valid(t),
        gid=gid, gid_ok=gid_ok, nid=nid, nid_ok=nid_ok, eid=eid, eid_ok=eid_ok,
        sid=sid, sid_ok=sid_ok, tid=tid, tid_ok=tid_ok,
        x=_num(x, np.float64, np.nan), y=_num(y, np.float64, np.nan),
        z=_num(z, np.float64, np.nan), pos_ok=pos_ok,
        name=strings.encode(c("name")),
        ntype=strings.encode(c("node_type")),
        etype=strings.encode(c("edge_type")),
        w=_num(c("weight"), np.float32, np.nan),
        w_ok=_valid(c("weight")),
    )


class Projection:
    """Columnar projection of graphs, nodes and edges."""

    def __init__(self, capacity: int = 1024):
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self.strings = StringPool()
        self.version = 0
        self._gcap = self._ncap = self._ecap = cap
        g = _alloc(_GRAPH_FIELDS, cap)
        g["slots"] = np.full(2 * cap, -1, np.int64)
        g["meta"] = np.zeros(_META_LEN["Graphs"], np.int64)
        g["lo"] = np.zeros(cap + 2, np.int64)
        self.G = kp.Graphs(**g)
        n = _alloc(_NODE_FIELDS, cap)
        n["slots"] = np.full(2 * cap, -1, np.int64)
        n["meta"] = np.zeros(_META_LEN["Nodes"], np.int64)
        self.N = kp.Nodes(**n)
        e = _alloc(_EDGE_FIELDS, cap)
        e["slots"] = np.full(2 * cap, -1, np.int64)
        e["meta"] = np.zeros(_META_LEN["Edges"], np.int64)
        self.E = kp.Edges(**e)

    # -- capacity -----------------------------------------------------------
    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` more events of any kind (no growth inside kernels)."""
        G, N, E = self.G, self.N, self.E
        need = int(G.meta[0]) + rows
        if need > self._gcap:
            cap = _next_cap(need, self._gcap)
            d = _grow_arrays(G._asdict(), _GRAPH_FIELDS, cap)
            d["slots"] = _new_slots(d["keys"], int(G.meta[0]), cap)
            d["meta"], d["lo"] = G.meta, G.lo
            self.G, self._gcap = kp.Graphs(**d), cap
        need = int(N.meta[0]) + rows
        if need > self._ncap:
            cap = _next_cap(need, self._ncap)
            d = _grow_arrays(N._asdict(), _NODE_FIELDS, cap)
            d["slots"] = _new_slots(d["keys"], int(N.meta[0]), cap)
            d["meta"] = N.meta
            self.N, self._ncap = kp.Nodes(**d), cap
            lo = np.zeros(cap + 2, np.int64)
            lo[: self.G.lo.shape[0]] = self.G.lo
            self.G = self.G._replace(lo=lo)
        need = int(E.meta[0]) + rows
        if need > self._ecap:
            cap = _next_cap(need, self._ecap)
            d = _grow_arrays(E._asdict(), _EDGE_FIELDS, cap)
            d["slots"] = _new_slots(d["keys"], int(E.meta[0]), cap)
            d["meta"] = E.meta
            self.E, self._ecap = kp.Edges(**d), cap

    # -- the hook -------------------------------------------------------------
    def apply(self, batch: pa.RecordBatch) -> tuple[ApplyResult, np.ndarray, np.ndarray]:
        """Apply one normalised batch.

        Returns the result, the graph indices it touched and the node indices
        whose position or liveness changed (both reset for the next batch).
        """
        n = batch.num_rows
        ev = events_of(batch, self.strings)
        self.reserve(n)
        status = np.empty(n, np.int8)
        seq = np.empty(n, np.uint64)
        self.version = int(kp.apply_events(self.G, self.N, self.E, ev, np.uint64(self.version), status, seq))
        counts = np.bincount(np.minimum(status, 2), minlength=3)
        res = ApplyResult(int(counts[0]), int(counts[2]), int(counts[1]), self.version, status, seq)
        G, N = self.G, self.N
        touched = G.tlist[: G.meta[3]].copy()
        G.touched[touched] = 0
        G.meta[3] = 0
        dirty = N.dlist[: N.meta[2]].copy()
        N.dirty[dirty] = 0
        N.meta[2] = 0
        return res, touched, dirty

    # -- snapshot hooks -------------------------------------------------------
    def state(self) -> dict:
        """Every array and scalar of the projection (for snapshots)."""
        return {
            "version": self.version,
            "strings": self.strings.values(),
            "caps": (self._gcap, self._ncap, self._ecap),
            "G": self.G._asdict(),
            "N": self.N._asdict(),
            "E": self.E._asdict(),
        }

    def load_state(self, st: dict) -> None:
        self.version = int(st["version"])
        self.strings = StringPool(st["strings"])
        self._gcap, self._ncap, self._ecap = st["caps"]
        self.G = kp.Graphs(**st["G"])
        self.N = kp.Nodes(**st["N"])
        self.E = kp.Edges(**st["E"])
