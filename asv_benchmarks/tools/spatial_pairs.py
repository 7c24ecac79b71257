"""Spatial queries against scipy's cKDTree in the same process, repeated, as ratios.

    python asv_benchmarks/tools/spatial_pairs.py [--repeat 5] [--kinds uniform clustered]

1M points (uniform in [0,100]^3 and ~200 Gaussian clusters), 10k query points,
radius giving ~30 neighbours on the uniform set, the index build, and the radius sweep of
benchmarks/spatial_data.py (0.1x/1x/10x the median nearest-neighbour distance, and
10x the 30-neighbour radius on 1k queries).  Each timing is a median of ``--repeat`` warm calls;
``asv run --quick`` (make bench) times one cold call, which on this 2-core machine
includes thread start-up and is noisier.
"""
import argparse
import pathlib
import sys

from scipy.spatial import cKDTree

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import benchmarks.bench_spatial as B  # noqa: E402
from _timing import median_seconds  # noqa: E402  (this folder: the script's own)


def med(fn, repeat):
    return median_seconds(fn, repeat) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--kinds", nargs="+", default=["uniform", "clustered"], choices=["uniform", "clustered"])
    a = ap.parse_args()
    for kind in a.kinds:
        o = type("Holder", (), {})()
        B._load(o, kind, 10_000)
        r = B.radius_for(o.n)
        eng, q = o.eng, o.q
        eng.nodes_within(q[:100], r, count_only=True)
        eng.nodes_within(q[:100], r)
        eng.nearest(q[:100], 30)
        tree = cKDTree(o.pts)
        rows = {
            "radius counts": (med(lambda: eng.nodes_within(q, r, count_only=True), a.repeat),
                              med(lambda: tree.query_ball_point(q, r, return_length=True, workers=-1), a.repeat)),
            "radius answer (table / index lists)": (
                med(lambda: eng.nodes_within(q, r), a.repeat),
                med(lambda: tree.query_ball_point(q, r, workers=-1), a.repeat)),
            "radius answer (CSR indices / index lists)": (
                med(lambda: eng.radius_csr(q, r), a.repeat),
                med(lambda: tree.query_ball_point(q, r, workers=-1), a.repeat)),
            "kNN k=30 (table / arrays)": (med(lambda: eng.nearest(q, 30), a.repeat),
                                          med(lambda: tree.query(q, 30, workers=-1), a.repeat)),
            "kNN k=30 (arrays / arrays)": (med(lambda: eng.nearest_indices(q, 30), a.repeat),
                                           med(lambda: tree.query(q, 30, workers=-1), a.repeat)),
        }
        for name in B.RADII:
            rs = B.sweep_radius(name, kind, o.n)
            qs = q[:1000] if name == "30nn_x10" else q  # ~30k neighbours each
            rows[f"radius counts, {name} (r={rs:.3g}, {len(qs)} q)"] = (
                med(lambda: eng.nodes_within(qs, rs, count_only=True), a.repeat),
                med(lambda: tree.query_ball_point(qs, rs, return_length=True, workers=-1), a.repeat))
            if name.startswith("spacing"):
                peer = med(lambda: tree.query_ball_point(qs, rs, workers=-1), a.repeat)
                rows[f"radius table, {name}"] = (med(lambda: eng.nodes_within(qs, rs), a.repeat), peer)
                rows[f"radius CSR indices, {name}"] = (med(lambda: eng.radius_csr(qs, rs), a.repeat), peer)
        build = med(lambda: eng._spatial.build(eng._p.N), a.repeat)
        rows["index build (cKDTree fast-build settings)"] = (
            build, med(lambda: cKDTree(o.pts, balanced_tree=False, compact_nodes=False), a.repeat))
        rows["index build (cKDTree defaults)"] = (build, med(lambda: cKDTree(o.pts), a.repeat))
        for name, (ours, peer) in rows.items():
            print(f"{kind:9s} {name:48s} cim_flow {ours:8.1f} ms  cKDTree {peer:8.1f} ms  ratio {peer / ours:5.2f}x")


if __name__ == "__main__":
    main()
