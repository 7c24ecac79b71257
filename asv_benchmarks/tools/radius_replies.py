"""Service time to answer radius requests near clusters (the JSON reply path of
``query.graph.nodes_in_radius``: one batched kernel call, rows, encoding), without NATS.

    python asv_benchmarks/tools/radius_replies.py [--per-flush 1 4] [--centers nodes|loadgen]

A 600k-event synthetic stream (~270k nodes in 200 clusters), radius 25, limit 100:
prints the median time per request, and that of one plain request through the fast path the
service takes for it alone (``q_radius_fast``).  Centers on nodes (~900 hits each), or, with
``--centers loadgen``, uniform in [0, 1000]^3 as the load generator's queries (most
find nothing, a few hundreds).
"""
import argparse
import pathlib
import sys
import timeit

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from cim_flow import Engine, decode_json  # noqa: E402
from cim_flow._demo import SyntheticEvents  # noqa: E402
from cim_flow._queries import encode_answer, q_nodes_in_radius_many, q_radius_fast  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-flush", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--centers", choices=["nodes", "loadgen"], default="nodes")
    a = ap.parse_args()
    gen = SyntheticEvents(1, max_graphs=200, nodes_per_graph=2000)
    eng = Engine()
    for _ in range(12):
        eng.apply(decode_json([gen.next()[2] for _ in range(50_000)])[0])
    pos = eng._p.N.pos[: int(eng._p.N.meta[0])]
    rng = np.random.default_rng(0)
    centers = pos[rng.integers(0, len(pos), 1000)] if a.centers == "nodes" else rng.uniform(0, 1000, (1000, 3))
    reqs = [{"center": c.tolist(), "radius": 25.0, "limit": 100} for c in centers]
    limits = {"default": 10000, "max": 1_000_000}
    hits = np.diff(eng.radius_csr(centers[:200], 25.0)[0]).mean()
    print(f"{eng.totals()['nodes']:,} nodes; {hits:.0f} hits a request on average, replies carry 100")
    for n in a.per_flush:
        at = [0]

        def flush():
            i = at[0] % (len(reqs) - n)
            at[0] += n
            for ans in q_nodes_in_radius_many(eng, reqs[i:i + n], limits, [False] * n):
                encode_answer(ans, 1, False)

        t = np.median(timeit.repeat(flush, number=300, repeat=5)) / 300
        print(f"{n} request(s) a batch: {t * 1e6:.0f} us a batch, {t / n * 1e6:.0f} us a request")
    at = [0]

    def fast():  # what the service does for such a request alone (q_radius_fast)
        i = at[0] % len(reqs)
        at[0] += 1
        q_radius_fast(eng, reqs[i], limits)

    t = np.median(timeit.repeat(fast, number=300, repeat=5)) / 300
    print(f"one plain request through the fast path (q_radius_fast): {t * 1e6:.0f} us")


if __name__ == "__main__":
    main()
