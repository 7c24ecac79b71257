"""find_nodes and neighbors against the plain reference projection, on hostile streams."""
import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cim_flow import Engine
from reference import RefProjection
from streams import random_rows, rows_to_batch


def _apply(rows, cut):
    eng, ref = Engine(capacity=4), RefProjection()
    for a in range(0, len(rows), cut):
        eng.apply(rows_to_batch(rows[a:a + cut]))
    ref.apply(rows)
    return eng, ref


def _expect_nodes(ref, g=None, node_type=None, name=None):
    out = {}
    for (gid, nid), node in ref.nodes.items():
        if g is not None and gid != g:
            continue
        if node_type is not None and node["node_type"] != node_type:
            continue
        if name is not None and node["label"] != name:
            continue
        out[(gid, nid)] = (node["label"], node["node_type"], node["pos"])
    return out


def _got_nodes(table):
    out = {}
    for r in table.to_pylist():
        pos = None if math.isnan(r["x"]) else (r["x"], r["y"], r["z"])
        out[(r["graph_id"], r["node_id"])] = (r["name"], r["node_type"], pos)
    return out


def _expect_neighbors(ref, g, nid):
    out = []
    for ek in ref.adj.get((g, nid), ()):
        e = ref.edges[ek]
        w = e["weight"]
        if e["src"] == nid:
            out.append((e["dst"], ek[1], "out", w, e["edge_type"]))
        if e["dst"] == nid:
            out.append((e["src"], ek[1], "in", w, e["edge_type"]))
    return sorted(out, key=repr)


def _got_neighbors(table, g):
    rows = table.to_pylist()
    assert all(r["graph_id"] == g for r in rows)
    return sorted(((r["node_id"], r["edge_id"], r["direction"], r["weight"], r["edge_type"]) for r in rows), key=repr)


def _check(eng, ref):
    assert _got_nodes(eng.find_nodes()) == _expect_nodes(ref)
    for g in {k[0] for k in ref.nodes} | {b"\x01" + bytes(15)}:
        assert _got_nodes(eng.find_nodes(g)) == _expect_nodes(ref, g)
        for t in ("T1", "T2", "nope"):
            assert _got_nodes(eng.find_nodes(g, node_type=t)) == _expect_nodes(ref, g, node_type=t)
        assert _got_nodes(eng.find_nodes(node_type="T1", name="a")) == _expect_nodes(ref, node_type="T1", name="a")
    for (g, nid) in ref.nodes:
        assert _got_neighbors(eng.neighbors(nid, graph_id=g), g) == _expect_neighbors(ref, g, nid)
    for (g, nid) in list(ref.nodes)[:3]:
        # without graph_id: every graph holding the node id
        t = eng.neighbors(nid)
        want = sum((_expect_neighbors(ref, gg, n) for (gg, n) in ref.nodes if n == nid), [])
        assert sorted(((r["node_id"], r["edge_id"], r["direction"], r["weight"], r["edge_type"])
                       for r in t.to_pylist()), key=repr) == sorted(want, key=repr)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**9), st.integers(1, 40))
def test_find_nodes_and_neighbors_match_reference(seed, cut):
    rows = random_rows(random.Random(seed), 300)
    for r in rows:  # weights as float32 round-trips, for an exact comparison
        if r.get("weight") is not None:
            r["weight"] = float(r["weight"])
    eng, ref = _apply(rows, cut)
    _check(eng, ref)


def test_paging_and_bad_arguments():
    rows = random_rows(random.Random(4), 400)
    eng, ref = _apply(rows, 50)
    every = eng.find_nodes()
    assert every.num_rows == len(ref.nodes) > 3
    assert eng.find_nodes(offset=1, limit=2).to_pylist() == every.slice(1, 2).to_pylist()
    assert eng.find_nodes(offset=every.num_rows).num_rows == 0
    with pytest.raises(ValueError):
        eng.find_nodes(offset=-1)
    assert eng.neighbors(b"\x07" * 16).num_rows == 0
    assert Engine().find_nodes().num_rows == 0


