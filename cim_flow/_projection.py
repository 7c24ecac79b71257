"""Projection state: owns the columnar arrays, grows them, calls the kernels.

A :class:`Projection` is a stateful object with explicit hooks: :meth:`apply`
(a record batch), :meth:`state` / :meth:`load_state` (snapshot and restore).
Queries live in :mod:`cim_flow.engine`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from kernels import arrowcols as karrow
from kernels import intern as kintern
from kernels import projection as kp

from ._ids import filled_values, fsb_words, words_to_fsb
from ._schema import ALIAS_CODES, ALIAS_NAMES, EVENT_SCHEMA, UUID_TYPE, null_array
from ._uuid_parse import parse_uuid_strings
from ._strings import StringPool

# field -> (dtype, fill, scale, trailing shape); every field is entity-indexed.
# Layout chosen for memory: 10M nodes + 20M edges must fit well under 2 GB.
_GRAPH_FIELDS = {
    "keys": (np.uint64, 0, 1, (2,)),
    "owner": (np.int32, 0, 1, ()),
    "alive": (np.uint8, 0, 1, ()),
    "name": (np.int32, -1, 1, ()),
    "created": (np.int64, 0, 1, ()),
    "lastmod": (np.int64, 0, 1, ()),
    "archived": (np.uint8, 0, 1, ()),
    "ncount": (np.int64, 0, 1, ()),
    "ecount": (np.int64, 0, 1, ()),
    "nhead": (np.int32, -1, 1, ()),
    "order": (np.int32, -1, 1, ()),
    "pos": (np.int32, -1, 1, ()),
    "touched": (np.uint8, 0, 1, ()),
}
_NODE_FIELDS = {  # 63 bytes a node, plus ~6 in the hash table
    "keys": (np.uint64, 0, 1, (2,)),
    "graph": (np.int32, -1, 1, ()),
    "alive": (np.uint8, 0, 1, ()),
    "pos": (np.float64, np.nan, 1, (3,)),
    "ntype": (np.int16, -1, 1, ()),
    "label": (np.int32, -1, 1, ()),
    "gnext": (np.int32, -1, 1, ()),
    "gprev": (np.int32, -1, 1, ()),
    "ihead": (np.int32, -1, 1, ()),
}
_EDGE_FIELDS = {  # 46 bytes an edge, plus ~6 in the hash table (no graph: see intern.edge_owner)
    "keys": (np.uint64, 0, 1, (2,)),
    "src": (np.int32, -1, 1, ()),
    "dst": (np.int32, -1, 1, ()),
    "weight": (np.float32, np.nan, 1, ()),
    "etype": (np.int16, -1, 1, ()),
    "hnext": (np.int32, -1, 2, ()),
    "hprev": (np.int32, -1, 2, ()),
}
_U64_MAX = 2**64 - 1
_INT16_MAX = int(np.iinfo(np.int16).max)  # type codes are int16
_META_LEN = {"Graphs": 4, "Nodes": 3, "Edges": 2}

# codes of rows that are not events at all (a field their kind needs is missing or bad), as
# opposed to valid events that change nothing (unknown graph, node or edge): the service
# dead-letters the first kind, with their payload, and counts the second as ignored
INVALID = np.array([kp.IGNORED_UNKNOWN_TYPE, kp.IGNORED_MISSING_FIELD, kp.IGNORED_BAD_POSITION, kp.IGNORED_NO_TIME,
                    kp.IGNORED_NO_NODE_ID, kp.IGNORED_NO_EDGE_ID, kp.IGNORED_NO_ENDPOINT_ID, kp.IGNORED_NO_POSITION],
                   np.int8)

REASONS = {
    kp.IGNORED_UNKNOWN_TYPE: "unknown event type",
    kp.IGNORED_MISSING_FIELD: "graph_id missing",
    kp.IGNORED_NO_TIME: "occurred_at missing (every event needs its time)",
    kp.IGNORED_NO_NODE_ID: "node_id missing",
    kp.IGNORED_NO_EDGE_ID: "edge_id missing",
    kp.IGNORED_NO_ENDPOINT_ID: "source_id or target_id missing",
    kp.IGNORED_NO_POSITION: "NodeMoved without a position",
    kp.IGNORED_UNKNOWN_GRAPH: "unknown or deleted graph",
    kp.IGNORED_UNKNOWN_NODE: "unknown or removed node",
    kp.IGNORED_UNKNOWN_EDGE: "unknown or removed edge",
    kp.IGNORED_MISSING_ENDPOINT: "edge endpoint is not a live node of the graph",
    kp.IGNORED_BAD_POSITION: "position must be 3 finite numbers",
}


# Node and edge fields are set by the kernels whenever an index is handed out (a new
# node or edge), so their unused capacity is left as untouched zero pages.
_LAZY = ("N", "E")


def _alloc(fields, cap, lazy=False):
    if lazy:
        return {name: np.zeros((cap * scale,) + shape, dtype)
                for name, (dtype, fill, scale, shape) in fields.items()}
    return {
        name: np.full((cap * scale,) + shape, fill, dtype)
        for name, (dtype, fill, scale, shape) in fields.items()
    }


def _grow_fields(d, fields, new_cap, lazy=()):
    """Grow every field of ``d`` in place, one array at a time (peak = state + one field).

    Fields in ``lazy`` get a zeroed tail from ``np.zeros`` (calloc: the pages are not
    touched, so unused capacity costs no memory) instead of their fill value; the
    kernels initialise every field of an index when they first hand it out.
    """
    for name, (dtype, fill, scale, shape) in fields.items():
        old = d[name]
        k = old.shape[0]
        if name in lazy:
            new = np.zeros((new_cap * scale,) + shape, dtype)
            new[:k] = old
        else:
            new = np.empty((new_cap * scale,) + shape, dtype)
            new[:k] = old
            new[k:] = fill
        d[name] = new
        del old


def _slots_for(cap):
    size = 16
    while size * kintern.MAX_LOAD < cap:
        size *= 2
    return size


def _new_slots(keys, owner, n, cap):
    return kintern.rehash(keys, owner, n, np.full(_slots_for(cap), -1, np.int32))


def _new_edge_slots(keys, src, ngraph, n, cap):
    """:func:`_new_slots` for edges (the owner is the source node's graph)."""
    return kintern.rehash_edges(keys, src, ngraph, n, np.full(_slots_for(cap), -1, np.int32))


def _room(n: int) -> int:
    """Keys a hash table rebuilt by a compaction for ``n`` is sized for: room to grow again."""
    return n + n // 2 + 1024


def _next_cap(need, cap):
    while cap < need:
        cap = max(cap + 16, int(cap * 1.5))
    return cap


class BatchRefused(ValueError):
    """A batch the projection refuses whole, before applying any of it (past the int16
    type codes, an index limit or the last sequence number): nothing changed."""


def _gather_fields(d: dict, fields, m, rows) -> None:
    """Replace each of ``fields`` in ``d`` (a state namedtuple's ``_asdict()``, the only
    reference left to its arrays) by a fresh array (calloc: untouched past ``m`` rows)
    holding ``rows[name](old)`` in front: each old array is released as its copy is made
    (peak: state + one field, as ``_grow`` does)."""
    for name, (dtype, _fill, scale, shape) in fields.items():
        old = d[name]
        new = np.zeros(old.shape, dtype)
        new[: m * scale] = rows[name](old)
        d[name] = new
        del old


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
    if batch.schema.equals(EVENT_SCHEMA):
        return batch
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
            cols.append(null_array(f.type, n))
            continue
        arr = batch.column(f.name)
        if f.type.equals(UUID_TYPE) and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = _uuid_text_column(f.name, arr)
        elif f.name == "event_type" and _is_text(arr.type):
            arr = _event_type_names(arr)
        if not arr.type.equals(f.type):
            try:
                arr = arr.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise ValueError(
                    f"column {f.name!r} has type {arr.type}, expected {f.type} ({exc})"
                ) from None
        cols.append(arr)
    return pa.RecordBatch.from_arrays(cols, schema=EVENT_SCHEMA)


def _is_text(t) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _event_type_names(arr):
    """An ``event_type`` column of names (``NodeAdded``, an alias such as ``EdgeConnected``,
    ``node_added``): their int8 codes, by the same lookup the JSON decoder's Arrow path
    uses.  Files written by other tools often keep the name; an unknown one is a
    ``ValueError`` naming the row and the name."""
    import pyarrow.compute as pc

    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    arr = arr.cast(pa.utf8())
    pos = pc.index_in(arr, value_set=ALIAS_NAMES)
    bad = pc.and_(pc.is_null(pos), pc.is_valid(arr))
    if pc.any(bad).as_py():
        row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"column 'event_type': row {row} has unknown event type {arr[row].as_py()!r}")
    return pc.take(pa.array(ALIAS_CODES), pos)  # a null name stays null (ignored as unknown)


