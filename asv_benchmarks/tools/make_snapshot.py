"""Write a snapshot of a synthetic projection (for restart-to-ready measurements).

    python asv_benchmarks/tools/make_snapshot.py --nodes 10000000 --edges 20000000 --to big.arrow
    python -m cim_flow loadgen --replay 100000 --replay-snapshot big.arrow

The snapshot is written at version 0, so a service started from it replays a stream
from its first message: the second command times load + a 100k-event tail + ready.
"""
import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.datasets import bulk_graph  # noqa: E402

from cim_flow import Engine  # noqa: E402
from cim_flow._snapshot import write_snapshot  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10_000_000)
    ap.add_argument("--edges", type=int, default=20_000_000)
    ap.add_argument("--to", required=True)
    a = ap.parse_args()
    eng = Engine()
    t = time.perf_counter()
    for b in bulk_graph(a.nodes, a.edges):
        eng.apply(b)
    eng._p.version = 0
    print(f"built {eng.totals()} in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    write_snapshot(eng, a.to)
    print(f"snapshot {a.to} written in {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
