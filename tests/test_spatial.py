"""Spatial queries vs brute force (tests/reference.py) and scipy's cKDTree."""
import random
import uuid

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from cim_flow import EVENT_SCHEMA, Engine, EventType
from reference import RefProjection, brute_box, brute_knn, brute_radius
from streams import random_rows, rows_to_batch


def _ev(kind, g, t, **kw):
    r = {c: None for c in EVENT_SCHEMA.names}
    r.update(event_type=int(kind), graph_id=g, occurred_at=t, **kw)
    return r


def engine_with_points(points, n_graphs=1, seed=0):
    """Engine holding one node per point; returns (engine, node ids, graph ids per point)."""
    rng = np.random.default_rng(seed)
    gids = [uuid.UUID(int=int(rng.integers(1, 2**62)) * 7 + i).bytes for i in range(n_graphs)]
    rows = [_ev(EventType.GraphCreated, g, 1) for g in gids]
    nids, owner = [], []
    for i, p in enumerate(points):
        nid = uuid.UUID(int=i + 1).bytes
        g = gids[i % n_graphs]
        rows.append(_ev(EventType.NodeAdded, g, 2, node_id=nid, x=float(p[0]), y=float(p[1]), z=float(p[2])))
        nids.append(nid)
        owner.append(g)
    eng = Engine()
    eng.apply(rows_to_batch(rows))
    return eng, nids, owner


def result_sets(table, n_queries):
    out = [set() for _ in range(n_queries)]
    for q, nid in zip(table.column("query").to_pylist(), table.column("node_id").to_pylist()):
        out[q].add(nid)
    return out


def uniform(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 100, size=(n, 3))


def clustered(n, seed=0, k=20):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1000, size=(k, 3))
    return centres[rng.integers(0, k, n)] + rng.normal(0, 2.0, size=(n, 3))


@pytest.mark.parametrize("data", ["uniform", "clustered"])
@pytest.mark.parametrize("radius_scale", [0.1, 1.0, 3.0, 10.0])
def test_radius_matches_ckdtree_and_brute(data, radius_scale):
    pts = uniform(3000) if data == "uniform" else clustered(3000)
    eng, nids, _ = engine_with_points(pts)
    tree = cKDTree(pts)
    spacing = float(np.median(tree.query(pts, k=2)[0][:, 1]))
    r = radius_scale * spacing
    rng = np.random.default_rng(1)
    centers = np.vstack([pts[rng.integers(0, len(pts), 40)] + rng.normal(0, spacing, (40, 3)),
                         rng.uniform(pts.min(0) - 5, pts.max(0) + 5, (10, 3))])
    t = eng.nodes_within(centers, r, return_distance=True)
    got = result_sets(t, len(centers))
    for j, c in enumerate(centers):
        want = {nids[i] for i in tree.query_ball_point(c, r)}
        assert got[j] == want
        if j < 5:
            assert got[j] == {nids[i] for i in brute_radius(pts.tolist(), c, r)}
    counts = eng.nodes_within(centers, r, count_only=True)
    assert counts.tolist() == [len(s) for s in got]
    # a batch past the serial path's 64 centers counts in parallel
    assert eng.nodes_within(np.vstack([centers] * 2), r, count_only=True).tolist() == counts.tolist() * 2
    # distances are exact and grouped by query
    q = t.column("query").to_numpy()
    assert (np.diff(q) >= 0).all()
    d = t.column("distance").to_numpy()
    assert (d <= r).all()


def test_sorted_and_per_center_radius():
    pts = uniform(2000, 3)
    eng, nids, _ = engine_with_points(pts)
    centers = pts[:20]
    radii = np.linspace(0.5, 8, 20)
    t = eng.nodes_within(centers, radii, sort=True, return_distance=True)
    q = t.column("query").to_numpy()
    d = t.column("distance").to_numpy()
    for j in range(20):
        dj = d[q == j]
        assert (np.diff(dj) >= 0).all()
        want = np.sort(np.sqrt(((pts - centers[j]) ** 2).sum(1)))
        want = want[want <= radii[j]]
        np.testing.assert_allclose(dj, want)
    # sort without return_distance gives no distance column but the same order
    t2 = eng.nodes_within(centers, radii, sort=True)
    assert "distance" not in t2.column_names
    assert t2.column("node_id").to_pylist() == t.column("node_id").to_pylist()


def test_boundary_points_included():
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [1.5, 0, 0]], float)
    eng, nids, _ = engine_with_points(pts)
    got = result_sets(eng.nodes_within([0, 0, 0], 1.0), 1)[0]
    assert got == {nids[0], nids[1]}
    got = result_sets(eng.nodes_within([0, 0, 0], 2.0), 1)[0]
    assert got == {nids[0], nids[1], nids[2], nids[4]}
    assert eng.nodes_within([0, 0, 0], 0.0, count_only=True).tolist() == [1]
    # lattice with radius equal to the spacing: all 6 neighbours + itself
    g = np.array([[x, y, z] for x in range(5) for y in range(5) for z in range(5)], float) * 0.1
    eng, nids, _ = engine_with_points(g)
    c = g[62]
    want = {nids[i] for i in brute_radius(g.tolist(), c, 0.1)}
    assert result_sets(eng.nodes_within(c, 0.1), 1)[0] == want


def test_duplicates_one_point_empty_and_huge_radius():
    eng = Engine()
    assert eng.nodes_within([0, 0, 0], 5.0).num_rows == 0
    assert eng.nearest([0, 0, 0], 3).num_rows == 0
    assert eng.nodes_in_box([0, 0, 0], [1, 1, 1]).num_rows == 0
    eng, nids, _ = engine_with_points(np.array([[1.0, 2.0, 3.0]]))
    assert eng.nearest([[0, 0, 0], [5, 5, 5]], 4).num_rows == 2
    pts = np.repeat(np.array([[5.0, 5.0, 5.0]]), 10, axis=0)
    eng, nids, _ = engine_with_points(pts)
    assert eng.nodes_within([5, 5, 5], 0.0, count_only=True).tolist() == [10]
    pts = uniform(500, 9)
    eng, nids, _ = engine_with_points(pts)
    assert eng.nodes_within([50, 50, 50], 1e9, count_only=True).tolist() == [500]
    assert eng.nodes_within([1e12, -1e12, 0], 1e13, count_only=True).tolist() == [500]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # brute force's own inf distances