def _uuid_text_column(name, arr):
    b16, valid, bad = parse_uuid_strings(arr)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"column {name!r}: row {row} is not a UUID ({arr[row].as_py()!r})")
    return words_to_fsb(b16.view(np.uint64).reshape(-1, 2), valid)


def _ro(a):
    """C-contiguous and read-only: one numba type per column whatever the batch
    (zero-copy Arrow views are read-only, filled copies are not; mixing them would
    compile a new specialisation of the kernel mid-stream)."""
    a = np.ascontiguousarray(a)
    a.setflags(write=False)  # (a.flags.writeable = ... builds a flags object: ~2x the cost)
    return a


def _num(arr, dtype, fill):
    """``(values, valid)``: values as ``dtype`` with ``fill`` at nulls, and the validity,
    read straight from the Arrow buffers (pyarrow compute calls cost ~20 µs each here: a
    small batch paid that per column), the bitmap unpacked once for both."""
    vals, ok = filled_values(arr, fill)
    return _ro(vals.astype(dtype, copy=False)), _ro(np.ones(len(arr), np.bool_) if ok is None else ok)


def _ids(arr):
    w, ok = fsb_words(arr)
    return _ro(w), _ro(ok)


class EventColumns:
    """One batch in the kernels' column form, string columns not yet coded.

    :func:`events_of` makes one from a normalised record batch; the JSON decoder's
    fast path makes one straight from the scanner's arrays, without building (and
    then taking apart again) Arrow arrays: for the service's small batches that
    was ~0.7 ms of Python calls a batch, far more than the kernel's work.
    A string column is a pyarrow string/dictionary array or a ``(offsets, bytes,
    present)`` triple of ASCII spans.
    """

    __slots__ = ("n", "seq", "seq_ok", "kind", "t", "t_ok", "ids", "x", "y", "z", "pos_ok",
                 "w", "w_ok", "name", "ntype", "etype")

    def __init__(self, n, seq, seq_ok, kind, t, t_ok, ids, x, y, z, pos_ok, w, w_ok, name, ntype, etype):
        self.n = n
        self.seq, self.seq_ok, self.kind, self.t, self.t_ok = seq, seq_ok, kind, t, t_ok
        self.ids = ids  # ((words, valid), ...) for graph, node, edge, source, target
        self.x, self.y, self.z, self.pos_ok, self.w, self.w_ok = x, y, z, pos_ok, w, w_ok
        self.name, self.ntype, self.etype = name, ntype, etype

    def with_seq(self, seq: np.ndarray) -> "EventColumns":
        """The same events at the given (uint64) sequences."""
        # (the constructor, not copy.copy: with __slots__ that goes through __reduce_ex__, ~5 us)
        return EventColumns(self.n, _ro(np.asarray(seq, np.uint64)), _ro(np.ones(self.n, np.bool_)), self.kind,
                            self.t, self.t_ok, self.ids, self.x, self.y, self.z, self.pos_ok, self.w, self.w_ok,
                            self.name, self.ntype, self.etype)

    def events(self, strings: StringPool, types: StringPool) -> kp.Events:
        (gid, gid_ok), (nid, nid_ok), (eid, eid_ok), (sid, sid_ok), (tid, tid_ok) = self.ids
        return kp.Events(
            seq=self.seq, seq_ok=self.seq_ok, kind=self.kind, t=self.t, t_ok=self.t_ok,
            gid=gid, gid_ok=gid_ok, nid=nid, nid_ok=nid_ok, eid=eid, eid_ok=eid_ok,
            sid=sid, sid_ok=sid_ok, tid=tid, tid_ok=tid_ok,
            x=self.x, y=self.y, z=self.z, pos_ok=self.pos_ok,
            name=_ro(strings.encode(self.name)),
            ntype=_ro(types.encode(self.ntype)),
            etype=_ro(types.encode(self.etype)),
            w=self.w, w_ok=self.w_ok,
        )


