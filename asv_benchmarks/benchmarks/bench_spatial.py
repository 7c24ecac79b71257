"""Spatial index vs scipy's cKDTree, same data, same run: build, update, batch and single queries."""
import functools
import time

import numpy as np
from scipy.spatial import cKDTree

from cim_flow import Engine

from .common import SIZES
from .spatial_data import (RADII, engine_with, move_batch, node_batches, points, queries, radius_for,
                           small_move_batches, sweep_radius)

KINDS = ["uniform", "clustered"]


def _load(bench, kind, n_queries=0):
    """The shared (cached) dataset, engine and query points for one benchmark class."""
    bench.n = SIZES["points"]
    bench.pts = points(kind, bench.n)
    bench.eng = engine_with(kind, bench.n)
    if n_queries:
        bench.q = queries(kind, bench.n, n_queries)


class Build:
    params = KINDS
    param_names = ["data"]
    timeout = 600

    def setup(self, kind):
        _load(self, kind)
        self.eng._spatial.build(self.eng._p.N)

    def time_grid_build(self, kind):
        self.eng._spatial.build(self.eng._p.N)

    def time_ckdtree_build_default(self, kind):
        cKDTree(self.pts)

    def time_ckdtree_build_fast(self, kind):
        cKDTree(self.pts, balanced_tree=False, compact_nodes=False)


@functools.lru_cache(maxsize=None)
def _warm_update(kind):
    """Load the update path's kernels on a small engine first: with --quick asv times a
    single call, which otherwise includes loading them from numba's cache (uniform read
    407 ms once, 14 ms on a re-run)."""
    eng = Engine(capacity=16, node_capacity=4096)
    for b in node_batches(kind, 2000):
        eng.apply(b)
    eng.nodes_within([50.0, 50.0, 50.0], 1.0)  # builds the index, so the next apply updates it
    eng.apply(move_batch(kind, 2000)[0])
    eng.nodes_within([50.0, 50.0, 50.0], 1.0)


class Update:
    """Index brought up to date after 1% of the points moved (the apply itself is not timed)."""

    params = KINDS
    param_names = ["data"]
    timeout = 600
    number = 1
    repeat = (5, 10, 120)

    def setup(self, kind):
        # asv runs setup before every sample: a fresh index, then the moves applied with
        # the index detached, so the timed call is exactly the index update.
        _warm_update(kind)
        self.n = SIZES["points"]
        self.eng = engine_with(kind, self.n)
        self.batch, self.sel, self.newp = move_batch(kind, self.n)
        self.pts_after = points(kind, self.n).copy()
        self.pts_after[self.sel] = self.newp
        sp = self.eng._spatial
        sp.build(self.eng._p.N)
        sp.built = False
        self.eng.apply(self.batch)
        self.dirty = self.eng.last_dirty.copy()
        sp.built = True

    def time_grid_update_1pct(self, kind):
        # update marks the moved points stale; the delta grid they move to is built by the
        # next query (ready): both are timed, so the index is ready to answer
        sp, N = self.eng._spatial, self.eng._p.N
        sp.update(N, self.dirty)
        sp.ready(N)

    def time_ckdtree_rebuild_1pct(self, kind):
        cKDTree(self.pts_after)

    def time_ckdtree_rebuild_fast_1pct(self, kind):
        cKDTree(self.pts_after, balanced_tree=False, compact_nodes=False)


class IngestWithQueries:
    """Moving nodes under queries: 64 cycles of a 15-node batch of moves followed by one
    radius query (~30 neighbours), over 200k nodes.  The engine keeps its index current
    (the delta grid patched in place by each batch); its peers in the same run: the
    engine with the delta grid rebuilt for every query (its way until 2026-11-29), and
    cKDTree rebuilt after every batch (the peers' way: the cost the issue says to beat).
    Each sample starts from a fresh main grid and an empty delta."""

    params = KINDS
    param_names = ["data"]
    timeout = 900
    number = 1
    repeat = (3, 5, 120)
    N = 200_000
    CYCLES = 64

    def setup(self, kind):
        self.eng = engine_with(kind, self.N)
        self.batches, self.moves = small_move_batches(kind, self.N, self.CYCLES, 15)
        self.q = queries(kind, self.N, self.CYCLES)
        self.r = radius_for(self.N)
        self.pts = points(kind, self.N).copy()
        sp, N = self.eng._spatial, self.eng._p.N
        sp.build(N)
        for rebuild in (False, True):  # load every kernel of both engine variants first
            self._cycle(self.batches[0], self.q[0], rebuild)
        sp.build(N)

    def _cycle(self, batch, center, rebuild):
        self.eng.apply(batch)
        if rebuild:
            self.eng._spatial._delta_stale = True  # as if patching were not there
        self.eng.nodes_within(center, self.r)

    def time_engine(self, kind):
        for b, c in zip(self.batches, self.q):
            self._cycle(b, c, False)

    def time_engine_delta_rebuilt_per_query(self, kind):
        for b, c in zip(self.batches, self.q):
            self._cycle(b, c, True)

    def time_ckdtree_rebuilt_per_batch(self, kind):
        pts = self.pts
        for (sel, newp), c in zip(self.moves, self.q):
            pts[sel] = newp
            cKDTree(pts, balanced_tree=False, compact_nodes=False).query_ball_point(c, self.r)