@pytest.mark.parametrize("kind", ["1e150", "max", "mixed"])
def test_extreme_magnitudes_answer_like_brute_force(kind):
    """Coordinates up to the largest doubles, radii up to 1e300, centers far outside the
    data: the cell size stays finite and walks whose arithmetic could overflow test every
    point instead (an infinite cell size once made NaN cell indices: a segfault)."""
    rng = np.random.default_rng(11)
    if kind == "1e150":
        pts = rng.uniform(-1, 1, (400, 3)) * 1e150
    elif kind == "max":
        pts = rng.uniform(-1, 1, (400, 3)) * 1.7e308
    else:  # ordinary points and a few at the ends of the double range
        pts = rng.uniform(0, 10, (400, 3))
        pts[::37] = 1.7e308
        pts[5::41] = -1.7e308
    eng, nids, _ = engine_with_points(pts)
    index = {nid: i for i, nid in enumerate(nids)}
    centers = np.vstack([pts[:6], [[1e200, 0, 0], [-1e300, 5, 5], [5, 5, 5], [0, 0, 0]]])
    for r in (0.0, 1.0, 1e100, 1e150, 1e300, 1.7e308):
        got = result_sets(eng.nodes_within(centers, r), len(centers))
        counts = eng.nodes_within(centers, r, count_only=True)
        for j, c in enumerate(centers):
            want = brute_radius(pts, c, r)
            assert {index[x] for x in got[j]} == want, (kind, r, j)
            assert counts[j] == len(want)
    d = eng.nearest(centers, 5)
    dq, dd = d.column("query").to_numpy(), d.column("distance").to_numpy()
    for j, c in enumerate(centers):
        with np.errstate(over="ignore"):
            want = np.sort(np.sqrt(((pts - c) ** 2).sum(1)))[:5]
        assert np.array_equal(dd[dq == j], want), (kind, j)
    lo, hi = np.array([-1e300, -1e300, -1e300]), np.array([1e300, 1e300, 1e300])
    assert {index[x] for x in eng.nodes_in_box(lo, hi).column("node_id").to_pylist()} == brute_box(pts, lo, hi)


@pytest.mark.parametrize("data", ["uniform", "clustered"])
def test_knn_matches_brute(data):
    pts = uniform(2000, 4) if data == "uniform" else clustered(2000, 4)
    eng, nids, _ = engine_with_points(pts)
    rng = np.random.default_rng(5)
    centers = np.vstack([pts[:10] + 0.01, rng.uniform(-2000, 3000, (5, 3))])
    for k in (1, 7, 30):
        t = eng.nearest(centers, k)
        q = t.column("query").to_numpy()
        d = t.column("distance").to_numpy()
        tree_d, _ = cKDTree(pts).query(centers, k=k)
        tree_d = tree_d.reshape(len(centers), -1)
        for j, c in enumerate(centers):
            dj = d[q == j]
            assert len(dj) == k
            np.testing.assert_allclose(dj, brute_knn(pts.tolist(), c, k), rtol=0, atol=1e-9)
            np.testing.assert_allclose(dj, tree_d[j], rtol=1e-12)


def test_box_matches_brute():
    pts = clustered(3000, 6)
    eng, nids, _ = engine_with_points(pts)
    rng = np.random.default_rng(7)
    for _ in range(20):
        a, b = rng.uniform(pts.min(0), pts.max(0), (2, 3))
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        t = eng.nodes_in_box(lo, hi)
        assert set(t.column("node_id").to_pylist()) == {nids[i] for i in brute_box(pts.tolist(), lo, hi)}
    lo = pts[0]
    assert nids[0] in set(eng.nodes_in_box(lo, lo).column("node_id").to_pylist())


def test_box_page_is_the_first_rows_and_the_count_of_the_whole_answer():
    """The service's capped box replies (Engine._box_page): the first ``limit`` rows of
    nodes_in_box and its row count, with and without a graph filter, from main and delta
    grids (nodes moved after the index was built), limits below, at and above the count."""
    pts = clustered(3000, 9)
    eng, nids, owner = engine_with_points(pts, n_graphs=3)
    rng = np.random.default_rng(9)
    eng.nodes_within([0, 0, 0], 1.0)  # build the index, then move some nodes into the delta
    moved = rng.choice(len(pts), 300, replace=False)
    eng.apply(rows_to_batch([_ev(EventType.NodeMoved, owner[i], 10, node_id=nids[i], x=float(v[0]), y=float(v[1]),
                                 z=float(v[2])) for i, v in zip(moved, rng.uniform(pts.min(0), pts.max(0), (300, 3)))]))
    for t in range(30):
        a, b = rng.uniform(pts.min(0), pts.max(0), (2, 3))
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        g = owner[t % 3] if t % 2 else None
        whole = eng.nodes_in_box(lo, hi, graph_id=g)
        for limit in (1, 7, whole.num_rows, whole.num_rows + 5):
            page, total = eng._box_page(lo, hi, g, limit)
            assert total == whole.num_rows
            assert page.equals(whole.slice(0, limit))


def test_graph_filter():
    pts = uniform(1200, 8)
    eng, nids, owner = engine_with_points(pts, n_graphs=3)
    g = owner[1]
    t = eng.nodes_within(pts[:30], 10.0, graph_id=g)
    assert set(t.column("graph_id").to_pylist()) <= {g}
    got = result_sets(t, 30)
    for j in range(30):
        want = {nids[i] for i in range(len(pts)) if owner[i] == g and ((pts[i] - pts[j]) ** 2).sum() <= 100.0}
        assert got[j] == want
    t = eng.nearest(pts[:5], 4, graph_id=uuid.UUID(bytes=g))
    assert set(t.column("graph_id").to_pylist()) == {g}
    assert eng.nodes_within(pts[:5], 10.0, graph_id=uuid.uuid4()).num_rows == 0
    assert eng.nodes_in_box([0, 0, 0], [100, 100, 100], graph_id=g).num_rows == sum(1 for o in owner if o == g)


def test_bad_input():
    eng, _, _ = engine_with_points(uniform(10))
    for bad in ([np.nan, 0, 0], [[0, 0]], "abc", [[0, 0, np.inf]]):
        with pytest.raises(ValueError):
            eng.nodes_within(bad, 1.0)
    for r in (-1.0, np.nan, np.inf, [1.0, 2.0], True, np.bool_(True), "1"):
        with pytest.raises(ValueError):
            eng.nodes_within([0, 0, 0], r)
    for k in (0, -3, 1.5, True):
        with pytest.raises(ValueError):
            eng.nearest([0, 0, 0], k)
    with pytest.raises(ValueError):
        eng.nodes_in_box([1, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError):
        eng.nodes_within([0, 0, 0], 1.0, count_only=True, sort=True)


def _check_against_reference(eng, ref, rng):
    pts = ref.positioned_nodes()
    if not pts:
        assert eng.nodes_within([0, 0, 0], 100.0, count_only=True).tolist() == [0]
        return
    coords = [p for _, _, p in pts]
    keys = [(g, n) for g, n, _ in pts]
    centers = np.array(coords[: 5]) + rng.normal(0, 1, (min(5, len(coords)), 3))
    for r in (0.5, 2.0, 6.0):
        t = eng.nodes_within(centers, r)
        got = [set() for _ in centers]
        for q, g, n in zip(t.column("query").to_pylist(), t.column("graph_id").to_pylist(),
                           t.column("node_id").to_pylist()):
            got[q].add((g, n))
        for j, c in enumerate(centers):
            assert got[j] == {keys[i] for i in brute_radius(coords, c, r)}
    t = eng.nearest(centers, 3)
    d = t.column("distance").to_numpy()
    q = t.column("query").to_numpy()
    for j, c in enumerate(centers):
        np.testing.assert_allclose(d[q == j], brute_knn(coords, c, 3), atol=1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), batches=st.integers(1, 8))
