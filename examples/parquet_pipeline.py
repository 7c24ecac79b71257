"""Embedded pipeline: JSON events -> Arrow -> Parquet -> cim_flow.Engine -> queries.

Run:  python examples/parquet_pipeline.py [--events N] [--out DIR]
"""
import argparse
import json
import pathlib
import random
import tempfile
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

import cim_flow


def synthetic_payloads(n_events: int, seed: int = 0) -> list[bytes]:
    """CIM events in mixed wire forms: graphs as spatial clusters, nodes, moves, edges."""
    rng = random.Random(seed)
    t = 1_714_564_800_000
    graphs, nodes, out = [], {}, []
    for i in range(n_events):
        t += 1
        if not graphs or rng.random() < 0.01:
            g = str(uuid.uuid4())
            graphs.append(g)
            nodes[g] = []
            out.append({"GraphCreated": {"graph_id": g, "name": f"graph-{len(graphs)}", "occurred_at": t}})
            continue
        g = rng.choice(graphs)
        centre = (hash(g) % 100, (hash(g) // 100) % 100, (hash(g) // 10000) % 100)
        r = rng.random()
        if r < 0.6 or len(nodes[g]) < 2:
            n = str(uuid.uuid4())
            nodes[g].append(n)
            pos = [c + rng.gauss(0, 2) for c in centre]
            out.append({"type": "NodeAdded", "graph_id": g, "node_id": n, "position": pos,
                        "label": f"n{i}", "timestamp": t})
        elif r < 0.8:
            n = rng.choice(nodes[g])
            out.append({"event_type": "NodeMoved", "aggregate_id": g, "timestamp": t,
                        "payload": {"node_id": n, "new_position": [c + rng.gauss(0, 2) for c in centre]}})
        else:
            a, b = rng.sample(nodes[g], 2)
            out.append({"EdgeConnected": {"graph_id": {"id": g}, "edge_id": str(uuid.uuid4()),
                                          "source": a, "target": b, "weight": rng.random(), "occurred_at": t}})
    return [json.dumps(e).encode() for e in out]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--out", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)
    out_dir = args.out or pathlib.Path(tempfile.mkdtemp(prefix="cim_flow_"))
    out_dir.mkdir(parents=True, exist_ok=True)

    payloads = synthetic_payloads(args.events)
    t0 = time.perf_counter()
    batch, errors = cim_flow.decode_json(payloads)
    t1 = time.perf_counter()
    path = out_dir / "events.parquet"
    pq.write_table(pa.Table.from_batches([batch]), path)

    engine = cim_flow.Engine()
    t2 = time.perf_counter()
    result = engine.apply(cim_flow.read_events(path))
    t3 = time.perf_counter()
    print(f"decoded {batch.num_rows} events ({len(errors)} errors) in {t1 - t0:.3f}s")
    print(f"applied {result.applied}, ignored {result.ignored}, skipped {result.skipped} "
          f"in {t3 - t2:.3f}s; version {result.version}")
    print("totals:", engine.totals())
    top = engine.top_graphs_by_node_count(3)
    for row in top.to_pylist():
        print(f"  {uuid.UUID(bytes=row['graph_id'])}  {row['name']:<10} nodes={row['node_count']} edges={row['edge_count']}")
    return engine


if __name__ == "__main__":
    main()
