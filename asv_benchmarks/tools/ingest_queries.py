"""The spatial index's upkeep under ingest with queries, in one process (no NATS): an
engine filled like the load generator's fill (Arrow batches of synthetic traffic), then
small batches of fresh traffic, each followed by a radius query, as the service sees at
10k events/s with 1,000 queries/s.

    python asv_benchmarks/tools/ingest_queries.py [--fill 1200000] [--batches 3000] [--batch 15]

Prints the time a batch + query cycle takes (median and mean), the part spent bringing
the index up to date (main grids built, delta rebuilds) and the index's own counters.
"""
import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from cim_flow import Engine  # noqa: E402
from cim_flow._demo import synthetic_batches  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fill", type=int, default=1_200_000)
    ap.add_argument("--batches", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2, help="runs of --batches, each on fresh traffic")
    a = ap.parse_args()
    eng = Engine()
    for b in synthetic_batches(a.fill, 5000, 1, max_graphs=200, nodes_per_graph=2000):
        eng.apply(b)
    centres = np.random.default_rng(7).uniform(0, 1000, (1024, 3))
    eng.nodes_within(centres[0], 25.0)  # the first build
    eng._spatial.wait()
    print(f"filled: {eng.totals()}")
    for rnd in range(a.rounds):
        batches = list(synthetic_batches(a.batches * a.batch, a.batch, 100 + rnd, max_graphs=200,
                                         nodes_per_graph=2000))
        sp = eng._spatial
        s0 = sp.stats()
        cpu0 = time.process_time()
        lat = np.empty(len(batches))
        for i, b in enumerate(batches):
            t = time.perf_counter()
            eng.apply(b)
            eng.nodes_within(centres[i % 1024], 25.0)
            lat[i] = time.perf_counter() - t
        sp.wait()
        cpu = time.process_time() - cpu0
        s1 = sp.stats()
        nd = s1["delta_rebuilds"] - s0["delta_rebuilds"]
        print(f"round {rnd}: batch + query median {np.median(lat) * 1e6:.0f} us, mean {lat.mean() * 1e6:.0f} us, "
              f"p99 {np.percentile(lat, 99) * 1e6:.0f} us; process CPU {cpu * 1e6 / len(batches):.0f} us a cycle; "
              f"main builds {s1['main_builds'] - s0['main_builds']} (last {s1['main_build_ms'] or 0:.1f} ms), "
              f"delta rebuilds {nd} at {(s1['delta_rebuild_ms'] - s0['delta_rebuild_ms']) / max(nd, 1) * 1e3:.0f} us, "
              f"delta now {s1['delta_nodes']} nodes")


if __name__ == "__main__":
    main()
