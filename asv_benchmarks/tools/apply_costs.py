"""Where the apply path's time goes: kernel cost per event kind, hash-table insert and
lookup, and the Python steps around one small batch.

    python asv_benchmarks/tools/apply_costs.py kinds [--nodes 1000000]
    python asv_benchmarks/tools/apply_costs.py intern [--keys 1048576]
    python asv_benchmarks/tools/apply_costs.py phases [--size 15] [--arrow]
    python asv_benchmarks/tools/apply_costs.py summaries
    python asv_benchmarks/tools/apply_costs.py mixed [--repeat 3]
    python asv_benchmarks/tools/apply_costs.py compaction [--nodes 1000000] [--repeat 3] [--edges-only]

``kinds``: an engine holding ``--nodes`` live nodes in 1,000 graphs takes 65,536-event
batches of one kind (NodeAdded of new nodes, NodeMoved, EdgeAdded within a graph); the
kernel's time per event, median of 5 fresh engines.  ``intern``: 65,536 new keys
inserted into, and 65,536 present keys looked up in, a table of ``--keys`` keys, with
the slots prefetched 16 keys ahead as the kernel does.  ``phases``: the demo's JSON
traffic in ``--size``-event batches through the service's path (scanner columns straight
to the engine); the median time of each step of ``Engine._apply_columns``; with
``--arrow``, record batches of the same traffic through ``Engine.apply``.
``mixed``: the asv ``ApplyMixed`` stream (1M events, 64k batches) applied to a fresh
engine ``--repeat`` times, each run's total and the time of each step of
``Engine.apply`` (normalising, reading the Arrow columns, making room, the kernel, the
secondary indices).  ``compaction``: see :func:`compaction`.  ``summaries``: the graph summaries a batch's update message carries, for 15, 200 and
1,000 graphs of an engine fed the demo traffic: the compiled JSON rows the service sends
(``Engine._summary_json``) against dict rows encoded by msgspec (its general path).
"""
import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "asv_benchmarks"))

import kernels.projection as kp  # noqa: E402
from benchmarks.datasets import T0, _batch, _ids  # noqa: E402
from cim_flow import Engine  # noqa: E402

BATCH = 65_536


def _timed(obj, name, into):
    """Wrap ``obj.name`` so every call's duration is appended to ``into``."""
    fn = getattr(obj, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t)

    setattr(obj, name, wrapper)
    return fn


def kinds(n_nodes: int) -> None:
    rng = np.random.default_rng(0)
    n_graphs = 1000
    gids = _ids(rng, n_graphs)
    got = {"NodeAdded": [], "NodeMoved": [], "EdgeAdded": []}
    for _ in range(5):
        eng = Engine(node_capacity=n_nodes + 2 * BATCH, edge_capacity=2 * BATCH)
        eng.apply(_batch(np.full(n_graphs, 1), T0 + np.arange(n_graphs), gids))
        nids, ng = _ids(rng, n_nodes), rng.integers(0, n_graphs, n_nodes)
        yes = np.ones(n_nodes, bool)
        eng.apply(_batch(np.full(n_nodes, 10), T0 + np.arange(n_nodes), gids[ng], nid=(nids, yes),
                         xyz=(rng.uniform(0, 100, (n_nodes, 3)), yes)))
        one = np.ones(BATCH, bool)
        t = T0 + np.arange(BATCH)
        pick = rng.integers(0, n_nodes, BATCH)
        # a second node of the same graph for each edge
        order = np.argsort(ng, kind="stable")
        start = np.searchsorted(ng[order], np.arange(n_graphs))
        count = np.bincount(ng, minlength=n_graphs)
        other = order[start[ng[pick]] + (rng.random(BATCH) * count[ng[pick]]).astype(np.int64)]
        batches = {
            "NodeAdded": _batch(np.full(BATCH, 10), t, gids[rng.integers(0, n_graphs, BATCH)],
                                nid=(_ids(rng, BATCH), one), xyz=(rng.uniform(0, 100, (BATCH, 3)), one)),
            "NodeMoved": _batch(np.full(BATCH, 12), t, gids[ng[pick]], nid=(nids[pick], one),
                                xyz=(rng.uniform(0, 100, (BATCH, 3)), one)),
            "EdgeAdded": _batch(np.full(BATCH, 20), t, gids[ng[pick]], eid=(_ids(rng, BATCH), one),
                                sid=(nids[pick], one), tid=(nids[other], one)),
        }
        for kind, b in batches.items():
            times = []
            orig = _timed(kp, "apply_events_tuples", times)
            try:
                eng.apply(b)
            finally:
                kp.apply_events_tuples = orig
            got[kind].append(times[0] / BATCH)
    print(f"kernel, {n_nodes:,} live nodes, 65,536-event batches (median of 5): "
          + ", ".join(f"{k} {np.median(v) * 1e9:.0f} ns" for k, v in got.items()) + " an event")


