"""kNN (k = 30) over the asv datasets, checked against cKDTree, then timed: the A/B tool.

    python asv_benchmarks/tools/knn_times.py [--kinds uniform clustered] [--repeat 9] [--no-check]

1M points (uniform, or ~200 Gaussian clusters), 10k query points: ``Engine.nearest_indices``
(the arrays, the peer of ``cKDTree.query``), median of ``--repeat`` calls.  To compare two
commits, run it from a ``git worktree`` of each (with its own ``NUMBA_CACHE_DIR``), turn
and turn about, in the same hour.
"""
import argparse
import pathlib
import sys

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import benchmarks.bench_spatial as B  # noqa: E402
from _timing import median_seconds  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["uniform", "clustered"], choices=["uniform", "clustered"])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--no-check", action="store_true", help="skip the comparison with cKDTree")
    a = ap.parse_args()
    for kind in a.kinds:
        o = type("Holder", (), {})()
        B._load(o, kind, 10_000)
        eng, q = o.eng, o.q
        eng.nearest_indices(q[:100], 30)
        if not a.no_check:
            d, _ = cKDTree(o.pts).query(q, 30, workers=-1)
            got = eng.nearest_indices(q, 30)[2]
            bad = np.flatnonzero(~np.isclose(got, d, rtol=0, atol=1e-9).all(1))
            if bad.size:
                sys.exit(f"{kind}: {bad.size} queries differ from cKDTree (first: {bad[0]})")
        ms = median_seconds(lambda: eng.nearest_indices(q, 30), a.repeat) * 1e3
        print(f"{kind:9s} kNN k=30, 10k queries: {ms:.1f} ms (median of {a.repeat})"
              + ("" if a.no_check else ", distances equal cKDTree's"))


if __name__ == "__main__":
    main()
