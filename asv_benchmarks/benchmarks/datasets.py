"""Seeded, cached synthetic datasets (vectorised: generating must not dominate)."""
import functools
import json
import random
import uuid

import numpy as np
import pyarrow as pa

from cim_flow import EVENT_SCHEMA
from cim_flow._ids import words_to_fsb

T0 = 1_714_564_800_000_000  # µs


def _ids(rng, n):
    return rng.integers(1, 2**63, size=(n, 2), dtype=np.uint64)


def _batch(kind, t, gid, nid=None, eid=None, sid=None, tid=None, xyz=None, seq=None):
    n = len(kind)
    null_id = pa.nulls(n, pa.binary(16))
    cols = {
        "seq": pa.array(seq, pa.uint64()) if seq is not None else pa.nulls(n, pa.uint64()),
        "event_type": pa.array(kind, pa.int8()),
        "occurred_at": pa.array(t, pa.int64()).cast(EVENT_SCHEMA.field("occurred_at").type),
        "graph_id": words_to_fsb(gid),
        "node_id": words_to_fsb(*nid) if nid is not None else null_id,
        "edge_id": words_to_fsb(*eid) if eid is not None else null_id,
        "source_id": words_to_fsb(*sid) if sid is not None else null_id,
        "target_id": words_to_fsb(*tid) if tid is not None else null_id,
    }
    if xyz is not None:
        pos, valid = xyz
        for a, c in enumerate("xyz"):
            cols[c] = pa.array(pos[:, a], mask=~valid)
    return pa.RecordBatch.from_pydict(cols)


@functools.lru_cache(maxsize=4)
def mixed_stream(n_events, batch_size, seed=0, n_graphs=1000):
    """A realistic mix: graph creations first, then 55% NodeAdded, 20% NodeMoved,
    15% EdgeAdded, 5% NodeRemoved, 5% EdgeRemoved, over growing id pools."""
    rng = np.random.default_rng(seed)
    gids = _ids(rng, n_graphs)
    first = _batch(np.full(n_graphs, 1), T0 + np.arange(n_graphs), gids)
    n = n_events - n_graphs
    kind = rng.choice(np.array([10, 12, 20, 13, 23], np.int8), size=n, p=[0.55, 0.2, 0.15, 0.05, 0.05])
    n_nodes = max(1, int(n * 0.55))
    node_ids = _ids(rng, n_nodes)
    node_graph = rng.integers(0, n_graphs, n_nodes)
    # NodeAdded rows take the next fresh node; others pick an earlier one
    is_add = kind == 10
    added_so_far = np.cumsum(is_add) - is_add
    fresh = np.minimum(np.cumsum(is_add) - 1, n_nodes - 1)
    pick = (rng.random(n) * np.maximum(added_so_far, 1)).astype(np.int64)
    node = np.where(is_add, fresh, pick)
    other = (rng.random(n) * np.maximum(added_so_far, 1)).astype(np.int64)
    g = node_graph[node]
    # edges connect within the graph: use a node of the same graph when possible (else dangling)
    other = np.where(node_graph[other] == g, other, node)
    edge_ids = _ids(rng, n)
    is_edge = (kind == 20) | (kind == 23)
    e_pick = np.where(kind == 23, (rng.random(n) * np.maximum(np.arange(n), 1)).astype(np.int64), np.arange(n))
    centre = rng.uniform(0, 100, size=(n_graphs, 3))
    xyz = centre[g] + rng.normal(0, 2, size=(n, 3))
    has_pos = (kind == 10) | (kind == 12)
    t = T0 + n_graphs + np.arange(n)
    batches = [first]
    for a in range(0, n, batch_size):
        s = slice(a, a + batch_size)
        is_node = ~is_edge[s]
        batches.append(_batch(
            kind[s], t[s], gids[g[s]],
            nid=(node_ids[node[s]], is_node),
            eid=(edge_ids[e_pick[s]], is_edge[s]),
            sid=(node_ids[node[s]], is_edge[s]),
            tid=(node_ids[other[s]], is_edge[s]),
            xyz=(xyz[s], has_pos[s]),
        ))
    return batches


