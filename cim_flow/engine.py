"""The embedded engine: apply event batches, query the projections.

>>> eng = Engine()
>>> eng.apply(read_events("events.parquet"))
>>> eng.top_graphs_by_node_count(10)
"""
from __future__ import annotations

import functools
import math
import threading
import time
import types
import uuid
from typing import Iterable, Iterator

import numba
import numpy as np
import pyarrow as pa

from kernels import intern as kintern
from kernels import projection as kp

from ._ids import UUID_TYPE, words_of, words_to_fsb
from ._projection import ApplyResult, EventColumns, Projection, normalize_batch
from ._schema import TIME_TYPE, null_array
from ._spatial import SpatialIndex
from kernels import spatial as ks
from kernels import traverse as kt
from ._time import from_micros, to_micros

_NOT_INDEXED = -2
def _checked_nodes(nodes, N) -> np.ndarray:
    """Node numbers about to be gathered by a kernel without bounds checks: one that is
    out of range would read (and crash) far outside the node arrays, so it is an error
    here instead (an answer from a damaged index, never an expected input)."""
    nodes = np.ascontiguousarray(nodes, np.int64)
    if nodes.size and (nodes.min() < 0 or nodes.max() >= int(N.meta[0])):
        raise RuntimeError("internal error: node number out of range in an answer")
    return nodes


_NO_TIME = int(np.iinfo(np.int64).min)  # created_of of a graph not in the by-date index

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("graph_id", pa.binary(16)),
        pa.field("name", pa.utf8()),
        pa.field("node_count", pa.int64()),
        pa.field("edge_count", pa.int64()),
        pa.field("created_at", TIME_TYPE),
        pa.field("last_modified", TIME_TYPE),
        pa.field("archived", pa.bool_()),
    ]
)


def _batches_of(data) -> Iterable[pa.RecordBatch]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], (pa.RecordBatch, pa.Table)):
        data = data[0]  # the (batch, errors) pair decode_json returns
    if isinstance(data, pa.RecordBatch):
        return [data]
    if isinstance(data, pa.Table):
        return data.to_batches()
    if isinstance(data, (list, tuple)) and all(isinstance(b, pa.RecordBatch) for b in data):
        return list(data)
    if isinstance(data, pa.RecordBatchReader):
        return data  # read batch by batch: a file bigger than memory streams through
    # any other Arrow producer (polars and pandas frames, DuckDB results, ...), through
    # the Arrow PyCapsule interface
    if hasattr(data, "__arrow_c_stream__"):
        if not hasattr(pa.RecordBatchReader, "from_stream"):  # pyarrow < 15
            raise TypeError(f"apply() of a {type(data).__name__} (an Arrow stream producer) needs pyarrow >= 15; "
                            "pass pa.table(...) of it instead")
        return pa.RecordBatchReader.from_stream(data)
    if hasattr(data, "__arrow_c_array__"):
        return [pa.record_batch(data)]
    if isinstance(data, Iterator) or (isinstance(data, (list, tuple)) and data):
        # batches one at a time, such as pq.ParquetFile(path).iter_batches(): a file bigger
        # than memory streams through
        return _each_batch(data)
    raise TypeError(
        "apply() takes a pyarrow RecordBatch, Table or RecordBatchReader in cim_flow.EVENT_SCHEMA, an "
        "iterator of batches, an object with the Arrow PyCapsule interface, or what decode_json returns; "
        f"got {type(data).__name__}"
    )


def _each_batch(items) -> Iterator[pa.RecordBatch]:
    for k, item in enumerate(items):
        if isinstance(item, pa.RecordBatch):
            yield item
        elif isinstance(item, pa.Table):
            yield from item.to_batches()
        else:
            raise TypeError(f"apply() of an iterable: item {k} is a {type(item).__name__}, "
                            "not a pyarrow RecordBatch or Table")


