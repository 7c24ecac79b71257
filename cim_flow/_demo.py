"""Synthetic CIM traffic: graphs as spatial clusters, nodes added and moved, edges."""
from __future__ import annotations

import asyncio
import random
import time
import uuid

import msgspec

import nats

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
