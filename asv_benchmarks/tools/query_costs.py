"""What a listing, a lookup or a small decode costs: each against the way that reads
the whole engine (or builds every row), in the same process.

    python asv_benchmarks/tools/query_costs.py [--graphs 200000]

An engine fed the asv ``ApplyMixed`` stream (1M events: ~500k nodes, ~126k edges in
1,000 graphs) answers:

* a 100-row page of ``query.graph.find_nodes`` / ``find_edges`` (the handlers, which
  build the page's rows only) against building every row and slicing the page;
* ``find_edges`` of its biggest graph (walking the graph's nodes' edge lists) against
  the scan of every edge slot;
* a node id without its graph (a lookup per graph) against comparing every node's id;
* ``query.graph.nodes_in_box`` around every node with limit 100 (ids gathered for the
  page only) against the whole answer table cut to 100 rows;

then an engine of ``--graphs`` graphs answers a ``query.graph.graphs`` page against
the whole summary table, and ``decode_json`` of 1 / 10 / 100 NodeAdded events is timed.
Medians of repeated warm calls.
"""
import argparse
import json
import pathlib
import sys
import uuid

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "asv_benchmarks"))

from benchmarks.common import SIZES  # noqa: E402
from _timing import median_seconds  # noqa: E402  (this folder: the script's own)
from benchmarks.datasets import T0, _batch, _ids, mixed_stream  # noqa: E402
from cim_flow import Engine, decode_json  # noqa: E402
from cim_flow._ids import words_of  # noqa: E402
from cim_flow._queries import q_find_edges, q_find_nodes, q_graphs, q_nodes_in_box  # noqa: E402

LIMITS = {"default": 100, "max": 10_000}


def med_us(fn, repeat=15) -> float:
    return median_seconds(fn, repeat, warm=True) * 1e6


def pair(what, new, old) -> None:
    a, b = med_us(new), med_us(old)
    print(f"{what:44s} {a:10.1f} us   whole-engine way {b:10.1f} us   {b / a:6.1f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", type=int, default=200_000)
    a = ap.parse_args()

    eng = Engine()
    for b in mixed_stream(SIZES["apply_events"], SIZES["apply_batch"]):
        eng.apply(b)
    N, E, G = eng._p.N, eng._p.E, eng._p.G
    print(f"engine: {eng.totals()}")
    pair("find_nodes page (offset 1000, 100 rows)", lambda: q_find_nodes(eng, {"offset": 1000}, LIMITS),
         lambda: eng._node_rows(eng._find_node_indices(None, None, None)).slice(1000, 100))
    pair("find_edges page (100 rows)", lambda: q_find_edges(eng, {}, LIMITS),
         lambda: eng._edge_rows(eng._find_edge_indices(None, None)).slice(0, 100))

    big = eng.graph_summaries().sort_by([("edge_count", "descending")])
    g = big.column("graph_id")[0].as_py()
    gi = eng._gidx(g)
    src = E.src[: int(E.meta[0])]

    def scan_edges():
        live = src >= 0
        return np.flatnonzero(live & (N.graph[np.where(live, src, 0)] == gi))

    assert eng._find_edge_indices(g, None).tolist() == scan_edges().tolist()
    pair(f"edges of one graph ({big.column('edge_count')[0]} edges)", lambda: eng._find_edge_indices(g, None),
         scan_edges)

    nid = eng.find_nodes(limit=1).column("node_id")[0].as_py()
    w0, w1 = words_of(nid)
    m = int(N.meta[0])
    keys = N.keys[:m]

    def scan_ids():
        return np.flatnonzero((keys[:, 0] == w0) & (keys[:, 1] == w1) & N.alive[:m].astype(bool))

    assert eng._nodes_of(nid).tolist() == scan_ids().tolist()
    pair(f"a node id without its graph ({int(G.meta[0])} graphs)", lambda: eng._nodes_of(nid), scan_ids)

    everywhere = ([-1e12] * 3, [1e12] * 3)
    eng.nodes_in_box(*everywhere)  # builds the spatial index
    pair(f"box around all {int(N.meta[1]):,} nodes, limit 100", lambda: q_nodes_in_box(eng, {
        "lo": everywhere[0], "hi": everywhere[1], "limit": 100}, LIMITS),
         lambda: eng.nodes_in_box(*everywhere).slice(0, 100))

    rng = np.random.default_rng(0)
    many = Engine()
    many.apply(_batch(np.full(a.graphs, 1), T0 + np.arange(a.graphs), _ids(rng, a.graphs)))
    pair(f"graphs page (offset 10, 100 of {a.graphs:,})", lambda: q_graphs(many, {"offset": 10}, LIMITS),
         lambda: many.graph_summaries().slice(10, 100))

    p = json.dumps({"NodeAdded": {"graph_id": str(uuid.UUID(int=1)), "node_id": str(uuid.UUID(int=2)),
                                  "position": [1, 2, 3], "occurred_at": 1_700_000_000_000}}).encode()
    print("decode_json of 1 / 10 / 100 events: "
          + " / ".join(f"{med_us(lambda k=k: decode_json([p] * k), 300):.0f}" for k in (1, 10, 100)) + " us")


if __name__ == "__main__":
    main()