def _locked(method):
    """Run an Engine method holding the engine's lock (see :class:`Engine`)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class Engine:
    """Projections of a stream of CIM graph events, with indexed queries.

    Safe to share between threads: ``apply`` and every query take the engine's lock
    (one at a time; the kernels inside a call still run on all cores), so a query sees
    the state after a whole ``apply`` call, never part of one.  Without it, a query
    running its kernel (which releases the GIL) while another thread's ``apply`` grew
    the arrays read outside them: a segfault.

    The state follows the live data, not the history: removed nodes and edges, deleted
    graphs and unused strings are dropped by :meth:`compact`, which ``apply`` runs on its
    own once they outnumber the live ones (see :attr:`compact_min`).
    """

    def __init__(self, capacity: int = 1024, *, node_capacity: int | None = None,
                 edge_capacity: int | None = None):
        """``capacity`` (graphs) and ``node_capacity`` / ``edge_capacity`` pre-size the
        arrays (like ``list.reserve``); they grow by 1.5x as needed anyway."""
        self._p = Projection(capacity, node_capacity=node_capacity, edge_capacity=edge_capacity)
        # secondary indices kept beside the kernel state
        self._name_of = np.full(self._p._caps[0], _NOT_INDEXED, np.int32)  # name code indexed per graph
        self._by_name: dict[int, set[int]] = {}
        self._created_of = np.full(self._p._caps[0], _NO_TIME, np.int64)
        self._cr_t = np.empty(0, np.int64)  # sorted created_at
        self._cr_g = np.empty(0, np.int64)  # graph index beside it
        self._cr_stale = 0
        self._spatial = SpatialIndex()
        self._spatial_hint = False  # from a snapshot: its engine kept a spatial index
        self.last_touched = np.empty(0, np.int64)
        self.last_dirty = np.empty(0, np.int64)
        self._listeners = []
        self.compactions = 0  # see compact
        self._types_kept = 0  # types in use after the last compaction
        self.last_compaction: dict | None = None  # what it dropped, at which version, how long it took
        self._scratch = types.SimpleNamespace()  # reused query scratch (one call at a time: the lock)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        t = self.totals()
        return f"Engine(version={self.version}, graphs={t['graphs']}, nodes={t['nodes']}, edges={t['edges']})"

    # -- write side -------------------------------------------------------------
    @property
    def version(self) -> int:
        """Sequence of the last applied (or ignored) event; 0 before any."""
        return self._p.version

    @_locked
    def apply(self, data) -> ApplyResult:
        """Apply a RecordBatch / Table / RecordBatchReader in ``EVENT_SCHEMA`` (or
        ``decode_json``'s output, any Arrow producer with ``__arrow_c_stream__``, such
        as a polars or pandas frame, or an iterator of batches, such as
        ``pq.ParquetFile(path).iter_batches()``; missing nullable columns are nulls).
        A reader or iterator is applied batch by batch: if it fails midway, the batches
        before the failure stay applied.

        Rows are applied in order; rows without ``seq`` get ``version + 1, ...``.
        """
        total = None
        for batch in _batches_of(data):
            batch = normalize_batch(batch)
            if batch.num_rows == 0:
                continue
            res = self._apply_one(batch)
            total = res if total is None else total + res
        if total is None:
            total = ApplyResult(0, 0, 0, self.version)
        return total

    def _apply_one(self, batch) -> ApplyResult:
        """One kernel call for a normalised batch or :class:`EventColumns`, then the
        secondary indices, the spatial index and the listeners."""
        res, touched, dirty = self._p.apply(batch)
        self._reindex(touched)
        self._spatial.update(self._p.N, dirty)
        self.last_touched, self.last_dirty = touched, dirty
        for fn in self._listeners:
            fn(touched, dirty)
        if self._wants_compaction() or (not self._listeners and self._wants_graph_compaction()):
            # graph numbers only when nobody holds them past this call (a listener, as
            # the service, checks _wants_graph_compaction itself where that is safe)
            self._compact(graphs=not self._listeners)
        return res

    #: Removed nodes or edges keep their index (a removal is one flag; an index is never
    #: handed to another key), and unused names and types their string codes: under churn
    #: (ids added and removed for good) that grew without bound.  After a batch that leaves
    #: more removed nodes than live ones (or edges), and more than this, the engine
    #: compacts (:meth:`compact`): the cost is one pass over the live state, paid once per
    #: as many removals as there are live entries.  ``-1``: never on its own.
    compact_min = 1 << 16

    def _wants_compaction(self) -> bool:
        """Whether removed nodes or edges, or unused strings, have passed
        :attr:`compact_min` and the live count (deleted graphs: :meth:`_wants_graph_compaction`)."""
        P, floor = self._p, self.compact_min
        if floor < 0:
            return False
        n_dead, e_dead = P.garbage()
        if n_dead > floor and n_dead > P.N.meta[1]:
            return True
        if e_dead > floor and e_dead > P.E.meta[1]:
            return True
        # names and labels: one at most a live graph or node, so after a compaction this
        # holds again only once that many more have come
        live = int(P.N.meta[1] + P.G.meta[1])
        if len(P.strings) > floor + 2 * live:
            return True
        # types: long before their int16 codes run out (a batch is refused past 32,767),
        # and not again until 4,096 more have come (all in use: no compaction a batch)
        return len(P.types) > max(1 << 14, self._types_kept + (1 << 12))

    def _wants_graph_compaction(self) -> bool:
        """:meth:`_wants_compaction` for deleted graphs (a listener's call: see ``_apply_one``)."""
        floor, g_dead = self.compact_min, self._p.graph_garbage()
        return 0 <= floor < g_dead and g_dead > self._p.G.meta[1]
    @_locked
    def compact(self, graphs: bool = True) -> dict:
        """Drop what removed nodes and edges, deleted graphs (unless ``graphs=False``),
        and names and types nothing uses any more, still hold (see :attr:`compact_min`
        for when ``apply`` does it on its own).  Answers do not change; node and graph
        numbers (``radius_csr``, ``node_ids``, ``last_touched``) do, and the spatial
        index is built again (in the background when it was in use).  Returns how many
        of each were dropped: ``{"nodes", "edges", "strings", "types"[, "graphs"]}``."""
        return self._compact(graphs)

    def _compact(self, graphs: bool) -> dict:
        t0 = time.perf_counter()
        spatial_in_use = self._spatial.built or self._spatial._job is not None
        g_old = self._p.G
        dropped = self._p.compact(graphs=graphs)
        if graphs and self.last_touched.size:  # the last batch's graphs, renumbered (deleted ones gone)
            now = (self._gidx(k.tobytes()) for k in g_old.keys[self.last_touched])
            self.last_touched = np.array([g for g in now if g >= 0], np.int64)
        del g_old
        self.last_dirty = np.empty(0, np.int64)  # node numbers of before
        self._rebuild_indices()  # codes and numbers changed under the secondary and spatial indices
        if spatial_in_use:
            self._spatial.start_build(self._p.N)
        self.compactions += 1
        self._types_kept = len(self._p.types)
        self.last_compaction = dict(dropped, version=self.version, seconds=time.perf_counter() - t0)
        return dropped

    @_locked
    def _apply_columns(self, cols: EventColumns) -> ApplyResult:
        """:meth:`apply` for the decoder's :class:`EventColumns` (the service's fast path)."""
        if cols.n == 0:
            return ApplyResult(0, 0, 0, self.version)
        return self._apply_one(cols)

    @_locked
    def _apply_at(self, data, seq: int) -> ApplyResult:
        """Apply every row of ``data`` as the one stream message at sequence ``seq``.

        Used for Arrow batch messages consumed from JetStream: the rows share the
        message's sequence.  Nothing is applied when ``seq <= version``
        (redelivery); afterwards the version is ``seq``.
        """
        batches = [normalize_batch(b) for b in _batches_of(data)]
        n = sum(b.num_rows for b in batches)
        if seq <= self.version:
            return ApplyResult(0, 0, n, self.version, np.full(n, 1, np.int8), np.full(n, seq, np.uint64))
        batches = [b.set_column(0, "seq", null_array(pa.uint64(), b.num_rows)) for b in batches]
        res = self.apply(batches)
        self._p.version = int(seq)
        res.version = int(seq)
        return res

    @_locked
    def _apply_messages(self, messages) -> ApplyResult:
        """Apply consecutive stream messages ``[(batches, seq), ...]`` (seq increasing) in one
        kernel call, with exactly the outcome of :meth:`_apply_at` on each in turn: a message
        with ``seq <= version`` is skipped whole, the rest apply in order, and the version
        ends at the last applied message's seq."""
        v = self.version
        total = None
        fresh, last = [], None
        for batches, seq in messages:
            batches = [normalize_batch(b) for b in _batches_of(batches)]
            if seq <= v:
                n = sum(b.num_rows for b in batches)
                r = ApplyResult(0, 0, n, v, np.full(n, 1, np.int8), np.full(n, seq, np.uint64))
                total = r if total is None else total + r
                continue
            fresh += [b.set_column(0, "seq", null_array(pa.uint64(), b.num_rows)) for b in batches]
            last = v = int(seq)
        if fresh:
            table = pa.Table.from_batches(fresh, schema=fresh[0].schema).combine_chunks()
            res = self.apply(table)
            self._p.version = last
            res.version = last
            total = res if total is None else total + res
        if total is None:
            total = ApplyResult(0, 0, 0, self.version)
        total.version = self.version
        return total

    def _advance_to(self, seq: int) -> None:
        """Move the version to ``seq`` (events up to it were consumed, some dead-lettered)."""
        if seq > self._p.version:
            self._p.version = int(seq)

    def _on_apply(self, fn) -> None:
        """Register ``fn(touched_graphs, dirty_nodes)`` called after each kernel call."""
        self._listeners.append(fn)

    def _reindex(self, touched: np.ndarray) -> None:
        G = self._p.G
        if self._name_of.shape[0] < G.alive.shape[0]:
            grow = G.alive.shape[0] - self._name_of.shape[0]
            self._name_of = np.concatenate([self._name_of, np.full(grow, _NOT_INDEXED, np.int32)])
            self._created_of = np.concatenate(
                [self._created_of, np.full(grow, _NO_TIME, np.int64)])
        if touched.size == 0:
            return
        changed, moved = kp.index_changes(G.alive, G.name, G.created, self._name_of, self._created_of,
                                          touched, _NOT_INDEXED, _NO_TIME)
        # by name
        for g in touched[changed].tolist():
            old = int(self._name_of[g])
            if old != _NOT_INDEXED:
                s = self._by_name.get(old)
                if s is not None:
                    s.discard(g)
                    if not s:
                        del self._by_name[old]
            new = int(G.name[g]) if G.alive[g] else _NOT_INDEXED
            if new != _NOT_INDEXED:
                self._by_name.setdefault(new, set()).add(g)
            self._name_of[g] = new
        # by creation date: append new (g, created) pairs, drop stale ones lazily
        if moved.size:
            tm = touched[moved]
            alive = G.alive[tm].astype(bool)
            created = np.where(alive, G.created[tm], _NO_TIME)
            self._cr_stale += int(np.count_nonzero(self._created_of[tm] != _NO_TIME))
            self._created_of[tm] = created
            if alive.any():
                nt, ng = created[alive], tm[alive]
                o = np.lexsort((ng, nt))
                nt, ng = nt[o], ng[o]
                at = np.searchsorted(self._cr_t, nt, side="right")
                self._cr_t = np.insert(self._cr_t, at, nt)
                self._cr_g = np.insert(self._cr_g, at, ng)
            if self._cr_stale > 1024 and self._cr_stale > self._cr_t.size // 2:
                keep = self._created_of[self._cr_g] == self._cr_t
                self._cr_t, self._cr_g = self._cr_t[keep], self._cr_g[keep]
                self._cr_stale = 0

    # -- read side --------------------------------------------------------------
    @_locked
    def totals(self) -> dict:
        """Live graphs, nodes and edges (deleted graphs excluded)."""
        return {
            "graphs": int(self._p.G.meta[1]),
            "nodes": int(self._p.N.meta[1]),
            "edges": int(self._p.E.meta[1]),
        }

    def _gidx(self, graph_id) -> int:
        w0, w1 = words_of(graph_id)
        G = self._p.G
        g = kintern.lookup(G.slots, G.keys, G.owner, 0, w0, w1)
        if g < 0 or not G.alive[g]:
            return -1
        return int(g)

    def _summary_table(self, gidx: np.ndarray) -> pa.Table:
        G = self._p.G
        gidx = np.asarray(gidx, np.int64)
        return pa.Table.from_arrays(
            [
                words_to_fsb(G.keys[gidx]),
                self._p.strings.decode(G.name[gidx]),
                pa.array(G.ncount[gidx], pa.int64()),
                pa.array(G.ecount[gidx], pa.int64()),
                pa.array(G.created[gidx], pa.int64()).cast(TIME_TYPE),
                pa.array(G.lastmod[gidx], pa.int64()).cast(TIME_TYPE),
                pa.array(G.archived[gidx].astype(bool)),
            ],
            schema=SUMMARY_SCHEMA,
        )

    def _summary_rows(self, gidx: np.ndarray) -> list[dict]:
        """The summaries of graphs ``gidx`` as JSON-ready dicts (UUID and RFC 3339 text),
        built column-wise from the state arrays (no Arrow round trip: the service sends
        these after every batch)."""
        from ._queries import iso_texts_of, uuid_texts_of

        G = self._p.G
        gidx = np.asarray(gidx, np.int64)
        if gidx.size == 0:
            return []
        names = self._p.strings
        cols = (uuid_texts_of(G.keys[gidx]), [names.value(c) for c in G.name[gidx].tolist()],
                G.ncount[gidx].tolist(), G.ecount[gidx].tolist(), iso_texts_of(G.created[gidx]),
                iso_texts_of(G.lastmod[gidx]), G.archived[gidx].astype(bool).tolist())
        keys = SUMMARY_SCHEMA.names
        return [dict(zip(keys, row)) for row in zip(*cols)]

    def _summary_json(self, gidx) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`_summary_rows` as JSON text in one compiled pass: ``(data, ends)``, row
        ``j`` (an object and a comma) is ``data[ends[j - 1]:ends[j]]``; None when a time
        is outside the years 0..9999 (then :meth:`_summary_rows` says it).  The service
        sends this after every batch: the dicts cost ~5 µs a graph."""
        G = self._p.G
        gidx = np.ascontiguousarray(gidx, np.int64)
        offs, data = self._p.strings.json_values()
        out, ends, ok = kt.summary_rows_json(gidx, G.keys, G.name, G.ncount, G.ecount,
                                             G.created, G.lastmod, G.archived, offs, data)
        return (out, ends) if ok else None

    def _live_graphs(self) -> np.ndarray:
        G = self._p.G
        return np.flatnonzero(G.alive[: G.meta[0]])

    @_locked
    def graph_summaries(self) -> pa.Table:
        """One row per live graph (in first-seen order)."""
        return self._summary_table(self._live_graphs())

    @_locked
    def graph_summary(self, graph_id) -> dict | None:
        """The summary of one graph as a dict (``graph_id`` a ``uuid.UUID``), or None."""
        g = self._gidx(graph_id)
        if g < 0:
            return None
        G = self._p.G
        return {
            "graph_id": uuid.UUID(bytes=G.keys[g].tobytes()),
            "name": self._p.strings.value(int(G.name[g])),
            "node_count": int(G.ncount[g]),
            "edge_count": int(G.ecount[g]),
            "created_at": from_micros(G.created[g]),
            "last_modified": from_micros(G.lastmod[g]),
            "archived": bool(G.archived[g]),
        }

    @_locked
    def graphs_by_name(self, name: str) -> pa.Table:
        """Live graphs whose name is exactly ``name``."""
        return self._summary_table(self._graphs_by_name(name))

    # The _graphs_* methods give the graph indices a listing holds, in its order; the
    # NATS handlers build rows for the page they return only.

    def _graphs_by_name(self, name: str) -> np.ndarray:
        code = self._p.strings.get(name)
        return np.array(sorted(self._by_name.get(code, ())) if code >= 0 else [], np.int64)

    @_locked
    def graphs_created_between(self, start, end) -> pa.Table:
        """Live graphs with ``start <= created_at <= end``, oldest first.

        ``start``/``end``: datetimes (naive = UTC), dates, RFC 3339 text, numpy
        datetime64, pyarrow timestamp scalars (a summary's ``created_at``), or ints of
        µs since the epoch (the unit of ``occurred_at``)."""
        return self._summary_table(self._graphs_created_between(start, end))

    def _graphs_created_between(self, start, end) -> np.ndarray:
        a, b = to_micros(start), to_micros(end)
        i = np.searchsorted(self._cr_t, a, side="left")
        j = np.searchsorted(self._cr_t, b, side="right")
        t, g = self._cr_t[i:j], self._cr_g[i:j]
        keep = self._created_of[g] == t  # drop entries of deleted / re-created graphs
        return g[keep]

    def _by_count_sorted(self, gidx: np.ndarray) -> np.ndarray:
        G = self._p.G
        if gidx.size <= 1:
            return gidx
        k = G.keys[gidx]
        # node_count descending, then graph id bytes ascending (deterministic ties)
        be0 = k[:, 0].byteswap()
        be1 = k[:, 1].byteswap()
        o = np.lexsort((be1, be0, -G.ncount[gidx]))
        return gidx[o]

    @_locked
    def graphs_by_node_count(self, min_count: int, max_count: int) -> pa.Table:
        """Live graphs with ``min_count <= node_count <= max_count``, most nodes first."""
        return self._summary_table(self._graphs_by_node_count(min_count, max_count))

    def _graphs_by_node_count(self, min_count, max_count) -> np.ndarray:
        if min_count is None:
            min_count = 0
        min_count, max_count = min(int(min_count), _BIG), min(int(max_count), _BIG)
        if max_count < min_count or max_count < 0:
            return np.empty(0, np.int64)
        G = self._p.G
        start, stop = kp.count_range(G.lo, G.meta[2], max(min_count, 0), max_count)
        return self._by_count_sorted(G.order[start:stop].copy())

    @_locked
    def top_graphs_by_node_count(self, k: int) -> pa.Table:
        """The ``k`` live graphs with most nodes (ties broken by graph id)."""
        return self._summary_table(self._top_graphs_by_node_count(k))

    def _top_graphs_by_node_count(self, k) -> np.ndarray:
        k = int(k)
        if k < 0:
            raise ValueError("k must be >= 0")
        G = self._p.G
        L = int(G.meta[2])
        if k == 0 or L == 0:
            return np.empty(0, np.int64)
        k = min(k, L)
        # include every graph tied with the k-th, then break ties by id
        ck = int(G.ncount[G.order[k - 1]])
        _, stop = kp.count_range(G.lo, L, ck, ck)
        return self._by_count_sorted(G.order[:stop].copy())[:k]

    # -- nodes and edges -------------------------------------------------------------
    def _node_rows(self, nodes: np.ndarray) -> pa.Table:
        N, G = self._p.N, self._p.G
        pos = N.pos[nodes]
        return pa.Table.from_arrays(
            [words_to_fsb(N.keys[nodes]), words_to_fsb(G.keys[N.graph[nodes]]),
             self._p.strings.decode(N.label[nodes]), self._p.types.decode(N.ntype[nodes]),
             pa.array(pos[:, 0]), pa.array(pos[:, 1]), pa.array(pos[:, 2])],
            schema=_FIND_SCHEMA)

    @_locked
    def find_nodes(self, graph_id=None, *, node_type: str | None = None, name: str | None = None,
                   offset: int = 0, limit: int | None = None) -> pa.Table:
        """Live nodes (of one graph, with a given ``node_type`` and/or ``name``), in the order
        they were first seen (one removed, then added again after a :meth:`compact`, comes
        after those seen before its return): columns ``node_id``, ``graph_id``, ``name``, ``node_type``,
        ``x``, ``y``, ``z`` (NaN without a position).  ``offset``/``limit`` page the result."""
        return self._node_rows(self._node_page(graph_id, node_type, name, offset, limit)[0])

    def _node_page(self, graph_id, node_type, name, offset, limit) -> tuple[np.ndarray, int]:
        """``(indices, total)``: the page of :meth:`find_nodes` and how many it lists in all.
        Unfiltered, the page is found by a walk that stops at its end (the live count is
        kept), not by listing every live node first (~15 ms at 10M nodes)."""
        if graph_id is None and node_type is None and name is None:
            N = self._p.N
            return self._live_page(N.alive, int(N.meta[0]), offset, limit, False), int(N.meta[1])
        every = self._find_node_indices(graph_id, node_type, name)
        return _page(every, offset, limit), len(every)

    @staticmethod
    def _live_page(flags, n, offset, limit, edges) -> np.ndarray:
        offset, limit = _page_args(offset, limit)
        return kt.live_page(flags, n, offset, -1 if limit is None else limit, edges)

    def _find_node_indices(self, graph_id, node_type, name) -> np.ndarray:
        """The node indices :meth:`find_nodes` lists, in order (no rows built: a page's
        rows are built for that page only)."""
        N, G = self._p.N, self._p.G
        if graph_id is not None:
            g = self._gidx(graph_id)
            if g < 0:
                return np.empty(0, np.int64)
            nodes = np.empty(int(G.ncount[g]), np.int64)
            nodes = np.sort(nodes[: kt.graph_nodes(G.nhead, N.gnext, g, nodes)])
        else:
            nodes = np.flatnonzero(N.alive[: N.meta[0]])
        for value, pool, codes in ((node_type, self._p.types, N.ntype), (name, self._p.strings, N.label)):
            if value is not None:
                code = pool.get(value)
                nodes = nodes[codes[nodes] == code] if code >= 0 else nodes[:0]
        return nodes

    @_locked
    def find_edges(self, graph_id=None, *, edge_type: str | None = None, offset: int = 0,
                   limit: int | None = None) -> pa.Table:
        """Live edges (of one graph, with a given ``edge_type``), in the order they were
        first seen (as for :meth:`find_nodes`, a :meth:`compact` puts a re-added one last): columns ``edge_id``, ``graph_id``, ``source_id``, ``target_id``,
        ``weight`` (null when never given) and ``edge_type``.  ``offset``/``limit`` page
        the result.  The edges projection, as :meth:`find_nodes` is the nodes one."""
        return self._edge_rows(self._edge_page(graph_id, edge_type, offset, limit)[0])

    def _edge_page(self, graph_id, edge_type, offset, limit) -> tuple[np.ndarray, int]:
        """``(indices, total)`` of :meth:`find_edges`, as :meth:`_node_page`."""
        if graph_id is None and edge_type is None:
            E = self._p.E
            return self._live_page(E.src, int(E.meta[0]), offset, limit, True), int(E.meta[1])
        every = self._find_edge_indices(graph_id, edge_type)
        return _page(every, offset, limit), len(every)

    def _find_edge_indices(self, graph_id, edge_type) -> np.ndarray:
        """The edge indices :meth:`find_edges` lists, in order (no rows built)."""
        N, E, G = self._p.N, self._p.E, self._p.G
        if graph_id is not None:
            # the graph's own edges, from its nodes' incident lists (not a scan of every
            # edge slot), back in first-seen order
            g = self._gidx(graph_id)
            edges = np.empty(int(G.ecount[g]) if g >= 0 and G.alive[g] else 0, np.int64)
            if edges.shape[0]:
                edges = np.sort(edges[: kt.graph_edges(G.nhead, N.gnext, N.ihead, E.hnext, g, edges)])
        else:
            edges = np.flatnonzero(E.src[: int(E.meta[0])] >= 0)
        if edge_type is not None:
            code = self._p.types.get(edge_type)
            edges = edges[E.etype[edges] == code] if code >= 0 else edges[:0]
        return edges

    def _edge_rows(self, edges: np.ndarray) -> pa.Table:
        N, E, G = self._p.N, self._p.E, self._p.G
        s, d = E.src[edges], E.dst[edges]
        w = E.weight[edges].astype(np.float64)
        return pa.Table.from_arrays(
            [words_to_fsb(E.keys[edges]), words_to_fsb(G.keys[N.graph[s]]), words_to_fsb(N.keys[s]),
             words_to_fsb(N.keys[d]), pa.array(w, mask=np.isnan(w)), self._p.types.decode(E.etype[edges])],
            schema=_EDGE_SCHEMA)

    def _nodes_of(self, node_id, graph_id=None) -> np.ndarray:
        N = self._p.N
        w0, w1 = words_of(node_id)
        if graph_id is not None:
            g = self._gidx(graph_id)
            if g < 0:
                return np.empty(0, np.int64)
            v = kintern.lookup(N.slots, N.keys, N.graph, g, w0, w1)
            return np.array([v] if v >= 0 and N.alive[v] else [], np.int64)
        m, ng = int(N.meta[0]), int(self._p.G.meta[0])
        if 4 * ng < m:  # one lookup a graph is cheaper than reading every node's id
            G = self._p.G
            out = np.empty(ng, np.int64)
            return np.sort(out[: kt.nodes_by_id(G.alive, ng, N.slots, N.keys, N.graph, N.alive,
                                                np.uint64(w0), np.uint64(w1), out)])
        keys = N.keys[:m]
        return np.flatnonzero((keys[:, 0] == w0) & (keys[:, 1] == w1) & N.alive[:m].astype(bool))

    @_locked
    def neighbors(self, node_id, *, graph_id=None) -> pa.Table:
        """Edges at a live node (in every graph holding that node id, or in ``graph_id``):
        columns ``node_id`` (the node at the other end), ``graph_id``, ``edge_id``,
        ``direction`` ("out" when the node is the edge's source, else "in"), ``weight``,
        ``edge_type``.  A self-loop appears twice (out and in)."""
        N, E, G = self._p.N, self._p.E, self._p.G
        parts = []
        for v in self._nodes_of(node_id, graph_id):
            k = kt.degree(N.ihead, E.hnext, v)
            edges = np.empty(k, np.int64)
            others = np.empty(k, np.int64)
            out = np.empty(k, np.bool_)
            kt.incident(N.ihead, E.hnext, E.src, E.dst, v, edges, others, out)
            parts.append((edges, others, out))
        edges = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
        others = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
        out = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.bool_)
        order = np.argsort(edges * 2 + ~out, kind="stable")  # by edge, "out" before "in"
        edges, others, out = edges[order], others[order], out[order]
        w = E.weight[edges].astype(np.float64)
        return pa.Table.from_arrays(
            [words_to_fsb(N.keys[others]), words_to_fsb(G.keys[N.graph[E.src[edges]]]), words_to_fsb(E.keys[edges]),
             pa.array(np.where(out, "out", "in").tolist(), pa.utf8()),
             pa.array(w, mask=np.isnan(w)), self._p.types.decode(E.etype[edges])],
            schema=_NEIGHBOR_SCHEMA)

    # -- spatial queries ----------------------------------------------------------
    def _gsel(self, graph_id) -> int:
        """Graph filter for the kernels: -1 for none; -2 (matches nothing) for an unknown graph."""
        if graph_id is None:
            return -1
        g = self._gidx(graph_id)
        return g if g >= 0 else -2

    def _grids(self):
        self._spatial.ready(self._p.N)
        return self._spatial.main, self._spatial.delta

    def _pair(self):
        """The grids as one kernel argument, for the few-query paths (see GridPair)."""
        self._spatial.ready(self._p.N)
        return self._spatial.pair()

    def _node_table(self, query, nodes, dist=None, offsets=None) -> pa.Table:
        """``query``: the query number per row, or None with CSR ``offsets`` to derive it."""
        N, G = self._p.N, self._p.G
        nodes = _checked_nodes(nodes, N)
        m = nodes.shape[0]
        gather = kt.gather_ids if m >= 8192 else kt.gather_ids_serial
        q, nid, gid = _answer_block(m)
        if query is not None:  # given: copied in, and no offsets to derive it from
            q[:] = query
            offsets = np.zeros(1, np.int64)
        gather(N.keys, N.graph, G.keys, nodes, q, offsets, nid, gid)
        return _ids_table(q, nid, gid, dist)

    def _first_rows_json(self, offsets, limits, idx) -> tuple[np.ndarray, bytes]:
        """``(kept, rows)``: ``{"node_id":"..","graph_id":".."},`` (fixed width,
        ``kernels.traverse.ROW_LEN``: a run of rows is a slice) for the first ``limits[j]``
        hits of each query j of a CSR answer; query j's rows are ``kept[j]:kept[j + 1]``."""
        N, G = self._p.N, self._p.G
        kept, rows, ok = kt.first_hits_json(offsets, limits, idx, N.keys, N.graph, G.keys, int(N.meta[0]))
        if not ok:
            raise RuntimeError("internal error: node number out of range in an answer")
        return kept, rows.tobytes()

    @_locked
    def nodes_within(self, centers, radius, *, graph_id=None, return_distance=False, sort=False,
                     count_only=False):
        """Live nodes within ``radius`` (boundary included) of each center.

        ``centers``: (n, 3) array-like or one point; ``radius``: scalar or one per center.
        Returns a table (``query``, ``node_id``, ``graph_id`` [, ``distance``]) grouped by
        query in query order (by distance within a query when ``sort``), or with
        ``count_only`` an int64 array of counts per center.
        """
        if count_only and (return_distance or sort):
            raise ValueError("count_only cannot be combined with return_distance or sort")
        c = _centers(centers)
        r = _radii(radius, c.shape[0])
        gsel = self._gsel(graph_id)
        if count_only:
            return self._radius_counts(c, r, gsel)
        if c.shape[0] <= _SERIAL_BELOW:  # search and gather in one call (see radius_rows)
            gp = self._pair()
            N, G = self._p.N, self._p.G
            w = ks.radius_rows(gp, c, r, gsel, bool(sort), bool(return_distance), N.keys, N.graph, G.keys)
            return _packed_table(w, bool(return_distance))
        # a batch: answer in grid slots and gather the ids in grid order (see slot_view)
        self._spatial.ready(self._p.N)
        ms, ds, mk, dk = self._spatial.slot_view(self._p.N)
        offsets, slots, d2 = self._radius_batch(ms, ds, c, r, gsel, sort, scratch=True)
        m = slots.shape[0]
        query, nid, gid, *dist = _answer_block(m, return_distance)
        kt.gather_slot_ids(mk, ms.grp, dk, ds.grp, ms.pts.shape[0], self._p.G.keys, slots, query, offsets, nid, gid)
        return _ids_table(query, nid, gid, np.sqrt(d2, out=dist[0]) if return_distance else None)

    @_locked
    def radius_csr(self, centers, radius, *, graph_id=None, sort=False, count_only=False):
        """Low-level radius query: ``(offsets, node_index, squared_distance)`` in CSR form.

        Node indices are the engine's dense node numbers (see :meth:`node_ids`), valid
        until the next ``apply`` (a compaction renumbers them: see :meth:`compact`);
        query ``j``'s answers are ``node_index[offsets[j]:offsets[j + 1]]``.  No
        per-answer Python objects: this is what the table API wraps.
        """
        c = _centers(centers)
        r = _radii(radius, c.shape[0])
        return self._radius(c, r, self._gsel(graph_id), sort, count_only)

    @_locked  # (the service's radius replies call it directly: it uses the engine's scratch)
    def _radius(self, c, r, gsel, sort, count_only):
        if count_only:
            offsets = np.zeros(c.shape[0] + 1, np.int64)
            np.cumsum(self._radius_counts(c, r, gsel), out=offsets[1:])
            return offsets, None, None
        if c.shape[0] <= _SERIAL_BELOW:  # a few queries: one serial call on the grid pair
            return ks.radius_small(self._pair(), c, r, gsel, bool(sort))
        main, delta = self._grids()
        return self._radius_batch(main, delta, c, r, gsel, sort)

    def _radius_counts(self, c, r, gsel) -> np.ndarray:
        """Hits per center (no offsets: their cumsum and np.diff back cost ~8 µs, more
        than a single query's search)."""
        if c.shape[0] <= _SERIAL_BELOW:
            return ks.radius_count_serial(self._pair(), c, r, gsel)
        main, delta = self._grids()
        return ks.radius_count(main, delta, c, r, gsel, _query_order(c, main))

    def _radius_batch(self, main, delta, c, r, gsel, sort, scratch=False):
        """``(offsets, node slots or indices, squared distances)``; with ``scratch`` the
        last two are views of this thread's reused buffers (for a caller that builds its
        answer from them and drops them)."""
        offsets = np.zeros(c.shape[0] + 1, np.int64)
        order = _query_order(c, main)
        # small radii: the counting walk keeps up to k hits a query, and the fill copies
        # those instead of walking the cells again (k x 16 bytes a query of scratch)
        k = int(min(_KEEP_MAX, max(2, _KEEP_BUDGET // c.shape[0])))
        keep_i, keep_d = self._keep_buffers(c.shape[0] * k)
        counts, kept = ks.radius_count_keep(main, delta, c, r, gsel, order, keep_i, keep_d, k)
        np.cumsum(counts, out=offsets[1:])
        m = int(offsets[-1])
        if scratch and m <= _FILL_SCRATCH_MAX:
            idx, d2 = self._fill_buffers(m)
        else:
            idx, d2 = np.empty(m, np.int64), np.empty(m, np.float64)
        ks.radius_fill_kept(main, delta, c, r, gsel, offsets, bool(sort), order, kept, keep_i, keep_d, k, idx, d2)
        return offsets, idx[:m], d2[:m]

    def _scratch_arrays(self, name: str, n: int, dtypes, *, rows: int = 0, grow: float = 1.0,
                        cap: int | None = None):
        """Arrays of ``dtypes``, at least ``n`` long (``(rows, n)`` with ``rows``), kept by
        the engine under ``name`` and reused: a fresh array's pages are faulted in one by
        one on every call, often costing more than the work done in them.  When short
        they are replaced, ``grow`` times the old length if that is more, at most ``cap``.
        One set an engine, not one a calling thread: the calls using them hold the
        engine's lock (they were per thread before it, each thread keeping its own)."""
        buf = getattr(self._scratch, name, None)
        if buf is None or buf[0].shape[-1] < n or (rows and buf[0].shape[0] < rows):
            if buf is not None:
                n = max(n, int(grow * buf[0].shape[-1]))
            if cap is not None:
                n = min(n, cap)
            shape = (rows, n) if rows else n
            buf = tuple(np.empty(shape, dt) for dt in dtypes)
            setattr(self._scratch, name, buf)
        return buf

    def _fill_buffers(self, n: int):
        """A batch's hits on their way into a table (see :meth:`_radius_batch`)."""
        return self._scratch_arrays("fill", n, (np.int64, np.float64), grow=1.5, cap=_FILL_SCRATCH_MAX)

    def _keep_buffers(self, n: int):
        """radius_csr's kept hits (fresh pages cost ~1 ms for 10k queries, more than the
        copy they save)."""
        return self._scratch_arrays("keep", n, (np.int64, np.float64))

    def _knn_buffers(self, parallel: bool = False):
        """kNN candidate scratch, room for every indexed point (only the pages queries
        touch become resident); ``parallel``: a row per worker thread (numba's thread ids
        are below ``NUMBA_NUM_THREADS``)."""
        sp = self._spatial
        n = sp.main.pts.shape[0] + sp.delta.pts.shape[0] + 1
        rows = numba.config.NUMBA_NUM_THREADS if parallel else 0
        return self._scratch_arrays("knn_par" if parallel else "knn", n, (np.float64, np.int64, np.float64),
                                    rows=rows, grow=2.0)

    @_locked
    def node_ids(self, node_index) -> pa.Array:
        """``fixed_size_binary(16)`` node ids for dense node indices (as
        :meth:`radius_csr` and :meth:`nearest_indices` give them)."""
        idx = np.asarray(node_index)
        if idx.dtype.kind not in "iu" and idx.size:  # (an empty list is float64 to numpy)
            raise ValueError(f"node indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        n = int(self._p.N.meta[0])
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"node indices must be in [0, {n}): the engine's node numbers")
        return words_to_fsb(self._p.N.keys[idx])

    @_locked
    def nearest(self, centers, k, *, graph_id=None) -> pa.Table:
        """The ``k`` nearest live nodes to each center (fewer when fewer exist), nearest first."""
        c, k, gsel = self._knn_args(centers, k, graph_id)
        if c.shape[0] <= _SERIAL_BELOW:  # search and gather in one call (see knn_rows)
            gp = self._pair()
            N, G = self._p.N, self._p.G
            return _packed_table(ks.knn_rows(gp, c, k, gsel, *self._knn_buffers(), N.keys, N.graph, G.keys), True)
        counts, idx, dist = self._knn(c, k, gsel)
        k = idx.shape[1]
        offsets = np.zeros(counts.shape[0] + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        if offsets[-1] == idx.size:  # every query found k: the rows are already in CSR order
            return self._node_table(None, idx.reshape(-1), dist.reshape(-1), offsets)
        mask = np.arange(k)[None, :] < counts[:, None]
        return self._node_table(None, idx[mask], dist[mask], offsets)

    @_locked
    def nearest_indices(self, centers, k, *, graph_id=None):
        """Low-level kNN: ``(counts, node_index (n, k'), distance (n, k'))`` with
        ``k' = min(k, live nodes)``; row j's first ``counts[j]`` entries are its nearest,
        ascending (ties by node index), the rest -1 / inf.  The peer of cKDTree.query."""
        return self._knn(*self._knn_args(centers, k, graph_id))

    def _knn_args(self, centers, k, graph_id):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        c = _centers(centers)
        gsel = self._gsel(graph_id)
        return c, int(min(k, max(1, int(self._p.N.meta[1])))), gsel

    def _knn(self, c, k, gsel):
        if c.shape[0] <= _SERIAL_BELOW:
            gp = self._pair()
            counts, idx, d2 = ks.knn_serial(gp, c, k, gsel, *self._knn_buffers())
        else:
            main, delta = self._grids()
            counts, idx, d2 = ks.knn(main, delta, c, k, gsel, _query_order(c, main), *self._knn_buffers(parallel=True))
        return counts, idx, np.sqrt(d2, out=d2)

    @_locked
    def nodes_in_box(self, lo, hi, *, graph_id=None) -> pa.Table:
        """Live nodes with ``lo <= position <= hi`` on every axis."""
        lo, hi, gsel = self._box_args(lo, hi, graph_id)
        gp = self._pair()
        N, G = self._p.N, self._p.G
        return _packed_table(ks.box_rows(gp, lo, hi, gsel, N.keys, N.graph, G.keys), False, with_query=False)

    def _box_page(self, lo, hi, graph_id, limit: int) -> tuple[pa.Table, int]:
        """``(table, total)``: the first ``limit`` rows :meth:`nodes_in_box` would give, and
        how many it would give, with the ids of those rows only gathered (the service's
        capped replies)."""
        lo, hi, gsel = self._box_args(lo, hi, graph_id)
        gp = self._pair()
        N, G = self._p.N, self._p.G
        w, total = ks.box_rows_first(gp, lo, hi, gsel, int(limit), N.keys, N.graph, G.keys)
        return _packed_table(w, False, with_query=False), int(total)

    def _box_args(self, lo, hi, graph_id):
        lo = _point(lo, "lo")
        hi = _point(hi, "hi")
        if (lo > hi).any():
            raise ValueError("box lo must be <= hi on every axis")
        return lo, hi, self._gsel(graph_id)

    # -- snapshot hooks -----------------------------------------------------------
    @_locked
    def snapshot(self, path) -> str:
        """Write every projection array and the version to an Arrow IPC file, atomically."""
        from ._snapshot import write_snapshot

        return write_snapshot(self, str(path))

    @classmethod
    def from_snapshot(cls, path) -> "Engine":
        """An engine restored from :meth:`snapshot`'s file (checksums verified)."""
        from ._snapshot import load_engine

        return load_engine(str(path))

    def _snapshot_state(self) -> dict:
        """The projection's state for a snapshot, plus whether this engine keeps a spatial
        index (the index itself is rebuilt from the nodes, not stored)."""
        st = self._p.state()
        st["spatial"] = bool(self._spatial.built or self._spatial._job is not None)
        return st

    def _rebuild_indices(self) -> None:
        self._spatial = SpatialIndex()
        G = self._p.G
        self._name_of = np.full(G.alive.shape[0], _NOT_INDEXED, np.int32)
        self._created_of = np.full(G.alive.shape[0], _NO_TIME, np.int64)
        self._by_name, self._cr_t, self._cr_g, self._cr_stale = {}, np.empty(0, np.int64), np.empty(0, np.int64), 0
        self._reindex(np.arange(G.meta[0], dtype=np.int64))


_KEEP_MAX = 64  # radius hits a query kept by the counting pass (see radius_csr)
_KEEP_BUDGET = 1 << 20  # ... and at most this many over a batch (16 MiB of scratch a thread)
_FILL_SCRATCH_MAX = 1 << 22  # hits a thread keeps scratch for on their way into a table (64 MiB);
# a bigger answer gets fresh buffers
_SERIAL_BELOW = 64  # query batches this small run on the calling thread (a parallel launch
# costs tens of microseconds; the service's batches of concurrent requests are this size)
_NODE_SCHEMA = pa.schema([("query", pa.int64()), ("node_id", UUID_TYPE), ("graph_id", UUID_TYPE)])
_BOX_SCHEMA = pa.schema([("node_id", UUID_TYPE), ("graph_id", UUID_TYPE)])
_FIND_SCHEMA = pa.schema([("node_id", pa.binary(16)), ("graph_id", pa.binary(16)), ("name", pa.utf8()),
                          ("node_type", pa.utf8()), ("x", pa.float64()), ("y", pa.float64()), ("z", pa.float64())])
_NEIGHBOR_SCHEMA = pa.schema([("node_id", pa.binary(16)), ("graph_id", pa.binary(16)), ("edge_id", pa.binary(16)),
                              ("direction", pa.utf8()), ("weight", pa.float64()), ("edge_type", pa.utf8())])
_EDGE_SCHEMA = pa.schema([("edge_id", pa.binary(16)), ("graph_id", pa.binary(16)), ("source_id", pa.binary(16)),
                          ("target_id", pa.binary(16)), ("weight", pa.float64()), ("edge_type", pa.utf8())])
_NODE_SCHEMA_D = _NODE_SCHEMA.append(pa.field("distance", pa.float64()))


def _answer_block(m: int, with_distance: bool = False):
    """Unfilled columns for an answer table of ``m`` rows, in one allocation: ``query``
    (int64), node and graph id words (``(m, 2)`` uint64) [, ``distance`` (float64)].
    One block, not three or four arrays: NumPy asks for transparent huge pages behind
    an allocation of 4 MB or more, and fresh smaller arrays were faulted in 4 KiB at a
    time (~2,600 faults for 300k rows, as long as gathering the ids)."""
    block = np.empty((6 if with_distance else 5) * m, np.uint64)
    cols = [block[:m].view(np.int64), block[m:3 * m].reshape(m, 2), block[3 * m:5 * m].reshape(m, 2)]
    if with_distance:
        cols.append(block[5 * m:].view(np.float64))
    return cols


def _ids_table(query, nid, gid, dist=None) -> pa.Table:
    """The answer table from query numbers, node and graph id words [, distances]."""
    arrays = [pa.array(np.asarray(query, np.int64)), words_to_fsb(nid), words_to_fsb(gid)]
    if dist is None:
        return pa.Table.from_arrays(arrays, schema=_NODE_SCHEMA)
    arrays.append(pa.array(np.asarray(dist, np.float64)))
    return pa.Table.from_arrays(arrays, schema=_NODE_SCHEMA_D)


_I64 = pa.int64()
_F64 = pa.float64()


def _packed_table(w, with_distance, with_query=True) -> pa.Table:
    """The answer table over the packed columns of :func:`kernels.spatial._pack_rows`,
    zero-copy (the table keeps ``w`` alive)."""
    m = w.shape[0] // (6 if with_distance else 5)
    buf = pa.py_buffer(w)
    cols = [pa.Array.from_buffers(UUID_TYPE, m, [None, buf.slice(8 * m, 16 * m)], null_count=0),
            pa.Array.from_buffers(UUID_TYPE, m, [None, buf.slice(24 * m, 16 * m)], null_count=0)]
    if with_query:
        cols.insert(0, pa.Array.from_buffers(_I64, m, [None, buf.slice(0, 8 * m)], null_count=0))
    if with_distance:
        cols.append(pa.Array.from_buffers(_F64, m, [None, buf.slice(40 * m, 8 * m)], null_count=0))
    schema = (_NODE_SCHEMA_D if with_distance else _NODE_SCHEMA) if with_query else _BOX_SCHEMA
    return pa.Table.from_arrays(cols, schema=schema)  # (~3 µs less than via a RecordBatch)


def _page(rows: np.ndarray, offset, limit) -> np.ndarray:
    """``rows[offset:offset + limit]`` (all from ``offset`` without a limit)."""
    offset, limit = _page_args(offset, limit)
    return rows[offset: None if limit is None else offset + limit]


_BIG = 2**62  # past any table's size, and an int64 for the kernels (10**30 made them fail to type)


def _page_args(offset, limit) -> tuple[int, int | None]:
    offset = int(offset)
    if offset < 0 or (limit is not None and int(limit) < 0):
        raise ValueError("offset and limit must be >= 0")
    return min(offset, _BIG), None if limit is None else min(int(limit), _BIG)


def _query_order(c, main) -> np.ndarray:
    """The order a parallel kernel visits a batch of centers in: by cell, for cache reuse."""
    if main.pts.shape[0] == 0:
        return np.arange(c.shape[0], dtype=np.int64)
    return ks.query_order(c, main.origin, float(main.h[0]), main.lim)


def _centers(centers) -> np.ndarray:
    if type(centers) is np.ndarray and centers.shape == (3,) and centers.dtype == np.float64:
        # one point, the common single query: three float checks instead of two ufunc calls
        x, y, z = centers.tolist()
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
            raise ValueError("centers must be finite (no NaN or inf)")
        if centers.flags.c_contiguous and centers.flags.writeable:
            return centers.reshape(1, 3)
        return np.array([[x, y, z]])
    try:
        c = np.asarray(centers, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("centers must be numbers: one (x, y, z) or an (n, 3) array") from None
    if c.ndim == 1:
        c = c.reshape(1, -1)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"centers must have shape (3,) or (n, 3), got {np.shape(centers)}")
    if not np.isfinite(c).all():
        raise ValueError("centers must be finite (no NaN or inf)")
    return _kernel_array(c)


def _kernel_array(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous, writeable array, copied only when it is not one already.
    A kernel compiles one machine-code version per array type, and a read-only (e.g. a
    zero-copy view of Arrow data) or strided array is another type: without this, such
    an argument would compile the query kernels again, for minutes, on the first call."""
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C")


def _radii(radius, n) -> np.ndarray:
    if isinstance(radius, (float, int)) and not isinstance(radius, bool):  # the common case, cheaply
        r = float(radius)
        if not math.isfinite(r):
            raise ValueError("radius must be finite (no NaN or inf)")
        if r < 0:
            raise ValueError("radius must be >= 0")
        return np.full(n, r)
    if isinstance(radius, (bool, np.bool_, str, bytes)) or np.asarray(radius).dtype.kind not in "iuf":
        raise ValueError(f"radius must be a number or one number per center, got {type(radius).__name__}")
    try:
        r = np.asarray(radius, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("radius must be a number or one number per center") from None
    if r.ndim == 0:
        r = np.full(n, float(r))
    if r.shape != (n,):
        raise ValueError(f"radius must be a scalar or have one value per center ({n}), got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("radius must be finite (no NaN or inf)")
    if (r < 0).any():
        raise ValueError("radius must be >= 0")
    return _kernel_array(r)


def _point(p, name) -> np.ndarray:
    try:
        a = np.asarray(p, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 numbers") from None
    if a.shape != (3,):
        raise ValueError(f"{name} must be 3 numbers, got shape {np.shape(p)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return _kernel_array(a)


def read_events(path) -> pa.Table:
    """Events from a file, in EVENT_SCHEMA: Parquet (a file, or a directory of them, read
    in name order), Arrow IPC (file or stream), or JSON Lines (one CIM JSON event a line,
    any wire form of :func:`decode_json`; an event without a time gets the file's
    modification time).  A JSON line that does not decode is a
    ``ValueError`` naming the line and the reason (``decode_json`` itself returns the
    good rows and the errors, to keep what can be kept)."""
    import os

    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    from ._schema import EVENT_SCHEMA

    path = os.fspath(path)
    if os.path.isdir(path):
        table = pq.read_table(path)
    else:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        text = head.removeprefix(b"\xef\xbb\xbf").lstrip()  # (a UTF-8 byte order mark: decode_json drops it)
        if head[:4] == b"PAR1":
            table = pq.read_table(path)
        elif head[:6] == b"ARROW1":
            with pa.memory_map(path) as src:
                table = ipc.open_file(src).read_all()
        elif text[:1] == b"{" or not text:
            return _json_lines(path)
        else:
            try:
                with pa.memory_map(path) as src:
                    table = ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                raise ValueError(f"{path}: not a Parquet, Arrow IPC or JSON Lines file") from None
        try:  # an IPC file's offsets and UTF-8 are taken as written: check them before kernels read them
            table.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise ValueError(f"{path}: damaged Arrow data ({exc})") from None
    batches = [normalize_batch(b) for b in table.to_batches()]
    return pa.Table.from_batches(batches, schema=EVENT_SCHEMA)


def _json_lines(path: str) -> pa.Table:
    """A JSON Lines file's events; an event without a time gets the file's modification
    time (the same on every read, where the wall clock would differ)."""
    import os

    from ._decode import decode_json

    with open(path, "rb") as fh:
        lines = fh.read().splitlines()
        mtime_us = os.fstat(fh.fileno()).st_mtime_ns // 1000
    number = [i + 1 for i, line in enumerate(lines) if line.strip()]  # 1-based, blank lines skipped
    batch, errors = decode_json([lines[i - 1] for i in number], received_at=mtime_us)
    if errors:
        e = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValueError(f"{path}: line {number[e.index]}: {e.reason}{more}")
    return pa.Table.from_batches([batch])

