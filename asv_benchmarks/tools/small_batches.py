"""Decode + apply cost per micro-batch, the service's way (scanner columns straight to
the kernel) against the Arrow round trip (decode_spans -> RecordBatch -> Engine.apply).

    python asv_benchmarks/tools/small_batches.py [--sizes 25 250 16384] [--preload 4000000]

Prints the median per batch of each step; both paths run in the same process on the
same synthetic stream (the load generator's), so their ratio is what to read.
"""
import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cim_flow import Engine, decode_json  # noqa: E402
from cim_flow._decode import decode_spans, decode_spans_columns  # noqa: E402
from cim_flow._demo import SyntheticEvents  # noqa: E402


def run(size: int, mode: str, payloads, preload: int = 0) -> tuple[float, float]:
    eng = Engine(node_capacity=preload + 100_000 if preload else None)
    if preload:  # a big engine: per-batch costs that grow with the live node count show
        from benchmarks.datasets import bulk_graph

        for b in bulk_graph(preload, 0):
            eng.apply(b)
    eng.apply(decode_json(payloads[:1000])[0])
    dec, app = [], []
    for a in range(1000, len(payloads) - size, size):
        part = payloads[a:a + size]
        joined = b"".join(part)
        ends = np.cumsum([len(p) for p in part])
        starts = ends - [len(p) for p in part]
        t0 = time.perf_counter()
        if mode == "arrow":
            batch, _ = decode_spans(joined, starts, ends)
            t1 = time.perf_counter()
            eng.apply(batch)
        else:
            cols, _, _ = decode_spans_columns(joined, starts, ends)
            t1 = time.perf_counter()
            eng._apply_columns(cols)
        t2 = time.perf_counter()
        dec.append(t1 - t0)
        app.append(t2 - t1)
    return float(np.median(dec)), float(np.median(app))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 250, 16384])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--preload", type=int, default=0, help="live nodes in the engine before timing [0]")
    a = ap.parse_args()
    gen = SyntheticEvents(1, max_graphs=200, nodes_per_graph=2000)
    payloads = [gen.next()[2] for _ in range(a.events)]
    run(25, "arrow", payloads[:3000])  # load the kernels first
    run(25, "columns", payloads[:3000])
    for size in a.sizes:
        got = {m: run(size, m, payloads, a.preload) for m in ("arrow", "columns")}
        (da, aa), (dc, ac) = got["arrow"], got["columns"]
        print(f"{size:6d} events a batch: Arrow round trip decode {da * 1e6:8.1f} us + apply {aa * 1e6:8.1f} us; "
              f"columns decode {dc * 1e6:8.1f} us + apply {ac * 1e6:8.1f} us; "
              f"{(da + aa) / (dc + ac):.2f}x")


if __name__ == "__main__":
    main()