# EVENT_SCHEMA columns read by kernels.arrowcols.event_columns, in its slot order
_SMALL_COLS = [EVENT_SCHEMA.get_field_index(name) for name in (
    "seq", "event_type", "occurred_at", "graph_id", "node_id", "edge_id", "source_id", "target_id",
    "x", "y", "z", "weight")]
_NAME, _NTYPE, _ETYPE = (EVENT_SCHEMA.get_field_index(c) for c in ("name", "node_type", "edge_type"))
_SMALL_ROWS = 6144  # up to here one compiled pass copies the columns (faster below ~6k rows); beyond, zero-copy views


def events_of(batch: pa.RecordBatch) -> EventColumns:
    """Kernel view of a normalised batch: for a small one, its columns read from the
    Arrow buffers in one compiled pass; for a big one, zero-copy views of the ids."""
    if batch.num_rows <= _SMALL_ROWS:
        return _events_of_small(batch)
    c = batch.column
    seq, seq_ok = _num(c("seq"), np.uint64, 0)
    t, t_ok = _num(c("occurred_at"), np.int64, 0)
    x, x_ok = _num(c("x"), np.float64, np.nan)
    y, y_ok = _num(c("y"), np.float64, np.nan)
    z, z_ok = _num(c("z"), np.float64, np.nan)
    w, w_ok = _num(c("weight"), np.float32, np.nan)
    return EventColumns(
        batch.num_rows, seq=seq, seq_ok=seq_ok, kind=_num(c("event_type"), np.int8, 0)[0], t=t, t_ok=t_ok,
        ids=tuple(_ids(c(k)) for k in ("graph_id", "node_id", "edge_id", "source_id", "target_id")),
        x=x, y=y, z=z, pos_ok=_ro(x_ok & y_ok & z_ok), w=w, w_ok=w_ok,
        name=c("name"), ntype=c("node_type"), etype=c("edge_type"),
    )


