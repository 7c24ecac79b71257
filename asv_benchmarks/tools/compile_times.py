"""Where a cold start's compile time goes: every kernel compiled from an empty numba
cache (a temporary ``NUMBA_CACHE_DIR``; the project's own cache is left alone), each
compile timed by a numba event listener.

    python asv_benchmarks/tools/compile_times.py [--top 25]

Prints the warm-up's total, the longest compiles (inclusive: a kernel's time holds the
helpers compiled for it) and every function compiled more than once, marking the
specialisations made for a literal argument (``Literal[int](0)``: pass an int64 value
instead, or numba compiles the helper again for each constant).
"""
import argparse
import collections
import os
import pathlib
import sys
import tempfile
import time

CACHE = tempfile.mkdtemp(prefix="cim_flow-cold-")
os.environ["NUMBA_CACHE_DIR"] = CACHE  # read when numba is imported: before any import of it
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from numba.core import event  # noqa: E402

RECORDS = []


class _Compiles(event.Listener):
    def __init__(self):
        self.started = {}

    def on_start(self, ev):
        self.started[id(ev.data["dispatcher"]), str(ev.data["args"])] = time.perf_counter()

    def on_end(self, ev):
        t0 = self.started.pop((id(ev.data["dispatcher"]), str(ev.data["args"])), None)
        if t0 is not None:
            f = ev.data["dispatcher"].py_func
            RECORDS.append((time.perf_counter() - t0, f"{f.__module__}.{f.__qualname__}", str(ev.data["args"])))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    event.register("numba:compile", _Compiles())
    from cim_flow.service import warm_kernels

    t = time.perf_counter()
    warm_kernels()
    print(f"warm_kernels from an empty cache: {time.perf_counter() - t:.1f} s (cache: {CACHE})")
    print("\nlongest compiles (inclusive):")
    for d, name, args in sorted(RECORDS, reverse=True)[:a.top]:
        print(f"  {d:6.1f} s  {name}  {args[:90]}")
    by_name = collections.defaultdict(list)
    for d, name, args in RECORDS:
        by_name[name].append((d, args))
    print("\ncompiled more than once (project code):")
    for name, v in sorted(by_name.items(), key=lambda kv: -sum(x[0] for x in kv[1])):
        if len(v) > 1 and name.startswith(("kernels", "cim_flow")):
            lit = sum("Literal" in args for _, args in v)
            print(f"  {len(v)}x {sum(d for d, _ in v):5.1f} s  {name}" + (f"  ({lit} for literal arguments)" if lit else ""))


if __name__ == "__main__":
    main()