@pytest.mark.parametrize("seed", range(6))
def test_unfiltered_pages_walk_to_the_same_rows_as_the_scan(seed):
    """find_nodes / find_edges without filters take their page from a walk that stops at
    the page's end and their total from the live counts; every page and total must be the
    scan's (every live slot listed, then sliced), with removals and graph deletions
    leaving dead slots among the live ones."""
    rng = random.Random(seed)
    eng, ref = _apply(random_rows(rng, 500), rng.randint(1, 60))
    nodes = eng._find_node_indices(None, None, None)
    edges = eng._find_edge_indices(None, None)
    assert len(nodes) == len(ref.nodes) and len(edges) == len(ref.edges)
    for offset, limit in [(0, None), (0, 0), (0, 1), (3, 5), (len(nodes) - 1, 10), (len(nodes), 3),
                          (len(nodes) + 7, None), (rng.randint(0, 40), rng.randint(1, 40))]:
        offset = max(offset, 0)
        want = nodes[offset:] if limit is None else nodes[offset:offset + limit]
        got, total = eng._node_page(None, None, None, offset, limit)
        assert got.tolist() == want.tolist() and total == len(nodes)
        want = edges[offset:] if limit is None else edges[offset:offset + limit]
        got, total = eng._edge_page(None, None, offset, limit)
        assert got.tolist() == want.tolist() and total == len(edges)
    with pytest.raises(ValueError):
        eng._node_page(None, None, None, 0, -1)


def test_iso_text_rows_equal_numpy_datetime_text():
    """The kernel's RFC 3339 text equals numpy's for every year 0..9999 (both sides of
    each boundary, before and after the epoch); outside that range it hands over to numpy."""
    from cim_flow._queries import _iso_texts_numpy, iso_texts_of
    from kernels import traverse as kt

    lo, hi = -62167219200000000, 253402300799999999  # 0000-01-01T00:00:00, 9999-12-31T23:59:59.999999
    day = 86_400_000_000
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.integers(lo, hi, 50_000), rng.integers(-10**6, 10**6, 2000) * 10**6,
                        np.arange(lo, lo + 800 * day, day // 7), np.arange(-400 * day, 400 * day, day // 3),
                        [0, -1, 1, 999_999, -1_000_000, day - 1, 951_782_400_000_000, hi, lo, lo + 1]])
    rows, ok = kt.iso_text_rows(v)
    assert ok
    assert [t.decode() for t in rows.view(f"S{kt.ISO_LEN}").tolist()] == _iso_texts_numpy(v)
    out = np.array([lo - 1, 0, hi + 1])
    assert not kt.iso_text_rows(out)[1]
    assert iso_texts_of(out) == _iso_texts_numpy(out)
    assert iso_texts_of(np.array([0, 1_500_000])) == ["1970-01-01T00:00:00Z", "1970-01-01T00:00:01.500000Z"]


@pytest.mark.parametrize("n_graphs,n_nodes", [(2, 30), (40, 6)])
def test_node_id_without_graph_found_by_lookups_and_by_scan_alike(n_graphs, n_nodes):
    """A node id without its graph: a lookup per graph (few graphs, many nodes) or a scan
    of every node id (many graphs): the same live nodes, in node-index order."""
    rows = random_rows(random.Random(11), 500, n_graphs=n_graphs, n_nodes=n_nodes)
    eng, ref = _apply(rows, 60)
    N = eng._p.N
    m = int(N.meta[0])
    assert (4 * int(eng._p.G.meta[0]) < m) == (n_graphs == 2)  # each case takes its path
    for nid in {n for (_g, n) in ref.nodes} | {b"\x02" + bytes(15)}:
        w = np.frombuffer(nid, np.uint64)
        want = np.flatnonzero((N.keys[:m, 0] == w[0]) & (N.keys[:m, 1] == w[1]) & N.alive[:m].astype(bool))
        got = eng._nodes_of(nid)
        assert got.tolist() == want.tolist()
        assert len(got) == sum(1 for (_g, n) in ref.nodes if n == nid)
