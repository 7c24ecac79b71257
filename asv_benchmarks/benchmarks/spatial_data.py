"""Seeded spatial datasets: 1M uniform points in [0,100]^3 and 1M in ~200 Gaussian clusters."""
import functools

import numpy as np

from cim_flow import Engine

from .datasets import T0, _batch


@functools.lru_cache(maxsize=4)
def points(kind, n, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(0, 100, size=(n, 3))
    centres = rng.uniform(0, 100, size=(200, 3))
    return centres[rng.integers(0, 200, n)] + rng.normal(0, 1.0, size=(n, 3))


@functools.lru_cache(maxsize=4)
def queries(kind, n_points, n_queries, seed=1):
    rng = np.random.default_rng(seed)
    p = points(kind, n_points)
    return p[rng.integers(0, n_points, n_queries)] + rng.normal(0, 0.5, size=(n_queries, 3))


def radius_for(n_points, neighbours=30):
    """Radius giving ~`neighbours` neighbours on the uniform set (density n / 100^3)."""
    density = n_points / 100.0 ** 3
    return float(np.cbrt(neighbours / (4.0 / 3.0 * np.pi * density)))


@functools.lru_cache(maxsize=4)
def node_spacing(kind, n_points, sample=20_000, seed=4):
    """Typical node spacing: the median nearest-neighbour distance (over a sample of nodes)."""
    from scipy.spatial import cKDTree

    p = points(kind, n_points)
    pick = np.random.default_rng(seed).choice(n_points, min(sample, n_points), replace=False)
    return float(np.median(cKDTree(p).query(p[pick], k=2)[0][:, 1]))


# The radius sweep: the "a tenth to ten times the typical node spacing", the
# 30-neighbour radius of the headline figures, and ten times that (~30k neighbours).
RADII = ["spacing_x0.1", "spacing_x1", "spacing_x10", "30nn", "30nn_x10"]


def sweep_radius(name, kind, n_points):
    if name.startswith("spacing_x"):
        return float(name[len("spacing_x"):]) * node_spacing(kind, n_points)
    return radius_for(n_points) * (10.0 if name == "30nn_x10" else 1.0)


def node_batches(kind, n, chunk=262_144, n_graphs=200):
    p = points(kind, n)
    rng = np.random.default_rng(2)
    gids = rng.integers(1, 2**63, size=(n_graphs, 2), dtype=np.uint64)
    out = [_batch(np.full(n_graphs, 1), T0 + np.arange(n_graphs), gids)]
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        idx = np.arange(a, a + m, dtype=np.uint64)
        nid = np.stack([idx + np.uint64(1), np.full(m, 5, np.uint64)], axis=1)
        out.append(_batch(np.full(m, 10), T0 + idx.astype(np.int64), gids[np.arange(a, a + m) % n_graphs],
                          nid=(nid, np.ones(m, bool)), xyz=(p[a:a + m], np.ones(m, bool))))
    return out


def _moved(sel, newp, t0, n_graphs=200):
    """NodeMoved rows for nodes ``sel`` (ids and graphs as :func:`node_batches` gave them)
    to ``newp``, at times from ``t0``."""
    m = sel.shape[0]
    gids = np.random.default_rng(2).integers(1, 2**63, size=(n_graphs, 2), dtype=np.uint64)
    nid = np.stack([sel.astype(np.uint64) + np.uint64(1), np.full(m, 5, np.uint64)], axis=1)
    return _batch(np.full(m, 12), t0 + np.arange(m), gids[sel % n_graphs], nid=(nid, np.ones(m, bool)),
                  xyz=(newp, np.ones(m, bool)))


def move_batch(kind, n, frac=0.01, seed=3):
    """NodeMoved for `frac` of the nodes (small jitter), and the moved positions."""
    rng = np.random.default_rng(seed)
    p = points(kind, n)
    sel = rng.choice(n, int(n * frac), replace=False)
    newp = p[sel] + rng.normal(0, 0.5, size=(sel.shape[0], 3))
    return _moved(sel, newp, T0 + n), sel, newp


@functools.lru_cache(maxsize=4)
def small_move_batches(kind, n, count, size, seed=6):
    """``count`` NodeMoved batches of ``size`` random nodes each (jitter 0.5), and each
    batch's ``(moved rows, new positions)``."""
    rng = np.random.default_rng(seed)
    p = points(kind, n)
    batches, moves = [], []
    for k in range(count):
        sel = rng.choice(n, size, replace=False)
        newp = p[sel] + rng.normal(0, 0.5, size=(size, 3))
        batches.append(_moved(sel, newp, T0 + n + k * size))
        moves.append((sel, newp))
    return tuple(batches), tuple(moves)


@functools.lru_cache(maxsize=2)
def engine_with(kind, n):
    eng = Engine(capacity=256, node_capacity=n + 16)
    for b in node_batches(kind, n):
        eng.apply(b)
    return eng
