"""Random hostile event streams, as rows and as Arrow batches."""
from __future__ import annotations

import random

import pyarrow as pa

from cim_flow import EVENT_SCHEMA

KINDS = [1, 2, 3, 4, 10, 11, 12, 13, 20, 21, 23, 99]
WEIGHTS = [3, 1, 1, 1, 14, 3, 6, 4, 10, 2, 3, 1]


def random_rows(rng: random.Random, n: int, *, n_graphs=4, n_nodes=12, n_edges=16, with_seq=False):
    """``n`` event rows drawn from small id pools so collisions are frequent."""
    gids = [b"\x01" + i.to_bytes(2, "big") + bytes(13) for i in range(n_graphs)]
    nids = [b"\x02" + i.to_bytes(2, "big") + bytes(13) for i in range(n_nodes)]
    eids = [b"\x03" + i.to_bytes(2, "big") + bytes(13) for i in range(n_edges)]
    names = ["alpha", "beta", "gamma", None]
    rows = []
    seq = 0
    for _ in range(n):
        k = rng.choices(KINDS, WEIGHTS)[0]
        r = {c: None for c in EVENT_SCHEMA.names}
        r["event_type"] = k
        r["graph_id"] = rng.choice(gids)
        r["occurred_at"] = rng.randrange(0, 10**6) if rng.random() > 0.02 else None
        if with_seq:
            # mostly increasing, some duplicates / replays
            seq = seq + 1 if rng.random() > 0.15 else max(0, seq - rng.randrange(0, 4))
            r["seq"] = seq
        if k in (1, 2):
            r["name"] = rng.choice(names)
        if 10 <= k <= 13:
            r["node_id"] = rng.choice(nids) if rng.random() > 0.03 else None
            r["name"] = rng.choice(["a", "b", None])
            r["node_type"] = rng.choice(["T1", "T2", None])
            if rng.random() > 0.2:
                p = [rng.choice([rng.uniform(-5, 5), float(rng.randrange(-3, 3))]) for _ in range(3)]
                if rng.random() < 0.05:
                    p[rng.randrange(3)] = rng.choice([float("nan"), float("inf")])
                r["x"], r["y"], r["z"] = p
        if 20 <= k <= 23:
            r["edge_id"] = rng.choice(eids)
            r["source_id"] = rng.choice(nids)
            r["target_id"] = rng.choice(nids) if rng.random() > 0.03 else None
            r["weight"] = rng.choice([None, 0.5, 2.0])
            r["edge_type"] = rng.choice(["E1", None])
        rows.append(r)
    return rows


def rows_to_batch(rows) -> pa.RecordBatch:
    cols = {}
    for f in EVENT_SCHEMA:
        vals = [r.get(f.name) for r in rows]
        if f.name == "event_type":
            cols[f.name] = pa.array(vals, pa.int8())
        elif pa.types.is_dictionary(f.type):
            cols[f.name] = pa.array(vals, pa.utf8()).dictionary_encode()
        elif pa.types.is_timestamp(f.type):
            cols[f.name] = pa.array(vals, pa.int64()).cast(f.type)
        else:
            cols[f.name] = pa.array(vals, f.type)
    return pa.RecordBatch.from_pydict(cols, schema=EVENT_SCHEMA)
