"""Time to rebuild the spatial index's delta grid (what the first query after a batch
pays) for deltas of a given size, over a 400k-node clustered engine.

    python asv_benchmarks/tools/delta_rebuild.py [--sizes 100 1000 5000 20000]

Prints the median of 200 rebuilds per delta size (random live nodes as the delta), and
what a 15-node batch costs the index when it patches that delta grid in place instead
(``SpatialIndex._to_delta``: main entries marked stale, delta rows written, entries
placed; median of the patches that fit, each after a fresh rebuild and a query).
"""
import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.spatial_data import engine_with  # noqa: E402
from _timing import median_seconds  # noqa: E402  (this folder: the script's own)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000, 20000])
    a = ap.parse_args()
    eng = engine_with("clustered", 400_000)
    N, sp = eng._p.N, eng._spatial
    eng.nodes_within([0.0, 0.0, 0.0], 1.0)  # builds the index (and loads the kernels)
    rng = np.random.default_rng(0)
    for k in a.sizes:
        sp.build(N)  # a fresh index, then a delta of k random live nodes as if they had just changed
        sp._to_delta(N, np.sort(rng.choice(int(N.meta[0]), k, replace=False)).astype(np.int64))
        t = median_seconds(lambda: sp._rebuild_delta(N), 200)
        patches = []
        for _ in range(200):
            sp._rebuild_delta(N)
            sp.pair()  # made by the first query after a rebuild, then kept
            batch = np.sort(rng.choice(int(N.meta[0]), 15, replace=False)).astype(np.int64)
            t0 = time.perf_counter()
            sp._to_delta(N, batch)
            if not sp._delta_stale:  # it fitted: patched in place
                patches.append(time.perf_counter() - t0)
        patch = f"{np.median(patches) * 1e6:5.1f} us" if patches else "  n/a"
        print(f"{k:>6} delta nodes: {t * 1e6:7.0f} us a rebuild (median of 200); a 15-node batch patched "
              f"in: {patch} ({len(patches)} of 200 fitted)")


if __name__ == "__main__":
    main()
