"""Synthetic CIM traffic: graphs as spatial clusters, nodes added and moved, edges."""
from __future__ import annotations

import asyncio
import random
import time
import uuid

import msgspec
import numpy as np
import pyarrow as pa

import nats

from ._ids import words_to_fsb
from ._schema import EVENT_SCHEMA, UUID_TYPE, EventType

_enc = msgspec.json.Encoder()


class SyntheticEvents:
    """An endless, seeded stream of CIM events in mixed wire forms: (subject, event_id, payload)."""

    def __init__(self, seed: int = 0, max_graphs: int = 200, nodes_per_graph: int = 500):
        self.rng = random.Random(seed)
        self.graphs: list[tuple[str, tuple, list]] = []
        self.max_graphs = max_graphs
        self.nodes_per_graph = nodes_per_graph
        self.t = int(time.time() * 1000)

    def _uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def next(self):
        rng = self.rng
        self.t += 1
        eid = self._uid()
        if not self.graphs or (len(self.graphs) < self.max_graphs and rng.random() < 0.002):
            gid = self._uid()
            centre = tuple(rng.uniform(0, 1000) for _ in range(3))
            self.graphs.append((gid, centre, []))
            ev = {"type": "GraphCreated", "event_id": eid, "graph_id": gid,
                  "name": f"graph-{len(self.graphs)}", "occurred_at": self.t}
            return "event.graph.graph.created", eid, _enc.encode(ev)
        gid, centre, nodes = rng.choice(self.graphs)
        r = rng.random()
        if r < 0.45 and len(nodes) < self.nodes_per_graph or len(nodes) < 2:
            nid = self._uid()
            nodes.append(nid)
            pos = [c + rng.gauss(0, 10) for c in centre]
            ev = {"NodeAdded": {"event_id": eid, "graph_id": gid, "node_id": nid,
                                "position": {"x": pos[0], "y": pos[1], "z": pos[2]},
                                "label": "n", "occurred_at": self.t}}
            return "event.graph.node.created", eid, _enc.encode(ev)
        if r < 0.85:
            nid = rng.choice(nodes)
            pos = [c + rng.gauss(0, 10) for c in centre]
            ev = {"event_id": eid, "event_type": "NodeMoved", "aggregate_id": gid, "timestamp": self.t,
                  "payload": {"node_id": nid, "new_position": pos}}
            return "event.graph.node.moved", eid, _enc.encode(ev)
        a, b = rng.sample(nodes, 2)
        ev = {"type": "EdgeAdded", "event_id": eid, "graph_id": gid, "edge_id": self._uid(),
              "source": a, "target": b, "weight": rng.random(), "occurred_at": self.t}
        return "event.graph.edge.created", eid, _enc.encode(ev)


async def demo_publisher(url: str, rate: float, stop: asyncio.Event, seed: int = 0) -> None:
    """Publish synthetic events at ``rate`` per second (Nats-Msg-Id = event id) until ``stop``."""
    nc = await nats.connect(url, name="cim_flow-demo")
    gen = SyntheticEvents(seed)
    tick = 0.01
    start = time.monotonic()
    sent = 0
    try:
        while not stop.is_set():
            due = int((time.monotonic() - start) * rate)
            for _ in range(min(due - sent, int(rate) + 1)):
                subject, eid, data = gen.next()
                await nc.publish(subject, data, headers={"Nats-Msg-Id": eid})
            sent = max(sent, due)
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except asyncio.TimeoutError:
                pass
    finally:
        await nc.drain()


# --- the same traffic as Arrow batches, generated column-wise ----------------------------
# The load generator's Arrow runs need millions of events (1M events/s for 8 s): built one
# dict at a time through SyntheticEvents and decode_json, that took ~10 µs an event (over a
# minute before the first message went out). Here every column is drawn with NumPy.