def test_moves_and_removals_stream(seed, batches):
    """After batches of a random stream (adds, moves, removes, graph deletes) the spatial
    answers equal brute force over the reference projection's nodes. Queries come after
    some batches only (always after the last): the delta grid is rebuilt by the next
    query, so several batches' changes, a node moved again among them, must all reach it."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    eng, ref = Engine(), RefProjection()
    eng._spatial.rebuild_fraction = rng.choice([0.0, 0.05, 10.0])  # exercise rebuild and delta paths
    eng._spatial.min_rebuild = rng.choice([1, 20, 4096])
    eng._spatial.background = rng.choice([True, False])
    for b in range(batches):
        rows = random_rows(rng, rng.randrange(1, 150), n_graphs=3, n_nodes=40, n_edges=10)
        eng.apply(rows_to_batch(rows))
        ref.apply(rows)
        if b == batches - 1 or rng.random() < 0.5:
            _check_against_reference(eng, ref, nrng)


def test_incremental_moves_keep_exact_many_batches():
    rng = np.random.default_rng(11)
    pts = uniform(5000, 11)
    eng, nids, owner = engine_with_points(pts)
    eng.nodes_within([0, 0, 0], 1.0)  # build the index
    builds = eng._spatial.builds
    cur = pts.copy()
    for b in range(12):
        moved = rng.choice(len(pts), 50, replace=False)
        cur[moved] += rng.normal(0, 5, (50, 3))
        rows = [_ev(EventType.NodeMoved, owner[i], 10 + b, node_id=nids[i], x=float(cur[i, 0]),
                    y=float(cur[i, 1]), z=float(cur[i, 2])) for i in moved]
        eng.apply(rows_to_batch(rows))
        centers = cur[moved[:5]]
        got = result_sets(eng.nodes_within(centers, 4.0), 5)
        tree = cKDTree(cur)
        for j, c in enumerate(centers):
            assert got[j] == {nids[i] for i in tree.query_ball_point(c, 4.0)}
    assert eng._spatial.builds == builds  # served from main + delta, no full rebuild


def test_a_node_moved_again_while_in_the_delta_is_seen_at_its_new_place():
    """The delta grid is rebuilt by the next query from the nodes it holds: batches that
    only move nodes already in it (nothing new joins) must still make it stale, whether
    a query came between the batches or not."""
    pts = uniform(2000, 5)
    eng, nids, owner = engine_with_points(pts)
    eng.nodes_within([0, 0, 0], 1.0)  # build the index
    far = [(200.0, 200.0, 200.0), (300.0, 300.0, 300.0), (400.0, 400.0, 400.0)]

    def move(t, p):
        eng.apply(rows_to_batch([_ev(EventType.NodeMoved, owner[7], t, node_id=nids[7], x=p[0], y=p[1], z=p[2])]))

    move(10, far[0])  # node 7 joins the delta
    assert result_sets(eng.nodes_within([far[0]], 1.0), 1)[0] == {nids[7]}
    move(11, far[1])  # moved again: already in the delta, a query in between
    assert result_sets(eng.nodes_within([far[0], far[1]], 1.0), 2) == [set(), {nids[7]}]
    move(12, far[2])  # and again, twice with no query in between
    move(13, far[0])
    assert result_sets(eng.nodes_within(far, 1.0), 3) == [{nids[7]}, set(), set()]


def test_delta_keeps_one_row_a_node_and_rent_or_buy_starts_a_main_build():
    """Each changed node holds one delta row however often it moves; once the points
    placed in the delta (rebuilds and in-place patches) since the main grid was built
    are as many as it holds, a new main grid is built in the background (the fraction
    limit is out of reach here, so nothing else starts it), and the answers stay exact
    through it."""
    rng = np.random.default_rng(23)
    pts = uniform(2000, 23)
    eng, nids, owner = engine_with_points(pts)
    sp = eng._spatial
    sp.rebuild_fraction, sp.min_rebuild = 10.0, 400  # fraction limit 20,000 delta nodes; rent or buy from 100
    eng.nodes_within([0, 0, 0], 1.0)  # build the index
    builds = sp.builds
    cur = pts.copy()
    order = rng.permutation(len(pts))
    batches = 0
    for b in range(80):
        moved = np.concatenate([order[20 * b:20 * b + 20], order[:5]])  # 20 new, 5 moved again
        cur[moved] += rng.normal(0, 3, (moved.size, 3))
        eng.apply(rows_to_batch([_ev(EventType.NodeMoved, owner[i], 10 + b, node_id=nids[i], x=float(cur[i, 0]),
                                     y=float(cur[i, 1]), z=float(cur[i, 2])) for i in moved]))
        batches += 1
        d = sp.delta_nodes
        assert np.unique(d).size == d.size  # one row a node
        centers = cur[moved[:4]]
        got = result_sets(eng.nodes_within(centers, 5.0), 4)
        tree = cKDTree(cur)
        for j, c in enumerate(centers):
            assert got[j] == {nids[i] for i in tree.query_ball_point(c, 5.0)}
        sp.wait()  # let a started build finish: the next update or query adopts it
        if sp.builds > builds + 1:
            break
    assert sp.builds > builds  # rent or buy started main builds
    st = sp.stats()
    assert st["main_builds"] == sp.builds and st["delta_nodes"] == sp.delta_nodes.size
    # some queries found the delta grid patched in place, not rebuilt (this delta is
    # small and grows by a tenth a batch: cells fill up fast and rebuilds are common)
    assert st["delta_patched"] > 0 and st["delta_rebuilds"] < batches, (st, batches)


def _brute_check(eng, cur, centers, radii=(0.7, 3.0, 9.0, 25.0), k=5, graph=None, owner_of=None):
    """Radius (sets, counts), kNN distances and box sets against brute force over
    ``cur`` (node id -> position), optionally restricted to one graph."""
    keys = [n for n in cur if graph is None or owner_of[n] == graph]
    coords = np.array([cur[n] for n in keys]).reshape(-1, 3)
    for r in radii:
        got = result_sets(eng.nodes_within(centers, r, graph_id=graph), len(centers))
        counts = eng.nodes_within(centers, r, graph_id=graph, count_only=True)
        for j, c in enumerate(centers):
            want = {keys[i] for i in brute_radius(coords, c, r)}
            assert got[j] == want and counts[j] == len(want), (r, j)
    t = eng.nearest(centers, k, graph_id=graph)
    q, d = t.column("query").to_numpy(), t.column("distance").to_numpy()
    for j, c in enumerate(centers):
        np.testing.assert_allclose(d[q == j], brute_knn(coords, c, k), atol=1e-12)
    lo, hi = centers[0] - 8.0, centers[0] + 8.0
    got = set(eng.nodes_in_box(lo, hi, graph_id=graph).column("node_id").to_pylist())
    assert got == {keys[i] for i in brute_box(coords, lo, hi)}


@pytest.mark.parametrize("data", ["uniform", "clustered"])
def test_delta_grid_patched_in_place_answers_like_brute_force(data):
    """Small batches after a query patch the delta grid in place (free entries of each
    cell take the changes; a node's old entry goes stale) instead of rebuilding it.
    Through moves of nodes already in the delta, removals, re-adds, nodes moved far
    outside the delta's box and a cell filling up (which falls back to a rebuild),
    every kind of answer equals brute force, with and without a graph filter."""
    rng = np.random.default_rng(31 if data == "uniform" else 32)
    pts = uniform(3000, 31) if data == "uniform" else clustered(3000, 32, k=6) / 10.0
    eng, nids, owner = engine_with_points(pts, n_graphs=2)
    owner_of = dict(zip(nids, owner))
    sp = eng._spatial
    sp.rebuild_fraction, sp.min_rebuild, sp.background = 10.0, 10**9, False  # no main rebuilds here
    eng.nodes_within([0, 0, 0], 1.0)  # build the index
    cur = {nids[i]: pts[i].copy() for i in range(len(pts))}
    removed = []
    patched_before = 0
    for b in range(30):
        rows = []
        for i in rng.choice(len(nids), 12, replace=False):
            n = nids[i]
            if n not in cur:
                continue
            step = 60.0 if rng.random() < 0.1 else 2.0  # now and then far out of the delta's box
            cur[n] = cur[n] + rng.normal(0, step, 3)
            rows.append(_ev(EventType.NodeMoved, owner_of[n], 10 + b, node_id=n,
                            x=float(cur[n][0]), y=float(cur[n][1]), z=float(cur[n][2])))
        hot = nids[b % 7]  # a few nodes moved again and again while in the delta
        if hot in cur:
            cur[hot] = cur[hot] + rng.normal(0, 1.0, 3)
            rows.append(_ev(EventType.NodeMoved, owner_of[hot], 10 + b, node_id=hot,
                            x=float(cur[hot][0]), y=float(cur[hot][1]), z=float(cur[hot][2])))
        if b % 4 == 1:
            gone = nids[int(rng.integers(0, len(nids)))]
            if gone in cur:
                del cur[gone]
                removed.append(gone)
                rows.append(_ev(EventType.NodeRemoved, owner_of[gone], 10 + b, node_id=gone))
        if b % 4 == 3 and removed:  # a removed node's id added again, elsewhere
            back = removed.pop()
            cur[back] = rng.uniform(0, 100, 3)
            rows.append(_ev(EventType.NodeAdded, owner_of[back], 10 + b, node_id=back,
                            x=float(cur[back][0]), y=float(cur[back][1]), z=float(cur[back][2])))
        eng.apply(rows_to_batch(rows))
        keys = list(cur)
        centers = np.array([cur[keys[int(rng.integers(0, len(keys)))]] for _ in range(4)])
        centers[1:] += rng.normal(0, 2.0, (3, 3))
        _brute_check(eng, cur, centers)
        if b % 6 == 0:  # a batch of queries (parallel kernels; radius ids from the slot view)
            _brute_check(eng, cur, np.vstack([centers, rng.uniform(-5, 105, (66, 3))]), radii=(9.0,))
        if b % 5 == 0:
            _brute_check(eng, cur, centers[:2], radii=(3.0, 25.0), graph=owner[1], owner_of=owner_of)
        if b == 0:
            patched_before = sp.delta_patched
    st = sp.stats()
    assert st["main_builds"] == 1
    assert st["delta_patched"] > patched_before  # the in-place path ran ...
    assert st["delta_rebuilds"] <= 20  # ... and spared rebuilds (11-12 of 30 with these seeds)


def test_graph_delete_cascade_larger_than_batch_updates_index():
    """One GraphDeleted row removes many nodes: every one must leave the spatial index
    (regression: the per-batch changed-node log was sized by rows and overflowed)."""
    from cim_flow import EventType

    pts = uniform(300, 21)
    eng, nids, owner = engine_with_points(pts, n_graphs=2)
    assert eng.nodes_within([50, 50, 50], 1e6, count_only=True).tolist() == [300]
    g0 = owner[0]
    new_node = uuid.uuid4().bytes
    rows = [_ev(EventType.GraphDeleted, g0, 9),
            _ev(EventType.NodeAdded, owner[1], 10, node_id=new_node, x=1.0, y=1.0, z=1.0)]
    eng.apply(rows_to_batch(rows))
    t = eng.nodes_within([50, 50, 50], 1e6)
    assert t.num_rows == 151
    assert set(t.column("graph_id").to_pylist()) == {owner[1]}
    assert new_node in set(t.column("node_id").to_pylist())


def test_counts_by_whole_cells_match_point_tests():
    """Large radii count whole cells inside the sphere without testing points: the counts
    must still equal cKDTree's and the fill path's, with stale (moved) main-grid entries
    and lattice points lying exactly on the sphere."""
    lattice = np.array([[x, y, z] for x in range(24) for y in range(24) for z in range(24)], float)
    rng = np.random.default_rng(5)
    pts = np.vstack([lattice, rng.uniform(0, 23, (3000, 3))])
    eng, nids, owner = engine_with_points(pts)
    eng.nodes_within([0, 0, 0], 1.0, count_only=True)  # build the main grid
    assert eng._spatial.main.dst.size > 0  # the dense layout
    cur = pts.copy()
    moved = rng.choice(len(pts), 400, replace=False)
    cur[moved] = rng.uniform(0, 23, (400, 3))
    eng.apply(rows_to_batch([_ev(EventType.NodeMoved, owner[i], 10, node_id=nids[i], x=float(cur[i, 0]),
                                 y=float(cur[i, 1]), z=float(cur[i, 2])) for i in moved]))
    assert eng._spatial.stale_count > 0
    tree = cKDTree(cur)
    centers = np.vstack([lattice[rng.integers(0, len(lattice), 30)], rng.uniform(-2, 25, (30, 3))])
    for r in (3.0, 5.0, 7.5, 11.0, 13.0):  # integers: many lattice points at exactly r
        want = tree.query_ball_point(centers, r, return_length=True)
        assert eng.nodes_within(centers, r, count_only=True).tolist() == want.tolist()  # parallel
        assert eng.nodes_within(centers[:8], r, count_only=True).tolist() == want[:8].tolist()  # serial
        t = eng.nodes_within(centers, r)
        assert np.bincount(t.column("query").to_numpy(), minlength=len(centers)).tolist() == want.tolist()
        _assert_same_sets(t, tree.query_ball_point(centers, r), nids)  # whole cells copied by the fill


def test_columns_skipped_by_their_occupied_z_range_lose_no_hit():
    """A tall dense grid whose columns are mostly empty in z keeps each column's occupied
    z range, and the radius walk skips columns whose points all lie above or below the
    sphere. Clusters stacked at different heights and a thin layer; queries above, below,
    inside and at the edge of them; radii from a fraction of a cell to several clusters:
    every answer is cKDTree's, also after moves (stale entries, a delta grid)."""
    import kernels.spatial as ks

    rng = np.random.default_rng(11)
    centres = rng.uniform((0, 0, 0), (40, 40, 300), (12, 3))
    pts = np.vstack([rng.normal(c, 1.5, (250, 3)) for c in centres]
                    + [np.column_stack([rng.uniform(0, 15, (300, 2)), 150 + rng.uniform(0, 0.3, 300)])])
    eng, nids, owner = engine_with_points(pts)
    eng.nodes_within([0, 0, 0], 1.0, count_only=True)  # build the main grid
    g = eng._spatial.main
    assert g.dst.size > 0 and g.dims[2] >= ks.ZR_MIN_Z and g.zr.shape[0] == g.dims[0] * g.dims[1]
    # the ranges themselves, against the cell counts
    counts = np.diff(g.dst.astype(np.int64)).reshape(g.dims[0] * g.dims[1], g.dims[2])
    for c in range(counts.shape[0]):
        occ = np.flatnonzero(counts[c])
        assert tuple(g.zr[c]) == ((occ[0], occ[-1]) if occ.size else (g.dims[2], -1))
    cur = pts.copy()
    for step in range(2):
        tree = cKDTree(cur)
        near = centres[rng.integers(0, len(centres), 30)] + rng.normal(0, 3.0, (30, 3))
        heights = rng.choice([-3, 0.2, 149.9, 150.2, 151, 310], 20)
        centers = np.vstack([near, np.column_stack([rng.uniform(-2, 42, (20, 2)), heights])])
        for r in (0.4, 1.5, 4.0, 9.0, 25.0, 60.0):
            want = tree.query_ball_point(centers, r)
            assert eng.nodes_within(centers, r, count_only=True).tolist() == [len(w) for w in want]
            assert eng.nodes_within(centers[:6], r, count_only=True).tolist() == [len(w) for w in want[:6]]
            _assert_same_sets(eng.nodes_within(centers, r), want, nids)
            _assert_same_sets(eng.nodes_within(centers[:6], r), want[:6], nids)
        moved = rng.choice(len(pts), 300, replace=False)  # stale entries in the main grid, a delta grid
        cur[moved] = rng.uniform((0, 0, 0), (40, 40, 300), (300, 3))
        eng.apply(rows_to_batch([_ev(EventType.NodeMoved, owner[i], 20 + step, node_id=nids[i], x=float(cur[i, 0]),
                                     y=float(cur[i, 1]), z=float(cur[i, 2])) for i in moved]))


def _assert_same_sets(table, want_lists, nids):
    """Each query's node ids in ``table`` are exactly the brute-force (cKDTree) set."""
    q = table.column("query").to_numpy()
    got = table.column("node_id").to_pylist()
    for j, want in enumerate(want_lists):
        have = [got[t] for t in np.flatnonzero(q == j)]
        assert len(have) == len(set(have)), f"query {j}: a node twice"
        assert set(have) == {nids[i] for i in want}, f"query {j}"


def test_sparse_points_use_the_hashed_grid():
    """Clusters far apart make the bounding box mostly empty: the grid is hashed, and
    radius, kNN and box answers still equal brute force."""
    rng = np.random.default_rng(8)
    far = np.array([[0, 0, 0], [1e7, 0, 0], [0, -3e6, 5e6], [2e6, 2e6, -2e6]], float)
    pts = far[rng.integers(0, 4, 800)] + rng.normal(0, 3.0, (800, 3))
    eng, nids, _ = engine_with_points(pts)
    centers = np.vstack([pts[:20] + rng.normal(0, 2, (20, 3)), [[5e6, 0, 0]]])
    t = eng.nodes_within(centers, 4.0)
    assert eng._spatial.main.dst.size == 0  # hashed layout
    got = result_sets(t, len(centers))
    for j, c in enumerate(centers):
        assert got[j] == {nids[i] for i in brute_radius(pts.tolist(), c, 4.0)}
    assert eng.nodes_within(centers, 6e6, count_only=True).tolist() == \
        [len(brute_radius(pts.tolist(), c, 6e6)) for c in centers]
    t = eng.nearest(centers, 5)
    d = t.column("distance").to_numpy()
    q = t.column("query").to_numpy()
    for j, c in enumerate(centers):
        np.testing.assert_allclose(d[q == j], brute_knn(pts.tolist(), c, 5), atol=1e-9)
    lo, hi = np.array([-5.0, -5, -5]), np.array([1e7, 5, 5])
    box = set(eng.nodes_in_box(lo, hi).column("node_id").to_pylist())
    assert box == {nids[i] for i in range(len(pts)) if ((pts[i] >= lo) & (pts[i] <= hi)).all()}


@pytest.mark.parametrize("shift", [0, 3, 9, 40])
def test_two_pass_dense_build_lays_out_exactly_like_the_plain_counting_sort(shift):
    """grid_build_dense_runs (runs of 2**shift cells, for grids of many cells) gives the
    same arrays as the plain stable counting sort, and as a direct argsort."""
    from kernels import spatial as ks

    rng = np.random.default_rng(shift)
    centres = rng.uniform(0, 30, (6, 3))  # a 40^3-cell box: the test allocates a dense grid
    pos = np.vstack([centres[rng.integers(0, 6, 3000)] + rng.normal(0, 2.0, (3000, 3)), [[np.nan] * 3]])
    nodes = np.sort(rng.choice(3000, 2500, replace=False)).astype(np.int64)
    graph = rng.integers(0, 7, len(pos)).astype(np.int32)
    origin = pos[nodes].min(axis=0)
    h = 0.9
    dims = np.floor((pos[nodes].max(axis=0) - origin) / h).astype(np.int64) + 1
    plain = ks.grid_build_dense(pos, nodes, graph, origin, h, dims, 2)
    runs = ks.grid_build_dense_runs(pos, nodes, graph, origin, h, dims, shift)
    for a, b in zip(plain, runs):
        np.testing.assert_array_equal(a, b)
    cell = np.minimum(np.floor((pos[nodes] - origin) / h).astype(np.int64), dims - 1)
    flat = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    order = np.argsort(flat, kind="stable")
    dst, pts, idx, grp = runs
    np.testing.assert_array_equal(idx, nodes[order])
    np.testing.assert_array_equal(pts, pos[nodes[order]])
    np.testing.assert_array_equal(grp, graph[nodes[order]])
    np.testing.assert_array_equal(dst, np.searchsorted(flat[order], np.arange(int(np.prod(dims)) + 1)))


def test_engine_queries_on_a_two_pass_dense_build(monkeypatch):
    """With the two-pass build forced on (it serves grids of millions of cells), radius,
    kNN and box answers still equal brute force."""
    from cim_flow import _spatial

    monkeypatch.setattr(_spatial, "_RUNS_ABOVE_CELLS", 0)
    monkeypatch.setattr(_spatial, "_RUNS_MIN_POINTS", 0)
    monkeypatch.setattr(_spatial, "_RUN_CELLS", 64)  # many runs
    pts = clustered(3000, 11)
    eng, nids, _ = engine_with_points(pts)
    centers = pts[:30] + np.random.default_rng(1).normal(0, 1.0, (30, 3))
    got = result_sets(eng.nodes_within(centers, 2.5), len(centers))
    assert eng._spatial.main.dst.size > 0  # dense layout
    for j, c in enumerate(centers):
        assert got[j] == {nids[i] for i in brute_radius(pts.tolist(), c, 2.5)}
    d = eng.nearest(centers[:5], 4).column("distance").to_numpy().reshape(5, 4)
    for j in range(5):
        np.testing.assert_allclose(d[j], brute_knn(pts.tolist(), centers[j], 4), atol=1e-9)
    lo, hi = centers[0] - 3, centers[0] + 3
    box = set(eng.nodes_in_box(lo, hi).column("node_id").to_pylist())
    assert box == {nids[i] for i in range(len(pts)) if ((pts[i] >= lo) & (pts[i] <= hi)).all()}


def test_read_only_and_strided_inputs_answer_alike_without_a_new_compile():
    """Centers, radii and box corners that are read-only (a zero-copy view of Arrow
    data) or strided give the same answers, and compile no second version of a query
    kernel (that would take minutes on the first such call)."""
    from kernels import spatial as ks

    pts = uniform(500, 21)
    eng, nids, _ = engine_with_points(pts)
    c = np.ascontiguousarray(pts[:6] + 0.25)
    r = np.full(6, 7.0)
    want = eng.nodes_within(c, r, return_distance=True, sort=True)
    want1 = eng.nodes_within(c[0], 7.0)
    want_box = eng.nodes_in_box(c[0] - 9, c[0] + 9)
    want_knn = eng.nearest(c, 3)
    want_csr = eng.radius_csr(c, r, sort=True)  # the index APIs: radius_small, knn_serial
    want_idx = eng.nearest_indices(c, 3)
    got = result_sets(want, len(c))
    for j in range(len(c)):  # the answers compared against are brute force's
        assert got[j] == {nids[i] for i in brute_radius(pts.tolist(), c[j], 7.0)}
    kernels = [ks.radius_rows, ks.knn_rows, ks.box_rows, ks.radius_small, ks.knn_serial]
    before = [len(k.signatures) for k in kernels]
    assert all(before)  # each was called above: a count that cannot grow would prove nothing
    ro = c.copy()
    ro.flags.writeable = False
    ro_r = r.copy()
    ro_r.flags.writeable = False
    wide = np.zeros((6, 6))
    wide[:, ::2] = c  # every other column: a strided (6, 3) view
    strided = wide[:, ::2]
    for cs, rs in [(ro, ro_r), (strided, r), (ro, 7.0)]:
        assert eng.nodes_within(cs, rs, return_distance=True, sort=True).equals(want)
        assert eng.nodes_within(cs[0], 7.0).equals(want1)
        assert eng.nearest(cs, 3).equals(want_knn)
        for x, y in zip(eng.radius_csr(cs, rs, sort=True), want_csr):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(eng.nearest_indices(cs, 3), want_idx):
            np.testing.assert_array_equal(x, y)
    ro_lo = c[0] - 9
    ro_lo.flags.writeable = False
    lo_wide = np.zeros(6)
    lo_wide[::2] = c[0] - 9
    assert eng.nodes_in_box(ro_lo, c[0] + 9).equals(want_box)
    assert eng.nodes_in_box(lo_wide[::2], c[0] + 9).equals(want_box)  # a strided corner
    assert [len(k.signatures) for k in kernels] == before


def test_batch_and_single_query_tables_agree_with_brute_force():
    """A batch (over _SERIAL_BELOW centers: parallel search, ids gathered in grid order) and
    the same centers one at a time (search, gather and packing in one kernel call) give the
    same rows, and those rows are brute force's, distances included; kNN also where a graph
    filter leaves fewer than k nodes."""
    from cim_flow.engine import _SERIAL_BELOW

    rng = np.random.default_rng(17)
    pts = np.concatenate([clustered(1500, 17), rng.uniform(0, 10, (6, 3))])
    eng, nids, owner = engine_with_points(pts, n_graphs=1)
    small = [uuid.UUID(int=10**6 + i).bytes for i in range(6)]  # a graph of 6 nodes
    g2 = uuid.UUID(int=424242).bytes
    small_pts = rng.uniform(0, 10, (6, 3))
    eng.apply(rows_to_batch([_ev(EventType.GraphCreated, g2, 3)] + [
        _ev(EventType.NodeAdded, g2, 4, node_id=small[i], x=float(p[0]), y=float(p[1]), z=float(p[2]))
        for i, p in enumerate(small_pts)]))
    pts = np.concatenate([pts, small_pts])  # every live node, for brute force
    nids = nids + small
    n = _SERIAL_BELOW + 36
    centers = pts[rng.integers(0, len(pts), n)] + rng.normal(0, 1.0, (n, 3))
    batch = eng.nodes_within(centers, 2.0, return_distance=True, sort=True)
    kept = batch.to_pydict()
    # later batches reuse this thread's hit scratch: an earlier answer must not change,
    # and a bigger answer than the scratch held gets it grown
    for r in (0.5, 4.0, 2.0):
        eng.nodes_within(centers[::-1], r, return_distance=r != 0.5)
    assert batch.to_pydict() == kept
    singles = [eng.nodes_within(c, 2.0, return_distance=True, sort=True) for c in centers]
    q = batch.column("query").to_numpy()
    for j, t in enumerate(singles):
        part = batch.filter(pa.array(q == j))
        assert part.column("node_id").to_pylist() == t.column("node_id").to_pylist()
        assert part.column("graph_id").to_pylist() == t.column("graph_id").to_pylist()
        np.testing.assert_array_equal(part.column("distance").to_numpy(), t.column("distance").to_numpy())
        hits = np.array(sorted(brute_radius(pts.tolist(), centers[j], 2.0)), dtype=np.int64)
        want = np.sort(np.sqrt(((pts[hits] - centers[j]) ** 2).sum(1)))
        np.testing.assert_allclose(t.column("distance").to_numpy(), want, atol=1e-12)
        assert set(t.column("node_id").to_pylist()) == {nids[i] for i in hits}
    for graph, k in ((None, 5), (g2, 9)):  # g2 holds 6 nodes: fewer than k
        batch = eng.nearest(centers, k, graph_id=graph)
        q = batch.column("query").to_numpy()
        for j in range(0, n, 7):
            t = eng.nearest(centers[j], k, graph_id=graph)
            part = batch.filter(pa.array(q == j))
            assert part.column("node_id").to_pylist() == t.column("node_id").to_pylist()
            np.testing.assert_array_equal(part.column("distance").to_numpy(), t.column("distance").to_numpy())
            assert set(t.column("graph_id").to_pylist()) <= ({g2} if graph else set(owner) | {g2})
            among = small_pts if graph else pts
            np.testing.assert_allclose(t.column("distance").to_numpy(),
                                       brute_knn(among.tolist(), centers[j], min(k, len(among))), atol=1e-12)
        assert np.bincount(q, minlength=n).tolist() == [6 if graph else k] * n


def test_low_level_index_apis_match_brute_force():
    """radius_csr and nearest_indices (node indices, no tables) answer like the table APIs."""
    pts = clustered(2000, 4)
    eng, nids, _ = engine_with_points(pts)
    rng = np.random.default_rng(2)
    centers = pts[rng.integers(0, len(pts), 40)] + rng.normal(0, 1, (40, 3))
    ids = np.array(eng.node_ids(np.arange(len(pts))).to_pylist(), dtype=object)
    offsets, idx, d2 = eng.radius_csr(centers, 3.0)
    for j, c in enumerate(centers):
        got = set(ids[idx[offsets[j]:offsets[j + 1]]])
        assert got == {nids[i] for i in brute_radius(pts.tolist(), c, 3.0)}
        np.testing.assert_allclose(np.sort(d2[offsets[j]:offsets[j + 1]]),
                                   np.sort(((pts[[nids.index(x) for x in got]] - c) ** 2).sum(1)))
    counts, nidx, dist = eng.nearest_indices(centers, 7)
    assert counts.tolist() == [7] * len(centers)
    for j, c in enumerate(centers):
        np.testing.assert_allclose(dist[j], brute_knn(pts.tolist(), c, 7), atol=1e-12)
        want = np.sqrt(((pts[[nids.index(x) for x in ids[nidx[j]]]] - c) ** 2).sum(1))
        np.testing.assert_allclose(dist[j], want, atol=1e-12)
    t = eng.nearest(centers, 7)
    assert t.column("node_id").to_pylist() == list(ids[nidx.reshape(-1)])


def test_whole_cell_counts_with_a_saturated_stale_count():
    """More than 255 entries of one cell go stale (the per-cell count saturates): counts
    around it fall back to testing points and stay exact."""
    rng = np.random.default_rng(6)
    lattice = np.array([[x, y, z] for x in range(16) for y in range(16) for z in range(16)], float)
    pile = np.repeat([[8.2, 8.2, 8.2]], 600, axis=0)
    pts = np.vstack([lattice, pile])
    eng, nids, owner = engine_with_points(pts)
    eng.nodes_within([0, 0, 0], 1.0, count_only=True)
    cur = pts.copy()
    moved = np.arange(len(lattice), len(pts))
    cur[moved] = rng.uniform(0, 15, (len(moved), 3))
    eng.apply(rows_to_batch([_ev(EventType.NodeMoved, owner[i], 10, node_id=nids[i], x=float(cur[i, 0]),
                                 y=float(cur[i, 1]), z=float(cur[i, 2])) for i in moved]))
    assert eng._spatial.main.nstale.max() == 255
    tree = cKDTree(cur)
    centers = np.vstack([[[8.2, 8.2, 8.2], [8, 8, 8]], rng.uniform(0, 15, (20, 3))])
    for r in (4.0, 6.0, 9.5):
        want = tree.query_ball_point(centers, r, return_length=True)
        assert eng.nodes_within(centers, r, count_only=True).tolist() == want.tolist()
        _assert_same_sets(eng.nodes_within(centers, r), tree.query_ball_point(centers, r), nids)


def _random_changes(rng, nids, cur, g, t, moves, step):
    """Rows moving ``moves`` random nodes by ~``step``, removing one and adding one;
    ``cur`` (node id -> position) is updated to the state after them."""
    rows = []
    for i in rng.choice(len(nids), moves, replace=False):
        if nids[i] in cur:
            cur[nids[i]] = cur[nids[i]] + rng.normal(0, step, 3)
            x, y, z = cur[nids[i]]
            rows.append(_ev(EventType.NodeMoved, g, t, node_id=nids[i], x=x, y=y, z=z))
    gone = nids[int(rng.integers(0, len(nids)))]
    if gone in cur:
        del cur[gone]
        rows.append(_ev(EventType.NodeRemoved, g, t, node_id=gone))
    new = uuid.uuid4().bytes
    cur[new] = rng.uniform(0, 100, 3)
    rows.append(_ev(EventType.NodeAdded, g, t, node_id=new, x=cur[new][0], y=cur[new][1], z=cur[new][2]))
    return rows


def test_background_rebuild_is_adopted_and_exact_throughout():
    """Past the rebuild limit a new main grid is built on a background thread; answers
    stay exact before, during and after it is adopted, including nodes moved, added
    and removed while it was being built."""
    rng = np.random.default_rng(12)
    pts = uniform(3000, 12)
    eng, nids, owner = engine_with_points(pts)
    sp = eng._spatial
    sp.min_rebuild, sp.rebuild_fraction = 40, 0.0
    eng.nodes_within([0, 0, 0], 1.0)  # first (synchronous) build
    first = sp.builds
    cur = {nids[i]: pts[i].copy() for i in range(len(pts))}
    g = owner[0]
    for b in range(10):
        eng.apply(rows_to_batch(_random_changes(rng, nids, cur, g, 10 + b, 30, 4.0)))
        if b % 3 == 2:
            sp.wait()  # let a build finish so the next query adopts it
        keys = list(cur)
        coords = np.array([cur[k] for k in keys])
        centers = coords[:6] + rng.normal(0, 1, (6, 3))
        got = result_sets(eng.nodes_within(centers, 6.0), 6)
        tree = cKDTree(coords)
        for j, c in enumerate(centers):
            assert got[j] == {keys[i] for i in tree.query_ball_point(c, 6.0)}
        d = eng.nearest(centers, 4).column("distance").to_numpy().reshape(6, 4)
        np.testing.assert_allclose(d, tree.query(centers, 4)[0], atol=1e-12)
    assert sp.builds > first  # background builds were adopted


def test_first_build_on_the_background_thread_folds_in_batches_applied_meanwhile():
    """start_build (what the service's first query, or its restart from a snapshot of an
    indexed engine, does) returns a future; batches applied before it is adopted are
    recorded and folded in, the first batch after it finished adopts it, and the
    answers are exact for the state after the last batch, whenever the build finished."""
    rng = np.random.default_rng(5)
    pts = uniform(2000, 5)
    eng, nids, owner = engine_with_points(pts)
    sp = eng._spatial
    job = sp.start_build(eng._p.N)
    assert job is not None and sp.start_build(eng._p.N) is job  # one build at a time
    cur = {nids[i]: pts[i].copy() for i in range(len(pts))}
    g = owner[0]
    for b in range(4):
        if b == 2:
            job.result()  # done: the next batch adopts it, and later ones go to its delta
        eng.apply(rows_to_batch(_random_changes(rng, nids, cur, g, 10 + b, 50, 5.0)))
        if b >= 2:
            assert sp.built and sp.builds == 1 and sp._job is None  # adopted by a batch, not rebuilt
    keys = list(cur)
    coords = np.array([cur[k] for k in keys])
    centers = coords[:8] + rng.normal(0, 1, (8, 3))
    got = result_sets(eng.nodes_within(centers, 7.0), 8)
    assert sp.built and sp.builds == 1 and sp._job is None
    tree = cKDTree(coords)
    for j, c in enumerate(centers):
        assert got[j] == {keys[i] for i in tree.query_ball_point(c, 7.0)}
    assert sp.start_build(eng._p.N) is None


@pytest.mark.parametrize("n_queries", [10, 300])  # the serial and the parallel path
def test_kept_hits_overflow_and_large_radii_give_the_brute_force_answer(n_queries):
    """Small radii keep hits during the counting walk (up to a limit a query) and copy
    them; past the limit, or for radii of many cells, the fill walks again.  Every
    regime, sorted or not, with a graph filter and with a delta grid, equals brute force
    in the same order as an unkept fill would give."""
    rng = np.random.default_rng(9)
    pts = np.concatenate([uniform(3000, 9), np.repeat(rng.uniform(0, 100, (5, 3)), 40, axis=0)])
    eng, nids, owner = engine_with_points(pts, n_graphs=2)
    eng.nodes_within(pts[:1], 1.0)  # build, then move some nodes into the delta grid
    moved = rng.choice(len(pts), 60, replace=False)
    pts[moved] = rng.uniform(0, 100, (60, 3))
    eng.apply(rows_to_batch([_ev(EventType.NodeMoved, owner[i], 5, node_id=nids[i], x=pts[i, 0], y=pts[i, 1],
                                 z=pts[i, 2]) for i in moved]))
    h = float(eng._spatial.main.h[0])
    centers = np.concatenate([pts[3000:3000 + 200:40], rng.uniform(0, 100, (n_queries - 5, 3))])
    radii = rng.choice([0.2 * h, h, 2.9 * h, 6 * h], n_queries)  # kept, kept/overflow, walked again
    for graph in (None, owner[1]):
        for sort in (False, True):
            offs, idx, d2 = eng.radius_csr(centers, radii, graph_id=graph, sort=sort)
            for j in range(n_queries):
                got = idx[offs[j]:offs[j + 1]]
                dd = ((pts - centers[j]) ** 2).sum(1)
                want = np.flatnonzero(dd <= radii[j] ** 2)
                if graph is not None:
                    want = want[[owner[i] == graph for i in want]]
                got_nids = sorted(eng.node_ids(got).to_pylist())
                assert got_nids == sorted(nids[i] for i in want)
                np.testing.assert_array_equal(np.sort(d2[offs[j]:offs[j + 1]]), np.sort(dd[want]))
                if sort:
                    assert (np.diff(d2[offs[j]:offs[j + 1]]) >= 0).all()
            # the table (for batches: answered in grid slots, ids gathered in grid order)
            # has exactly these rows, in this order, with their graphs
            t = eng.nodes_within(centers, radii, graph_id=graph, sort=sort, return_distance=True)
            assert t.column("query").to_numpy().tolist() == np.repeat(np.arange(n_queries), np.diff(offs)).tolist()
            assert t.column("node_id").to_pylist() == eng.node_ids(idx).to_pylist()
            by_node = dict(zip(nids, owner))
            assert t.column("graph_id").to_pylist() == [by_node[x] for x in eng.node_ids(idx).to_pylist()]
            np.testing.assert_array_equal(t.column("distance").to_numpy(), np.sqrt(d2))
    assert (np.diff(eng.radius_csr(centers, radii)[0]) > 16).any()  # some queries overflowed the keep


def test_background_rebuilds_while_nodes_change_stay_exact():
    """Background main-grid builds run while batches add and move nodes in place (the
    service's situation): each build must read a copy of the node state.  Reading the
    live arrays, this stream gave answers with unwritten rows (garbage node numbers, a
    crash in the service) within a few hundred batches."""
    from cim_flow import decode_json
    from cim_flow._demo import SyntheticEvents

    gen = SyntheticEvents(7, max_graphs=200, nodes_per_graph=2000)
    eng = Engine()
    for _ in range(12):
        eng.apply(decode_json([gen.next()[2] for _ in range(50_000)])[0])
    rng = np.random.default_rng(0)
    centres = np.random.default_rng(1).uniform(0, 1000, (1024, 3))
    eng.radius_csr(centres[:1], 25.0)
    builds0 = eng._spatial.builds
    for it in range(500):
        eng.apply(decode_json([gen.next()[2] for _ in range(int(rng.integers(1, 200)))])[0])
        k = int(rng.choice([1, 5, 40, 64, 65, 200]))
        c = centres[rng.integers(0, 1024, k)]
        offs, idx, _ = eng.radius_csr(c, 25.0)
        n = int(eng._p.N.meta[0])
        assert idx.size == 0 or (idx.min() >= 0 and idx.max() < n), f"node numbers out of range at batch {it}"
        if it % 25 == 0:
            N = eng._p.N
            live = N.alive[:n].astype(bool) & ~np.isnan(N.pos[:n, 0])
            want = np.flatnonzero(live & (((N.pos[:n] - c[0]) ** 2).sum(1) <= 625.0))
            assert np.array_equal(np.sort(idx[offs[0]:offs[1]]), want)
    assert eng._spatial.builds >= builds0 + 2  # background builds were adopted along the way


def test_huge_offsets_limits_counts_and_bad_node_indices():
    """Offsets, limits and counts past int64 mean 'all' or 'none' (10**30 made a kernel
    fail to type: a numba TypingError out of find_edges and graphs_by_node_count);
    node_ids refuses negative, out-of-range and non-integer indices (-1 gave the zero
    id, 1.5 was truncated)."""
    eng, nids, owner = engine_with_points(uniform(40, 3), n_graphs=2)
    assert eng.find_edges(offset=10**30).num_rows == 0 and eng.find_nodes(offset=10**30).num_rows == 0
    assert eng.find_nodes(owner[0], limit=10**30).num_rows == 20
    assert eng.graphs_by_node_count(0, 10**30).num_rows == 2
    assert eng.graphs_by_node_count(10**30, 10**31).num_rows == 0
    assert eng.node_ids([]).to_pylist() == []
    assert eng.node_ids(np.array([3], np.uint32)).to_pylist() == [nids[3]]
    for bad in ([-1], [40], [1.5]):
        with pytest.raises(ValueError, match="node indices must be"):
            eng.node_ids(bad)


def test_knn_ties_are_ordered_by_node_number_past_the_insertion_sort():
    """Many candidates at one distance (duplicate points: more than the short-range
    insertion sort takes, so the heapsort runs): the k nearest are the lowest node
    numbers among the ties, in (distance, node) order, as brute force orders them."""
    rng = np.random.default_rng(12)
    pts = np.concatenate([np.repeat([[50.0, 50.0, 50.0]], 150, axis=0), rng.uniform(40, 60, (300, 3)),
                          np.repeat([[52.0, 50.0, 50.0]], 90, axis=0)])
    eng, nids, _ = engine_with_points(pts)
    centers = np.array([[50.0, 50.0, 50.0], [52.0, 50.0, 50.0], [51.0, 50.0, 50.0]])
    for k in (30, 100, 200):
        t = eng.nearest(centers, k)
        for j, c in enumerate(centers):
            d = np.sqrt(((pts - c) ** 2).sum(1))
            want = np.lexsort((np.arange(len(pts)), d))[:k]  # by distance, then node number
            rows = t.filter(pa.compute.equal(t.column("query"), j))
            assert rows.column("node_id").to_pylist() == [nids[i] for i in want], (k, j)
            np.testing.assert_array_equal(rows.column("distance").to_numpy(), d[want])
        counts, idx, dist = eng.nearest_indices(centers, k)
        assert (counts == k).all() and (np.diff(dist, axis=1) >= 0).all()


@pytest.mark.parametrize("graphs", [1, 2])
def test_knn_exact_where_a_dense_cell_misleads_the_first_guess(graphs):
    """kNN guesses the k-th distance from the density of the query's own cell: a tight
    clump in a sparse space makes that guess far too small (fewer than k lie within it),
    so the search starts over without one; the answer is still brute force's, also for
    one graph of two (where only that graph's points count)."""
    rng = np.random.default_rng(13)
    pts = np.concatenate([rng.uniform(0, 100, (3000, 3)), 50.0 + rng.normal(0, 0.01, (40, 3))])
    eng, nids, owner = engine_with_points(pts, n_graphs=graphs)
    centers = np.array([[50.0, 50.0, 50.0], [50.02, 49.99, 50.0], [10.0, 90.0, 30.0]])
    gid = owner[0] if graphs == 2 else None
    mine = np.array([o == owner[0] for o in owner]) if graphs == 2 else np.ones(len(pts), bool)
    for k in (5, 30, 60, 200):
        t = eng.nearest(centers, k, graph_id=gid)
        for j, c in enumerate(centers):
            d = np.where(mine, np.sqrt(((pts - c) ** 2).sum(1)), np.inf)
            want = np.lexsort((np.arange(len(pts)), d))[:k]
            rows = t.filter(pa.compute.equal(t.column("query"), j))
            assert rows.column("node_id").to_pylist() == [nids[i] for i in want], (k, j)
            np.testing.assert_array_equal(rows.column("distance").to_numpy(), d[want])
