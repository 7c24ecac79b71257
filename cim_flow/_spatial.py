"""The spatial index the Engine keeps over its live, positioned nodes.

Built lazily on the first spatial query, then kept current after every
``apply``: nodes that moved, appeared or died leave the main grid (their
entries are marked stale) and join a small delta grid rebuilt each batch;
when the delta passes ``rebuild_fraction`` of the main grid, the next query
rebuilds the main grid.  Queries always see exactly the state after the last
applied batch.
"""
from __future__ import annotations

import numpy as np

from kernels import spatial as ks

TARGET_OCCUPANCY = 8.0


def _empty_grid():
    return ks.Grid(
        origin=np.zeros(3), h=np.ones(1), tkeys=np.full(16, ks.EMPTY, np.uint64),
        tstart=np.zeros(16, np.int32), tcount=np.zeros(16, np.int32),
        pts=np.zeros((0, 3)), idx=np.zeros(0, np.int32), grp=np.zeros(0, np.int32),
        stale=np.zeros(0, np.uint8), cells=np.zeros(0, np.int32))


def choose_cell_size(pos, nodes, lo, hi) -> float:
    """Cell size giving about TARGET_OCCUPANCY points per occupied cell.

    Starts from the bounding box, then corrects for clustering with two
    occupancy probes on a 1/8 subsample at twice the cell size (same expected
    points per cell as the full set at the cell size itself).
    """
    m = nodes.shape[0]
    ext = np.maximum(hi - lo, 1e-9)
    h = float(np.cbrt(np.prod(ext) / max(m, 1) * TARGET_OCCUPANCY))
    if m < 64:
        return max(h, 1e-9)
    sample = np.arange(0, m, 8, dtype=np.int64)
    for _ in range(3):
        occ = ks.occupancy(pos, nodes, lo, 2.0 * h, sample)
        if 0.5 * TARGET_OCCUPANCY <= occ <= 2.0 * TARGET_OCCUPANCY:
            break
        h *= float(np.cbrt(TARGET_OCCUPANCY / max(occ, 1.0)))
    return max(h, 1e-9)


class SpatialIndex:
    def __init__(self, rebuild_fraction: float = 0.05):
        self.rebuild_fraction = rebuild_fraction
        self.main = _empty_grid()
        self.delta = _empty_grid()
        self.where = np.full(0, -1, np.int32)  # node -> main slot, -1 never indexed, -2 in delta
        self.delta_nodes = np.zeros(0, np.int64)
        self.built = False
        self.stale_count = 0
        self.builds = 0

    # -- build ------------------------------------------------------------------
    def build(self, N) -> None:
        pos = N.pos
        live, lo, hi = ks.live_points(N.alive, pos, int(N.meta[0]))
        self.where = np.full(N.alive.shape[0], -1, np.int32)
        if live.size:
            h = choose_cell_size(pos, live, lo, hi)
            self.main = self._grid(pos, live, N.graph, lo, h)
            ks.set_where(self.where, self.main.idx)
        else:
            self.main = _empty_grid()
        self.delta = _empty_grid()
        self.delta_nodes = np.zeros(0, np.int64)
        self.stale_count = 0
        self.built = True
        self.builds += 1

    @staticmethod
    def _grid(pos, nodes, graph, origin, h):
        origin = np.ascontiguousarray(origin, np.float64)
        size = 16
        while size < 4 * nodes.shape[0] / TARGET_OCCUPANCY:
            size *= 2
        while True:
            tkeys, tstart, tcount, pts, idx, grp, cells = ks.grid_build(pos, nodes, graph, origin, float(h), size)
            if tcount[0] != -1:
                break
            size *= 4
        return ks.Grid(origin=origin, h=np.array([h]), tkeys=tkeys, tstart=tstart, tcount=tcount,
                       pts=pts, idx=idx, grp=grp, stale=np.zeros(pts.shape[0], np.uint8), cells=cells)

    # -- incremental ------------------------------------------------------------
    def update(self, N, dirty: np.ndarray) -> None:
        """Bring the index up to date after a batch changed nodes ``dirty``."""
        if not self.built or dirty.size == 0:
            return
        if self.where.shape[0] < N.alive.shape[0]:
            w = np.full(N.alive.shape[0], -1, np.int32)
            w[: self.where.shape[0]] = self.where
            self.where = w
        before = self.delta_nodes.size
        newly = self.where[dirty] != -2
        fresh = np.unique(dirty[newly])
        self.stale_count += int(ks.mark_stale(self.where, self.main.stale, fresh))
        if fresh.size:
            self.delta_nodes = np.concatenate([self.delta_nodes, fresh])
        m = self.main.pts.shape[0]
        if self.delta_nodes.size > max(self.rebuild_fraction * m, 4096):
            self.built = False  # rebuilt on the next query
            return
        d = self.delta_nodes
        keep = N.alive[d].astype(bool) & ~np.isnan(N.pos[d, 0])
        live = d[keep]
        if live.size == 0:
            self.delta = _empty_grid()
        else:
            if m:
                origin, h = self.main.origin, float(self.main.h[0])
            else:
                p = N.pos[live]
                origin = p.min(axis=0)
                h = choose_cell_size(N.pos, live, origin, p.max(axis=0))  # delta without a main grid
            self.delta = self._grid(N.pos, live, N.graph, origin, h)
        del before

    def ready(self, N) -> None:
        if not self.built:
            self.build(N)