def _uuid_words(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 2)`` uint64 words of random version-4 UUIDs (as 16 big-endian bytes)."""
    b = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    b[:, 6] = (b[:, 6] & 0x0F) | 0x40
    b[:, 8] = (b[:, 8] & 0x3F) | 0x80
    return b.view(np.uint64)


def synthetic_batches(n_events: int, batch_size: int, seed: int = 0, *, max_graphs: int = 200,
                      nodes_per_graph: int = 2000, t0_ms: int | None = None) -> list[pa.RecordBatch]:
    """``n_events`` events in ``EVENT_SCHEMA`` batches of ``batch_size`` rows: the mix of
    :class:`SyntheticEvents` (graphs as spatial clusters; 45% NodeAdded, 40% NodeMoved,
    15% EdgeAdded between two nodes of the graph), every graph created up front.

    Every move and edge refers to nodes added earlier in the stream, so every event
    applies; a graph stops growing at ``nodes_per_graph`` (its later adds become moves).
    Row order is event order; ``seq`` is left null.
    """
    if batch_size < 1:
        raise ValueError("need batch_size >= 1")
    c = _synthetic_columns(n_events, seed, max_graphs, nodes_per_graph, t0_ms)
    kind, g, gids, eids, t_us = c["kind"], c["g"], c["gids"], c["eids"], c["t_us"]
    node_id, node_ok, edge_words, src, dst = c["node_id"], c["node_ok"], c["edge_words"], c["src"], c["dst"]
    xyz, has_pos, edge_ok, weight, n_g = c["xyz"], c["has_pos"], c["edge_ok"], c["weight"], c["n_g"]
    # graph names, then the node label "n": the name column is a take from these
    vocab = pa.array([f"graph-{i + 1}" for i in range(max(n_g, 1))] + ["n"], pa.utf8())
    name_at = np.where(kind == EventType.GraphCreated, g, np.where(kind == EventType.NodeAdded, max(n_g, 1), -1))
    out = []
    for a in range(0, n_events, batch_size):
        s = slice(a, min(a + batch_size, n_events))
        k = s.stop - s.start
        e = edge_ok[s]
        cols = [
            pa.nulls(k, pa.uint64()),
            words_to_fsb(eids[s]),
            pa.array(kind[s], pa.int8()),
            pa.array(t_us[s], pa.int64()).cast(EVENT_SCHEMA.field("occurred_at").type),
            words_to_fsb(gids[g[s]]),
            words_to_fsb(node_id[s], node_ok[s]),
            words_to_fsb(edge_words[s], e),
            words_to_fsb(src[s], e),
            words_to_fsb(dst[s], e),
            *(pa.array(xyz[s, c], mask=~has_pos[s]) for c in range(3)),
            vocab.take(pa.array(name_at[s], mask=name_at[s] < 0)),
            pa.nulls(k, EVENT_SCHEMA.field("node_type").type),
            pa.nulls(k, EVENT_SCHEMA.field("edge_type").type),
            pa.array(weight[s], mask=~e),
            pa.nulls(k, pa.large_utf8()),
            pa.nulls(k, UUID_TYPE),
            pa.nulls(k, UUID_TYPE),
        ]
        out.append(pa.RecordBatch.from_arrays(cols, schema=EVENT_SCHEMA))
    return out


def synthetic_json(n_events: int, seed: int = 0, *, max_graphs: int = 200, nodes_per_graph: int = 2000,
                   t0_ms: int | None = None) -> list[tuple[str, str, bytes]]:
    """The events of :func:`synthetic_batches` (same arguments, same events) as
    ``(subject, event_id, payload)``: one JSON event each, in the wire forms
    :class:`SyntheticEvents` sends (GraphCreated and EdgeAdded internally tagged,
    NodeAdded externally tagged with an ``{x, y, z}`` position, NodeMoved in the CIM
    envelope with a ``[x, y, z]`` new_position).  Ids are written by a compiled pass
    and each payload by one format string (~19 µs an event through SyntheticEvents)."""
    from kernels import traverse as kt

    c = _synthetic_columns(n_events, seed, max_graphs, nodes_per_graph, t0_ms)
    kind, g, t_ms = c["kind"], c["g"], c["t_us"] // 1000

    def texts(words, rows):  # canonical UUID text (bytes) of the rows' ids, one compiled pass
        return kt.uuid_text_rows(np.ascontiguousarray(words[rows])).view("S36").tolist()

    def pos(rows):
        return (c["xyz"][rows, k].tolist() for k in range(3))

    out: list = [None] * n_events
    eid = texts(c["eids"], slice(None))
    gid = texts(c["gids"], slice(None))

    def put(rows, subject, payloads):
        for i, p in zip(rows.tolist(), payloads):
            out[i] = (subject, eid[i].decode(), p)

    rows = np.flatnonzero(kind == EventType.NodeMoved)
    x, y, z = pos(rows)
    put(rows, "event.graph.node.moved", [
        b'{"event_id":"%s","event_type":"NodeMoved","aggregate_id":"%s","timestamp":%d,'
        b'"payload":{"node_id":"%s","new_position":[%r,%r,%r]}}' % a
        for a in zip((eid[i] for i in rows.tolist()), (gid[j] for j in g[rows].tolist()), t_ms[rows].tolist(),
                     texts(c["node_id"], rows), x, y, z)])
    rows = np.flatnonzero(kind == EventType.NodeAdded)
    x, y, z = pos(rows)
    put(rows, "event.graph.node.created", [
        b'{"NodeAdded":{"event_id":"%s","graph_id":"%s","node_id":"%s",'
        b'"position":{"x":%r,"y":%r,"z":%r},"label":"n","occurred_at":%d}}' % a
        for a in zip((eid[i] for i in rows.tolist()), (gid[j] for j in g[rows].tolist()),
                     texts(c["node_id"], rows), x, y, z, t_ms[rows].tolist())])
    rows = np.flatnonzero(kind == EventType.GraphCreated)
    put(rows, "event.graph.graph.created", [
        b'{"type":"GraphCreated","event_id":"%s","graph_id":"%s","name":"graph-%d","occurred_at":%d}' % a
        for a in zip((eid[i] for i in rows.tolist()), (gid[j] for j in g[rows].tolist()),
                     (g[rows] + 1).tolist(), t_ms[rows].tolist())])
    rows = np.flatnonzero(kind == EventType.EdgeAdded)
    put(rows, "event.graph.edge.created", [
        b'{"type":"EdgeAdded","event_id":"%s","graph_id":"%s","edge_id":"%s","source":"%s","target":"%s",'
        b'"weight":%r,"occurred_at":%d}' % a
        for a in zip((eid[i] for i in rows.tolist()), (gid[j] for j in g[rows].tolist()),
                     texts(c["edge_words"], rows), texts(c["src"], rows), texts(c["dst"], rows),
                     c["weight"][rows].astype(np.float64).tolist(), t_ms[rows].tolist())])
    return out


def _synthetic_columns(n_events: int, seed: int, max_graphs: int, nodes_per_graph: int, t0_ms) -> dict:
    """The columns both renderings of the synthetic traffic are drawn from (see
    :func:`synthetic_batches`)."""
    if n_events < 0 or max_graphs < 1 or nodes_per_graph < 2:
        raise ValueError("need n_events >= 0, max_graphs >= 1, nodes_per_graph >= 2")
    rng = np.random.default_rng(seed)
    n_g = min(max_graphs, n_events)
    n = n_events - n_g
    gids = _uuid_words(rng, max(n_g, 1))
    centre = rng.uniform(0, 1000, size=(max(n_g, 1), 3))
    kind = np.full(n_events, int(EventType.NodeAdded), np.int8)
    kind[:n_g] = EventType.GraphCreated
    g = np.zeros(n_events, np.int64)
    g[:n_g] = np.arange(n_g)
    # the first two node events of each graph are adds (moves and edges need two nodes)
    seeded = min(2 * n_g, n)
    g[n_g:n_g + seeded] = np.arange(seeded) % max(n_g, 1)
    rest = slice(n_g + seeded, n_events)
    m = n_events - n_g - seeded
    g[rest] = rng.integers(0, max(n_g, 1), m)
    r = rng.random(m)
    kind[rest] = np.where(r < 0.45, EventType.NodeAdded, np.where(r < 0.85, EventType.NodeMoved,
                                                                  EventType.EdgeAdded))
    # rank of each add within its graph; adds past the cap become moves
    body = np.arange(n_g, n_events)
    is_add = kind[body] == EventType.NodeAdded
    # by graph, then event order (a stable sort; radix on 16-bit keys)
    order = np.argsort(g[body].astype(np.uint16 if n_g <= 1 << 16 else np.int64), kind="stable")
    gs, adds = g[body][order], is_add[order].astype(np.int64)
    before = np.cumsum(adds) - adds  # adds earlier in the stream, all graphs so far
    first = np.searchsorted(gs, gs, side="left")
    before -= before[first]  # ... and of this graph only
    added_before = np.empty(body.size, np.int64)
    added_before[order] = before
    over = is_add & (added_before >= nodes_per_graph)
    kind[body[over]] = EventType.NodeMoved
    is_add &= ~over
    # node k of graph g is the k-th add of g: its index in the graph-sorted list of adds
    add_rows = body[is_add]
    add_sorted = add_rows[np.argsort(g[add_rows].astype(np.uint16 if n_g <= 1 << 16 else np.int64),
                                     kind="stable")]
    start = np.searchsorted(g[add_sorted], np.arange(max(n_g, 1)), side="left")
    node_words = _uuid_words(rng, add_sorted.size)
    live = np.minimum(added_before, nodes_per_graph)  # nodes of the graph before this event
    gb = g[body]

    def pick(count):  # a node of the row's graph, one of the first `count`
        k = (rng.random(body.size) * count).astype(np.int64)
        return start[gb] + np.minimum(k, np.maximum(count - 1, 0))

    node = np.where(is_add, start[gb] + added_before, pick(live))
    other = pick(live - 1)
    other = np.where(other >= node, other + 1, other)  # a second node, not the first
    is_move = kind[body] == EventType.NodeMoved
    is_edge = kind[body] == EventType.EdgeAdded
    node_id = np.zeros((n_events, 2), np.uint64)
    node_ok = np.zeros(n_events, bool)
    src = np.zeros((n_events, 2), np.uint64)
    dst = np.zeros((n_events, 2), np.uint64)
    node_id[body] = node_words[np.minimum(node, node_words.shape[0] - 1)]
    node_ok[body] = ~is_edge
    src[body] = node_id[body]
    dst[body] = node_words[np.minimum(other, node_words.shape[0] - 1)]
    xyz = centre[g] + rng.normal(0, 10, size=(n_events, 3))
    has_pos = np.zeros(n_events, bool)
    has_pos[body] = is_add | is_move
    edge_ok = np.zeros(n_events, bool)
    edge_ok[body] = is_edge
    t0 = int(time.time() * 1000) if t0_ms is None else int(t0_ms)
    t_us = (t0 + np.arange(n_events, dtype=np.int64)) * 1000
    eids = _uuid_words(rng, n_events)
    edge_words = _uuid_words(rng, n_events)
    weight = rng.random(n_events).astype(np.float32)
    return dict(kind=kind, g=g, gids=gids, eids=eids, t_us=t_us, node_id=node_id, node_ok=node_ok,
                edge_words=edge_words, src=src, dst=dst, xyz=xyz, has_pos=has_pos, edge_ok=edge_ok,
                weight=weight, n_g=n_g)
