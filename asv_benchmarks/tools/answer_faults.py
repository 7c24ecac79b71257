"""Batch query answers call after call: the median time and the minor page faults of
each call, on the 1M-point datasets of the spatial benchmarks (10k queries).

    python asv_benchmarks/tools/answer_faults.py [--kinds uniform clustered] [--calls 9] [--tune-allocator]

Fresh answer arrays are faulted in 4 KiB at a time, and whether a call gets fresh memory
depends on what the process freed before it (glibc's allocator); a call that faults
thousands of pages is much slower. ``--tune-allocator`` calls ``cim_flow.tune_allocator()``
first (as ``serve`` does).
"""
import argparse
import pathlib
import resource
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import benchmarks.bench_spatial as B  # noqa: E402


def calls(fn, n):
    """``(median ms, faults of each call)`` over ``n`` calls after 3 warm ones; each answer
    is dropped before the next call, as a caller that uses and discards it would."""
    for _ in range(3):
        fn()
    ms, faults = [], []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        answer = fn()
        ms.append((time.perf_counter() - t) * 1e3)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        del answer
    return float(np.median(ms)), faults


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["uniform"], choices=["uniform", "clustered"])
    ap.add_argument("--calls", type=int, default=9)
    ap.add_argument("--tune-allocator", action="store_true")
    a = ap.parse_args()
    if a.tune_allocator:
        import cim_flow

        print("tune_allocator:", cim_flow.tune_allocator())
    for kind in a.kinds:
        o = type("Holder", (), {})()
        B._load(o, kind, 10_000)
        r = B.radius_for(o.n)
        eng, q = o.eng, o.q
        for name, fn in (("radius table", lambda: eng.nodes_within(q, r)),
                         ("radius table + distance", lambda: eng.nodes_within(q, r, return_distance=True)),
                         ("radius CSR", lambda: eng.radius_csr(q, r)),
                         ("kNN k=30 table", lambda: eng.nearest(q, 30)),
                         ("kNN k=30 arrays", lambda: eng.nearest_indices(q, 30))):
            ms, faults = calls(fn, a.calls)
            print(f"{kind:9s} {name:24s} {ms:8.1f} ms  faults a call {faults}")


if __name__ == "__main__":
    main()