def intern(n_keys: int) -> None:
    from numba import njit

    from kernels._jit import prefetch
    from kernels.intern import intern as put, lookup, slot_of

    @njit(_nrt=False)
    def insert_all(slots, keys, owner, meta, new):
        for j in range(new.shape[0]):
            if j + 16 < new.shape[0]:
                prefetch(slots, slot_of(slots, 3, new[j + 16, 0], new[j + 16, 1]))
            put(slots, keys, owner, meta, 3, new[j, 0], new[j, 1])

    @njit(_nrt=False)
    def look_all(slots, keys, owner, q):
        acc = 0
        for j in range(q.shape[0]):
            if j + 16 < q.shape[0]:
                prefetch(slots, slot_of(slots, 3, q[j + 16, 0], q[j + 16, 1]))
            acc += lookup(slots, keys, owner, 3, q[j, 0], q[j, 1])
        return acc

    rng = np.random.default_rng(0)
    size = 16
    while size * 0.7 < n_keys + BATCH:
        size *= 2
    ins, look = [], []
    for _ in range(7):
        cap = n_keys + 2 * BATCH
        keys, owner, meta = np.zeros((cap, 2), np.uint64), np.zeros(cap, np.int32), np.zeros(2, np.int64)
        slots = np.full(size, -1, np.int32)
        first = _ids(rng, n_keys)
        insert_all(slots, keys, owner, meta, first)
        new = _ids(rng, BATCH)
        t = time.perf_counter()
        insert_all(slots, keys, owner, meta, new)
        ins.append(time.perf_counter() - t)
        q = first[rng.integers(0, n_keys, BATCH)]
        t = time.perf_counter()
        look_all(slots, keys, owner, q)
        look.append(time.perf_counter() - t)
    print(f"hash table of {n_keys:,} keys (median of 7): insert {np.median(ins) / BATCH * 1e9:.0f} ns, "
          f"lookup {np.median(look) / BATCH * 1e9:.0f} ns a key")


def phases(size: int, arrow: bool = False) -> None:
    import cim_flow._projection as pj
    from cim_flow import decode_json
    from cim_flow._decode import decode_spans_columns
    from cim_flow._demo import SyntheticEvents, synthetic_batches
    from cim_flow._projection import EventColumns, Projection

    eng = Engine()
    if arrow:  # Engine.apply of small record batches (an embedding program's way)
        items = synthetic_batches(40_000, size, 1, max_graphs=200, nodes_per_graph=2000)
        eng.apply(items[0])
        items = items[1:]
        run = eng.apply
    else:  # the service's way: scanner columns straight to the engine
        gen = SyntheticEvents(1, max_graphs=200, nodes_per_graph=2000)
        payloads = [gen.next()[2] for _ in range(40_000)]
        eng.apply(decode_json(payloads[:1000])[0])
        items = []
        for a in range(1000, len(payloads) - size, size):
            part = payloads[a:a + size]
            ends = np.cumsum([len(p) for p in part])
            items.append(decode_spans_columns(b"".join(part), ends - [len(p) for p in part], ends)[0])
        run = eng._apply_columns
    steps = {"string coding (EventColumns.events)": [], "reserve": [], "kernel call": [],
             "index upkeep (_reindex)": []}
    targets = [(EventColumns, "events"), (Projection, "reserve"),
               (kp, "apply_events_tuples" if hasattr(kp, "apply_events_tuples") else "apply_events"), (Engine, "_reindex")]
    if arrow:
        steps = {"columns from Arrow (events_of)": [], **steps}
        targets = [(pj, "events_of")] + targets
    whole = "whole Engine.apply" if arrow else "whole _apply_columns"
    steps[whole] = []
    names = list(steps)
    originals = [(obj, name, _timed(obj, name, steps[names[k]])) for k, (obj, name) in enumerate(targets)]
    try:
        for c in items:
            t = time.perf_counter()
            run(c)
            steps[whole].append(time.perf_counter() - t)
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)
    skip = len(items) // 4  # after the engine's arrays stopped growing
    print(f"{size}-event {'Arrow' if arrow else 'JSON'} batches, median of {len(items) - skip:,}: "
          + "; ".join(f"{k} {np.median(v[skip:]) * 1e6:.1f} us" for k, v in steps.items()))