def bulk_graph(n_nodes, n_edges, n_graphs=10_000, chunk=65_536, seed=1):
    """Yield batches building ``n_graphs`` graphs, ``n_nodes`` nodes and ``n_edges`` live edges."""
    rng = np.random.default_rng(seed)
    gids = _ids(rng, n_graphs)
    yield _batch(np.full(n_graphs, 1), T0 + np.arange(n_graphs), gids)
    for a in range(0, n_nodes, chunk):
        m = min(chunk, n_nodes - a)
        idx = np.arange(a, a + m, dtype=np.uint64)
        nid = np.stack([idx + np.uint64(1), np.full(m, 7, np.uint64)], axis=1)
        # node i belongs to graph i % n_graphs (computed per chunk: a whole-range array
        # would be 80 MB of generator state inside the peak-memory measurement)
        yield _batch(np.full(m, 10), T0 + idx.astype(np.int64), gids[(idx % np.uint64(n_graphs)).astype(np.int64)],
                     nid=(nid, np.ones(m, bool)), xyz=(rng.uniform(0, 100, (m, 3)), np.ones(m, bool)))
    for a in range(0, n_edges, chunk):
        m = min(chunk, n_edges - a)
        src = rng.integers(0, n_nodes, m)
        # a target in the same graph: same residue modulo n_graphs
        dst = (src + n_graphs * rng.integers(1, 50, m)) % n_nodes
        dst = dst - dst % n_graphs + src % n_graphs
        dst = np.where(dst >= n_nodes, src, dst)
        eidx = np.arange(a, a + m, dtype=np.uint64)
        ones = np.ones(m, bool)
        yield _batch(np.full(m, 20), T0 + eidx.astype(np.int64), gids[src % n_graphs],
                     eid=(np.stack([eidx + np.uint64(1), np.full(m, 9, np.uint64)], axis=1), ones),
                     sid=(np.stack([src.astype(np.uint64) + np.uint64(1), np.full(m, 7, np.uint64)], axis=1), ones),
                     tid=(np.stack([dst.astype(np.uint64) + np.uint64(1), np.full(m, 7, np.uint64)], axis=1), ones))


@functools.lru_cache(maxsize=8)
def json_payloads(form, n, seed=0):
    """``n`` JSON payloads in one CIM wire form (or 'mixed')."""
    rng = random.Random(seed)
    graphs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(100)]

    def uid():
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def internal():
        return {"type": "NodeAdded", "graph_id": rng.choice(graphs), "node_id": uid(),
                "position": {"x": rng.random(), "y": rng.random(), "z": rng.random()},
                "label": "n", "occurred_at": "2024-05-01T12:00:00.123Z"}

    def external():
        return {"NodeMoved": {"graph_id": rng.choice(graphs), "node_id": uid(),
                              "new_position": [rng.random(), rng.random(), rng.random()],
                              "timestamp": 1714564800000}}

    def envelope():
        return {"event_id": uid(), "event_type": "EdgeAdded", "aggregate_id": rng.choice(graphs),
                "timestamp": "2024-05-01T12:00:01Z", "correlation_id": uid(), "causation_id": uid(),
                "payload": {"edge_id": uid(), "source": uid(), "target": uid(), "weight": 0.5}}

    gens = {"internal": [internal], "external": [external], "envelope": [envelope],
            "mixed": [internal, external, envelope]}[form]
    return [json.dumps(rng.choice(gens)()).encode() for _ in range(n)]


def ref_rows(batches, limit):
    """The first ``limit`` events as plain dict rows (for the Python reference)."""
    rows = []
    for b in batches:
        rows.extend(b.to_pylist())
        if len(rows) >= limit:
            break
    for r in rows:
        r["occurred_at"] = r["occurred_at"].timestamp() if r["occurred_at"] is not None else None
    return rows[:limit]