def _events_of_small(batch: pa.RecordBatch) -> EventColumns:
    """The batch exported through the Arrow C data interface (one pyarrow call) and its
    columns, strings included, copied out of the buffers by one compiled call that then
    releases the export (pyarrow wrappers for the ~15 columns cost more than the rest)."""
    addr = _c_array_addr()
    batch._export_to_c(addr)
    (seq, seq_ok, kind, t, t_ok, ids, ids_ok, x, y, z, pos_ok, w, w_ok), name, ntype, etype = \
        karrow.event_columns_c(addr, _SMALL_COLS_ARR, _NAME, _NTYPE, _ETYPE)
    for a in (seq, seq_ok, kind, t, t_ok, ids, ids_ok, x, y, z, pos_ok, w, w_ok):
        a.setflags(write=False)  # read-only as the zero-copy path's (one kernel type: see _ro)
    return EventColumns(
        batch.num_rows, seq=seq, seq_ok=seq_ok, kind=kind, t=t, t_ok=t_ok,
        ids=tuple((ids[j], ids_ok[j]) for j in range(5)),
        x=x, y=y, z=z, pos_ok=pos_ok, w=w, w_ok=w_ok, name=name, ntype=ntype, etype=etype,
    )


_SMALL_COLS_ARR = np.array(_SMALL_COLS, np.int64)
_C_ARRAY = threading.local()


