"""Spatial index kernels: a uniform grid in CSR layout, and batched queries.

Build: every point's cell ``floor((p - origin) / h)`` is clamped per axis to
``[0, lim]``, and a counting sort lays the points out cell by cell in
row-major order (x, then y, then z): ``pts``, ``idx``, ``grp`` are the points,
their node indices and graph indices in that order.  So a *column* of cells
(one x, one y) over a range of z is one contiguous run of points, and every
query walks columns, not cells.  A run is found one of two ways:

* dense (the usual case): ``dst`` holds the start of every cell of the grid's
  bounding box (``prod(dims) + 1`` int32), used when the box has at most
  :data:`DENSE_CELLS_PER_POINT` cells per point.  A run is two reads.
* hashed (a few points spread over a huge, mostly empty box): the occupied
  cells are interned in an open-addressing table (``tkeys``/``tstart``/
  ``tcount``) and a run is found by probing for its first and last occupied cell.

Clamping keeps answers exact: points outside the box share the boundary
cells, which every query that can reach them also visits.

Queries read two grids, the *main* one and a small *delta* grid over the nodes
changed since the main one was built, rebuilt every batch.  A changed node's
main entry is overwritten with NaN (every distance and box test fails for it)
and counted in its cell's ``nstale``.  All distance tests are squared float64
distances against ``r * r``, computed exactly as brute force does (no
fastmath), so answers equal brute force's set, boundary included.  Counting
adds whole runs of cells that lie inside the sphere with a safety margin
(minus their stale entries) without testing each point.

Batches of queries run in parallel in a cache-friendly order (sorted by a
coarse cell of the center, :func:`query_order`); results are still written
by query number.  Variable-length results are built count -> offsets -> fill.
"""
from collections import namedtuple

import numba
import numpy as np
from numba import prange
from numba.core import types
from numba.experimental import structref

from ._jit import EXACT_MATH, hugepages, jit, pjit
from .intern import _mix
from .traverse import _gather_row, _query_rows

KEEP_RADIUS_CELLS = 3.0  # radii up to this many cells: count and keep hits in one walk
KEEP_SMALL = 64  # hits kept per query by the serial (few-query) path

Grid = namedtuple("Grid", "origin h lim dims dst nstale zr tkeys tstart tcount pts idx grp cells")
# origin (3,), h (1,): cell size; lim (3,) int64: largest cell index per axis; dims = lim + 1.
# dense: dst (prod(dims) + 1,) int32 cell starts, nstale (prod(dims) + dims[0] * dims[1],) uint8:
#   stale entries per cell (saturating at 255: one byte a cell keeps the first update's page
#   faults few), then one flag per (x, y) column, set when any of its cells has one: a large
#   count query on a fresh grid spent half its time reading zero counts (clustered, r = 10x
#   the 30-neighbour radius: 436 -> 223 ms).
# zr (dims[0] * dims[1], 2) int32: per (x, y) column its first and last occupied z cell
#   ((dims[2], -1) when empty), so the radius walk skips a column whose points all lie
#   above or below the sphere without reading dst (a cache miss a column on a big grid);
#   empty (0, 2) for hashed grids and for grids under ZR_MIN_Z cells tall (there it
#   would cost more memory than dst saves reads).
# hashed: dst, nstale and zr empty; tkeys/tstart/tcount the cell table (key EMPTY = free),
#   cells the slots of the occupied cells (for whole-grid scans).
# pts (m, 3) positions (NaN: stale entry), idx (m,) node index, grp (m,) graph index.


@structref.register
class GridPairType(types.StructRef):
    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(t)) for name, t in fields)


class GridPair(structref.StructRefProxy):
    """The main and delta grids in one object, for the few-query entry points.

    Passing two Grid namedtuples costs ~10 µs a call before any work: numba types a
    namedtuple argument in Python, field by field (26 arrays).  A StructRef is typed
    once from its class and unboxed as one pointer (~2 µs), which is most of a single
    query's budget.  Built once per grid change (:func:`grid_pair`)."""


structref.define_proxy(GridPair, GridPairType, ["main", "delta"])

EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
ZR_MIN_Z = 16  # columns at least this many cells tall get their occupied z range (Grid.zr)
DENSE_CELLS_PER_POINT = 16
_LIM = 2097151  # 2**21 - 1: the hashed grid's cells per axis (three fit in a uint64 key)
_B21 = np.uint64(21)
_B42 = np.uint64(42)


@jit(nrt=False, fastmath=EXACT_MATH)
def _cell(v, o, inv_h, lim):
    c = np.floor((v - o) * inv_h)
    if not c >= 0.0:  # (NaN too: no cell index from garbage, whatever the arithmetic did)
        return 0
    if c > lim:
        return lim
    return int(c)


@jit(nrt=False, fastmath=EXACT_MATH)
def _key(ix, iy, iz):
    return (np.uint64(ix) << _B42) | (np.uint64(iy) << _B21) | np.uint64(iz)


@jit(nrt=False, fastmath=EXACT_MATH)
def _slot_hash(k, mask):
    """Hash of the (ix, iy) column plus iz: the cells of one z-run sit in consecutive
    slots, so probing a column walks memory instead of jumping."""
    return (_mix(k >> _B21) + (k & np.uint64(_LIM))) & mask


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _decode(k):
    """Cell coordinates ``(ix, iy, iz)`` of a packed key."""
    return (np.int64(k >> _B42), np.int64((k >> _B21) & np.uint64(_LIM)), np.int64(k & np.uint64(_LIM)))


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _insert(tkeys, k, mask):
    """Slot of key ``k`` in the cell table, claiming an empty one; ``(slot, is_new)``."""
    s = _slot_hash(k, mask)
    while True:
        t = tkeys[s]
        if t == k:
            return s, False
        if t == EMPTY:
            tkeys[s] = k
            return s, True
        s = (s + np.uint64(1)) & mask


@jit(nrt=False, fastmath=EXACT_MATH)
def _find(tkeys, k):
    mask = np.uint64(tkeys.shape[0] - 1)
    s = _slot_hash(k, mask)
    while True:
        t = tkeys[s]
        if t == k:
            return np.int64(s)
        if t == EMPTY:
            return np.int64(-1)
        s = (s + np.uint64(1)) & mask


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _dense_cell(g_origin, inv_h, lim, dims, x, y, z):
    return ((_cell(x, g_origin[0], inv_h, lim[0]) * dims[1] + _cell(y, g_origin[1], inv_h, lim[1])) * dims[2]
            + _cell(z, g_origin[2], inv_h, lim[2]))


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _dense_count(cell_of, dst, lo_c, hi_c):
    for j in range(cell_of.shape[0]):
        c = cell_of[j]
        if lo_c <= c < hi_c:
            dst[c + 1] += 1


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _scatter(pos, nodes, graph_of, cell_of, fill, pts, idx, grp, lo_c, hi_c):
    """Counting sort's second pass, for the points whose cell (or table slot) is in
    [lo_c, hi_c): each goes to its cell's next free row."""
    for j in range(cell_of.shape[0]):
        c = cell_of[j]
        if lo_c <= c < hi_c:
            q = fill[c]
            fill[c] = q + 1
            n = nodes[j]
            pts[q, 0] = pos[n, 0]
            pts[q, 1] = pos[n, 1]
            pts[q, 2] = pos[n, 2]
            idx[q] = n
            grp[q] = graph_of[n]


@jit(fastmath=EXACT_MATH, inline=True)
def _dense_layout(dst, m):
    """Cell counts in ``dst[1:]`` -> starts (in place); the fill cursors and the empty
    point arrays of a dense grid of ``m`` points."""
    for c in range(1, dst.shape[0]):
        dst[c] += dst[c - 1]
    pts, idx, grp = _point_arrays(m)
    return dst[:-1].copy(), pts, idx, grp


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _column_zrange(dst, nz, zr, c):
    """Column c's first and last occupied z cell, ``(nz, -1)`` when it is empty: two
    binary searches of the column's run of cell starts (nondecreasing), ~2 log2(nz)
    reads, where walking in from both ends read most of a mostly empty column."""
    base = c * nz
    a = dst[base]
    b = dst[base + nz]
    if a == b:
        zr[c, 0] = nz
        zr[c, 1] = -1
        return
    lo, hi = 0, nz - 1  # the first z whose cell holds a point: dst[base + z + 1] > a
    while lo < hi:
        mid = (lo + hi) // 2
        if dst[base + mid + 1] > a:
            hi = mid
        else:
            lo = mid + 1
    zr[c, 0] = lo
    lo, hi = 0, nz - 1  # the last: dst[base + z] < b
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if dst[base + mid] < b:
            lo = mid
        else:
            hi = mid - 1
    zr[c, 1] = lo


@pjit
def column_zrange(dst, dims):
    """:attr:`Grid.zr` of a dense grid (columns in parallel)."""
    zr = np.empty((dims[0] * dims[1], 2), np.int32)
    for c in prange(dims[0] * dims[1]):
        _column_zrange(dst, dims[2], zr, c)
    return zr


@jit(fastmath=EXACT_MATH)
def column_zrange_serial(dst, dims):
    """:func:`column_zrange` on the calling thread (builds on a background thread)."""
    zr = np.empty((dims[0] * dims[1], 2), np.int32)
    for c in range(dims[0] * dims[1]):
        _column_zrange(dst, dims[2], zr, c)
    return zr