class RadiusBatch:
    """10k query points; radii: 0.1x, 1x, 10x the median nearest-neighbour distance, the
    radius giving ~30 neighbours on the uniform set, and 10x that."""

    params = (KINDS, RADII)
    param_names = ["data", "radius"]
    timeout = 900

    def setup(self, kind, scale):
        _load(self, kind, SIZES["queries"])
        self.r = sweep_radius(scale, kind, self.n)
        if scale == "30nn_x10":
            self.q = self.q[:1000]  # ~30k neighbours each: keep output (30M) bounded
        # load both paths' kernels (a few queries run serially, a batch in parallel): asv
        # --quick times one call, which would otherwise include loading them
        for q in (self.q[:2], self.q[:128]):
            self.eng.nodes_within(q, self.r)
            self.eng.radius_csr(q, self.r)
            self.eng.nodes_within(q, self.r, count_only=True)
        self.tree = cKDTree(self.pts)

    def time_engine_nodes_within(self, kind, scale):
        self.eng.nodes_within(self.q, self.r)

    def time_engine_radius_csr(self, kind, scale):
        # node indices in CSR form: the like-for-like peer of cKDTree's index lists
        self.eng.radius_csr(self.q, self.r)

    def time_engine_count_only(self, kind, scale):
        self.eng.nodes_within(self.q, self.r, count_only=True)

    def time_ckdtree_query_ball_point(self, kind, scale):
        self.tree.query_ball_point(self.q, self.r, workers=-1)

    def time_ckdtree_return_length(self, kind, scale):
        self.tree.query_ball_point(self.q, self.r, workers=-1, return_length=True)


class KNN:
    params = KINDS
    param_names = ["data"]
    timeout = 600

    def setup(self, kind):
        _load(self, kind, SIZES["queries"])
        for q in (self.q[:2], self.q[:128]):  # the serial and the parallel path (see RadiusBatch)
            self.eng.nearest(q, 30)
            self.eng.nearest_indices(q, 30)
        self.tree = cKDTree(self.pts)

    def time_engine_nearest_k30(self, kind):
        self.eng.nearest(self.q, 30)

    def time_engine_nearest_indices_k30(self, kind):
        # index and distance arrays: the like-for-like peer of cKDTree.query
        self.eng.nearest_indices(self.q, 30)

    def time_ckdtree_query_k30(self, kind):
        self.tree.query(self.q, k=30, workers=-1)


class SingleQuery:
    """One radius query from Python: p50/p99 over 2,000 calls (µs)."""

    params = KINDS
    param_names = ["data"]
    timeout = 600

    def setup(self, kind):
        _load(self, kind, 2000)
        self.r = radius_for(self.n)
        self.eng.nodes_within(self.q[0], self.r)
        self.eng.radius_csr(self.q[0], self.r)
        self.tree = cKDTree(self.pts)

    def _lat(self, fn):
        lat = np.empty(len(self.q))
        for i, c in enumerate(self.q):
            t = time.perf_counter()
            fn(c)
            lat[i] = time.perf_counter() - t
        return lat * 1e6

    def _engine(self, c):
        return self.eng.nodes_within(c, self.r)

    def _csr(self, c):
        return self.eng.radius_csr(c, self.r)

    def _ckdtree(self, c):
        return self.tree.query_ball_point(c, self.r)

    def _count(self, c):
        return self.eng.nodes_within(c, self.r, count_only=True)

    def _ckdtree_count(self, c):
        return self.tree.query_ball_point(c, self.r, return_length=True)

    # the table API (pa.Table out), the index API (numpy CSR out) and cKDTree (list out)
    def track_engine_single_p50_us(self, kind):
        return float(np.percentile(self._lat(self._engine), 50))

    def track_engine_single_p99_us(self, kind):
        return float(np.percentile(self._lat(self._engine), 99))

    def track_engine_csr_single_p50_us(self, kind):
        return float(np.percentile(self._lat(self._csr), 50))

    def track_engine_csr_single_p99_us(self, kind):
        return float(np.percentile(self._lat(self._csr), 99))

    def track_ckdtree_single_p50_us(self, kind):
        return float(np.percentile(self._lat(self._ckdtree), 50))

    def track_ckdtree_single_p99_us(self, kind):
        return float(np.percentile(self._lat(self._ckdtree), 99))

    # counts only: nodes_within(count_only=True) against cKDTree's return_length
    def track_engine_count_single_p50_us(self, kind):
        return float(np.percentile(self._lat(self._count), 50))

    def track_engine_count_single_p99_us(self, kind):
        return float(np.percentile(self._lat(self._count), 99))

    def track_ckdtree_count_single_p50_us(self, kind):
        return float(np.percentile(self._lat(self._ckdtree_count), 50))

    def track_ckdtree_count_single_p99_us(self, kind):
        return float(np.percentile(self._lat(self._ckdtree_count), 99))

    for _f in (track_engine_single_p50_us, track_engine_single_p99_us, track_engine_csr_single_p50_us,
               track_engine_csr_single_p99_us, track_ckdtree_single_p50_us, track_ckdtree_single_p99_us,
               track_engine_count_single_p50_us, track_engine_count_single_p99_us,
               track_ckdtree_count_single_p50_us, track_ckdtree_count_single_p99_us):
        _f.unit = "us"
    del _f