def summaries() -> None:
    import timeit

    import msgspec

    from cim_flow._demo import synthetic_batches

    eng = Engine()
    for b in synthetic_batches(300_000, 20_000, 1, max_graphs=1000):
        eng.apply(b)
    enc = msgspec.json.Encoder()
    for n in (15, 200, 1000):
        gidx = np.arange(n, dtype=np.int64)
        ways = {"compiled JSON rows": lambda: eng._summary_json(gidx),
                "dict rows + msgspec": lambda: enc.encode(eng._summary_rows(gidx))}
        got = {}
        for name, fn in ways.items():
            fn()
            number = max(1, 20_000 // n)
            got[name] = np.median(timeit.repeat(fn, number=number, repeat=7)) / number
        print(f"{n:5d} graphs: " + "; ".join(f"{k} {v * 1e6:.1f} us" for k, v in got.items())
              + f"; ratio {got['dict rows + msgspec'] / got['compiled JSON rows']:.1f}x")


def mixed(repeat: int) -> None:
    import cim_flow._projection as pj
    import cim_flow.engine as ce
    from benchmarks.common import SIZES
    from benchmarks.datasets import mixed_stream

    batches = mixed_stream(SIZES["apply_events"], SIZES["apply_batch"])
    n = sum(b.num_rows for b in batches)
    eng = Engine()
    for b in batches[:2]:  # load the kernels outside the timing
        eng.apply(b)
    steps = {}
    targets = [(ce, "normalize_batch"), (pj, "events_of"), (pj.Projection, "reserve"),
               (kp, "apply_events_tuples"), (Engine, "_reindex")]
    originals = [(obj, name, _timed(obj, name, steps.setdefault(name, []))) for obj, name in targets]
    try:
        for _ in range(repeat):
            for v in steps.values():
                v.clear()
            t = time.perf_counter()
            eng = Engine()
            for b in batches:
                eng.apply(b)
            total = time.perf_counter() - t
            print(f"{n:,} events: {total * 1e3:.1f} ms, {n / total / 1e6:.2f}M events/s; "
                  + ", ".join(f"{k} {sum(v) * 1e3:.1f} ms" for k, v in steps.items()))
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)


def compaction(n_nodes: int, repeat: int, edges_only: bool = False) -> None:
    """An engine of ``n_nodes`` nodes and twice as many edges in 10,000 graphs; then,
    ``repeat`` times, half its nodes removed (their edges with them), ``Engine.compact``
    timed, and as many fresh nodes added back.  With ``edges_only``: every other live
    edge removed instead (the nodes keep their numbers), once."""
    from benchmarks.datasets import bulk_graph

    eng = Engine(capacity=10_000)
    eng.compact_min = -1  # only the timed calls
    for b in bulk_graph(n_nodes, 2 * n_nodes):
        eng.apply(b)
    eng.nodes_within([50.0, 50.0, 50.0], 1.0)  # a spatial index in use, as in a service
    t0 = T0 + 10**9
    if edges_only:
        E, N, G = eng._p.E, eng._p.N, eng._p.G
        sel = np.flatnonzero(E.src[: E.meta[0]] >= 0)[::2]
        m = sel.size
        eng.apply(_batch(np.full(m, 23), t0 + np.arange(m), G.keys[N.graph[E.src[sel]]].copy(),
                         eid=(E.keys[sel].copy(), np.ones(m, bool))))
        t = time.perf_counter()
        dropped = eng.compact(graphs=False)
        print(f"compact, edges only: {eng.totals()['edges']:,} live edges kept, {dropped['edges']:,} dropped, "
              f"{n_nodes:,} nodes kept as they are: {(time.perf_counter() - t) * 1e3:.0f} ms")
        return
    for r in range(repeat):
        N, G = eng._p.N, eng._p.G
        live = np.flatnonzero(N.alive[: N.meta[0]])[r % 2::2]
        ids, gids = N.keys[live].copy(), G.keys[N.graph[live]].copy()
        m = live.size
        yes = np.ones(m, bool)
        eng.apply(_batch(np.full(m, 13), t0 + np.arange(m), gids, nid=(ids, yes)))
        before = eng.totals()
        t = time.perf_counter()
        dropped = eng.compact()
        dt = time.perf_counter() - t
        print(f"compact: {before['nodes']:,} live nodes and {before['edges']:,} live edges kept, "
              f"{dropped['nodes']:,} nodes and {dropped['edges']:,} edges dropped: {dt * 1e3:.0f} ms")
        fresh = _ids(np.random.default_rng(r), m)
        eng.apply(_batch(np.full(m, 10), t0 + m + np.arange(m), gids, nid=(fresh, yes),
                         xyz=(np.random.default_rng(r).uniform(0, 100, (m, 3)), yes)))
        t0 += 2 * m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["kinds", "intern", "phases", "summaries", "mixed", "compaction"])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=1 << 20)
    ap.add_argument("--size", type=int, default=15)
    ap.add_argument("--arrow", action="store_true", help="phases: Engine.apply of record batches")
    ap.add_argument("--repeat", type=int, default=3, help="mixed: fresh engines fed the stream")
    ap.add_argument("--edges-only", action="store_true", help="compaction: remove edges, not nodes")
    a = ap.parse_args()
    {"kinds": lambda: kinds(a.nodes), "intern": lambda: intern(a.keys), "phases": lambda: phases(a.size, a.arrow),
     "summaries": summaries, "mixed": lambda: mixed(a.repeat),
     "compaction": lambda: compaction(a.nodes, a.repeat, a.edges_only)}[a.what]()


if __name__ == "__main__":
    main()