@jit
def _point_arrays(m):
    """A grid's per-point arrays for ``m`` points, unfilled: positions, node numbers, graphs."""
    return hugepages(np.empty((m, 3), np.float64)), hugepages(np.empty(m, np.int32)), hugepages(np.empty(m, np.int32))


@pjit
def grid_build_dense(pos, nodes, graph_of, origin, h, dims, nparts):
    """Dense grid over ``pos[nodes]``: ``(dst, pts, idx, grp)``; ``dims`` cells per axis.

    The counting sort's random writes dominate, so they run in ``nparts`` parallel
    passes, each over every point but writing only the cells of its own range.  For
    few enough cells that the counters stay in cache; else :func:`grid_build_dense_runs`."""
    m = nodes.shape[0]
    inv_h = 1.0 / h
    ncell = dims[0] * dims[1] * dims[2]
    cell_of = hugepages(np.empty(m, np.int64))
    lim = dims - 1  # (once: inside the loop it is an array allocated per point)
    for j in prange(m):
        n = nodes[j]
        cell_of[j] = _dense_cell(origin, inv_h, lim, dims, pos[n, 0], pos[n, 1], pos[n, 2])
    dst = np.zeros(ncell + 1, np.int32)
    for p in prange(nparts):
        _dense_count(cell_of, dst, ncell * p // nparts, ncell * (p + 1) // nparts)
    fill, pts, idx, grp = _dense_layout(dst, m)
    for p in prange(nparts):
        _scatter(pos, nodes, graph_of, cell_of, fill, pts, idx, grp,
                       ncell * p // nparts, ncell * (p + 1) // nparts)
    return dst, pts, idx, grp


@jit(fastmath=EXACT_MATH)
def grid_build_dense_serial(pos, nodes, graph_of, origin, h, dims):
    """:func:`grid_build_dense` on the calling thread only: for builds on a background
    thread, where a parallel launch is not safe under every threading layer."""
    m = nodes.shape[0]
    inv_h = 1.0 / h
    cell_of = hugepages(np.empty(m, np.int64))
    lim = dims - 1  # (once: inside the loop it is an array allocated per point, ~40 ns)
    for j in range(m):
        n = nodes[j]
        cell_of[j] = _dense_cell(origin, inv_h, lim, dims, pos[n, 0], pos[n, 1], pos[n, 2])
    dst = np.zeros(dims[0] * dims[1] * dims[2] + 1, np.int32)
    _dense_count(cell_of, dst, 0, dst.shape[0] - 1)
    fill, pts, idx, grp = _dense_layout(dst, m)
    _scatter(pos, nodes, graph_of, cell_of, fill, pts, idx, grp, 0, dst.shape[0] - 1)
    return dst, pts, idx, grp


# Dense build over many cells: a counting sort by cell in two passes.  The plain one
# (grid_build_dense) writes every point to a random row and bumps a random cell counter:
# at 8M cells (clustered data) the counters alone are 32 MB, so nearly every point cost
# several cache misses.  Here the points are first copied, in input order, into runs of
# ``2**shift`` consecutive cells (a stable counting sort on the run number: few enough
# runs to be written as sequential streams), then each run is counted, prefix-summed and
# placed on its own, reading its records in sequence: its counters and its rows fit in a
# core's cache, and the runs go in parallel, prefix sums included.  The layout is exactly a plain stable counting sort's.
# A record is 5 words: x, y, z (float64 bits), cell << 32 | node, graph.

@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _dense_cells(pos, nodes, origin, inv_h, dims, shift, cell_of, hist, t, a, b):
    """Cells of points a..b and their runs' counts in hist[t]."""
    lim = dims - 1
    for j in range(a, b):
        n = nodes[j]
        c = _dense_cell(origin, inv_h, lim, dims, pos[n, 0], pos[n, 1], pos[n, 2])
        cell_of[j] = c
        hist[t, c >> shift] += 1


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _dense_partition(pos, nodes, graph_of, cell_of, shift, cursor, t, rec, recf, a, b):
    for j in range(a, b):
        c = np.int64(cell_of[j])
        p = c >> shift
        q = cursor[t, p]
        cursor[t, p] = q + 1
        n = nodes[j]
        w = 5 * q
        recf[w] = pos[n, 0]
        recf[w + 1] = pos[n, 1]
        recf[w + 2] = pos[n, 2]
        rec[w + 3] = (np.uint64(c) << np.uint64(32)) | np.uint64(n)
        rec[w + 4] = np.uint64(graph_of[n])


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _dense_run(rec, recf, dst, pts, idx, grp, ra, rb, lo_c, hi_c):
    """Run of cells lo_c..hi_c, whose points are records ra..rb: count, turn the counts
    into each cell's end, then place the points last to first, counting each cell's end
    down to its start."""
    for i in range(ra, rb):
        dst[np.int64(rec[5 * i + 3] >> np.uint64(32))] += 1
    acc = ra
    for c in range(lo_c, hi_c):
        acc += dst[c]
        dst[c] = acc
    for i in range(rb - 1, ra - 1, -1):
        w = 5 * i
        cn = rec[w + 3]
        c = np.int64(cn >> np.uint64(32))
        q = dst[c] - 1
        dst[c] = q
        pts[q, 0] = recf[w]
        pts[q, 1] = recf[w + 1]
        pts[q, 2] = recf[w + 2]
        idx[q] = np.int32(cn & np.uint64(0xFFFFFFFF))
        grp[q] = np.int32(rec[w + 4])


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _run_starts(hist, cursor, starts):
    """Per-chunk write cursors for the partition (run-major, then chunk) and each run's
    first record in ``starts`` (``starts[nruns] = m``)."""
    acc = 0
    for p in range(hist.shape[1]):
        starts[p] = acc
        for t in range(hist.shape[0]):
            cursor[t, p] = acc
            acc += hist[t, p]
    starts[hist.shape[1]] = acc


@pjit
def grid_build_dense_runs(pos, nodes, graph_of, origin, h, dims, shift):
    """Dense grid over ``pos[nodes]``: ``(dst, pts, idx, grp)``; ``dims`` cells per axis,
    sorted in runs of ``2**shift`` cells (see above; the caller sizes them for the cache)."""
    m = nodes.shape[0]
    inv_h = 1.0 / h
    ncell = dims[0] * dims[1] * dims[2]
    nruns = ((ncell - 1) >> shift) + 1
    nchunk = min(max(m // 65536, 1), 16)
    cell_of = hugepages(np.empty(m, np.int32))
    hist = np.zeros((nchunk, nruns), np.int64)
    for t in prange(nchunk):
        _dense_cells(pos, nodes, origin, inv_h, dims, shift, cell_of, hist, t,
                     m * t // nchunk, m * (t + 1) // nchunk)
    cursor = np.empty((nchunk, nruns), np.int64)
    starts = np.empty(nruns + 1, np.int64)
    _run_starts(hist, cursor, starts)
    rec = hugepages(np.empty(5 * m, np.uint64))
    recf = rec.view(np.float64)
    for t in prange(nchunk):
        _dense_partition(pos, nodes, graph_of, cell_of, shift, cursor, t, rec, recf,
                         m * t // nchunk, m * (t + 1) // nchunk)
    dst = np.zeros(ncell + 1, np.int32)
    dst[ncell] = m
    pts, idx, grp = _point_arrays(m)
    for p in prange(nruns):
        _dense_run(rec, recf, dst, pts, idx, grp, starts[p], starts[p + 1],
                   p << shift, min((p + 1) << shift, ncell))
    return dst, pts, idx, grp


@jit(fastmath=EXACT_MATH)
def grid_build(pos, nodes, graph_of, origin, h, table_size):
    """Hashed grid over ``pos[nodes]`` (rows of an (N, 3) array) with cell size ``h``.

    ``table_size`` (power of two) should be about 4x the expected occupied
    cells; when more than half of it fills up the build stops and returns an
    empty ``cells`` array with ``tcount[0] == -1``: call again with a bigger table.
    Cells are laid out in row-major key order (x, then y, then z), so the cells
    of one column are one run of points.
    """
    m = nodes.shape[0]
    inv_h = 1.0 / h
    size = table_size
    tkeys = np.full(size, EMPTY, np.uint64)
    tcount = np.zeros(size, np.int32)
    slot_of = hugepages(np.empty(m, np.int64))
    mask = np.uint64(size - 1)
    ncells = 0
    for j in range(m):
        n = nodes[j]
        k = _key(_cell(pos[n, 0], origin[0], inv_h, _LIM), _cell(pos[n, 1], origin[1], inv_h, _LIM),
                 _cell(pos[n, 2], origin[2], inv_h, _LIM))
        s, new = _insert(tkeys, k, mask)
        ncells += new
        if 2 * ncells > size:
            tcount[0] = -1
            return (tkeys, tcount, tcount, np.empty((0, 3), np.float64), np.empty(0, np.int32),
                    np.empty(0, np.int32), np.empty(0, np.int32))
        slot_of[j] = s
        tcount[s] += 1
    ordered = np.empty(ncells, np.uint64)
    c = 0
    for s in range(size):
        if tkeys[s] != EMPTY:
            ordered[c] = tkeys[s]
            c += 1
    ordered.sort()
    tstart = np.zeros(size, np.int32)
    cells = np.empty(ncells, np.int32)
    acc = 0
    for c in range(ncells):
        s = _find(tkeys, ordered[c])
        cells[c] = s
        tstart[s] = acc
        acc += tcount[s]
    fill = tstart.copy()
    pts, idx, grp = _point_arrays(m)
    _scatter(pos, nodes, graph_of, slot_of, fill, pts, idx, grp, 0, size)
    return tkeys, tstart, tcount, pts, idx, grp, cells


@jit(fastmath=EXACT_MATH)
def live_points(alive, pos, n):
    """Indices of live rows with a position among the first ``n`` (the node state's, or
    a delta grid's own rows), and their bounding box.  One pass; the box is kept in six
    locals, not in the lo/hi arrays: stores to arrays the compiler cannot prove apart
    from ``out`` kept every bound in memory, and the pass took 26 ms for 1M nodes
    against 3.4 ms this way."""
    out = np.empty(n, np.int64)
    lx = ly = lz = np.inf
    hx = hy = hz = -np.inf
    m = 0
    for i in range(n):
        x = pos[i, 0]
        if alive[i] != 0 and not np.isnan(x):  # NaN x: no position yet (finite otherwise)
            out[m] = i
            m += 1
            y = pos[i, 1]
            z = pos[i, 2]
            lx = min(lx, x)
            hx = max(hx, x)
            ly = min(ly, y)
            hy = max(hy, y)
            lz = min(lz, z)
            hz = max(hz, z)
    return out[:m], np.array([lx, ly, lz]), np.array([hx, hy, hz])


@jit(fastmath=EXACT_MATH)
def occupancy(pos, nodes, origin, h, sample):
    """Mean points per occupied cell for cell size ``h`` over ``pos[nodes[sample]]``."""
    m = sample.shape[0]
    if m == 0:
        return 0.0
    size = 16
    while size < 2 * m:
        size *= 2
    tkeys = np.full(size, EMPTY, np.uint64)
    mask = np.uint64(size - 1)
    inv_h = 1.0 / h
    ncells = 0
    for j in range(m):
        n = nodes[sample[j]]
        k = _key(_cell(pos[n, 0], origin[0], inv_h, _LIM), _cell(pos[n, 1], origin[1], inv_h, _LIM),
                 _cell(pos[n, 2], origin[2], inv_h, _LIM))
        _s, new = _insert(tkeys, k, mask)
        ncells += new
    return m / ncells


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _mark_stale(g, w):
    """Entry ``w`` of grid ``g`` leaves it: its position becomes NaN (no query matches
    it), counted per dense cell with its column's flag set (see Grid.nstale)."""
    if g.dst.shape[0] > 0:
        ncell = g.dims[0] * g.dims[1] * g.dims[2]
        c = _dense_cell(g.origin, 1.0 / g.h[0], g.lim, g.dims, g.pts[w, 0], g.pts[w, 1], g.pts[w, 2])
        if g.nstale[c] < 255:  # saturates: 255 means "many", see _stale_in
            g.nstale[c] += 1
        g.nstale[ncell + c // g.dims[2]] = 1  # its column has stale entries
    g.pts[w, 0] = np.nan
    g.pts[w, 1] = np.nan
    g.pts[w, 2] = np.nan


@jit(fastmath=EXACT_MATH)  # (NRT: reading a StructRef's fields needs it)
def delta_update(where, gp, nodes, alive, pos, graph, dpts, dalive, dgrp, dnode, dcount, dfill, dslot, patch):
    """Nodes changed: each leaves the main grid ``gp.main`` (its entry becomes NaN, counted per
    dense cell) and gets a row of the delta's own copy of its state, ``dpts``/``dalive``/
    ``dgrp``/``dnode`` (a node already in the delta has its row rewritten).  ``where``:
    node -> main slot (>= 0), never indexed (-1), delta row ``-2 - where`` (<= -2).

    The delta grid is rebuilt from these rows, which lie together in memory: read from
    the node state, each of its points was a cache miss or two at every rebuild (~90 ns
    a point under load, against ~20 from the rows).  The rows need room for ``dcount +
    nodes.shape[0]``.

    With ``patch``, the delta grid ``gp.delta`` (dense, built by :func:`grid_build_dense_slack`)
    is brought up to date in place: a row's old entry (``dslot``: row -> entry, -1 none)
    becomes stale and its new position takes the next free entry of its cell
    (``dfill``: per cell), so a query after a small batch needs no rebuild.  When a cell
    has no room left, patching stops and the grid must be rebuilt.

    Returns (main entries that went stale, rows now in use, delta entries placed, whether
    the delta grid is up to date: always False without ``patch``).  ``gp``: the
    :class:`GridPair` (two Grid arguments cost ~10 µs a call to type)."""
    g = gp.main
    d = gp.delta
    k = 0
    placed = 0
    ok = patch
    dinv_h = 1.0 / d.h[0]
    for j in range(nodes.shape[0]):
        n = nodes[j]
        w = where[n]
        if w >= 0:
            _mark_stale(g, w)
            k += 1
        r = -2 - w
        if w >= -1 or r >= dcount or dnode[r] != n:  # (the last two: never, but a stray
            r = dcount                                 # mark must not write another's row)
            dcount += 1
            where[n] = -2 - r
            dslot[r] = -1
        dnode[r] = n
        dgrp[r] = graph[n]
        dalive[r] = alive[n]
        x, y, z = pos[n, 0], pos[n, 1], pos[n, 2]
        dpts[r, 0] = x
        dpts[r, 1] = y
        dpts[r, 2] = z
        if ok:
            s = dslot[r]
            if s >= 0:
                _mark_stale(d, s)
                dslot[r] = -1
            if alive[n] != 0 and not np.isnan(x):
                c = _dense_cell(d.origin, dinv_h, d.lim, d.dims, x, y, z)
                q = dfill[c]
                if q < d.dst[c + 1]:
                    dfill[c] = q + 1
                    d.pts[q, 0] = x
                    d.pts[q, 1] = y
                    d.pts[q, 2] = z
                    d.idx[q] = n
                    d.grp[q] = graph[n]
                    if d.nstale[c] < 255:  # exact below 255: the free entry was counted there
                        d.nstale[c] -= 1
                    dslot[r] = q
                    placed += 1
                else:
                    ok = False  # the cell is full: rebuilt by the next query
    return k, dcount, placed, ok


@jit(fastmath=EXACT_MATH)
def grid_build_dense_slack(pos, rows, graph_of, node_of, slot_of, origin, h, dims, slack_min, slack_max):
    """A delta's dense grid with room to grow in place: like
    :func:`grid_build_dense_serial` over rows ``rows`` of ``pos``, but each occupied cell's
    run ends in ``min(slack_min + count, slack_max)`` free entries (NaN positions,
    counted stale in ``nstale``, so every query skips them and whole-cell counts stay
    exact), which :func:`delta_update` fills with later changes.  ``node_of`` maps a row
    to its node (the grid's ``idx``); ``slot_of[row]`` is set to the row's entry.
    Returns ``(dst, nstale, pts, idx, grp, fill)``, ``fill`` each cell's next free entry."""
    m = rows.shape[0]
    inv_h = 1.0 / h
    lim = dims - 1
    ncell = dims[0] * dims[1] * dims[2]
    cell_of = np.empty(m, np.int64)
    count = np.zeros(ncell, np.int32)
    for j in range(m):
        r = rows[j]
        c = _dense_cell(origin, inv_h, lim, dims, pos[r, 0], pos[r, 1], pos[r, 2])
        cell_of[j] = c
        count[c] += 1
    dst = np.empty(ncell + 1, np.int32)
    nstale = np.zeros(ncell + dims[0] * dims[1], np.uint8)
    total = 0
    for c in range(ncell):
        dst[c] = total
        k = count[c]
        if k > 0:
            room = min(slack_min + k, slack_max)
            nstale[c] = room
            nstale[ncell + c // dims[2]] = 1
            total += k + room
    dst[ncell] = total
    fill = dst[:ncell].copy()
    pts, idx, grp = _point_arrays(total)
    for c in range(ncell):  # the free entries (each written once: no fill of the whole arrays first)
        for q in range(dst[c] + count[c], dst[c + 1]):
            pts[q, 0] = np.nan
            pts[q, 1] = np.nan
            pts[q, 2] = np.nan
            idx[q] = 0
            grp[q] = -1
    for j in range(m):
        r = rows[j]
        c = cell_of[j]
        q = fill[c]
        fill[c] = q + 1
        pts[q, 0] = pos[r, 0]
        pts[q, 1] = pos[r, 1]
        pts[q, 2] = pos[r, 2]
        idx[q] = node_of[r]
        grp[q] = graph_of[r]
        slot_of[r] = q
    return dst, nstale, pts, idx, grp, fill


@jit(nrt=False, fastmath=EXACT_MATH)
def set_where(where, idx):
    for q in range(idx.shape[0]):
        where[idx[q]] = q


@jit(fastmath=EXACT_MATH)
def query_order(centers, origin, h, lim):
    """A permutation of the queries that visits them cell by cell (cells of 4h):
    neighbouring queries then read the same runs of points while they are in cache.

    Over a dense grid (``lim``: its largest cell index per axis) the coarse cells are
    few, and a counting sort by cell orders the queries in two passes (~50 µs for 10k,
    where the argsort of their keys took ~0.6 ms, 5% of a 30-neighbour batch); the
    order is the same up to queries sharing a cell.  Otherwise (hashed grids) the keys
    are sorted."""
    n = centers.shape[0]
    inv = 0.25 / h
    nx = lim[0] // 4 + 1
    ny = lim[1] // 4 + 1
    nz = lim[2] // 4 + 1
    if float(nx) * float(ny) * float(nz) <= 4.0 * n + 4096.0:
        cell = np.empty(n, np.int64)
        start = np.zeros(nx * ny * nz + 1, np.int64)
        for j in range(n):
            c = ((_cell(centers[j, 0], origin[0], inv, nx - 1) * ny + _cell(centers[j, 1], origin[1], inv, ny - 1))
                 * nz + _cell(centers[j, 2], origin[2], inv, nz - 1))
            cell[j] = c
            start[c + 1] += 1
        for c in range(1, start.shape[0]):
            start[c] += start[c - 1]
        order = np.empty(n, np.int64)
        for j in range(n):
            c = cell[j]
            order[start[c]] = j
            start[c] += 1
        return order
    keys = np.empty(n, np.uint64)
    for j in range(n):
        keys[j] = _key(_cell(centers[j, 0], origin[0], inv, _LIM), _cell(centers[j, 1], origin[1], inv, _LIM),
                       _cell(centers[j, 2], origin[2], inv, _LIM))
    return np.argsort(keys)


# ---------------------------------------------------------------------------
# columns and runs

@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _col(g, ix, iy, za, zb):
    """``(a, b)``: the points of column (ix, iy), cells za..zb (inclusive, within lim), are
    ``pts[a:b]``."""
    if g.dst.shape[0] > 0:
        base = (ix * g.dims[1] + iy) * g.dims[2]
        return np.int64(g.dst[base + za]), np.int64(g.dst[base + zb + 1])
    first = np.int64(-1)
    lz = za
    for iz in range(za, zb + 1):
        s = _find(g.tkeys, _key(ix, iy, iz))
        if s >= 0:
            first = s
            lz = iz
            break
    if first < 0:
        return np.int64(0), np.int64(0)
    a = np.int64(g.tstart[first])
    for iz in range(zb, lz, -1):
        s = _find(g.tkeys, _key(ix, iy, iz))
        if s >= 0:
            return a, np.int64(g.tstart[s]) + g.tcount[s]
    return a, a + g.tcount[first]


@jit(nrt=False, fastmath=EXACT_MATH, llvm_inline=True)
def _col_llvm(g, ix, iy, za, zb):
    """:func:`_col` compiled once and inlined by LLVM, for the kNN and box walks: a dozen
    IR-inlined copies there were each typed and compiled again (~6 s of cold compile).
    The radius walk keeps the IR-inlined one: in its whole-cell loop this version
    measured 13% slower (clustered data, 10x the 30-neighbour radius, 15 paired runs)."""
    return _col(g, ix, iy, za, zb)


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _stale_in(g, ix, iy, za, zb):
    """Stale entries in cells za..zb of a dense grid's column; -1 when a cell's count
    saturated (the caller then tests the points)."""
    col = ix * g.dims[1] + iy
    if g.nstale[g.dims[0] * g.dims[1] * g.dims[2] + col] == 0:
        return 0  # the column's flag: nothing stale in it (a fresh grid: every column)
    base = col * g.dims[2]
    k = 0
    for c in range(base + za, base + zb + 1):
        v = g.nstale[c]
        if v == 255:
            return -1
        k += v
    return k


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _count_run(pts, grp, a, b, cx, cy, cz, r2, gsel):
    w = 0
    if gsel == -1:
        for q in range(a, b):
            dx = pts[q, 0] - cx
            dy = pts[q, 1] - cy
            dz = pts[q, 2] - cz
            w += (dx * dx + dy * dy + dz * dz) <= r2
        return w
    for q in range(a, b):
        if grp[q] == gsel:
            dx = pts[q, 0] - cx
            dy = pts[q, 1] - cy
            dz = pts[q, 2] - cz
            w += (dx * dx + dy * dy + dz * dz) <= r2
    return w


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _fill_run(pts, idx, grp, a, b, cx, cy, cz, r2, gsel, out_i, out_d, w, cap):
    """Hits of points a..b written from out_*[w]; from ``cap`` on they are only counted
    (a query's share of the keep buffer: see _keep_q; other callers have room for all).

    Branch-free: every tested point is written at slot ``w`` (below ``cap``) and ``w``
    moves on only for a hit, so a miss is overwritten by the next write.  About half the
    points of a cube around a sphere are hits, so an ``if hit`` branch mispredicts often;
    the unconditional store does not.  Slots from the caller's ``w`` up to ``cap`` must be
    the caller's to scribble on (``cap`` is the end of its share, never another query's)."""
    anyg = gsel == -1  # loop-invariant: the compiler makes two loops of this one
    if w + (b - a) <= cap:  # room for every point of the run: no test a point
        for q in range(a, b):
            dx = pts[q, 0] - cx
            dy = pts[q, 1] - cy
            dz = pts[q, 2] - cz
            d2 = dx * dx + dy * dy + dz * dz
            out_i[w] = idx[q]
            out_d[w] = d2
            w += (d2 <= r2) & (anyg or grp[q] == gsel)
        return w
    for q in range(a, b):
        dx = pts[q, 0] - cx
        dy = pts[q, 1] - cy
        dz = pts[q, 2] - cz
        d2 = dx * dx + dy * dy + dz * dz
        if w < cap:
            out_i[w] = idx[q]
            out_d[w] = d2
        w += (d2 <= r2) & (anyg or grp[q] == gsel)
    return w


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _copy_run(pts, idx, a, b, cx, cy, cz, out_i, out_d, w, cap):
    """Points a..b all inside the sphere (whole cells, none stale): written from
    out_*[w] without a test, a straight copy the compiler vectorises; as in _fill_run,
    from ``cap`` on they are only counted."""
    n = min(b - a, cap - w)
    for t in range(n):
        q = a + t
        dx = pts[q, 0] - cx
        dy = pts[q, 1] - cy
        dz = pts[q, 2] - cz
        out_i[w + t] = idx[q]
        out_d[w + t] = dx * dx + dy * dy + dz * dz
    return w + (b - a)


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _run(g, a, b, cx, cy, cz, r2, gsel, mode, out_i, out_d, w, cap):
    if mode == 0:
        return w + _count_run(g.pts, g.grp, a, b, cx, cy, cz, r2, gsel)
    return _fill_run(g.pts, g.idx, g.grp, a, b, cx, cy, cz, r2, gsel, out_i, out_d, w, cap)


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _cube(g, cx, cy, cz, r):
    """Cell range of the cube around a sphere, padded by a few ulps: a point at distance
    exactly r along an axis may round to the far side of fl(c + r)."""
    o = g.origin
    inv_h = 1.0 / g.h[0]
    rp = r + (abs(cx) + abs(cy) + abs(cz) + r) * 1e-12
    return (_cell(cx - rp, o[0], inv_h, g.lim[0]), _cell(cx + rp, o[0], inv_h, g.lim[0]),
            _cell(cy - rp, o[1], inv_h, g.lim[1]), _cell(cy + rp, o[1], inv_h, g.lim[1]),
            _cell(cz - rp, o[2], inv_h, g.lim[2]), _cell(cz + rp, o[2], inv_h, g.lim[2]))


# ---------------------------------------------------------------------------
# radius.  mode: 0 count, 1 fill indices (+ squared distances); a fill into a buffer
# shorter than the answer keeps the first hits and still counts them all

# Beyond this magnitude of a center, radius, cell size or grid origin the cell arithmetic
# of a radius walk (squared column distances, margins summed over coordinates) could
# overflow to inf and then NaN; such a query tests every point of the grid instead.
TAME = 1e100


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _tame(g, cx, cy, cz, r):
    o = g.origin
    return max(abs(cx), abs(cy), abs(cz), r, g.h[0], abs(o[0]), abs(o[1]), abs(o[2])) <= TAME


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _radius_one(g, cx, cy, cz, r, gsel, mode, out_i, out_d, w, cap):
    if g.pts.shape[0] == 0:
        return w
    r2 = r * r
    if not _tame(g, cx, cy, cz, r):  # every entry (stale and free ones are NaN: never hits)
        return _run(g, np.int64(0), np.int64(g.pts.shape[0]), cx, cy, cz, r2, gsel, mode, out_i, out_d, w, cap)
    x0, x1, y0, y1, z0, z1 = _cube(g, cx, cy, cz, r)
    dense = g.dst.shape[0] > 0
    if not dense and float(x1 - x0 + 1) * float(y1 - y0 + 1) * float(z1 - z0 + 1) > g.cells.shape[0]:
        # (float: the cube may hold more than 2**63 cells) fewer occupied cells than cells
        # in the cube: visit the occupied ones
        for c in range(g.cells.shape[0]):
            s = g.cells[c]
            ix, iy, iz = _decode(g.tkeys[s])
            if ix < x0 or ix > x1 or iy < y0 or iy > y1 or iz < z0 or iz > z1:
                continue
            a = np.int64(g.tstart[s])
            w = _run(g, a, a + g.tcount[s], cx, cy, cz, r2, gsel, mode, out_i, out_d, w, cap)
        return w
    h = g.h[0]
    o = g.origin
    # Counting adds whole cells inside the sphere without testing their points, and a
    # fill copies them (_copy_run).  A cell
    # counts as inside when the box widened by `marg` is inside the sphere of radius
    # r - marg: `marg` dwarfs every rounding here (cell assignment, the bounds below, the
    # float distance brute force computes), so each such point passes `d2 <= r2`.
    inner = dense and gsel == -1 and r > 3.0 * h
    marg = 1e-10 * (abs(cx) + abs(cy) + abs(cz) + r + h + abs(o[0]) + abs(o[1]) + abs(o[2]))
    ri = r - marg
    ri2 = ri * ri
    ro = r + marg
    ro2 = ro * ro
    inv_h = 1.0 / h
    zall0 = z0
    zall1 = z1
    has_zr = dense and g.zr.shape[0] > 0
    for ix in range(x0, x1 + 1):
        fx = 0.0
        if inner:
            fx = max(abs(cx - (o[0] + ix * h - marg)), abs(o[0] + (ix + 1) * h + marg - cx))
        # nearest x distance from the centre to the column (0 for the edge cells, which also
        # hold the points beyond the grid's bounds)
        nx = 0.0
        if 0 < ix < g.lim[0]:
            nx = max(0.0, o[0] + ix * h - cx, cx - (o[0] + (ix + 1) * h)) - marg
            nx = max(nx, 0.0)
        for iy in range(y0, y1 + 1):
            zra = zrb = np.int64(0)
            if has_zr:  # the column's points all above or below the cube: nothing to read
                zra = np.int64(g.zr[ix * g.dims[1] + iy, 0])
                zrb = np.int64(g.zr[ix * g.dims[1] + iy, 1])
                if zra > zall1 or zrb < zall0:
                    continue
            # Only the cells of the column the sphere reaches: its z-extent over the
            # column's nearest point, widened by `marg` (so no hit is left out however the
            # bounds round).  The cube's corner columns hold half its volume.
            ny = 0.0
            if 0 < iy < g.lim[1]:
                ny = max(0.0, o[1] + iy * h - cy, cy - (o[1] + (iy + 1) * h)) - marg
                ny = max(ny, 0.0)
            nxy = nx * nx + ny * ny
            if nxy > ro2:
                continue
            tz = np.sqrt(ro2 - nxy) + marg
            z0 = max(zall0, _cell(cz - tz, o[2], inv_h, g.lim[2]))
            z1 = min(zall1, _cell(cz + tz, o[2], inv_h, g.lim[2]))
            if has_zr and (zra > z1 or zrb < z0):
                continue  # ... or all above or below the sphere's extent over the column
            if dense:
                a, b = _col(g, ix, iy, z0, z1)
                if a == b:
                    continue  # nothing in the column's part of the cube (most, on clustered data)
            if inner and 0 < ix < g.lim[0] and 0 < iy < g.lim[1]:
                fy = max(abs(cy - (o[1] + iy * h - marg)), abs(o[1] + (iy + 1) * h + marg - cy))
                fxy = fx * fx + fy * fy
                if fxy < ri2:
                    t = np.sqrt(ri2 - fxy) - marg
                    if t > 1e-4 * r:
                        za = max(int(np.ceil((cz - t - o[2] + marg) * inv_h)), z0, 1)
                        zb = min(int(np.floor((cz + t - o[2] - marg) * inv_h)) - 1, z1, g.lim[2] - 1)
                        stale = _stale_in(g, ix, iy, za, zb) if za <= zb else -1
                        # a fill copies whole cells only when none of their entries is stale
                        if stale == 0 or (stale > 0 and mode == 0):
                            a, b = _col(g, ix, iy, za, zb)
                            if mode == 0:
                                w += b - a - stale
                            else:
                                w = _copy_run(g.pts, g.idx, a, b, cx, cy, cz, out_i, out_d, w, cap)
                            if za > z0:
                                a, b = _col(g, ix, iy, z0, za - 1)
                                w = _run(g, a, b, cx, cy, cz, r2, gsel, mode, out_i, out_d, w, cap)
                            if zb < z1:
                                a, b = _col(g, ix, iy, zb + 1, z1)
                                w = _run(g, a, b, cx, cy, cz, r2, gsel, mode, out_i, out_d, w, cap)
                            continue
            if not dense:  # (dense: a, b are still the whole column's, from the top)
                a, b = _col(g, ix, iy, z0, z1)
            w = _run(g, a, b, cx, cy, cz, r2, gsel, mode, out_i, out_d, w, cap)
    return w


# The per-query helpers visit the main grid then the delta grid in a two-step loop,
# not two calls: _radius_one is inlined at numba-IR level, and each inlined copy is
# typed and compiled again (two copies made these helpers ~35-45 s each to compile).
# For the same reason the count, keep and fill helpers share one walk, _walk_q, with
# the mode an int64 argument, not a literal: numba types _radius_one's body once
# (it had been ~17-21 s of cold compile for each of the three), and LLVM, inlining
# _walk_q into each helper, folds the constant mode as it did before.

@jit(nrt=False, fastmath=EXACT_MATH, llvm_inline=True)
def _walk_q(main, delta, centers, radii, gsel, mode, out_i, out_d, w, cap, j):
    """Query j over both grids from ``w`` (see :func:`_radius_one`): mode 0 counts,
    mode 1 writes hits to out_*[w:cap] (and counts past ``cap``); the new ``w``."""
    for gi in range(2):
        g = main if gi == 0 else delta
        w = _radius_one(g, centers[j, 0], centers[j, 1], centers[j, 2], radii[j], gsel, mode, out_i, out_d, w, cap)
    return w


@jit(nrt=False, fastmath=EXACT_MATH, llvm_inline=True)
def _count_q(main, delta, centers, radii, gsel, no_i, no_d, j):
    zero = np.int64(0)  # int64 values, not literals: one specialisation of _walk_q (see above)
    return _walk_q(main, delta, centers, radii, gsel, zero, no_i, no_d, zero, zero, j)


@jit(nrt=False, fastmath=EXACT_MATH, llvm_inline=True)
def _keep_q(main, delta, centers, radii, gsel, keep_i, keep_d, base, k, j):
    """Count query j's hits, keeping the first ``k`` (in fill order) at keep_*[base:].
    (Offsets, not slices: a slice in a parallel loop increfs the shared buffer.)"""
    return _walk_q(main, delta, centers, radii, gsel, np.int64(1), keep_i, keep_d, base, base + k, j) - base


@jit(fastmath=EXACT_MATH)
def _sort_range(out_i, out_d, a, w):
    """Query hits ``a..w-1`` by distance, stable: ties keep the walk's order, which a
    table answered in grid slots and a CSR answer in node numbers share."""
    if w - a > 1:
        order = np.argsort(out_d[a:w], kind="mergesort")
        si = out_i[a:w][order]
        sd = out_d[a:w][order]
        out_i[a:w] = si
        out_d[a:w] = sd


@jit(nrt=False, fastmath=EXACT_MATH, llvm_inline=True)
def _swap_pairs(d, i, p, q):
    t = d[p]
    d[p] = d[q]
    d[q] = t
    u = i[p]
    i[p] = i[q]
    i[q] = u


@jit(nrt=False, fastmath=EXACT_MATH)
def _sort_pairs(d, i, a, w):
    """Sort ``d[a:w]`` and ``i[a:w]`` together, in place, by ``(d, i)`` (ascending: the
    kNN answer's order, ties in distance by node number).  Insertion sort for a short
    range, heapsort beyond: no allocation, no recursion.  (It replaced two stable
    ``np.argsort(kind="mergesort")`` passes with fancy indexing and slice assignment in
    :func:`_knn_q`, whose generic implementations compile for seconds each.)"""
    n = w - a
    if n <= 32:
        for c in range(a + 1, w):
            dc = d[c]
            ic = i[c]
            p = c - 1
            while p >= a and _before(dc, ic, d[p], i[p]):
                d[p + 1] = d[p]
                i[p + 1] = i[p]
                p -= 1
            d[p + 1] = dc
            i[p + 1] = ic
        return
    for start in range(n // 2 - 1, -1, -1):
        _sift_down(d, i, a, start, n)
    for end in range(n - 1, 0, -1):
        _swap_pairs(d, i, a, a + end)
        _sift_down(d, i, a, np.int64(0), end)


@jit(nrt=False, fastmath=EXACT_MATH)
def _sift_down(d, i, a, root, end):
    """Restore the max-heap (by ``(d, i)``) of positions ``a..a+end-1`` below ``root``."""
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        x = a + child
        if child + 1 < end and _before(d[x], i[x], d[x + 1], i[x + 1]):
            child += 1
            x += 1
        r = a + root
        if not _before(d[r], i[r], d[x], i[x]):
            return
        _swap_pairs(d, i, r, x)
        root = child


@jit(fastmath=EXACT_MATH, llvm_inline=True)
def _fill_q(main, delta, centers, radii, gsel, offsets, want_sort, out_i, out_d, j):
    a = offsets[j]
    cap = offsets[j + 1]  # the end of query j's rows: _fill_run writes misses too
    w = _walk_q(main, delta, centers, radii, gsel, np.int64(1), out_i, out_d, a, cap, j)
    if want_sort:
        _sort_range(out_i, out_d, a, w)


@jit(nrt=False, fastmath=EXACT_MATH, inline=True)
def _count_or_keep(main, delta, centers, radii, gsel, no_i, no_d, keep_i, keep_d, base, k, j):
    """Query j's count, and whether all its hits are in keep_i/keep_d.  Keeping pays
    for radii up to a few cells, where counting visits every point anyway (no whole
    cells fit inside the sphere) and answers are short: the fill then copies them
    instead of walking the cells a second time."""
    if radii[j] <= KEEP_RADIUS_CELLS * main.h[0]:
        c = _keep_q(main, delta, centers, radii, gsel, keep_i, keep_d, base, k, j)
        return c, c <= k
    return _count_q(main, delta, centers, radii, gsel, no_i, no_d, j), False


@jit(fastmath=EXACT_MATH)
def _fill_from_keep(keep_i, keep_d, base, want_sort, out_i, out_d, a, c):
    for t in range(c):
        out_i[a + t] = keep_i[base + t]
        out_d[a + t] = keep_d[base + t]
    if want_sort:
        _sort_range(out_i, out_d, a, a + c)


# Parallel versions for batches of queries (visited in ``order``, from query_order), serial
# ones for a handful (a parallel launch costs tens of microseconds on this class of
# machine).  Each is its own Python function: numba's disk cache keys on the function,
# not on the flags, so one function compiled twice could load the other variant's code.


@pjit
def radius_count(main, delta, centers, radii, gsel, order):
    counts = np.zeros(centers.shape[0], np.int64)
    no_i = np.empty(0, np.int64)
    no_d = np.empty(0, np.float64)
    for p in prange(centers.shape[0]):
        j = order[p]
        counts[j] = _count_q(main, delta, centers, radii, gsel, no_i, no_d, j)
    return counts


@jit
def grid_pair(main, delta):
    return GridPair(main, delta)


@jit(fastmath=EXACT_MATH)
def radius_count_serial(gp, centers, radii, gsel):
    main = gp.main
    delta = gp.delta
    counts = np.zeros(centers.shape[0], np.int64)
    no_i = np.empty(0, np.int64)
    no_d = np.empty(0, np.float64)
    for j in range(centers.shape[0]):
        counts[j] = _count_q(main, delta, centers, radii, gsel, no_i, no_d, j)
    return counts


@pjit
def radius_count_keep(main, delta, centers, radii, gsel, order, keep_i, keep_d, k):
    """:func:`radius_count` that also keeps up to ``k`` hits per query; ``kept[j]`` says
    they are all of them.  The p-th query visited (``j = order[p]``) keeps its hits in
    ``keep_*[p * k:(p + 1) * k]``: each thread then writes its share of the scratch front
    to back instead of at scattered places."""
    n = centers.shape[0]
    counts = np.zeros(n, np.int64)
    kept = np.zeros(n, np.bool_)
    no_i = np.empty(0, np.int64)
    no_d = np.empty(0, np.float64)
    for p in prange(n):
        j = order[p]
        c, ok = _count_or_keep(main, delta, centers, radii, gsel, no_i, no_d, keep_i, keep_d, p * k, k, j)
        counts[j] = c
        kept[j] = ok
    return counts, kept


@pjit
def radius_fill_kept(main, delta, centers, radii, gsel, offsets, want_sort, order, kept, keep_i, keep_d, k,
                     out_i, out_d):
    """The answers in CSR order (``offsets`` from the counts) into ``out_i``/``out_d``
    (at least ``offsets[-1]`` long; the caller's: fresh when they are the answer,
    reused scratch when the answer is built from them): kept ones copied, the rest
    found by a second walk that writes them."""
    n = centers.shape[0]
    for p in prange(n):
        j = order[p]
        if kept[j]:
            _fill_from_keep(keep_i, keep_d, p * k, want_sort, out_i, out_d, offsets[j], offsets[j + 1] - offsets[j])
        else:
            _fill_q(main, delta, centers, radii, gsel, offsets, want_sort, out_i, out_d, j)




@jit(fastmath=EXACT_MATH)
def radius_small(gp, centers, radii, gsel, want_sort):
    """Count and fill in one call, for a handful of queries (one dispatch, not two):
    ``(offsets, idx, d2)``; the output buffer grows as needed.  ``gp``: :class:`GridPair`."""
    main = gp.main
    delta = gp.delta
    n = centers.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    cap = 256
    out_i = np.empty(cap, np.int64)
    out_d = np.empty(cap, np.float64)
    no_i = np.empty(0, np.int64)
    no_d = np.empty(0, np.float64)
    keep_i = np.empty(KEEP_SMALL, np.int64)
    keep_d = np.empty(KEEP_SMALL, np.float64)
    # int64 values, not the literals 0 and KEEP_SMALL: with literals numba compiles a second
    # specialisation of _keep_q and _fill_from_keep (measured: +35 s of cold compile)
    zero = np.int64(0)
    ksmall = np.int64(KEEP_SMALL)
    for j in range(n):
        c, kept = _count_or_keep(main, delta, centers, radii, gsel, no_i, no_d, keep_i, keep_d, zero, ksmall, j)
        need = offsets[j] + c
        if need > cap:
            while cap < need:
                cap *= 2
            ni = np.empty(cap, np.int64)
            nd = np.empty(cap, np.float64)
            ni[: offsets[j]] = out_i[: offsets[j]]
            nd[: offsets[j]] = out_d[: offsets[j]]
            out_i = ni
            out_d = nd
        offsets[j + 1] = need
        if kept:
            _fill_from_keep(keep_i, keep_d, zero, want_sort, out_i, out_d, offsets[j], c)
        else:
            _fill_q(main, delta, centers, radii, gsel, offsets, want_sort, out_i, out_d, j)
    return offsets, out_i[: offsets[n]], out_d[: offsets[n]]


@jit(fastmath=EXACT_MATH)
def _pack_rows(offsets, idx, d2, want_dist, node_keys, node_graph, graph_keys):
    """An answer table's columns for CSR answers (node indices ``idx``, squared distances
    ``d2``), packed into one uint64 array of ``m`` rows: query numbers ``[0, m)``, node
    id words ``[m, 3m)``, graph id words ``[3m, 5m)`` and, with ``want_dist``, distances
    (float64 bits) ``[5m, 6m)``.  One returned array: boxing each array numba returns
    costs about a microsecond, as much as a small search."""
    m = idx.shape[0]
    w = hugepages(np.empty((6 if want_dist else 5) * m, np.uint64))
    q = w[:m].view(np.int64)
    for j in range(offsets.shape[0] - 1):
        _query_rows(q, offsets, j)
    nid = w[m:3 * m].reshape((m, 2))
    gid = w[3 * m:5 * m].reshape((m, 2))
    for t in range(m):
        _gather_row(node_keys, node_graph, graph_keys, idx, nid, gid, t)
    if want_dist:
        d = w[5 * m:].view(np.float64)
        for t in range(m):
            d[t] = np.sqrt(d2[t])
    return w


@jit(fastmath=EXACT_MATH)
def radius_rows(gp, centers, radii, gsel, want_sort, want_dist, node_keys, node_graph, graph_keys):
    """:func:`radius_small` with the answer table's columns gathered in the same call
    (:func:`_pack_rows`): for a single query the calls and the array boxing, not the
    search, were most of the time."""
    offsets, idx, d2 = radius_small(gp, centers, radii, gsel, want_sort)
    return _pack_rows(offsets, idx, d2, want_dist, node_keys, node_graph, graph_keys)


# --- k nearest neighbours ----------------------------------------------------
# Rings of cells around the query's cell are gathered into a candidate buffer (only
# candidates no farther than the current k-th best, by _fill_run with that bound; a
# NaN stale entry fails it); after a ring, the k-th smallest
# candidate distance (quickselect) is compared with the distance to the faces of the
# visited cube.  The k best are then sorted by (distance, node index).

@jit(nrt=False, fastmath=EXACT_MATH)
def _kth_smallest(bd, cnt, k, tmp):
    """The k-th smallest of bd[:cnt] (1 <= k <= cnt), by quickselect on a copy in tmp."""
    for i in range(cnt):
        tmp[i] = bd[i]
    lo = 0
    hi = cnt - 1
    t = k - 1
    while hi > lo:
        mid = (lo + hi) >> 1
        a, b, c = tmp[lo], tmp[mid], tmp[hi]  # median of three as the pivot
        if a < b:
            pv = b if b < c else (c if a < c else a)
        else:
            pv = a if a < c else (c if b < c else b)
        i = lo
        j = hi
        while i <= j:
            while tmp[i] < pv:
                i += 1
            while tmp[j] > pv:
                j -= 1
            if i <= j:
                tmp[i], tmp[j] = tmp[j], tmp[i]
                i += 1
                j -= 1
        if t <= j:
            hi = j
        elif t >= i:
            lo = i
        else:
            return tmp[t]
    return tmp[t]


@jit(nrt=False, fastmath=EXACT_MATH)
def _face_bound(o, h, lim, cx, cy, cz, qx, qy, qz, s_ring):
    """Squared lower bound on the distance from the query to any point outside the cube of
    cells within Chebyshev distance s_ring of its cell (qx, qy, qz); 0 when there is none.

    Along the axis where a point's cell differs by more than s_ring, a whole s_ring cells
    lie between.  Clamped cells (index 0 or lim) extend to infinity, so their faces
    don't count; clamping only puts real positions further apart."""
    lb = np.inf
    if qx - s_ring > 0:
        lb = min(lb, cx - (o[0] + (qx - s_ring) * h))
    if qx + s_ring < lim[0]:
        lb = min(lb, o[0] + (qx + s_ring + 1) * h - cx)
    if qy - s_ring > 0:
        lb = min(lb, cy - (o[1] + (qy - s_ring) * h))
    if qy + s_ring < lim[1]:
        lb = min(lb, o[1] + (qy + s_ring + 1) * h - cy)
    if qz - s_ring > 0:
        lb = min(lb, cz - (o[2] + (qz - s_ring) * h))
    if qz + s_ring < lim[2]:
        lb = min(lb, o[2] + (qz + s_ring + 1) * h - cz)
    lb = max(lb, (s_ring - 1e-6) * h)  # never looser than the plain ring bound
    lb -= 1e-9 * (abs(cx) + abs(cy) + abs(cz) + h)  # a hair below: cell rounding
    return lb * lb if lb > 0.0 else 0.0


@jit(nrt=False, fastmath=EXACT_MATH, llvm_inline=True)
def _gap(c, o, h, i, qi, marg):
    """Distance along one axis from coordinate ``c`` (in cell ``qi``) to cell ``i``'s
    points, ``marg`` short and never below 0: a cell below holds coordinates under
    ``o + (i + 1) h``, one above at least ``o + i h`` (edge cells too: what lies beyond
    the grid is clamped into them from that side)."""
    if i < qi:
        d = c - (o + (i + 1) * h)
    elif i > qi:
        d = (o + i * h) - c
    else:
        return 0.0
    d -= marg
    return d if d > 0.0 else 0.0


@jit(nrt=False, fastmath=EXACT_MATH, llvm_inline=True)
def _sq(x):
    return x * x


# The first pass over the main grid guesses how far the k-th nearest lies from the density
# of the query's own cell (GUESS_SLACK times the radius of a ball that would hold k points
# at that density) and takes in only candidates within that guess: without it every point
# of the first ring of cells (27 cells, ~7 times k on uniform data) went into the buffer
# and the k-th smallest was selected among them all.  A guess that proves too small (fewer
# than k within it once nothing nearer can come) starts the query's search over without.
GUESS_SLACK = 1.25


@jit(nrt=False, fastmath=EXACT_MATH)
def _knn_grid(g, cx, cy, cz, gsel, k, bd, bi, tmp, cnt, bound, guess):
    """Gathers this grid's candidates for the k nearest; returns ``(cnt, bound)`` with
    ``bound`` the k-th smallest candidate distance once there are k.  ``guess`` (1):
    cap the candidates by a guessed k-th distance (see GUESS_SLACK) after the first cell."""
    if g.pts.shape[0] == 0:
        return cnt, bound
    o = g.origin
    h = g.h[0]
    inv_h = 1.0 / h
    lim = g.lim
    qx = _cell(cx, o[0], inv_h, lim[0])
    qy = _cell(cy, o[1], inv_h, lim[1])
    qz = _cell(cz, o[2], inv_h, lim[2])
    dense = g.dst.shape[0] > 0
    # give up on rings (and scan everything left once) past this much probing work
    budget = 2 * g.dims[0] * g.dims[1] if dense else g.cells.shape[0]
    visited = 0
    marg = 1e-9 * (abs(cx) + abs(cy) + abs(cz) + abs(o[0]) + abs(o[1]) + abs(o[2])
                   + h * float(lim[0] + lim[1] + lim[2] + 3))
    cnt0 = cnt
    bound0 = bound
    cap = np.inf  # the guessed k-th distance (squared): candidates farther are not taken
    s_ring = np.int64(0)  # not the literal 0: a call typed before the loop's phi would compile twice
    while True:
        # cells at Chebyshev distance s_ring from the query's (clamped) cell, column by column
        x0 = max(qx - s_ring, 0)
        x1 = min(qx + s_ring, lim[0])
        y0 = max(qy - s_ring, 0)
        y1 = min(qy + s_ring, lim[1])
        z0 = max(qz - s_ring, 0)
        z1 = min(qz + s_ring, lim[2])
        # Once k candidates are in, a ring's cells farther than the k-th (``bound``, a
        # squared distance) cannot add one: skip them (their points would all fail the
        # ``d2 <= bound`` test). Distances to a cell are taken a margin short, so a
        # rounding in the cell of a point never skips it; ties stay (``> bound`` only).
        # With a guess, the same for cells beyond it.
        eff = min(bound, cap)
        prune = eff < np.inf
        for ix in range(x0, x1 + 1):
            edge_x = ix == qx - s_ring or ix == qx + s_ring
            dx = 0.0
            if prune:
                dx = _gap(cx, o[0], h, ix, qx, marg)
            for iy in range(y0, y1 + 1):
                dxy = 0.0
                if prune:
                    dy = _gap(cy, o[1], h, iy, qy, marg)
                    dxy = dx * dx + dy * dy
                    if dxy > eff:
                        continue
                if edge_x or iy == qy - s_ring or iy == qy + s_ring:
                    za, zb = z0, z1
                    if prune:  # only the cells of the column the bound's sphere reaches
                        tz = np.sqrt(eff - dxy) + marg
                        za = max(z0, _cell(cz - tz, o[2], inv_h, lim[2]))
                        zb = min(z1, _cell(cz + tz, o[2], inv_h, lim[2]))
                        if za > zb:
                            continue
                    a, b = _col_llvm(g, ix, iy, za, zb)
                    visited += 1 if dense else zb - za + 1
                    cnt = _fill_run(g.pts, g.idx, g.grp, a, b, cx, cy, cz, eff, gsel, bi, bd, cnt, bi.shape[0])
                else:
                    za = qz - s_ring
                    if za >= 0 and (not prune or dxy + _sq(_gap(cz, o[2], h, za, qz, marg)) <= eff):
                        a, b = _col_llvm(g, ix, iy, za, za)
                        cnt = _fill_run(g.pts, g.idx, g.grp, a, b, cx, cy, cz, eff, gsel, bi, bd, cnt, bi.shape[0])
                    zb = qz + s_ring
                    if zb <= lim[2] and (not prune or dxy + _sq(_gap(cz, o[2], h, zb, qz, marg)) <= eff):
                        a, b = _col_llvm(g, ix, iy, zb, zb)
                        cnt = _fill_run(g.pts, g.idx, g.grp, a, b, cx, cy, cz, eff, gsel, bi, bd, cnt, bi.shape[0])
                    visited += 1 if dense else 2
        if cnt >= k:
            bound = _kth_smallest(bd, cnt, k, tmp)
        whole = x0 == 0 and y0 == 0 and z0 == 0 and x1 == lim[0] and y1 == lim[1] and z1 == lim[2]
        if cap < np.inf:
            # guessing: an answer only when the k-th lies within the guess (every point
            # that near has been taken); nothing more within it can come once the faces
            # of the visited cube lie beyond it: then the guess was too small, start over
            fb = np.inf if whole else _face_bound(o, h, lim, cx, cy, cz, qx, qy, qz, s_ring)
            if cnt >= k and bound <= cap and fb > bound:
                return cnt, bound
            if fb > cap or visited > budget:
                cnt, bound, cap, s_ring, visited = cnt0, bound0, np.inf, np.int64(0), 0
                guess = 0  # once: the search over takes every candidate, as without a guess
                continue
            s_ring += 1
            continue
        if guess and s_ring == 0 and cnt < k and cnt > cnt0 and not whole:
            # the density of the query's own cell: a ball of radius r holds k points at it
            # when r^3 = 3 k h^3 / (4 pi n)
            r = GUESS_SLACK * h * (3.0 * k / (4.0 * np.pi * (cnt - cnt0))) ** (1.0 / 3.0)
            cap = r * r
            s_ring += 1
            continue
        if whole:
            return cnt, bound
        if cnt >= k and _face_bound(o, h, lim, cx, cy, cz, qx, qy, qz, s_ring) > bound:
            return cnt, bound
        if visited > budget:
            # sparse neighbourhood: finish by visiting everything outside the rings once
            cnt = _knn_rest(g, cx, cy, cz, gsel, bound, bd, bi, cnt, qx, qy, qz, s_ring)
            if cnt >= k:
                bound = _kth_smallest(bd, cnt, k, tmp)
            return cnt, bound
        s_ring += 1


@jit(nrt=False, fastmath=EXACT_MATH)
def _knn_rest(g, cx, cy, cz, gsel, bound, bd, bi, cnt, qx, qy, qz, done):
    """Every point outside the cube of cells within Chebyshev distance ``done`` of (qx, qy, qz)."""
    if g.dst.shape[0] > 0:
        zero = np.int64(0)  # (a literal 0 makes _col_llvm a second specialisation)
        za = qz - done  # the z cells already visited in columns inside the cube
        zb = qz + done
        for ix in range(g.dims[0]):
            for iy in range(g.dims[1]):
                if abs(ix - qx) <= done and abs(iy - qy) <= done:
                    if za > 0:
                        a, b = _col_llvm(g, ix, iy, zero, min(za - 1, g.lim[2]))
                        cnt = _fill_run(g.pts, g.idx, g.grp, a, b, cx, cy, cz, bound, gsel, bi, bd, cnt, bi.shape[0])
                    if zb < g.lim[2]:
                        a, b = _col_llvm(g, ix, iy, max(zb + 1, zero), g.lim[2])
                        cnt = _fill_run(g.pts, g.idx, g.grp, a, b, cx, cy, cz, bound, gsel, bi, bd, cnt, bi.shape[0])
                else:
                    a, b = _col_llvm(g, ix, iy, zero, g.lim[2])
                    cnt = _fill_run(g.pts, g.idx, g.grp, a, b, cx, cy, cz, bound, gsel, bi, bd, cnt, bi.shape[0])
        return cnt
    for c in range(g.cells.shape[0]):
        s = g.cells[c]
        ix, iy, iz = _decode(g.tkeys[s])
        if abs(ix - qx) <= done and abs(iy - qy) <= done and abs(iz - qz) <= done:
            continue  # already visited in the rings
        a = np.int64(g.tstart[s])
        cnt = _fill_run(g.pts, g.idx, g.grp, a, a + g.tcount[s], cx, cy, cz, bound, gsel, bi, bd, cnt, bi.shape[0])
    return cnt


@jit(nrt=False, fastmath=EXACT_MATH)
def _before(d1, i1, d2, i2):
    return d1 < d2 or (d1 == d2 and i1 < i2)


@jit(nrt=False, fastmath=EXACT_MATH)
def _knn_q(main, delta, centers, k, gsel, out_i, out_d, j, bd, bi, tmp):
    """The k nearest to center j into row j of out_i/out_d, sorted by (distance, node
    index); returns how many (fewer than k only when fewer nodes match)."""
    cx, cy, cz = centers[j, 0], centers[j, 1], centers[j, 2]
    one = np.int64(1)  # not Literal[int] arguments: a literal compiles a second
    # specialisation of the callee (see radius_small)
    cnt, bound = _knn_grid(main, cx, cy, cz, gsel, k, bd, bi, tmp, np.int64(0), np.inf, one)
    cnt, bound = _knn_grid(delta, cx, cy, cz, gsel, k, bd, bi, tmp, cnt, bound, one - one)
    # keep the candidates no farther than the k-th (ties included), sort them, take k
    m = 0
    for c in range(cnt):
        if bd[c] <= bound:
            bd[m] = bd[c]
            bi[m] = bi[c]
            m += 1
    _sort_pairs(bd, bi, np.int64(0), m)
    size = min(m, k)
    for c in range(size):
        out_d[j, c] = bd[c]
        out_i[j, c] = bi[c]
    return size


@pjit
def knn(main, delta, centers, k, gsel, order, bd_all, bi_all, tmp_all):
    """``(counts, idx (n, k), d2 (n, k))``: per query the up-to-k nearest, ascending.
    Queries run in chunks; each thread uses its row of the candidate scratch ``*_all``
    (``(threads, points + 1)``, the caller's and reused: only the pages queries touch
    become resident).  Each chunk allocated its own three buffers before, 192 fresh
    allocations of the index's size a call, their touched pages faulted in anew."""
    n = centers.shape[0]
    out_i = np.full((n, k), -1, np.int64)
    out_d = np.full((n, k), np.inf)
    counts = np.zeros(n, np.int64)
    nchunk = min(n, 64)
    per = (n + nchunk - 1) // max(nchunk, 1)
    for c in prange(nchunk):
        t = numba.get_thread_id()
        bd = bd_all[t]
        bi = bi_all[t]
        tmp = tmp_all[t]
        for p in range(c * per, min(n, (c + 1) * per)):
            j = order[p]
            counts[j] = _knn_q(main, delta, centers, k, gsel, out_i, out_d, j, bd, bi, tmp)
    return counts, out_i, out_d


@jit(fastmath=EXACT_MATH)
def knn_serial(gp, centers, k, gsel, bd, bi, tmp):
    """:func:`knn` on the calling thread.  ``bd``, ``bi``, ``tmp``: candidate scratch with
    room for every point (the caller keeps it: allocating ~24 bytes a point per call is an
    mmap, page faults and an munmap, ~40 µs for 1M points)."""
    main = gp.main
    delta = gp.delta
    n = centers.shape[0]
    out_i = np.full((n, k), -1, np.int64)
    out_d = np.full((n, k), np.inf)
    counts = np.zeros(n, np.int64)
    for j in range(n):
        counts[j] = _knn_q(main, delta, centers, k, gsel, out_i, out_d, j, bd, bi, tmp)
    return counts, out_i, out_d


@jit(fastmath=EXACT_MATH)
def knn_rows(gp, centers, k, gsel, bd, bi, tmp, node_keys, node_graph, graph_keys):
    """:func:`knn_serial` packed as an answer table (:func:`_pack_rows`, with distances)."""
    counts, out_i, out_d = knn_serial(gp, centers, k, gsel, bd, bi, tmp)
    n = centers.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    for j in range(n):
        offsets[j + 1] = offsets[j] + counts[j]
    idx = np.empty(offsets[n], np.int64)
    d2 = np.empty(offsets[n], np.float64)
    for j in range(n):
        for t in range(counts[j]):
            idx[offsets[j] + t] = out_i[j, t]
            d2[offsets[j] + t] = out_d[j, t]
    return _pack_rows(offsets, idx, d2, np.bool_(True), node_keys, node_graph, graph_keys)


# --- boxes -------------------------------------------------------------------

@jit(nrt=False, fastmath=EXACT_MATH)
def _box_run(pts, idx, grp, a, b, lo, hi, gsel, mode, out_i, w, cap):
    """Hits of points a..b counted from ``w``; with mode 1 the ones below ``cap`` written."""
    for q in range(a, b):
        if gsel != -1 and grp[q] != gsel:
            continue
        # NaN (a stale entry) fails every comparison
        if (lo[0] <= pts[q, 0] <= hi[0] and lo[1] <= pts[q, 1] <= hi[1]
                and lo[2] <= pts[q, 2] <= hi[2]):
            if mode == 1 and w < cap:
                out_i[w] = idx[q]
            w += 1
    return w


@jit(nrt=False, fastmath=EXACT_MATH)
def _box_grid(g, lo, hi, gsel, mode, out_i, w, cap):
    if g.pts.shape[0] == 0:
        return w
    o = g.origin
    inv_h = 1.0 / g.h[0]
    x0 = _cell(lo[0], o[0], inv_h, g.lim[0])
    x1 = _cell(hi[0], o[0], inv_h, g.lim[0])
    y0 = _cell(lo[1], o[1], inv_h, g.lim[1])
    y1 = _cell(hi[1], o[1], inv_h, g.lim[1])
    z0 = _cell(lo[2], o[2], inv_h, g.lim[2])
    z1 = _cell(hi[2], o[2], inv_h, g.lim[2])
    if g.dst.shape[0] == 0 and float(x1 - x0 + 1) * float(y1 - y0 + 1) * float(z1 - z0 + 1) > g.cells.shape[0]:
        for c in range(g.cells.shape[0]):
            s = g.cells[c]
            ix, iy, iz = _decode(g.tkeys[s])
            if ix < x0 or ix > x1 or iy < y0 or iy > y1 or iz < z0 or iz > z1:
                continue
            a = np.int64(g.tstart[s])
            w = _box_run(g.pts, g.idx, g.grp, a, a + g.tcount[s], lo, hi, gsel, mode, out_i, w, cap)
        return w
    for ix in range(x0, x1 + 1):
        for iy in range(y0, y1 + 1):
            a, b = _col_llvm(g, ix, iy, z0, z1)
            w = _box_run(g.pts, g.idx, g.grp, a, b, lo, hi, gsel, mode, out_i, w, cap)
    return w


@jit
def box_query(gp, lo, hi, gsel):
    main = gp.main
    delta = gp.delta
    dummy = np.empty(0, np.int64)
    count, fill, zero = np.int64(0), np.int64(1), np.int64(0)  # one specialisation of _box_grid
    n = _box_grid(main, lo, hi, gsel, count, dummy, zero, zero)
    n = _box_grid(delta, lo, hi, gsel, count, dummy, n, zero)
    out = np.empty(n, np.int64)
    w = _box_grid(main, lo, hi, gsel, fill, out, zero, n)
    _box_grid(delta, lo, hi, gsel, fill, out, w, n)
    return out


@jit
def box_rows_first(gp, lo, hi, gsel, limit, node_keys, node_graph, graph_keys):
    """``(rows, total)``: the first ``limit`` hits of :func:`box_query` packed as an answer
    table (:func:`_pack_rows`), and how many hits there are, in one walk: a page of a box
    holding millions of nodes gathers the page's ids only (the whole answer's were
    gathered and then cut, 16 bytes and a random read a hit)."""
    main = gp.main
    delta = gp.delta
    fill, zero = np.int64(1), np.int64(0)
    out = np.empty(limit, np.int64)
    w = _box_grid(main, lo, hi, gsel, fill, out, zero, limit)
    total = _box_grid(delta, lo, hi, gsel, fill, out, w, limit)
    k = min(total, limit)
    offsets = np.zeros(2, np.int64)
    offsets[1] = k
    return _pack_rows(offsets, out[:k], np.empty(0, np.float64), np.bool_(False), node_keys, node_graph,
                      graph_keys), total


@jit
def box_rows(gp, lo, hi, gsel, node_keys, node_graph, graph_keys):
    """:func:`box_query` packed as an answer table (:func:`_pack_rows`, one query)."""
    idx = box_query(gp, lo, hi, gsel)
    offsets = np.zeros(2, np.int64)
    offsets[1] = idx.shape[0]
    return _pack_rows(offsets, idx, np.empty(0, np.float64), np.bool_(False), node_keys, node_graph, graph_keys)