def _c_array_addr() -> int:
    """Address of this thread's ``struct ArrowArray`` (reused: each export is released
    before the next)."""
    a = getattr(_C_ARRAY, "addr", None)
    if a is None:
        _C_ARRAY.buf = np.zeros(karrow.C_ARRAY_BYTES // 8, np.int64)
        a = _C_ARRAY.addr = _C_ARRAY.buf.ctypes.data
    return a


class Projection:
    """Columnar projection of graphs, nodes and edges."""

    def __init__(self, capacity: int = 1024, *, node_capacity: int | None = None,
                 edge_capacity: int | None = None):
        self.strings = StringPool()  # graph names, node labels
        self.types = StringPool()  # node and edge types (int16 codes)
        self.version = 0
        gcap = max(16, int(capacity))
        ncap = max(16, int(node_capacity or capacity))
        ecap = max(16, int(edge_capacity or capacity))
        self._caps = [gcap, ncap, ecap]
        self.G = kp.Graphs(**self._fresh(_GRAPH_FIELDS, gcap, 4),
                           lo=np.zeros(16, np.int64), tlist=np.zeros(1, np.int32))
        # an explicit node/edge capacity also sizes that hash table: no rehash (old and
        # new tables side by side, +64 MiB at 20M edges) on the way to it
        self.N = kp.Nodes(**self._fresh(_NODE_FIELDS, ncap, 3, lazy=True, keys=node_capacity),
                          dlist=np.zeros(1, np.int32))
        self.E = kp.Edges(**self._fresh(_EDGE_FIELDS, ecap, 2, lazy=True, keys=edge_capacity))

    @staticmethod
    def _fresh(fields, cap, meta_len, lazy=False, keys=None):
        d = _alloc(fields, cap, lazy)
        # grows with the keys, from room for `keys` (or a small table)
        d["slots"] = np.full(_slots_for(int(keys) if keys else min(cap, 1 << 16)), -1, np.int32)
        d["meta"] = np.zeros(meta_len, np.int64)
        return d

    # -- capacity -----------------------------------------------------------
    def _grow(self, attr, which, fields, cls, rows):
        """Grow one entity kind, releasing each old array as its copy is made."""
        ent = getattr(self, attr)
        need = int(ent.meta[0]) + rows
        if need > kintern.MAX_ENTRIES:  # a slot keeps the index in IDX_BITS bits (see kernels.intern)
            raise ValueError(f"this batch could take the engine past {kintern.MAX_ENTRIES:,} "
                             f"{('graphs', 'nodes', 'edges')[which]}, its limit")
        # the hash table is sized for the keys it may hold by the end of this batch, not
        # for the arrays' capacity (for 20M edges that is 134 MB of slots, not 268 MB)
        rehash = need > ent.slots.shape[0] * kintern.MAX_LOAD
        if need <= self._caps[which] and not rehash:
            return
        d = ent._asdict()
        del ent
        setattr(self, attr, None)  # d now holds the only references
        if need > self._caps[which]:
            cap = _next_cap(need, self._caps[which])
            _grow_fields(d, fields, cap, lazy=fields if attr in _LAZY else ())
            self._caps[which] = cap
        if rehash:
            d["slots"] = None
            n = int(d["meta"][0])
            if attr == "E":
                d["slots"] = _new_edge_slots(d["keys"], d["src"], self.N.graph, n, need)
            else:
                d["slots"] = _new_slots(d["keys"], d["owner"] if "owner" in d else d["graph"], n, need)
        setattr(self, attr, cls(**d))

    def reserve(self, rows: int, kinds: np.ndarray | None = None) -> None:
        """Make room for ``rows`` more events (no growth inside kernels).  With the
        batch's event-type codes ``kinds``, only as many new graphs, nodes and edges as
        it has GraphCreated, NodeAdded and EdgeAdded rows (the only events that give
        out an index): a batch of edges must not grow the node arrays by half."""
        if kinds is None:
            new = (rows, rows, rows)
        else:
            c = np.bincount(np.asarray(kinds).astype(np.uint8, copy=False), minlength=256)  # one pass
            new = (int(c[kp.GRAPH_CREATED]), int(c[kp.NODE_ADDED]), int(c[kp.EDGE_ADDED]))
        self._grow("G", 0, _GRAPH_FIELDS, kp.Graphs, new[0])
        self._grow("N", 1, _NODE_FIELDS, kp.Nodes, new[1])
        self._grow("E", 2, _EDGE_FIELDS, kp.Edges, new[2])
        # lo[c] is needed for every count a graph can reach in this batch
        G = self.G
        top = int(G.ncount[G.order[0]]) if G.meta[2] > 0 else 0
        if G.lo.shape[0] < top + rows + 2:
            lo = np.zeros(max(2 * G.lo.shape[0], top + rows + 2), np.int64)
            lo[: G.lo.shape[0]] = G.lo
            self.G = G._replace(lo=lo)

    def _hash_scratch(self, n: int):
        """The kernel's per-row graph index and id hashes (see
        ``kernels.projection._hash_rows``), kept from batch to batch."""
        gx, hx = getattr(self, "_scratch", (None, None))
        if gx is None or gx.shape[0] < n:
            gx, hx = np.empty(max(n, 1024), np.int64), np.empty((max(n, 1024), 3), np.uint64)
            self._scratch = (gx, hx)
        return gx[:n], hx[:n]

    def _check_seq_room(self, ev, n: int) -> None:
        """Rows without ``seq`` get ``version + 1, ...`` (after any explicit seq before
        them): refuse a batch that would carry that past 2**64 - 1, where the version
        would wrap to 0 and every later event would pass the ``seq <= version`` check."""
        missing = n - int(np.count_nonzero(ev.seq_ok))
        if not missing:
            return
        top = self.version
        if missing < n:
            top = max(top, int(ev.seq[ev.seq_ok].max()))
        if top + missing > _U64_MAX:
            raise ValueError(f"sequence numbers would pass 2**64 - 1: {missing} rows without seq after "
                             f"seq {top} (give every row its seq, or start below)")

    # -- the hook -------------------------------------------------------------
    def apply(self, batch) -> tuple[ApplyResult, np.ndarray, np.ndarray]:
        """Apply one normalised batch (or its :class:`EventColumns`).

        Returns the result, the graph indices it touched (each once) and the
        node indices whose position or liveness changed (a node may repeat).
        """
        cols = batch if isinstance(batch, EventColumns) else events_of(batch)
        n = cols.n
        n_strings, n_types = len(self.strings), len(self.types)
        ev = cols.events(self.strings, self.types)
        try:
            if len(self.types) > _INT16_MAX:
                raise ValueError(f"more than {_INT16_MAX} distinct node/edge types")
            self._check_seq_room(ev, n)
            self.reserve(n, ev.kind)
        except BaseException as exc:
            # refused whole: the names and types it added go (at the types' limit, every
            # later batch would otherwise be refused too)
            self.strings.truncate(n_strings)
            self.types.truncate(n_types)
            if isinstance(exc, ValueError):
                raise BatchRefused(str(exc)) from None
            raise
        # Per-batch logs, kept from batch to batch and replaced only when too small: a new
        # one every batch was a namedtuple _replace each and, for dlist on a big engine, an
        # mmap and munmap of (2n + live) int32 (40 MB at 10M nodes) 2,000 times a second.
        if self.G.tlist.shape[0] < n:
            self.G = self.G._replace(tlist=np.empty(max(n, 2 * self.G.tlist.shape[0]), np.int32))
        # the changed-node log takes one entry per node event plus one per node a graph
        # deletion cascades to (at most every node live now or added in this batch):
        # 2n + live.  np.empty commits no pages until they are written.
        need = 2 * n + int(self.N.meta[1]) + 1
        if self.N.dlist.shape[0] < need:
            self.N = self.N._replace(dlist=np.empty(need + need // 4, np.int32))
        status = np.empty(n, np.int8)
        seq = np.empty(n, np.uint64)
        gx, hx = self._hash_scratch(n)
        self.version = int(kp.apply_events_tuples(tuple(self.G), tuple(self.N), tuple(self.E), tuple(ev),
                                                  np.uint64(self.version), status, seq, gx, hx))
        counts = np.bincount(np.minimum(status, 2), minlength=3)
        res = ApplyResult(int(counts[0]), int(counts[2]), int(counts[1]), self.version, status, seq)
        G, N = self.G, self.N
        touched = G.tlist[: G.meta[3]].astype(np.int64)
        G.touched[touched] = 0
        G.meta[3] = 0
        dirty = N.dlist[: N.meta[2]].astype(np.int64)
        N.meta[2] = 0
        return res, touched, dirty

    # -- compaction ---------------------------------------------------------------
    def garbage(self) -> tuple[int, int]:
        """Removed nodes and removed edges still holding an index (an index is never
        reused for another key, so they stay until :meth:`compact`)."""
        N, E = self.N, self.E
        return int(N.meta[0] - N.meta[1]), int(E.meta[0] - E.meta[1])

    def graph_garbage(self) -> int:
        """Deleted graphs still holding an index."""
        return int(self.G.meta[0] - self.G.meta[1])

    def compact(self, strings: bool = True, graphs: bool = False) -> dict:
        """Renumber the live nodes and edges densely (in their old order) and drop the
        removed ones: their keys, fields and hash slots, kept until now so a removal is
        one flag; with ``strings``, also the names, labels and types nothing live uses;
        with ``graphs``, the deleted graphs too (whoever holds graph numbers across this
        call, as the service does between a batch and its update message, must not ask
        for that).  Every link is renumbered with them (a graph's node list, the graphs
        in node-count order, incident-edge lists, edge endpoints, each node's graph) and
        the hash tables are built again.  Nothing observable changes: a removed node,
        edge or graph and one never seen answer every event and query alike (a re-added
        one starts afresh either way).  Numbers do change, so whatever holds them (the
        spatial index, the secondary indices) must be rebuilt by the caller.  Returns
        what was dropped."""
        g_dead = self._compact_graphs() if graphs else None
        G, n_dead, e_dead = self.G, *self.garbage()
        n0, e0 = int(self.N.meta[0]), int(self.E.meta[0])
        live_n = np.flatnonzero(self.N.alive[:n0])
        live_e = np.flatnonzero(self.E.src[:e0] >= 0)  # a removed edge keeps ~src (< 0)
        m, me = int(live_n.size), int(live_e.size)
        # old -> new numbers; index -1 (no link) reads the extra last entry, -1
        nmap = np.full(n0 + 1, -1, np.int32)
        nmap[live_n] = np.arange(m, dtype=np.int32)
        # half-edges (2 e + side): old -> new, the same way (None: edges keep their numbers)
        hmap = None
        if e_dead:
            hmap = np.full(2 * e0 + 1, -1, np.int32)
            hmap[2 * live_e] = np.arange(0, 2 * me, 2, dtype=np.int32)
            hmap[2 * live_e + 1] = np.arange(1, 2 * me, 2, dtype=np.int32)

        dropped = {"nodes": n_dead, "edges": e_dead, "strings": 0, "types": 0}
        if g_dead is not None:
            dropped["graphs"], gmap = g_dead
            # a live node's graph is live (deleting a graph removes its nodes); the remap
            # is here, before the hash tables are rebuilt: a key's hash includes its graph
            self.N.graph[live_n] = gmap[self.N.graph[live_n]]
        slut = tlut = None
        if strings:
            g_live = np.flatnonzero(G.alive[: G.meta[0]])
            used = np.concatenate([G.name[g_live], self.N.label[live_n]])
            pool, slut = self.strings.compacted(used)
            dropped["strings"] = len(self.strings) - len(pool)
            self.strings = pool
            used = np.concatenate([self.N.ntype[live_n], self.E.etype[live_e]])
            pool, tlut = self.types.compacted(used)
            dropped["types"] = len(self.types) - len(pool)
            self.types = pool
            G.name[:] = np.where(G.alive != 0, slut[G.name], -1)  # a deleted graph's name goes too
        renumbered_graphs = bool(dropped.get("graphs"))
        if n_dead:
            self._compact_nodes(live_n, m, nmap, hmap, slut, tlut)
            g0 = int(G.meta[0])
            G.nhead[:g0] = nmap[G.nhead[:g0]]
        else:  # every node is live: their numbers stay, a few fields change in place
            N = self.N
            if slut is not None:
                N.label[:n0] = slut[N.label[:n0]]
            if tlut is not None:
                N.ntype[:n0] = tlut[N.ntype[:n0]]
            if hmap is not None:
                N.ihead[:n0] = hmap[N.ihead[:n0]]
            if renumbered_graphs:  # a key's hash includes its graph's number
                self.N = N._replace(slots=None)
                self.N = self.N._replace(slots=_new_slots(N.keys, N.graph, n0, _room(n0)))
        if e_dead:
            self._compact_edges(e0, live_e, me, nmap, hmap, tlut)
        else:  # every edge is live: numbers and incident lists stay
            E = self.E
            if n_dead:
                E.src[:e0] = nmap[E.src[:e0]]
                E.dst[:e0] = nmap[E.dst[:e0]]
            if tlut is not None:
                E.etype[:e0] = tlut[E.etype[:e0]]
            if renumbered_graphs:  # an edge's key hashes with its source node's graph
                self.E = E._replace(slots=None)
                self.E = self.E._replace(slots=_new_edge_slots(E.keys, E.src, self.N.graph, e0, _room(e0)))
        return dropped

    def _compact_nodes(self, live_n, m, nmap, hmap, slut, tlut) -> None:
        """The nodes ``live_n`` renumbered 0..m-1 (see :meth:`compact`); the hash table
        built again."""
        def take(a):
            return a[live_n]

        d = self.N._asdict()
        self.N = None
        _gather_fields(d, _NODE_FIELDS, m, {
            "keys": take, "graph": take, "alive": take, "pos": take,
            "ntype": take if tlut is None else lambda a: tlut[a[live_n]],
            "label": take if slut is None else lambda a: slut[a[live_n]],
            "gnext": lambda a: nmap[a[live_n]], "gprev": lambda a: nmap[a[live_n]],
            "ihead": take if hmap is None else lambda a: hmap[a[live_n]],
        })
        d["meta"] = np.array([m, m, 0], np.int64)
        d["slots"] = None
        d["slots"] = _new_slots(d["keys"], d["graph"], m, _room(m))
        self.N = kp.Nodes(**d)

    def _compact_edges(self, e0, live_e, me, nmap, hmap, tlut) -> None:
        """The edges ``live_e`` renumbered 0..me-1, as :meth:`_compact_nodes` does nodes."""
        def take(a):
            return a[live_e]

        def halves(a):  # each edge's two half-edges' links, renumbered
            return hmap[a[: 2 * e0].reshape(e0, 2)[live_e].ravel()]

        d = self.E._asdict()
        self.E = None
        _gather_fields(d, _EDGE_FIELDS, me, {
            "keys": take, "weight": take, "src": lambda a: nmap[a[live_e]], "dst": lambda a: nmap[a[live_e]],
            "etype": take if tlut is None else lambda a: tlut[a[live_e]], "hnext": halves, "hprev": halves,
        })
        d["meta"] = np.array([me, me], np.int64)
        d["slots"] = None
        d["slots"] = _new_edge_slots(d["keys"], d["src"], self.N.graph, me, _room(me))
        self.E = kp.Edges(**d)

    def _compact_graphs(self) -> tuple[int, np.ndarray]:
        """The graph part of :meth:`compact`: live graphs renumbered in their order, the
        deleted ones dropped.  Returns how many went and the old -> new map (``-1`` for
        a dropped one, and at index -1)."""
        G = self.G
        g0 = int(G.meta[0])
        live = np.flatnonzero(G.alive[:g0])
        m = int(live.size)
        gmap = np.full(g0 + 1, -1, np.int32)
        gmap[live] = np.arange(m, dtype=np.int32)
        L = int(G.meta[2])  # the live graphs, in node-count order (positions kept)
        d = G._asdict()
        for name, (dtype, fill, _scale, shape) in _GRAPH_FIELDS.items():
            old = d[name]
            new = np.full(old.shape, fill, dtype)
            if name == "order":
                new[:L] = gmap[old[:L]]
            elif name != "touched":  # (all 0 between batches)
                new[:m] = old[live]
            d[name] = new
        d["meta"] = np.array([m, m, L, 0], np.int64)
        d["slots"] = None
        d["slots"] = _new_slots(d["keys"], d["owner"], m, _room(m))
        self.G = kp.Graphs(**d)
        return g0 - m, gmap

    # -- snapshot hooks -------------------------------------------------------
    def state(self) -> dict:
        """Every array and scalar of the projection (for snapshots)."""
        return {
            "version": self.version,
            "strings": self.strings.values(),
            "types": self.types.values(),
            "caps": tuple(self._caps),
            "G": self.G._asdict(),
            "N": self.N._asdict(),
            "E": self.E._asdict(),
        }

    def load_state(self, st: dict) -> None:
        self.version = int(st["version"])
        self.strings = StringPool(st["strings"])
        self.types = StringPool(st["types"])
        self._caps = list(st["caps"])
        self.G = kp.Graphs(**st["G"])
        self.N = kp.Nodes(**st["N"])
        self.E = kp.Edges(**st["E"])
