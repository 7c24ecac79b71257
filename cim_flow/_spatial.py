"""The spatial index the Engine keeps over its live, positioned nodes.

Built lazily on the first spatial query, then kept current after every
``apply``: nodes that moved, appeared or died leave the main grid (their
entries become NaN) and join a small delta grid, which is patched in place
(each of its cells has room for a few more points) or, when a cell is full,
rebuilt by the next query; a new main grid is built on a background thread
and adopted when done (see :class:`SpatialIndex` for when).  Queries always
see exactly the state after the last applied batch.
"""
from __future__ import annotations

import concurrent.futures
import math
import sys
import time
from typing import NamedTuple

import numba
import numpy as np

from kernels import spatial as ks

TARGET_OCCUPANCY = 8.0
ZR_KEEP_FILL = 0.75  # a grid keeps its columns' z ranges when they span less than this of its height on average


_NO_ZR = np.zeros((0, 2), np.int32)
_NO_TABLE = dict(tkeys=np.full(1, ks.EMPTY, np.uint64), tstart=np.zeros(1, np.int32),
                 tcount=np.zeros(1, np.int32), cells=np.zeros(0, np.int32))


def _dense_run_shift(m: int, ncell: int) -> int:
    """log2 of the cells in a run a dense build sorts at a time (see kernels.spatial):
    small enough that a run's cell counters (4 B a cell) and rows (32 B a point) stay in
    a core's L2, at most _RUN_CELLS cells and about _RUN_POINTS points."""
    cells = min(_RUN_CELLS, max(1, ncell * _RUN_POINTS // max(m, 1)))
    return max(0, cells.bit_length() - 1)


_RUN_CELLS = 65536
_RUN_POINTS = 16384
# above this many cells (16 MB of counters) the two-pass build wins: measured on 1M points,
# 8M cells (clustered) 1.34x faster; 130k cells (uniform) 0.75x, so the plain one there
_RUNS_ABOVE_CELLS = 4_000_000
_RUNS_MIN_POINTS = 65536
_SERIAL_DELTA_BELOW = 65536  # delta grids this small are built on the calling thread (no parallel launch:
# under load its worker may wait for a core, and a serial build of 20k points takes ~0.4 ms)
# and with room to grow in place: an occupied cell of k points gets min(2 + k, 128) free
# entries that later batches fill (kernels.spatial.grid_build_dense_slack, delta_update)
DELTA_SLACK_MIN = 2
DELTA_SLACK_MAX = 128


def _empty_grid():
    return ks.Grid(
        origin=np.zeros(3), h=np.ones(1), lim=np.zeros(3, np.int64), dims=np.ones(3, np.int64),
        dst=np.zeros(0, np.int32), nstale=np.zeros(0, np.uint8), zr=_NO_ZR,
        pts=np.zeros((0, 3)), idx=np.zeros(0, np.int32), grp=np.zeros(0, np.int32), **_NO_TABLE)


def _dense_dims(lo, hi, h, m: int):
    """Cells per axis of a dense grid over the box [lo, hi] with cell size ``h`` for ``m``
    points, or None when it would have more than DENSE_CELLS_PER_POINT cells a point
    (then the grid is hashed).  In Python floats (the same IEEE doubles): the numpy
    version's small-array calls took ~27 µs, a third of a small delta's rebuild."""
    dims = []
    for a, b in zip(np.asarray(lo, np.float64).tolist(), np.asarray(hi, np.float64).tolist()):
        span = (b - a) / h
        if not (math.isfinite(span) and span < ks._LIM):
            return None
        dims.append(int(math.floor(span)) + 1)
    if float(dims[0]) * dims[1] * dims[2] > ks.DENSE_CELLS_PER_POINT * m + 4096:
        return None
    return np.array(dims, np.int64)


def _zranges(dst, dims, serial: bool):
    """:attr:`Grid.zr` of a dense grid when its columns are tall and mostly empty in z
    (clustered data), else none: where points fill every column (uniform data) the
    checks never skip a thing."""
    if dims[2] < ks.ZR_MIN_Z:
        return _NO_ZR
    zr = ks.column_zrange_serial(dst, dims) if serial else ks.column_zrange(dst, dims)
    if float(np.maximum(zr[:, 1] - zr[:, 0] + 1, 0).mean()) > ZR_KEEP_FILL * float(dims[2]):
        return _NO_ZR
    return zr


def choose_cell_size(pos, nodes, lo, hi) -> float:
    """Cell size giving about TARGET_OCCUPANCY points per occupied cell.

    Starts from the bounding box, then corrects for clustering with occupancy
    probes on a 1/8 subsample at twice the cell size (same expected points per
    cell as the full set at the cell size itself).  While cells are larger than
    the clusters the occupancy barely moves with the cell size, so an over-full
    probe shrinks the cell at least 4x.
    """
    m = nodes.shape[0]
    # the cube root of the box's volume per point, axis by axis from half extents: the
    # volume itself, or an extent, overflows to inf for coordinates past ~1e103 (an
    # infinite cell size then made NaN cell indices in the walks)
    half = np.maximum(np.asarray(hi, np.float64) / 2 - np.asarray(lo, np.float64) / 2, 5e-10)
    h = _clamp_cell(2.0 * float(np.prod(np.cbrt(half))) * float(np.cbrt(TARGET_OCCUPANCY / max(m, 1))))
    if m < 64:
        return h
    sample = np.arange(0, m, 8, dtype=np.int64)
    for _ in range(16):
        occ = ks.occupancy(pos, nodes, lo, 2.0 * h, sample)
        if 0.5 * TARGET_OCCUPANCY <= occ <= 2.0 * TARGET_OCCUPANCY:
            break
        f = float(np.cbrt(TARGET_OCCUPANCY / max(occ, 1.0)))
        h *= min(f, 0.25) if occ > 4.0 * TARGET_OCCUPANCY else f
        if h < 1e-9:
            break
    return _clamp_cell(h)


def _clamp_cell(h: float) -> float:
    """A cell size the kernels can use: finite, in [1e-9, 1e300]."""
    return min(max(h, 1e-9), 1e300) if math.isfinite(h) else 1e300


_BUILDER: concurrent.futures.ThreadPoolExecutor | None = None


def _builder() -> concurrent.futures.ThreadPoolExecutor:
    global _BUILDER
    if _BUILDER is None:
        _BUILDER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cim_flow-grid")
    return _BUILDER


class SpatialIndex:
    """Main grid + delta grid over the live, positioned nodes.

    When the delta passes ``rebuild_fraction`` of the main grid (and ``min_rebuild``
    nodes), or once the delta's rebuilds and patches since the main grid was built have
    placed as many points as it holds (and the delta holds ``min_rebuild // 4`` nodes), a new
    main grid is built on a background thread (serial kernels, no GIL)
    while queries keep using main + delta; it is adopted at the next update or query,
    with the nodes changed meanwhile moved to the delta.  So neither the event loop nor
    ``apply`` waits for a full build.  Only if the delta grows past 4x the limit first
    (or with ``background = False``) is the build done synchronously at the next query.
    """

    def __init__(self, rebuild_fraction: float = 0.05, min_rebuild: int = 4096, background: bool = True):
        self.rebuild_fraction = rebuild_fraction
        self.min_rebuild = min_rebuild
        self.background = background
        self.main = _empty_grid()
        self.delta = _empty_grid()
        # node -> main slot (>= 0), -1 never indexed, <= -2 in the delta at row -2 - where
        self.where = np.full(0, -1, np.int32)
        self._clear_delta()
        self.built = False
        self.stale_count = 0
        self.builds = 0
        self._job: concurrent.futures.Future | None = None  # a main grid being built
        self._job_dirty: list = []  # nodes changed since that build started
        self._first_job = False  # that build is the first one: nothing to answer from yet
        self._slots = None  # see slot_view
        self._pair = None  # see pair
        self._delta_stale = False  # the delta's rows changed since the delta grid was built
        # Rent or buy: the delta costs the points placed in it (patched in, or all of it
        # again at each rebuild, which grows with its size); a new main grid costs one
        # build of every point.  Once the delta since the last main grid has had as many
        # points placed as the main grid holds, build another:
        # with the delta growing steadily that spends as much on main builds as on the
        # delta's size, the least total (each ~sqrt(2 x main x growth / rebuilds) nodes),
        # where a fixed fraction of the main grid let the delta grow to it whatever the
        # query rate (10k events/s with 1,000 queries/s at 450k nodes: deltas up to 20k
        # nodes, ~0.9 ms a rebuild, a third of the service's time)
        self._delta_placed = 0
        self._main_cost = float("inf")  # seconds the last main build took (stats only)
        self.delta_rebuilds = 0
        self.delta_seconds = 0.0  # all delta rebuilds, for stats
        self.delta_patched = 0  # points placed in the delta grid in place (no rebuild), for stats

    # -- build ------------------------------------------------------------------
    def build(self, N) -> None:
        self._job, self._job_dirty, self._first_job = None, [], False  # a running build is dropped
        t = time.perf_counter()
        self.main, self.where = _main_grid(N, serial=False)
        self._main_cost, self._delta_placed = time.perf_counter() - t, 0
        self._slots = None  # the old grid's slot view would keep it alive
        self._pair = None
        self.delta = _empty_grid()
        self._clear_delta()
        self._delta_stale = False
        self.stale_count = 0
        self.built = True
        self.builds += 1

    def _clear_delta(self, capacity: int = 1024) -> None:
        """The delta's rows (see kernels.spatial.delta_update): each changed node's
        position, liveness, graph and node number, copied when its batch is applied."""
        self._dcount = 0
        self._delta_h = (1.0, 0)  # the delta's cell size and its point count when chosen
        self._dpatch = False  # the delta grid takes changes in place (built with room: _slack_grid)
        self._dfill = np.zeros(1, np.int32)  # its cells' next free entries
        self._rows(capacity)

    def _rows(self, capacity: int) -> None:
        """Room for ``capacity`` delta rows, keeping the rows in use."""
        n = self._dcount
        old = (self._dpts, self._dalive, self._dgrp, self._dnode, self._dslot) if n else ()
        self._dpts = np.empty((capacity, 3), np.float64)
        self._dalive = np.empty(capacity, np.uint8)
        self._dgrp = np.empty(capacity, np.int32)
        self._dnode = np.empty(capacity, np.int32)
        self._dslot = np.empty(capacity, np.int32)  # row -> its entry in the delta grid, -1 none
        for new, o in zip((self._dpts, self._dalive, self._dgrp, self._dnode, self._dslot), old):
            new[:n] = o[:n]

    @property
    def delta_nodes(self) -> np.ndarray:
        """Nodes in the delta (changed since the main grid was built), one row each."""
        return self._dnode[: self._dcount]

    def _to_delta(self, N, nodes: np.ndarray) -> None:
        """Nodes changed: out of the main grid, into the delta's rows (a row each)."""
        need = self._dcount + nodes.shape[0]
        if need > self._dnode.shape[0]:
            self._rows(max(need, 2 * self._dnode.shape[0]))
        # the delta grid is patched in place when it can be: a query after a small batch
        # then finds it current, where a rebuild per query cost ~0.2-0.5 ms (2k-20k nodes)
        patch = self._dpatch and not self._delta_stale
        k, self._dcount, placed, ok = ks.delta_update(
            self.where, self.pair(), nodes, N.alive, N.pos, N.graph, self._dpts, self._dalive, self._dgrp,
            self._dnode, self._dcount, self._dfill, self._dslot, patch)
        self.stale_count += int(k)
        if ok:
            self._delta_placed += int(placed)
            self.delta_patched += int(placed)
            c = self._slots  # the delta's entries changed: its part of the slot view is made again
            if c is not None and c[1] is self.delta:
                self._slots = (c[0], None, c[2], None, c[4], None)
        else:
            self._delta_stale = True  # rebuilt by the next query (ready)

    @staticmethod
    def _grid(pos, nodes, graph, origin, hi, h, serial=False):
        """A dense grid over the box [origin, hi] when it has at most DENSE_CELLS_PER_POINT
        cells per point, else a hashed one.  ``serial``: no parallel kernel (background
        thread)."""
        origin = np.ascontiguousarray(origin, np.float64)
        m = nodes.shape[0]
        dims = _dense_dims(origin, hi, h, m)
        if dims is not None:
            ncell = int(np.prod(dims))
            if serial:
                dst, pts, idx, grp = ks.grid_build_dense_serial(pos, nodes, graph, origin, float(h), dims)
            elif ncell > _RUNS_ABOVE_CELLS and m >= _RUNS_MIN_POINTS:
                dst, pts, idx, grp = ks.grid_build_dense_runs(pos, nodes, graph, origin, float(h), dims,
                                                              _dense_run_shift(m, ncell))
            else:
                nparts = numba.get_num_threads() if m >= 65536 else 1
                dst, pts, idx, grp = ks.grid_build_dense(pos, nodes, graph, origin, float(h), dims, nparts)
            nstale = np.zeros(dst.shape[0] - 1 + int(dims[0] * dims[1]), np.uint8)  # + column flags
            return ks.Grid(origin=origin, h=np.array([h]), lim=dims - 1, dims=dims, dst=dst,
                           nstale=nstale, zr=_zranges(dst, dims, serial), pts=pts, idx=idx, grp=grp, **_NO_TABLE)
        size = 16
        while size < 4 * m / TARGET_OCCUPANCY:
            size *= 2
        while True:
            tkeys, tstart, tcount, pts, idx, grp, cells = ks.grid_build(pos, nodes, graph, origin, float(h), size)
            if tcount[0] != -1:
                break
            size *= 4
        return ks.Grid(origin=origin, h=np.array([h]), lim=np.full(3, ks._LIM, np.int64),
                       dims=np.full(3, ks._LIM + 1, np.int64), dst=np.zeros(0, np.int32),
                       nstale=np.zeros(0, np.uint8), zr=_NO_ZR, tkeys=tkeys, tstart=tstart, tcount=tcount,
                       pts=pts, idx=idx, grp=grp, cells=cells)

    # -- incremental ------------------------------------------------------------
    def start_build(self, N) -> concurrent.futures.Future | None:
        """Start the first build on the background thread and return its future (None
        when the index is built already).  For a service: a first query awaits this
        instead of building on the event loop, and batches applied meanwhile are
        recorded and folded in when it is adopted, exactly as for a rebuild."""
        if self.built:
            return None
        if self._job is None:
            self._job_dirty, self._first_job = [], True
            self._job = _builder().submit(_timed_main_grid, _frozen(N))
        return self._job

    def update(self, N, dirty: np.ndarray) -> None:
        """Bring the index up to date after a batch changed nodes ``dirty``."""
        if dirty.size == 0:
            return
        if self._job is not None:  # a build is running: these go to its delta on adoption
            self._job_dirty.append(np.array(dirty, dtype=np.int64))
        if not self.built:
            if self._first_job and self._job.done():
                # a first build started ahead of any query (after a restart): take it now,
                # or the changes recorded for it would pile up until the first query
                if self._adopt(N):
                    self.built = True
                    self._delta_stale = True
            return
        self._grow_where(N)
        self._to_delta(N, np.asarray(dirty, dtype=np.int64))
        if self._job is not None and self._job.done():
            self._adopt(N)
        limit = max(self.rebuild_fraction * self.main.pts.shape[0], self.min_rebuild)
        over = self.delta_nodes.size > limit
        if over and (not self.background or self.delta_nodes.size > 4 * limit):
            self.built = False  # rebuilt on the next query
            return
        if over or (self.background and self._delta_placed > self.main.pts.shape[0]
                    and self.delta_nodes.size >= self.min_rebuild // 4):
            if self._job is None:
                self._job_dirty = []
                self._job = _builder().submit(_timed_main_grid, _frozen(N))
        # _to_delta patched the delta grid, or marked it stale: then it is rebuilt by the
        # next query (ready), not here, so batches that come faster than queries (ingest
        # with few queries, or none since the last) pay one rebuild, not one each

    def _grow_where(self, N) -> None:
        if self.where.shape[0] < N.alive.shape[0]:
            w = np.full(N.alive.shape[0], -1, np.int32)
            w[: self.where.shape[0]] = self.where
            self.where = w

    def _adopt(self, N) -> bool:
        """Switch to the background-built main grid: nodes changed since it started
        become stale in it and make up the new delta.  False if the build failed."""
        job, self._job = self._job, None
        changed, self._job_dirty = self._job_dirty, []
        self._first_job = False
        try:
            main, where, cost = job.result()
        except Exception as exc:  # keep serving from main + delta; the next update retries
            print(f"cim_flow: background index build failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return False
        changed = np.concatenate(changed) if changed else np.zeros(0, np.int64)
        self.main, self.where = main, where
        self._main_cost, self._delta_placed = cost, 0
        self._slots = self._pair = None
        self._grow_where(N)
        self.stale_count = 0
        self._clear_delta(max(1024, 2 * changed.shape[0]))
        self._to_delta(N, changed)
        self.builds += 1
        return True

    def _slack_grid(self, live, lo, hi, h):
        """The delta's dense grid over rows ``live`` with room in each occupied cell for
        later changes (see kernels.spatial.grid_build_dense_slack); None where a dense grid
        would have too many cells (then it is hashed, as :meth:`_grid` decides)."""
        dims = _dense_dims(lo, hi, h, live.size)
        if dims is None:
            return None
        self._dslot[: self._dcount] = -1  # rows left out (dead) must not keep an old entry
        origin = np.ascontiguousarray(lo, np.float64)
        dst, nstale, pts, idx, grp, self._dfill = ks.grid_build_dense_slack(
            self._dpts, live, self._dgrp, self._dnode, self._dslot, origin, float(h), dims,
            DELTA_SLACK_MIN, DELTA_SLACK_MAX)
        self._dpatch = True
        return ks.Grid(origin=origin, h=np.array([h]), lim=dims - 1, dims=dims, dst=dst, nstale=nstale,
                       zr=_zranges(dst, dims, True), pts=pts, idx=idx, grp=grp, **_NO_TABLE)

    def _rebuild_delta(self, N) -> None:
        t = time.perf_counter()
        self._delta_stale = False
        self._dpatch = False
        pts = self._dpts
        live, lo, hi = ks.live_points(self._dalive, pts, self._dcount)  # rows, not nodes
        if live.size == 0:
            self.delta = _empty_grid()
        else:  # the delta gets its own box and a cell size for its own density
            # the cell size is chosen again only when the delta has halved or doubled since
            # (a growing delta's points come from the same traffic: ~70 µs a rebuild saved)
            h, n0 = self._delta_h
            if not (0.5 * n0 <= live.size <= 2 * n0):
                h = choose_cell_size(pts, live, lo, hi)
                self._delta_h = (h, live.size)
            g = self._slack_grid(live, lo, hi, h) if live.size < _SERIAL_DELTA_BELOW else None
            if g is None:  # hashed (a sparse delta) or big: rebuilt whenever it changes
                g = self._grid(pts, live, self._dgrp, lo, hi, h, serial=live.size < _SERIAL_DELTA_BELOW)
                g = g._replace(idx=self._dnode[g.idx])  # rows -> node numbers
            self.delta = g
        self._delta_placed += live.size
        self.delta_seconds += time.perf_counter() - t
        self.delta_rebuilds += 1

    def ready(self, N) -> None:
        if self.built and self._job is not None and self._job.done():
            self._adopt(N)
            self._rebuild_delta(N)
        if not self.built and self._first_job:
            self.wait()  # started by start_build: finish it
            if self._adopt(N):
                self.built = True
                self._rebuild_delta(N)
        if not self.built:
            self.build(N)
        elif self._delta_stale:
            self._rebuild_delta(N)

    def pair(self):
        """The current grids as one :class:`kernels.spatial.GridPair` (cheap to pass to a
        kernel); rebuilt only when a grid is replaced (in-place stale marks are shared)."""
        m, d = self.main, self.delta
        c = self._pair
        if c is None or c[0] is not m or c[1] is not d:
            c = self._pair = (m, d, ks.grid_pair(m, d))
        return c[2]

    def slot_view(self, N):
        """``(main, delta, main_keys, delta_keys)``: the grids with each point's grid slot
        (main ``0..n-1``, delta after it) in place of its node index, and the node ids in
        grid order.  Answers as slots gather ids from nearly sequential memory: a big
        answer's node rows are scattered (~2.4x slower to gather at 18M rows).  Kept until
        a grid is replaced (a node's id and graph never change); +20 bytes a point."""
        m, d = self.main, self.delta
        c = self._slots
        if c is not None and c[0] is m and c[1] is d:
            return c[2:]
        nm = m.pts.shape[0]
        if c is not None and c[0] is m:
            ms, mk = c[2], c[4]
        else:
            ms = m._replace(idx=np.arange(nm, dtype=np.int32))
            mk = N.keys[m.idx] if nm else np.zeros((0, 2), np.uint64)
        ds = d._replace(idx=np.arange(nm, nm + d.pts.shape[0], dtype=np.int32))
        dk = N.keys[d.idx] if d.pts.shape[0] else np.zeros((0, 2), np.uint64)
        self._slots = (m, d, ms, ds, mk, dk)
        return ms, ds, mk, dk

    def stats(self) -> dict:
        """What the index costs: main grids built, delta rebuilds and their time, sizes."""
        return {"built": self.built, "main_builds": self.builds, "building": self._job is not None,
                "main_points": int(self.main.pts.shape[0]), "stale_points": int(self.stale_count),
                "delta_nodes": int(self.delta_nodes.size), "delta_rebuilds": self.delta_rebuilds,
                "delta_patched": self.delta_patched,
                "delta_rebuild_ms": self.delta_seconds * 1e3,
                "main_build_ms": None if self._main_cost == float("inf") else self._main_cost * 1e3}

    def wait(self) -> None:
        """Block until a background build has finished (it is adopted at the next
        update or query); for tests and benchmarks."""
        if self._job is not None:
            concurrent.futures.wait([self._job])


class _FrozenNodes(NamedTuple):
    pos: np.ndarray
    alive: np.ndarray
    graph: np.ndarray
    meta: np.ndarray


def _frozen(N) -> _FrozenNodes:
    """What a background build reads of the node state, copied now, on the applying
    thread.  The apply kernel moves and removes nodes in place while the build runs;
    a build reading positions that change between its passes (box, count, place) puts
    points in cells they were not counted in, leaving rows of its index unwritten or
    writing past a cell's end (seen as garbage node indices in answers, and a crash).
    Nodes changed after this copy are made stale and re-indexed by the delta when the
    build is adopted.  A node's graph never changes: that column is shared."""
    n = int(N.meta[0])
    return _FrozenNodes(N.pos[:n].copy(), N.alive[:n].copy(), N.graph[:n], np.array([n], np.int64))


def _timed_main_grid(N):
    """The background build: ``(grid, where, seconds of this thread's CPU it took)``."""
    t = time.thread_time()
    g, where = _main_grid(N, True)
    return g, where, time.thread_time() - t


def _main_grid(N, serial):
    """``(grid, where)`` over the live, positioned nodes of the node state ``N``."""
    pos = N.pos
    live, lo, hi = ks.live_points(N.alive, pos, int(N.meta[0]))
    where = np.full(N.alive.shape[0], -1, np.int32)
    if not live.size:
        return _empty_grid(), where
    h = choose_cell_size(pos, live, lo, hi)
    g = SpatialIndex._grid(pos, live, N.graph, lo, hi, h, serial)
    ks.set_where(where, g.idx)
    return g, where
