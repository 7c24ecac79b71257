"""The NATS service against a real nats-server: ingest in every wire form, queries,
dead letters, Arrow in and out, min_version, the micro service, results out."""
import asyncio
import datetime
import functools
import json
import random
import time
import uuid

import msgspec
import numpy as np
import pyarrow as pa
import pytest

import nats
from cim_flow import EVENT_SCHEMA, Engine, decode_json
from natsutil import js_publish, request, request_raw, run, wait_until_restarted
from reference import RefProjection, brute_knn, brute_radius, reference_rows

T0 = 1_714_564_800_000


def _node_events(g, n, rng, form):
    """GraphCreated + n NodeAdded in one wire form; returns (payload list, {node_id: pos})."""
    out = [("event.graph.graph.created",
            json.dumps({"type": "GraphCreated", "event_id": str(uuid.uuid4()), "graph_id": g,
                        "name": f"svc-{form}", "occurred_at": T0}).encode())]
    pos = {}
    for i in range(n):
        nid = str(uuid.uuid4())
        p = [rng.uniform(0, 10) for _ in range(3)]
        pos[nid] = p
        f = {"event_id": str(uuid.uuid4()), "graph_id": g, "node_id": nid, "position": p, "occurred_at": T0 + i}
        if form == "external":
            body = {"NodeAdded": f}
        elif form == "internal":
            body = {"type": "NodeCreated", **f}
        else:
            body = {"event_id": f.pop("event_id"), "event_type": "NodeAdded", "aggregate_id": g,
                    "timestamp": T0 + i, "payload": {"node_id": nid, "position": {"x": p[0], "y": p[1], "z": p[2]}}}
        out.append(("event.graph.node.created", json.dumps(body).encode()))
    return out, pos


def _publish(url, events):
    return js_publish(url, [(s, d, {"Nats-Msg-Id": str(uuid.uuid4())}) for s, d in events])


@pytest.mark.parametrize("form", ["external", "internal", "envelope"])
def test_wire_forms_over_jetstream_match_reference(nats_server, service, form):
    rng = random.Random({"external": 1, "internal": 2, "envelope": 3}[form])
    g = str(uuid.uuid4())
    events, pos = _node_events(g, 25, rng, form)
    nids = list(pos)
    # an edge, a move, a removal (cascade), in mixed forms
    e = str(uuid.uuid4())
    events.append(("event.graph.edge.created", json.dumps({"EdgeConnected": {
        "graph_id": {"id": g}, "edge_id": e, "source": nids[0], "target": nids[1], "occurred_at": T0 + 100}}).encode()))
    events.append(("event.graph.node.moved", json.dumps({"type": "NodeMoved", "graph_id": g, "node_id": nids[2],
                                                        "new_position": [1, 1, 1], "occurred_at": T0 + 101}).encode()))
    events.append(("event.graph.node.removed", json.dumps({"type": "NodeRemoved", "graph_id": g, "node_id": nids[0],
                                                          "occurred_at": T0 + 102}).encode()))
    seq = _publish(nats_server.url, events)
    reply = request(nats_server.url, "query.graph.summary", {"graph_id": g, "min_version": seq})
    ref = RefProjection()
    batch, errors = decode_json([d for _, d in events])
    assert not errors
    ref.apply(reference_rows(batch))
    want = ref.summaries()[uuid.UUID(g).bytes]
    assert reply["version"] >= seq
    assert reply["graph_id"] == g
    assert (reply["node_count"], reply["edge_count"], reply["name"]) == (want["node_count"], 0, f"svc-{form}")
    assert reply["node_count"] == 24
    assert reply["created_at"] == "2024-05-01T12:00:00Z"


def test_dead_letters_and_neighbours_applied(nats_server, service):
    async def go():
        nc = await nats.connect(nats_server.url)
        got = []
        sub = await nc.subscribe("dlq.graph")
        await nc.flush()
        g = str(uuid.uuid4())
        js = nc.jetstream()
        await js.publish("event.graph.graph.created", json.dumps(
            {"type": "GraphCreated", "graph_id": g, "occurred_at": T0}).encode())
        await js.publish("event.graph.node.created", b"{not json")
        await js.publish("event.graph.node.created", json.dumps(
            {"type": "NodeAdded", "graph_id": g, "node_id": "nope"}).encode())
        n1 = str(uuid.uuid4())
        ack = await js.publish("event.graph.node.created", json.dumps(
            {"type": "NodeAdded", "graph_id": g, "node_id": n1, "position": [0, 0, 0],
             "occurred_at": T0}).encode())
        for _ in range(2):
            got.append(await sub.next_msg(timeout=10))
        r = await nc.request("query.graph.summary", msgspec.json.encode({"graph_id": g, "min_version": ack.seq}),
                             timeout=10)
        before = msgspec.json.decode((await nc.request("query.graph.stats", b"{}", timeout=10)).data)
        # decodable JSON that is not an event of its kind: dead-lettered with the projection's
        # reason; a valid event that changes nothing (an unknown node) stays ignored
        invalid = [
            ("event.graph.node.created", {"type": "NodeAdded", "graph_id": g, "position": [1, 1, 1]},
             "node_id missing"),
            ("event.graph.node.moved", {"type": "NodeMoved", "graph_id": g, "node_id": n1}, "NodeMoved without a position"),
            ("event.graph.edge.created", {"type": "EdgeAdded", "graph_id": g, "edge_id": str(uuid.uuid4()),
                                          "source": n1}, "source_id or target_id missing"),
        ]
        for subject, body, _ in invalid:
            await js.publish(subject, json.dumps({**body, "occurred_at": T0 + 1}).encode())
        ack = await js.publish("event.graph.node.removed", json.dumps(
            {"type": "NodeRemoved", "graph_id": g, "node_id": str(uuid.uuid4()), "occurred_at": T0 + 2}).encode())
        late = [await sub.next_msg(timeout=10) for _ in invalid]
        r2 = await nc.request("query.graph.stats", msgspec.json.encode({"min_version": ack.seq}), timeout=10)
        await nc.close()
        return got, msgspec.json.decode(r.data), invalid, late, before, msgspec.json.decode(r2.data)

    got, summary, invalid, late, before, after = run(go())
    reasons = sorted(m.headers["Cim-Error"] for m in got)
    assert reasons == ["bad UUID in node_id", "invalid JSON"]
    assert {m.data for m in got} >= {b"{not json"}
    assert all(m.headers["Cim-Subject"] == "event.graph.node.created" for m in got)
    assert summary["node_count"] == 1
    assert before["events_dead_lettered"] >= 2
    assert [(m.headers["Cim-Subject"], m.headers["Cim-Error"], json.loads(m.data)["type"]) for m in late] == \
        [(subject, why, body["type"]) for subject, body, why in invalid]
    assert after["events_dead_lettered"] == before["events_dead_lettered"] + 3
    assert after["events_ignored"] == before["events_ignored"] + 1  # the NodeRemoved of an unknown node


def test_spatial_queries_over_nats(nats_server, service):
    rng = random.Random(5)
    g = str(uuid.uuid4())
    events, pos = _node_events(g, 60, rng, "internal")
    seq = _publish(nats_server.url, events)
    pts = list(pos.values())
    ids = list(pos)
    c = [5.0, 5.0, 5.0]
    r = request(nats_server.url, "query.graph.nodes_in_radius",
                {"center": c, "radius": 3.0, "graph_id": g, "with_distance": True, "sort": True, "min_version": seq})
    want = {ids[i] for i in brute_radius(pts, c, 3.0)}
    assert {n["node_id"] for n in r["nodes"]} == want
    assert all(n["graph_id"] == g for n in r["nodes"])
    d = [n["distance"] for n in r["nodes"]]
    assert d == sorted(d) and all(x <= 3.0 for x in d)
    # several centers, grouped per center
    cs = [[1, 1, 1], [9, 9, 9]]
    r = request(nats_server.url, "query.graph.nodes_in_radius", {"centers": cs, "radius": 4.0, "graph_id": g})
    assert [{n["node_id"] for n in res["nodes"]} for res in r["results"]] == \
        [{ids[i] for i in brute_radius(pts, cc, 4.0)} for cc in cs]
    r = request(nats_server.url, "query.graph.knn", {"center": c, "k": 5, "graph_id": g})
    assert [round(n["distance"], 9) for n in r["nodes"]] == [round(x, 9) for x in brute_knn(pts, c, 5)]
    r = request(nats_server.url, "query.graph.nodes_in_box", {"lo": [0, 0, 0], "hi": [5, 5, 5], "graph_id": g})
    assert {n["node_id"] for n in r["nodes"]} == {ids[i] for i, p in enumerate(pts) if all(0 <= v <= 5 for v in p)}
    # limit caps and says so
    r = request(nats_server.url, "query.graph.nodes_in_radius", {"center": c, "radius": 100, "graph_id": g, "limit": 7})
    assert len(r["nodes"]) == 7 and r["truncated"] is True and r["count"] == 60


def test_concurrent_radius_requests_answered_together(nats_server, service):
    """Many radius requests in flight at once (the service answers them in one batch):
    each reply is its own request's answer, a bad one among them gets its own error,
    and Arrow and JSON replies mix."""
    rng = random.Random(9)
    graphs = [str(uuid.uuid4()), str(uuid.uuid4())]  # two graph filters: two kernel groups
    nodes = {}
    for g in graphs:
        events, pos = _node_events(g, 80, rng, "external")
        seq = _publish(nats_server.url, events)
        nodes[g] = (list(pos.values()), list(pos))
    before = request(nats_server.url, "query.graph.stats", {"min_version": seq})["radius_batches"]
    reqs = []
    for i in range(40):
        c = [rng.uniform(0, 10) for _ in range(3)]
        body = {"center": c, "radius": rng.choice([1.5, 3.0, 5.0]), "with_distance": i % 2 == 0,
                "graph_id": graphs[i % 3 == 0]}
        if i % 5 == 0:
            body["sort"] = True
        reqs.append(body)
    reqs.append({"center": [0, 0, 0], "radius": -2, "graph_id": graphs[0]})  # bad: its own error only
    reqs.append({"centers": [[2, 2, 2], [8, 8, 8]], "radius": 2.5, "graph_id": graphs[1]})
    reqs.append({"centers": [[2, 2, 2], [8, 8, 8], [5, 5, 5]], "radius": [1.0, 4.0, 0], "graph_id": graphs[1]})

    async def fire():
        nc = await nats.connect(nats_server.url)
        try:
            arrow = {"Accept": "application/vnd.apache.arrow.stream"}
            tasks = [nc.request("query.graph.nodes_in_radius", msgspec.json.encode(b), timeout=10,
                                headers=arrow if i == 7 else None) for i, b in enumerate(reqs)]
            return await asyncio.gather(*tasks)
        finally:
            await nc.close()

    replies = run(fire())
    assert request(nats_server.url, "query.graph.stats")["radius_batches"] - before < len(reqs)
    for i, (body, msg) in enumerate(zip(reqs, replies)):
        if np.min(body.get("radius", 0)) < 0:
            assert json.loads(msg.data)["error"]["code"] == "bad_request"
            continue
        centers = body["centers"] if "centers" in body else [body["center"]]
        pts, ids = nodes[body["graph_id"]]
        radii = np.broadcast_to(body["radius"], len(centers))
        want = [{ids[k] for k in brute_radius(pts, c, r)} for c, r in zip(centers, radii)]
        if i == 7:
            t = pa.ipc.open_stream(msg.data).read_all()
            got = [set() for _ in centers]
            for q, n in zip(t.column("query").to_pylist(), t.column("node_id").to_pylist()):
                got[q].add(str(uuid.UUID(bytes=n)))
            assert got == want
            continue
        r = json.loads(msg.data)
        assert r["version"] >= seq
        assert [{n["node_id"] for n in res["nodes"]} for res in r["results"]] == want
        for res in r["results"]:
            assert all(("distance" in n) == bool(body.get("with_distance")) for n in res["nodes"])
            if body.get("sort") and body.get("with_distance"):
                d = [n["distance"] for n in res["nodes"]]
                assert d == sorted(d)


def test_find_nodes_and_neighbors_over_nats(nats_server, service):
    rng = random.Random(6)
    g = str(uuid.uuid4())
    events, pos = _node_events(g, 8, rng, "internal")
    ids = list(pos)
    events.append(("event.graph.node.updated", json.dumps({"type": "NodeUpdated", "graph_id": g, "node_id": ids[1],
                                                          "node_type": "Sensor", "label": "s1",
                                                          "occurred_at": T0 + 50}).encode()))
    e1, e2 = str(uuid.uuid4()), str(uuid.uuid4())
    for e, a, b in ((e1, ids[0], ids[1]), (e2, ids[2], ids[0])):
        events.append(("event.graph.edge.created", json.dumps({
            "type": "EdgeAdded", "graph_id": g, "edge_id": e, "source_id": a, "target_id": b, "weight": 0.5,
            "edge_type": "link", "occurred_at": T0 + 60}).encode()))
    seq = _publish(nats_server.url, events)
    r = request(nats_server.url, "query.graph.find_nodes", {"graph_id": g, "min_version": seq})
    assert r["total"] == 8 and {n["node_id"] for n in r["nodes"]} == set(ids)
    by_id = {n["node_id"]: n for n in r["nodes"]}
    assert [by_id[ids[3]][c] for c in "xyz"] == pos[ids[3]]
    r = request(nats_server.url, "query.graph.find_nodes", {"graph_id": g, "node_type": "Sensor"})
    assert [(n["node_id"], n["name"], n["node_type"]) for n in r["nodes"]] == [(ids[1], "s1", "Sensor")]
    r = request(nats_server.url, "query.graph.find_nodes", {"graph_id": g, "limit": 3, "offset": 2})
    assert len(r["nodes"]) == 3 and r["truncated"] is True and r["total"] == 8
    r = request(nats_server.url, "query.graph.neighbors", {"node_id": ids[0], "graph_id": g})
    got = sorted((n["node_id"], n["edge_id"], n["direction"], n["weight"], n["edge_type"]) for n in r["neighbors"])
    assert got == sorted([(ids[1], e1, "out", 0.5, "link"), (ids[2], e2, "in", 0.5, "link")])
    assert r["count"] == 2 and r["node_id"] == ids[0]
    # the edges projection: both edges, with their ends, weight and type; paged; by type
    r = request(nats_server.url, "query.graph.find_edges", {"graph_id": g})
    assert r["total"] == 2 and r["truncated"] is False
    assert [(x["edge_id"], x["graph_id"], x["source_id"], x["target_id"], x["weight"], x["edge_type"])
            for x in r["edges"]] == [(e1, g, ids[0], ids[1], 0.5, "link"), (e2, g, ids[2], ids[0], 0.5, "link")]
    r = request(nats_server.url, "query.graph.find_edges", {"graph_id": g, "limit": 1, "offset": 1})
    assert [x["edge_id"] for x in r["edges"]] == [e2] and r["total"] == 2 and r["truncated"] is False
    assert request(nats_server.url, "query.graph.find_edges", {"graph_id": g, "edge_type": "road"})["total"] == 0
    assert request(nats_server.url, "query.graph.find_edges", {"graph_id": str(uuid.uuid4())})["error"]["code"] \
        == "not_found"
    r = request(nats_server.url, "query.graph.neighbors", {"node_id": str(uuid.uuid4())})
    assert r["error"]["code"] == "not_found"
    r = request(nats_server.url, "query.graph.neighbors", {})
    assert r["error"]["code"] == "bad_request"


def test_arrow_batch_in_and_arrow_reply(nats_server, service):
    rng = random.Random(9)
    g = str(uuid.uuid4())
    events, pos = _node_events(g, 40, rng, "external")
    batch, errors = decode_json([d for _, d in events])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    seq = js_publish(nats_server.url, [("event.graph.batch", sink.getvalue().to_pybytes(), None)])
    r = request(nats_server.url, "query.graph.summary", {"graph_id": g, "min_version": seq})
    assert r["node_count"] == 40
    msg = request_raw(nats_server.url, "query.graph.nodes_in_radius", {"center": [5, 5, 5], "radius": 100,
                                                                       "graph_id": g},
                      headers={"Accept": "application/vnd.apache.arrow.stream"})
    t = pa.ipc.open_stream(msg.data).read_all()
    assert t.num_rows == 40
    assert set(t.column_names) >= {"node_id", "graph_id"}
    assert {uuid.UUID(bytes=b).hex for b in t.column("node_id").to_pylist()} == {uuid.UUID(n).hex for n in pos}
    assert int(t.schema.metadata[b"version"]) >= seq and t.schema.metadata[b"truncated"] == b"false"
    # `limit` caps each center's rows in the Arrow reply as in the JSON one: the same first rows
    body = {"centers": [[5, 5, 5], [1, 1, 1]], "radius": 100, "graph_id": g, "limit": 7}
    t = pa.ipc.open_stream(request_raw(nats_server.url, "query.graph.nodes_in_radius", body,
                                       headers={"Accept": "application/vnd.apache.arrow.stream"}).data).read_all()
    js = request(nats_server.url, "query.graph.nodes_in_radius", body)
    assert t.column("query").to_pylist() == [0] * 7 + [1] * 7 and t.schema.metadata[b"truncated"] == b"true"
    assert [str(uuid.UUID(bytes=b)) for b in t.column("node_id").to_pylist()] == \
        [n["node_id"] for r in js["results"] for n in r["nodes"]]
    assert js["truncated"] is True and [r["count"] for r in js["results"]] == [40, 40]
    # the metadata carries each center's full count, and a listing's total, as the JSON does
    assert json.loads(t.schema.metadata[b"counts"]) == [r["count"] for r in js["results"]]
    body = {"graph_id": g, "limit": 5, "offset": 30}
    t = pa.ipc.open_stream(request_raw(nats_server.url, "query.graph.find_nodes", body,
                                       headers={"Accept": "application/vnd.apache.arrow.stream"}).data).read_all()
    js = request(nats_server.url, "query.graph.find_nodes", body)
    assert t.num_rows == len(js["nodes"]) == 5 and int(t.schema.metadata[b"total"]) == js["total"] == 40
    # a bad Arrow message is dead-lettered, not fatal
    bad = js_publish(nats_server.url, [("event.graph.batch", b"not arrow", None)])
    # (min_version: consumed before the next test, whose dead-letter subscription would
    # otherwise be the one to receive this message's)
    assert request(nats_server.url, "query.graph.summary", {"graph_id": g, "min_version": bad})["node_count"] == 40


def test_a_damaged_arrow_message_is_dead_lettered_whole(nats_server, service):
    """An Arrow message whose string offsets point outside its data (the IPC reader checks
    only the span of all of them) is dead-lettered with the reason, never read by the
    kernels; the good message after it applies."""
    g = uuid.uuid4().bytes
    offsets = np.array([0, 3, 1 << 30, 6, 9], np.int32)  # row 1 would span a GiB past 9 bytes
    names = pa.Array.from_buffers(pa.utf8(), 4, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"abcdefghi")])
    damaged = pa.table({"event_type": pa.array([1, 2, 2, 2], pa.int8()), "graph_id": pa.array([g] * 4, pa.binary(16)),
                        "occurred_at": pa.array([T0 * 1000] * 4, pa.timestamp("us", "UTC")), "name": names})
    good = damaged.set_column(3, "name", pa.array(["a", "b", "c", "good"]))

    def ipc(t):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        return sink.getvalue().to_pybytes()

    with pa.ipc.open_stream(ipc(damaged)) as r:
        r.read_all()  # the reader itself lets it through

    async def go():
        nc = await nats.connect(nats_server.url)
        sub = await nc.subscribe("dlq.graph")
        await nc.flush()
        js = nc.jetstream()
        bad = await js.publish("event.graph.batch", ipc(damaged))
        ok = await js.publish("event.graph.batch", ipc(good))
        while True:  # this message's dead letter (the module's service is shared: skip others')
            dead = await sub.next_msg(timeout=10)
            if (dead.headers or {}).get("Cim-Seq") == str(bad.seq):
                break
        summary = msgspec.json.decode((await nc.request("query.graph.summary", msgspec.json.encode(
            {"graph_id": str(uuid.UUID(bytes=g)), "min_version": ok.seq}), timeout=10)).data)
        await nc.close()
        return dead, summary

    dead, summary = run(go())
    assert dead.headers["Cim-Error"].startswith("bad Arrow batch: ") and "out of bounds" in dead.headers["Cim-Error"]
    assert dead.data == ipc(damaged)
    assert summary["name"] == "good"


def test_arrow_rows_that_are_not_events_are_dead_lettered(nats_server, service):
    """An Arrow batch message with rows missing a field their kind needs: those rows go to
    dlq.graph as one Arrow message with each row's reason; the rest of it applies, and an
    unknown node's removal stays an ignored no-op."""
    g, n1, n2 = (uuid.uuid4().bytes for _ in range(3))
    rows = [
        dict(event_type=1, graph_id=g, occurred_at=T0 * 1000, name="arrow-dlq"),
        dict(event_type=10, graph_id=g, occurred_at=T0 * 1000, node_id=None, x=1.0, y=1.0, z=1.0),
        dict(event_type=10, graph_id=g, occurred_at=T0 * 1000, node_id=n1, x=1.0, y=2.0, z=3.0),
        dict(event_type=12, graph_id=g, occurred_at=T0 * 1000, node_id=n1),
        dict(event_type=13, graph_id=g, occurred_at=T0 * 1000, node_id=n2),
    ]
    names = {k for r in rows for k in r}
    table = pa.Table.from_pylist(rows, schema=pa.schema([f for f in EVENT_SCHEMA if f.name in names]))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)

    async def go():
        nc = await nats.connect(nats_server.url)
        sub = await nc.subscribe("dlq.graph")
        await nc.flush()
        before = msgspec.json.decode((await nc.request("query.graph.stats", b"{}", timeout=10)).data)
        ack = await nc.jetstream().publish("event.graph.batch", sink.getvalue().to_pybytes())
        while True:  # this message's dead letter (the module's service is shared: skip others')
            dead = await sub.next_msg(timeout=10)
            if (dead.headers or {}).get("Cim-Seq") == str(ack.seq):
                break
        after = msgspec.json.decode((await nc.request("query.graph.stats",
                                                      msgspec.json.encode({"min_version": ack.seq}), timeout=10)).data)
        await nc.close()
        return dead, before, after, ack.seq

    dead, before, after, seq = run(go())
    assert dead.headers["Cim-Subject"] == "event.graph.batch" and dead.headers["Cim-Seq"] == str(seq)
    assert dead.headers["Cim-Error"] == ("2 of 5 rows are not events: row 1: node_id missing; "
                                         "row 3: NodeMoved without a position")
    got = pa.ipc.open_stream(dead.data).read_all()
    assert got.column("event_type").to_pylist() == [10, 12] and got.column("node_id").to_pylist() == [None, n1]
    assert after["events_dead_lettered"] == before["events_dead_lettered"] + 2
    assert after["events_ignored"] == before["events_ignored"] + 1
    assert after["events_applied"] == before["events_applied"] + 2
    summary = request(nats_server.url, "query.graph.summary", {"graph_id": str(uuid.UUID(bytes=g))})
    assert summary["node_count"] == 1 and summary["name"] == "arrow-dlq"


@pytest.mark.parametrize("subject,body,code", [
    ("query.graph.summary", b"{oops", "bad_request"),
    ("query.graph.summary", b"{}", "bad_request"),
    ("query.graph.summary", {"graph_id": "not-a-uuid"}, "bad_request"),
    ("query.graph.summary", {"graph_id": str(uuid.uuid4())}, "not_found"),
    ("query.graph.nodes_in_radius", {"center": [0, 0, 0], "radius": -1}, "bad_request"),
    ("query.graph.nodes_in_radius", {"center": [0, 0], "radius": 1}, "bad_request"),
    ("query.graph.nodes_in_radius", {"centers": [[0, 0, 0], [1, 1, 1]], "radius": [1]}, "bad_request"),
    ("query.graph.nodes_in_radius", {"centers": [[0, 0, 0], [1, 1, 1]], "radius": [1, -2]}, "bad_request"),
    ("query.graph.nodes_in_radius", b'{"center": [NaN, 0, 0], "radius": 1}', "bad_request"),
    ("query.graph.nodes_in_radius", {"center": [0, 0, 0], "radius": 1, "graph_id": str(uuid.uuid4())}, "not_found"),
    ("query.graph.knn", {"center": [0, 0, 0], "k": 0}, "bad_request"),
    ("query.graph.knn", {"center": [0, 0, 0]}, "bad_request"),
    ("query.graph.nodes_in_box", {"lo": [1, 1, 1], "hi": [0, 0, 0]}, "bad_request"),
    ("query.graph.graphs", {"offset": -1}, "bad_request"),
    ("query.graph.stats", {"min_version": 10**15, "timeout_ms": 50}, "timeout"),
    # found by fuzzing: these answered "internal" (an int64 overflow, float() of a list)
    # or waited out the whole min_version timeout for a version no seq can reach
    ("query.graph.find_edges", {"offset": 1e308}, "bad_request"),
    ("query.graph.graphs", {"offset": 2**63}, "bad_request"),
    ("query.graph.knn", {"center": [0, 0, 0], "k": 10**30}, "bad_request"),
    ("query.graph.stats", {"min_version": 2**64}, "bad_request"),
    ("query.graph.stats", {"min_version": 10**15, "timeout_ms": [7]}, "bad_request"),
    ("query.graph.stats", {"min_version": 10**15, "timeout_ms": 1e300}, "bad_request"),
])
def test_bad_requests_get_error_replies(nats_server, service, subject, body, code):
    r = request(nats_server.url, subject, body)
    assert r["error"]["code"] == code, r
    assert r["error"]["message"]
    assert "version" in r


def test_a_nan_from_json_dumps_is_named_in_the_error():
    """Python's json.dumps writes NaN / Infinity: the error names the field, not just
    "invalid JSON"; text that is not JSON at all still says so."""
    from cim_flow._queries import QueryError, parse_request

    for body, field in ((json.dumps({"center": [float("nan"), 0, 0], "radius": 1}), "center"),
                        (json.dumps({"center": [0, 0, 0], "radius": float("inf")}), "radius")):
        with pytest.raises(QueryError) as err:
            parse_request(body.encode())
        assert err.value.code == "bad_request" and err.value.message.startswith(f"{field} must be finite")
    with pytest.raises(QueryError, match="invalid JSON"):
        parse_request(b'{"center": [NaN, 0')


def test_graphs_listing_and_filters(nats_server, service):
    rng = random.Random(3)
    g = str(uuid.uuid4())
    events, _ = _node_events(g, 12, rng, "internal")
    events[0] = ("event.graph.graph.created", json.dumps({"type": "GraphCreated", "graph_id": g,
                                                          "name": "listing-unique", "occurred_at": T0}).encode())
    seq = _publish(nats_server.url, events)
    r = request(nats_server.url, "query.graph.graphs", {"name": "listing-unique", "min_version": seq})
    assert [x["graph_id"] for x in r["graphs"]] == [g] and r["total"] == 1
    # a graph id as events may carry it, {"id": "<uuid>"}, and in capitals
    assert request(nats_server.url, "query.graph.summary", {"graph_id": {"id": g}})["node_count"] == 12
    assert request(nats_server.url, "query.graph.summary", {"graph_id": g.upper()})["graph_id"] == g
    r = request(nats_server.url, "query.graph.graphs", {"node_count_between": [12, 12]})
    assert g in {x["graph_id"] for x in r["graphs"]}
    r = request(nats_server.url, "query.graph.graphs", {"top_by_node_count": 1000})
    counts = [x["node_count"] for x in r["graphs"]]
    assert counts == sorted(counts, reverse=True)
    r = request(nats_server.url, "query.graph.graphs", {"created_between": ["2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"],
                                                         "limit": 2, "offset": 0})
    assert len(r["graphs"]) <= 2 and r["total"] >= 1
    assert r["truncated"] == (r["total"] > 2)
    # numbers are epoch milliseconds, as the events' times on the wire
    ms = {"created_between": [1714521600000, 1714608000000.0], "limit": 2, "offset": 0}
    assert request(nats_server.url, "query.graph.graphs", ms) == r
    bad = request(nats_server.url, "query.graph.graphs", {"created_between": [True, 1]})
    assert bad["error"]["code"] == "bad_request" and "created_between" in bad["error"]["message"]


def test_status_line_says_query_rate_and_p99_while_queries_come(nats_server, tmp_path):
    import io
    import re

    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService

    out = io.StringIO()
    cfg = Config.from_dict({"jetstream": {"storage": "memory", "stream": "STATUS_LINE", "subjects": ["status.>"],
                                          "durable": "status_line"}})
    rs = RunningService(Service(cfg, nats_url=nats_server.url, status_interval=0.5, out=out,
                                data_dir=str(tmp_path / "svc"))).start()
    try:
        time.sleep(0.7)  # a line with no queries yet
        for _ in range(20):
            request(nats_server.url, "query.graph.stats")
        time.sleep(0.7)
    finally:
        rs.stop()
    lines = [ln for ln in out.getvalue().splitlines() if "events/s" in ln]
    assert lines and "queries" not in lines[0], lines
    m = [re.search(r"queries ([\d,.]+)/s p99 ([\d.]+) ms", ln) for ln in lines]
    assert any(x and float(x.group(1).replace(",", "")) > 0 and float(x.group(2)) > 0 for x in m), lines


def test_stats_cache_and_micro_service(nats_server, service):
    q = {"center": [5, 5, 5], "radius": 1.0}
    s0 = request(nats_server.url, "query.graph.stats")
    request(nats_server.url, "query.graph.nodes_in_radius", q)
    request(nats_server.url, "query.graph.nodes_in_radius", q)
    s1 = request(nats_server.url, "query.graph.stats")
    assert s1["cache_hits"] >= s0["cache_hits"] + 1
    for k in ("graphs", "nodes", "edges", "version", "events_applied", "events_ignored", "events_skipped",
              "events_dead_lettered", "batches", "batch_size", "latency_ms", "queries", "cache_hits",
              "cache_misses", "uptime_s"):
        assert k in s1, k
    assert set(s1["latency_ms"]) == {"p50", "p99", "p999"}
    # the spatial index's own account: after 30 more positioned nodes, its main grid's live
    # entries plus its delta cover every positioned live node (counted by a query over the
    # whole space), and the main grid holds no more than those
    seq = _publish(nats_server.url, _node_events(str(uuid.uuid4()), 30, random.Random(8), "internal")[0])
    everywhere = request(nats_server.url, "query.graph.nodes_in_radius", {"center": [0, 0, 0], "radius": 1e12,
                                                                          "limit": 1, "min_version": seq})
    assert everywhere["count"] >= 30
    ix = request(nats_server.url, "query.graph.stats")["index"]
    assert ix["built"] and ix["main_builds"] >= 1 and ix["delta_rebuilds"] >= 0, ix
    assert set(ix) == {"built", "main_builds", "building", "main_points", "stale_points", "delta_nodes",
                       "delta_rebuilds", "delta_patched", "delta_rebuild_ms", "main_build_ms"}
    main_live = ix["main_points"] - ix["stale_points"]
    assert 0 <= main_live <= everywhere["count"] <= main_live + ix["delta_nodes"], (ix, everywhere["count"])
    # each query's time in the service: the two radius queries (one answered, one from the cache)
    # and the stats query before them, at least
    qms = s1["query_ms"]
    assert set(qms) == {"p50", "p99", "max"} and 0 < qms["p50"] <= qms["p99"] <= qms["max"] < 60_000
    # a query held 300 ms by min_version is timed at >= 300 ms (in ms, not s or µs),
    # and no longer than the client saw it take
    t0 = time.perf_counter()
    r = request(nats_server.url, "query.graph.summary", {"graph_id": str(uuid.uuid4()), "min_version": 10**15,
                                                          "timeout_ms": 300})
    rtt_ms = (time.perf_counter() - t0) * 1e3
    assert r["error"]["code"] == "timeout"
    s2 = request(nats_server.url, "query.graph.stats")["query_ms"]
    assert s2["max"] >= 300 and (qms["max"] >= s2["max"] or s2["max"] <= rtt_ms)
    assert s2["p50"] < 300  # most queries are answered at once
    phases = s1["batch_phase_us"]
    assert set(phases) == {"decode_apply", "ack", "update", "snapshot_check"}
    assert min(phases.values()) >= 0 and (phases["decode_apply"] > 0) == (s1["batches"] > 0)
    assert s1["jetstream"] is True and s1["stream"] == "CIM_GRAPH_EVENTS"
    info = request(nats_server.url, "$SRV.INFO.cim_flow")
    assert info["name"] == "cim_flow"
    subjects = {e["subject"] for e in info["endpoints"]}
    assert {"query.graph.summary", "query.graph.graphs", "query.graph.stats", "query.graph.nodes_in_radius",
            "query.graph.knn", "query.graph.nodes_in_box", "query.graph.find_nodes", "query.graph.find_edges",
            "query.graph.neighbors"} <= subjects
    ping = request(nats_server.url, "$SRV.PING.cim_flow")
    assert ping["name"] == "cim_flow"


def _endpoint_requests(url, name):
    stats = request(url, "$SRV.STATS.cim_flow")
    return next(e["num_requests"] for e in stats["endpoints"] if e["name"] == name)


def _radius_ids(url, q, arrow=False, timeout=10.0):
    if arrow:
        msg = request_raw(url, "query.graph.nodes_in_radius", msgspec.json.encode(q),
                          headers={"Accept": "application/vnd.apache.arrow.stream"})
        assert msg.headers["Content-Type"] == "application/vnd.apache.arrow.stream"
        t = pa.ipc.open_stream(msg.data).read_all()
        return sorted(str(uuid.UUID(bytes=b)) for b in t.column("node_id").to_pylist())
    reply = request(url, "query.graph.nodes_in_radius", q, timeout=timeout)
    return sorted(n["node_id"] for n in reply["results"][0]["nodes"])


def test_queries_on_the_lean_connection(nats_server, service):
    """The query endpoints are read on the service's lean connection (nats-py's micro
    subscriptions for them dropped), counted in $SRV.STATS, JSON and Arrow; when that
    connection is lost, nats-py answers until it is back, and then it serves again."""
    url = nats_server.url
    old = service.qraw
    assert old is not None and not old.closed
    assert all(ep._subscription is None for ep in service._query_endpoints())
    rng = random.Random(7)
    g = str(uuid.uuid4())
    events, pos = _node_events(g, 40, rng, "internal")
    seq = _publish(url, events)
    assert request(url, "query.graph.summary", {"graph_id": g, "min_version": seq})["node_count"] == 40
    q = {"center": [5, 5, 5], "radius": 3.0, "graph_id": g}
    ids = list(pos)
    want = sorted(ids[i] for i in brute_radius([pos[n] for n in ids], [5, 5, 5], 3.0))
    assert want, "the query must find something"
    n0 = _endpoint_requests(url, "nodes_in_radius")
    assert _radius_ids(url, q) == want
    assert _radius_ids(url, q, arrow=True) == want
    assert _endpoint_requests(url, "nodes_in_radius") == n0 + 2
    # a query for a version not applied yet waits (off the lean connection's path) and is answered
    late = str(uuid.uuid4())

    async def ahead():
        nc = await nats.connect(url)
        try:
            fut = asyncio.ensure_future(nc.request("query.graph.summary", msgspec.json.encode(
                {"graph_id": late, "min_version": seq + 1, "timeout_ms": 20000}), timeout=25))
            await asyncio.sleep(0.2)
            assert not fut.done()
            stats = await nc.request("query.graph.stats", b"{}", timeout=10)
            assert json.loads(stats.data)["version"] == seq  # not held up by the waiting one
            await asyncio.get_running_loop().run_in_executor(None, _publish, url, [(
                "event.graph.graph.created", json.dumps({"type": "GraphCreated", "graph_id": late,
                                                         "name": "late", "occurred_at": T0}).encode())])
            return json.loads((await fut).data)
        finally:
            await nc.close()

    assert run(ahead())["name"] == "late"
    # lose the lean connection: nats-py serves meanwhile, then the lean one is back.
    # Until nats-py's subscriptions reach the server (a few ms after the loss, more on a
    # loaded machine) a request finds no responder, or, sent before the server has seen
    # the connection go, reaches the dead one and is never answered (as with any
    # responder that dies); once nats-py has taken over, every request is answered.
    service.loop.call_soon_threadsafe(old.transport.abort)
    deadline = time.time() + 20
    answered = 0
    while (service.qraw is old or service.qraw.closed) and time.time() < deadline:
        try:
            assert _radius_ids(url, q, timeout=2.0) == want
            answered += 1
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            assert answered == 0, f"{type(exc).__name__} after nats-py had taken over"
        time.sleep(0.05)
    assert service.qraw is not old and not service.qraw.closed
    assert all(ep._subscription is None for ep in service._query_endpoints())
    n1 = _endpoint_requests(url, "nodes_in_radius")
    assert _radius_ids(url, q) == want
    assert _endpoint_requests(url, "nodes_in_radius") == n1 + 1


def test_every_query_answered_after_the_server_restarts(tmp_path):
    """Both query connections lost at once (the embedded server killed): once the service
    is back, every request is answered. A nats-py subscription left on the server by the
    reconnect took every other request of the endpoints' queue group and dropped it
    (fails in most runs without the fix)."""
    import os
    import signal

    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService

    svc = Service(Config.from_dict({}), port=0, data_dir=str(tmp_path / "svc"), status_interval=0)
    rs = RunningService(svc).start()
    try:
        url = svc.url
        assert request(url, "query.graph.stats")["server_restarts"] == 0
        os.kill(svc.server.proc.pid, signal.SIGKILL)
        wait_until_restarted(url)
        time.sleep(0.5)  # both lean and nats-py connections settled
        for _ in range(10):
            for subject in ("query.graph.graphs", "query.graph.summary", "query.graph.nodes_in_box"):
                reply = request(url, subject, {"graph_id": str(uuid.uuid4()), "lo": [0, 0, 0], "hi": [1, 1, 1]},
                                timeout=3.0)
                assert "version" in reply
    finally:
        rs.stop()


def test_messages_over_max_payload(tmp_path):
    """Against a server with a small max_payload (it closes a connection that publishes
    more): a reply too big for an explicit limit is a clear `too_large` error and the same
    connection answers the next request, on both reply paths (one-off: graphs; batched:
    radius); without a limit the answer is capped to fit, `truncated`; a batch's
    update too big goes out in parts; a dead letter too big is truncated and says so."""
    from cim_flow._config import Config
    from cim_flow._natsserver import NatsServer
    from cim_flow.service import Service
    from conftest import RunningService

    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 8192\n")
    srv = NatsServer(port=0, jetstream=False, args=("-c", str(conf))).start()
    cfg = Config.from_dict({"event_processing": {"batch_size": 81, "batch_timeout": "5s",
                                                 "enable_adaptive_batching": False}})
    svc = Service(cfg, nats_url=srv.url, data_dir=str(tmp_path / "svc"), jetstream=False, status_interval=0)
    rs = RunningService(svc).start()
    try:
        g = str(uuid.uuid4())
        graphs = [json.dumps({"type": "GraphCreated", "graph_id": str(uuid.uuid4()), "name": f"g{i}",
                              "occurred_at": T0 + i}).encode() for i in range(80)]
        graphs.append(json.dumps({"type": "GraphCreated", "graph_id": g, "occurred_at": T0}).encode())
        nodes = [json.dumps({"type": "NodeAdded", "graph_id": g, "node_id": str(uuid.uuid4()),
                             "position": [0.01 * i, 0, 0], "occurred_at": T0}).encode() for i in range(150)]
        bad = b'{"type": "NodeAdded", "name": "' + b"x" * 8100 + b'"'  # invalid JSON, just under max_payload
        updates, dead = [], []

        async def publish():
            nc = await nats.connect(srv.url)

            async def keep(into, m):
                into.append(m)

            await nc.subscribe("projection.graph.summary.updated", cb=functools.partial(keep, updates))
            await nc.subscribe("dlq.graph", cb=functools.partial(keep, dead))
            await nc.flush()
            for e in graphs:  # at least these 81 in the first batch (batch_size 81, a 5 s timeout)
                await nc.publish("event.graph.any", e)
            await nc.publish("event.graph.any", bad)
            for e in nodes:
                await nc.publish("event.graph.any", e)
            await nc.flush()
            # the last batch may close only at batch_timeout (5 s): wait well beyond that
            stats = await nc.request("query.graph.stats", b'{"min_version": %d, "timeout_ms": 30000}'
                                     % (len(graphs) + len(nodes)), timeout=40)
            await asyncio.sleep(0.2)
            await nc.close()
            return json.loads(stats.data)

        stats = run(publish())
        assert stats.get("version") == len(graphs) + len(nodes) and stats.get("events_dead_lettered") == 1, stats
        # the bulk batch's update came in parts, each within max_payload, naming all 81 graphs
        bodies = [json.loads(m.data) for m in updates]
        split = max({b["version"] for b in bodies if b.get("parts", 1) > 1}, default=None)
        assert split is not None, "no update came in parts"
        first = [b for b in bodies if b["version"] == split]
        assert len(first) >= 2 and all(len(m.data) <= 8192 for m in updates)
        assert {u["parts"] for u in first} == {len(first)} and sorted(u["part"] for u in first) == list(range(len(first)))
        assert {r["graph_id"] for u in first for r in u["graphs"]} == {json.loads(e)["graph_id"] for e in graphs}
        # the dead letter kept its reason, truncated the payload and said so
        assert len(dead) == 1 and dead[0].headers["Cim-Truncated"] == str(len(bad))
        assert "invalid JSON" in dead[0].headers["Cim-Error"] and bad.startswith(dead[0].data)
        for _ in range(2):  # the second time from the cache
            big = request(srv.url, "query.graph.graphs", {"limit": 1000})
            assert big["error"]["code"] == "too_large" and "max_payload" in big["error"]["message"]
            assert len(request(srv.url, "query.graph.graphs", {"limit": 5})["graphs"]) == 5
            big = request(srv.url, "query.graph.nodes_in_radius", {"center": [0, 0, 0], "radius": 10.0, "limit": 150})
            assert big["error"]["code"] == "too_large"
            small = request(srv.url, "query.graph.nodes_in_radius", {"center": [0, 0, 0], "radius": 10.0, "limit": 3})
            assert small["count"] == 150 and len(small["nodes"]) == 3
            # no limit asked for: the default's promise, an answer capped to what one message holds
            capped = request(srv.url, "query.graph.nodes_in_radius", {"center": [0, 0, 0], "radius": 10.0})
            assert capped["count"] == 150 and capped["truncated"] is True and 10 < len(capped["nodes"]) < 150
            assert len(json.dumps(capped)) < 8192
            ids = {n["node_id"] for n in capped["nodes"]}
            assert ids <= {json.loads(e)["node_id"] for e in nodes} and len(ids) == len(capped["nodes"])
            listing = request(srv.url, "query.graph.graphs", {})
            assert listing["total"] == 81 and listing["truncated"] is True and 0 < len(listing["graphs"]) < 81
            assert listing["limit"] == len(listing["graphs"])
        assert svc.qraw is not None and not svc.qraw.closed  # never dropped by the server
    finally:
        rs.stop()
        srv.stop()


def test_updates_published(nats_server, service):
    async def go():
        nc = await nats.connect(nats_server.url)
        sub = await nc.subscribe("projection.graph.summary.updated")
        await nc.flush()
        g = str(uuid.uuid4())
        await nc.jetstream().publish("event.graph.graph.created", json.dumps(
            {"type": "GraphCreated", "graph_id": g, "name": "upd", "occurred_at": T0}).encode())
        for _ in range(50):
            m = await sub.next_msg(timeout=10)
            body = msgspec.json.decode(m.data)
            if any(x["graph_id"] == g for x in body["graphs"]):
                await nc.close()
                return m, body, g
        await nc.close()
        raise AssertionError("no update for the graph")

    m, body, g = run(go())
    assert body["version"] >= 1 and body["events_total"] >= 1 and isinstance(body["deleted"], list)
    assert m.headers["Nats-Msg-Id"] == f"summary-{body['version']}"
    when = datetime.datetime.fromtimestamp(T0 / 1000, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    row = next(x for x in body["graphs"] if x["graph_id"] == g)
    assert row == {"graph_id": g, "name": "upd", "node_count": 0, "edge_count": 0, "created_at": when,
                   "last_modified": when, "archived": False}


@pytest.mark.parametrize("size,adds", [(65536, 3000), (4096, 3000), (4096, 100)])
def test_latency_window_recent_quantile_is_the_sorted_value(size, adds):
    """The adaptive batching's p99 over the last 2,048 latencies: the nearest value at or
    below the 99% rank, whether the window is partly filled or wraps the ring's end;
    close to the interpolated percentile the stats report."""
    from cim_flow.service import LatencyWindow

    rng = np.random.default_rng(size + adds)
    w, every = LatencyWindow(size), []
    for _ in range(adds):
        v = rng.exponential(size=int(rng.integers(1, 8)))
        w.add(v)
        every.extend(v)
    last = np.sort(np.array(every[-min(2048, size):]))
    assert w.recent_quantile(0.99, 2048) == last[int(0.99 * (len(last) - 1))]
    assert w.recent_quantile(0.99, 2048) == pytest.approx(w.percentiles((99,), last=2048)[0], rel=0.05)
    assert LatencyWindow(16).recent_quantile(0.99, 2048) == 0.0


def test_radius_reply_fast_json_equals_the_dict_encoding():
    """Replies without distances are assembled from fixed-width rows; decoded, they equal
    the general (dict) encoding of the same answer."""
    import numpy as np

    from cim_flow import EVENT_SCHEMA, Engine
    from cim_flow._queries import encode_answer, q_nodes_in_radius_many

    rng = np.random.default_rng(3)
    g = uuid.uuid4().bytes
    rows = [{c: None for c in EVENT_SCHEMA.names} | dict(event_type=1, graph_id=g, occurred_at=T0)]
    for i in range(300):
        x, y, z = rng.uniform(0, 10, 3)
        rows.append({c: None for c in EVENT_SCHEMA.names} | dict(
            event_type=10, graph_id=g, occurred_at=T0, node_id=uuid.uuid4().bytes, x=x, y=y, z=z))
    eng = Engine()
    eng.apply(pa.RecordBatch.from_pylist(rows, schema=EVENT_SCHEMA))
    limits = {"default": 50, "max": 1000}
    reqs = [{"center": rng.uniform(0, 10, 3).tolist(), "radius": 2.0},
            {"centers": rng.uniform(0, 10, (3, 3)).tolist(), "radius": 3.0, "limit": 5},
            {"center": [50.0, 50.0, 50.0], "radius": 1.0},
            {"center": [5.0, 5.0, 5.0], "radius": 100.0, "limit": 7, "sort": True}]
    fast = q_nodes_in_radius_many(eng, reqs, limits, [False] * len(reqs))
    general = q_nodes_in_radius_many(eng, [dict(r, with_distance=True) for r in reqs], limits)

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "distance"}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    for f, gen in zip(fast, general):
        assert f.raw_json is not None
        got = json.loads(encode_answer(f, 9, False)[0])
        want = strip(json.loads(encode_answer(gen, 9, False)[0]))
        assert got == want
    assert json.loads(encode_answer(fast[3], 9, False)[0])["truncated"] is True


def test_plain_radius_request_fast_path_writes_the_general_reply_byte_for_byte():
    """The one-center fast path (q_radius_fast) gives, for every plain request, exactly the
    bytes the batched path writes (ints and floats, limits that cut and that do not, no
    hits, a node on the boundary), and declines every request it does not fully handle,
    valid or not, for the general path to answer."""
    import numpy as np

    from cim_flow._queries import encode_answer, q_nodes_in_radius_many, q_radius_fast

    rng = np.random.default_rng(11)
    eng = Engine()
    g = str(uuid.uuid4())
    events = [{"type": "GraphCreated", "graph_id": g, "occurred_at": T0}]
    pts = np.round(rng.uniform(0, 10, (400, 3)), 1)  # many exact ties and boundary distances
    nids = [str(uuid.uuid4()) for _ in pts]
    events += [{"type": "NodeAdded", "graph_id": g, "node_id": nid, "position": p.tolist(),
                "occurred_at": T0} for nid, p in zip(nids, pts)]
    eng.apply(decode_json([json.dumps(e).encode() for e in events])[0])
    limits = {"default": 20, "max": 60}
    reqs = [{"center": [5, 5, 5], "radius": 1}, {"center": pts[0].tolist(), "radius": 0.0},
            {"center": [50.0, 50.0, 50.0], "radius": 2.5}, {"center": [5.0, 5.0, 5.0], "radius": 100.0},
            {"center": [5.0, 5.0, 5.0], "radius": 100.0, "limit": 10**6},
            {"center": [5.0, 5.0, 5.0], "radius": 3.0, "limit": 5.0}]
    reqs += [{"center": rng.uniform(-1, 11, 3).tolist(), "radius": float(rng.choice([0.5, 1.0, 2.0, 3.0])),
              **({"limit": int(rng.integers(1, 80))} if i % 2 else {})} for i in range(60)]
    for req in reqs:
        raw = q_radius_fast(eng, req, limits)
        assert raw is not None, req
        general = encode_answer(q_nodes_in_radius_many(eng, [req], limits, [False])[0], 7, False)[0]
        assert raw + b',"version":7}' == general
        want = [i for i, p in enumerate(pts) if np.linalg.norm(p - np.array(req["center"], float)) <= req["radius"]]
        reply = json.loads(raw + b"}")
        assert reply["count"] == len(want) and reply["truncated"] == (len(want) > len(reply["nodes"]))
        got = {n["node_id"] for n in reply["nodes"]}
        assert got <= {nids[i] for i in want} and len(got) == min(len(want), int(req.get("limit", 20)), 60)
    for req in [{"center": [1, 2, 3], "radius": 1, "graph_id": g}, {"centers": [[1, 2, 3]], "radius": 1},
                {"center": [1, 2, 3], "radius": 1, "with_distance": False}, {"center": [1, 2, 3], "radius": -1},
                {"center": [1, 2, True], "radius": 1}, {"center": [1, 2], "radius": 1},
                {"center": [1, 2, 3], "radius": "1"}, {"center": [1, 2, 3], "radius": 1, "limit": 0},
                {"center": [1, 2, 3], "radius": 1, "limit": 5.5}, {"center": [1, 2, 10**400], "radius": 1},
                {"center": [1, 2, 3]}, {"center": [1, 2, 3], "radius": 1, "min_version": 1}, {}]:
        assert q_radius_fast(eng, req, limits) is None, req


def test_a_number_too_large_for_a_float_is_that_request_s_error_only():
    """JSON integers past float's range (msgspec gives them as Python ints) made
    ``float()`` raise OverflowError inside the batched radius answer: every request of
    the batch got an internal error.  Now the request with it gets its bad_request, the
    others their answers."""
    from cim_flow._queries import QueryError, q_nodes_in_radius_many

    eng = Engine()
    g = str(uuid.uuid4())
    events = [{"type": "GraphCreated", "graph_id": g, "occurred_at": T0},
              {"type": "NodeAdded", "graph_id": g, "node_id": str(uuid.uuid4()), "position": [1, 1, 1],
               "occurred_at": T0}]
    eng.apply(decode_json([json.dumps(e).encode() for e in events])[0])
    big = json.loads(b'{"center": [1, 1, ' + b"9" * 400 + b'], "radius": 1}')
    got = q_nodes_in_radius_many(eng, [{"center": [1, 1, 1], "radius": 0.5}, big,
                                       {"center": [1, 1, 1], "radius": 10**400}], {"default": 10, "max": 10})
    assert got[0].raw_json is not None and b'"count":1' in got[0].raw_json
    assert isinstance(got[1], QueryError) and got[1].code == "bad_request" and "too large" in got[1].message
    assert isinstance(got[2], QueryError) and "radius is too large" in got[2].message


def test_radius_reply_rows_refuse_a_node_number_out_of_range():
    """The rows a radius reply carries are gathered without bounds checks: a node number
    outside the node arrays (only a damaged index could give one) is an error, not a read
    far outside them."""
    eng = Engine()
    g = str(uuid.uuid4())
    events = [{"type": "GraphCreated", "graph_id": g, "occurred_at": T0}]
    events += [{"type": "NodeAdded", "graph_id": g, "node_id": str(uuid.uuid4()), "position": [x, 0, 0],
                "occurred_at": T0} for x in (0.0, 1.0)]
    assert eng.apply(decode_json([json.dumps(e).encode() for e in events])[0]).applied == 3
    kept, rows = eng._first_rows_json(np.array([0, 2, 2]), np.array([1, 5]), np.array([1, 0]))
    assert kept.tolist() == [0, 1, 1] and rows.count(b"node_id") == 1
    with pytest.raises(RuntimeError, match="out of range"):
        eng._first_rows_json(np.array([0, 2]), np.array([5]), np.array([0, 2]))
    with pytest.raises(RuntimeError, match="out of range"):
        eng._first_rows_json(np.array([0, 1]), np.array([5]), np.array([-1]))


def test_uuid_texts_match_python_uuid_with_nulls_and_offsets():
    """Ids as text in replies come from one kernel; checked against uuid.UUID, with nulls
    and a sliced array (non-zero offset)."""
    from cim_flow._queries import uuid_texts

    ids = [uuid.uuid4() for _ in range(50)]
    arr = pa.array([u.bytes if i % 3 else None for i, u in enumerate(ids)], pa.binary(16)).slice(5)
    assert uuid_texts(arr) == [str(u) if (i + 5) % 3 else None for i, u in enumerate(ids[5:])]


def test_subscriptions_are_live_when_start_returns(tmp_path):
    """Ready means subscribed: an event published the moment start() returns (core NATS,
    nothing stored) is applied. nats-py buffers a SUB until its next flush; without the
    start-up flushes 6 of 15 such events were lost here."""
    import asyncio
    import json
    import time
    import uuid

    import nats
    from cim_flow._config import Config
    from cim_flow._natsserver import NatsServer
    from cim_flow.service import Service
    from conftest import RunningService

    async def publish(url, body):
        nc = await nats.connect(url)
        await nc.publish("event.graph.graph.created", body)
        await nc.flush()
        await nc.close()

    srv = NatsServer(port=0, jetstream=False).start()  # its own: no stream keeps these events
    try:
        for i in range(8):
            svc = Service(Config.from_dict({}), nats_url=srv.url, data_dir=str(tmp_path / str(i)),
                          jetstream=False, status_interval=0)
            rs = RunningService(svc).start()
            try:
                body = json.dumps({"type": "GraphCreated", "graph_id": str(uuid.uuid4()), "occurred_at": 1})
                asyncio.run(publish(srv.url, body.encode()))
                deadline = time.time() + 10
                while svc.counters["events_applied"] < 1 and time.time() < deadline:
                    time.sleep(0.01)
                assert svc.counters["events_applied"] == 1, f"start {i}: the event published at ready was lost"
            finally:
                rs.stop()
    finally:
        srv.stop()


def test_seed_jetstream_settings_and_cache_warming(tmp_path):
    """The seed's server-side [jetstream] settings reach the embedded nats-server; the
    stream takes the configured compression and duplicate window, also when it already
    exists; [query_cache] warm_cache_queries are answered into the cache before ready,
    and a client sending the same request gets that answer (a hit, equal to a fresh one)."""
    import io
    import os

    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService

    store = tmp_path / "js-store"
    js = {"store_dir": str(store), "max_file_store": "1GiB", "max_memory_store": "64MiB",
          "sync_interval": "1s", "compression": "s2"}
    out = io.StringIO()
    svc = Service(Config.from_dict({"jetstream": js}), port=0, data_dir=str(tmp_path / "svc"),
                  status_interval=0, out=out)
    rs = RunningService(svc).start()
    try:
        log = "\n".join(svc.server.log)
        assert "Max Storage:     1.00 GB" in log and "Max Memory:      64.00 MB" in log, log
        assert os.path.isdir(store / "jetstream" / "$G" / "streams" / "CIM_GRAPH_EVENTS")
        info = run(_stream_config(svc.url))
        assert info.compression == "s2" and info.duplicate_window == 120
        rng = np.random.default_rng(11)
        events = []
        for g in range(8):
            gid = str(uuid.uuid4())
            events.append({"type": "GraphCreated", "graph_id": gid, "name": f"g{g}", "occurred_at": 1000 + g})
            events += [{"type": "NodeAdded", "graph_id": gid, "node_id": str(uuid.uuid4()),
                        "position": rng.uniform(0, 100, 3).tolist(), "occurred_at": 2000} for _ in range(g + 1)]
        js_publish(svc.url, [("event.graph.x", json.dumps(e).encode(), None) for e in events])
        deadline = time.time() + 30
        while svc.engine.version < len(events) and time.time() < deadline:
            time.sleep(0.02)
        assert svc.engine.version == len(events)
    finally:
        rs.stop()

    warm = ["graphs", 'graphs {"limit": 3}', "get_recent_nodes",
            'nodes_in_box {"lo": [-1e9, -1e9, -1e9], "hi": [1e9, 1e9, 1e9], "limit": 5}',
            'summary {"graph_id": "not-a-uuid"}']
    cfg = Config.from_dict({"jetstream": {**js, "compression": "none", "duplicate_window": "30s"},
                            "query_cache": {"warm_cache_on_startup": True, "warm_cache_queries": warm}})
    out = io.StringIO()
    svc = Service(cfg, port=0, data_dir=str(tmp_path / "svc"), status_interval=0, out=out)
    rs = RunningService(svc).start()
    try:
        text = out.getvalue()
        assert "updated: duplicate_window = 30.0, compression = none" in text, text
        assert "'get_recent_nodes' is not a cached query" in text and "'summary" in text, text
        info = run(_stream_config(svc.url))
        assert info.compression == "none" and info.duplicate_window == 30
        st = request(svc.url, "query.graph.stats")
        assert st["version"] == 44 and st["cache_warmed"] == 4  # graphs x2 (no body, {}), limit 3, box
        hits = st["cache_hits"]
        box_req = b'{"lo": [-1e9, -1e9, -1e9], "hi": [1e9, 1e9, 1e9], "limit": 5}'
        got = request_raw(svc.url, "query.graph.graphs", b'{"limit": 3}').data
        box = request_raw(svc.url, "query.graph.nodes_in_box", box_req).data
        assert request(svc.url, "query.graph.stats")["cache_hits"] == hits + 2
        svc.cache.enabled = False  # the same requests answered afresh
        assert request_raw(svc.url, "query.graph.graphs", b'{"limit": 3}').data == got
        assert request_raw(svc.url, "query.graph.nodes_in_box", box_req).data == box
        reply = json.loads(got)
        assert reply["total"] == 8 and len(reply["graphs"]) == 3 and len(json.loads(box)["nodes"]) == 5
    finally:
        rs.stop()


async def _stream_config(url):
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info("CIM_GRAPH_EVENTS")).config
    finally:
        await nc.close()


def test_lean_queries_only_with_the_micro_internals_they_use(nats_server, service):
    """The lean connection borrows nats-py's micro endpoints (2.16 internals): with this
    nats-py they are there (and the service uses them); anything else keeps queries on
    nats-py instead of failing at start."""
    from cim_flow._service_queries import _micro_internals_known

    assert _micro_internals_known(service.svc) and service.qraw is not None
    assert not _micro_internals_known(type("Svc", (), {"_endpoints": [object()]})())
    assert not _micro_internals_known(object())



def test_queries_stay_on_nats_py_without_those_internals(tmp_path, monkeypatch):
    """A nats-py whose micro internals differ (stood in for by the check saying so): the
    service starts, says why, keeps no lean query connection, and nats-py answers."""
    import io

    import cim_flow._service_queries as queries_mod
    import cim_flow.service as service_mod
    from cim_flow._config import Config
    from conftest import RunningService

    monkeypatch.setattr(queries_mod, "_micro_internals_known", lambda svc: False)
    out = io.StringIO()
    svc = service_mod.Service(Config.from_dict({}), port=0, data_dir=str(tmp_path / "svc"), status_interval=0,
                              out=out)
    rs = RunningService(svc).start()
    try:
        assert svc.qraw is None and "queries stay on nats-py" in out.getvalue()
        assert all(ep._subscription is not None for ep in svc._query_endpoints())
        reply = request(svc.url, "query.graph.graphs", {})
        assert reply["total"] == 0 and reply["version"] == 0
        assert request(svc.url, "query.graph.stats")["queries"] >= 1
    finally:
        rs.stop()


def test_adaptive_batch_size_moves_between_min_and_max():
    """Batches that close full grow the size (up to max_batch_size); batches that close on
    the timeout while p99 is over target_latency shrink it (down to min_batch_size), at
    most once per p99 reading; p99 under target leaves it; adaptive off never moves it."""
    from cim_flow._config import Config
    from cim_flow.service import Service

    def service(adaptive=True):
        cfg = Config.from_dict({"event_processing": {"batch_size": 100, "min_batch_size": 10, "max_batch_size": 400,
                                                     "target_latency": "5ms", "enable_adaptive_batching": adaptive}})
        return Service(cfg, status_interval=0)

    svc = service()
    svc._closed_full = True
    sizes = []
    for _ in range(6):
        svc._adapt()
        sizes.append(svc.batch_size)
    assert sizes[0] == 151 and sizes == sorted(sizes) and sizes[-1] == 400
    svc._closed_full = False
    svc.latency.add(np.full(100, 0.020))  # p99 20 ms, over the 5 ms target
    svc._adapt_t = 0.0
    svc._adapt()
    assert svc.batch_size == 380
    svc._adapt()  # the same reading: not again until the next one
    assert svc.batch_size == 380
    for _ in range(200):
        svc._adapt_t = 0.0
        svc._adapt()
    assert svc.batch_size == 10
    svc.latency.add(np.full(4096, 0.001))  # p99 1 ms: under target, the size stays
    svc._adapt_t = 0.0
    svc._adapt()
    assert svc.batch_size == 10
    off = service(adaptive=False)
    off._closed_full = True
    off._adapt()
    assert off.batch_size == 100


def test_a_stream_on_someone_elses_server_keeps_its_settings(tmp_path):
    """With --nats-url the stream belongs to that server's owner: a config whose duplicate
    window or compression differs is reported, and the stream is left as it is."""
    import io

    from cim_flow._config import Config
    from cim_flow._natsserver import NatsServer
    from cim_flow.service import Service
    from conftest import RunningService
    from nats.js.api import StreamConfig

    async def create(url):
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name="CIM_GRAPH_EVENTS", subjects=["event.graph.>"],
                                                         duplicate_window=600))
        finally:
            await nc.close()

    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    try:
        run(create(srv.url))
        out = io.StringIO()
        cfg = Config.from_dict({"jetstream": {"duplicate_window": "30s", "compression": "s2"}})
        rs = RunningService(Service(cfg, nats_url=srv.url, data_dir=str(tmp_path / "svc"), status_interval=0,
                                    out=out)).start()
        try:
            assert "kept as it is; it differs from the config in duplicate_window (config 30.0), compression " \
                   "(config s2)" in out.getvalue(), out.getvalue()
            info = run(_stream_config(srv.url))
            assert info.duplicate_window == 600 and info.compression == "none"
        finally:
            rs.stop()
    finally:
        srv.stop()


@pytest.mark.parametrize("pull_max_bytes,cut_off", [("2MiB", False), ("4GiB", True)])
def test_big_arrow_messages_and_a_consumer_cut_off(tmp_path, pull_max_bytes, cut_off):
    """A pull request asks for at most ``pull_max_bytes``: a stream of big Arrow batch
    messages is taken in pieces the server's max_pending allows.  Without the bound the
    two open pull requests (16,384 messages each) let the server queue everything for the
    consumer at once; past max_pending it cut the connection off as a slow consumer and
    every cut cost a reconnect and a consumer reset (seen at 1M events/s in 1 MB messages).

    With the bound lifted on purpose (4 GiB) the server cuts the consumer off again and
    again, and still no event may be lost: the open pull requests kept delivering after a
    cut, the reconnected reader got the tail of a run whose head went down with the old
    connection, and acknowledging it (AckAll) skipped the head for good (1 run in 3 lost
    11-13 of 24 messages before deliveries were read on a fresh inbox per consumer reset)."""
    from nats.js.api import StorageType, StreamConfig

    from cim_flow._config import Config
    from cim_flow._natsserver import NatsServer
    from cim_flow.service import Service
    from conftest import RunningService

    conf = tmp_path / "pending.conf"
    conf.write_text("max_pending: 6MB\nmax_payload: 1MB\n")
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js"), args=("-c", str(conf))).start()
    rs = None
    try:
        g = str(uuid.uuid4())
        rng = random.Random(4)
        messages = []
        for m in range(24):  # 24 x ~0.5 MB, all in the stream before the service starts
            payloads = [json.dumps({"type": "NodeAdded", "graph_id": g, "node_id": str(uuid.uuid4()),
                                    "position": [rng.random(), rng.random(), rng.random()],
                                    "occurred_at": T0 + i}).encode() for i in range(3000)]
            if m == 0:
                payloads[0] = json.dumps({"type": "GraphCreated", "graph_id": g, "occurred_at": T0}).encode()
            batch, _ = decode_json(payloads)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as w:
                w.write_batch(batch)
            messages.append(("event.graph.batch", sink.getvalue().to_pybytes(), None))
        assert sum(len(d) for _, d, _ in messages) > 2 * 6_000_000

        async def fill():
            nc = await nats.connect(srv.url)
            await nc.jetstream().add_stream(StreamConfig(name="CIM_GRAPH_EVENTS", subjects=["event.graph.>"],
                                                         storage=StorageType.FILE))
            await nc.close()

        run(fill())
        seq = js_publish(srv.url, messages)
        cfg = Config.from_dict({"jetstream": {"pull_max_bytes": pull_max_bytes}})
        svc = Service(cfg, nats_url=srv.url, data_dir=str(tmp_path / "svc"), status_interval=0)
        rs = RunningService(svc).start()
        stats = request(srv.url, "query.graph.stats", {"min_version": seq, "timeout_ms": 60000}, timeout=75)
        assert stats["version"] == seq
        assert (stats["nodes"], stats["events_applied"], stats["events_ignored"]) == (24 * 3000 - 1, 24 * 3000, 0), stats
        slow = [line for line in srv.log if "Slow Consumer" in line]
        if cut_off:
            assert slow and stats["consumer_resets"] >= 1, (stats, list(srv.log)[-5:])
        else:
            assert not slow and stats["consumer_resets"] == 0, (stats, slow[:3])
    finally:
        if rs is not None:
            rs.stop()
        srv.stop()


def test_a_batch_closes_at_batch_size_or_batch_timeout(tmp_path):
    """batch_size 50, batch_timeout 2 s (adaptive batching off), core NATS: 50 events are
    applied at once, in one batch, well before the timeout; 10 events wait in the open
    batch (nothing applied after 0.8 s) and are applied together when the timeout ends."""
    from cim_flow._config import Config
    from cim_flow._natsserver import NatsServer
    from cim_flow.service import Service
    from conftest import RunningService

    srv = NatsServer(port=0, jetstream=False).start()  # its own: no stream captures these events
    cfg = Config.from_dict({"event_processing": {"batch_size": 50, "batch_timeout": "2s",
                                                 "enable_adaptive_batching": False}})
    svc = Service(cfg, nats_url=srv.url, data_dir=str(tmp_path / "svc"), jetstream=False, status_interval=0)
    rs = RunningService(svc).start()
    url = srv.url

    def events(n):
        g = str(uuid.uuid4())
        return [json.dumps({"type": "GraphCreated", "graph_id": g, "occurred_at": T0}).encode()] + [
            json.dumps({"type": "NodeAdded", "graph_id": g, "node_id": str(uuid.uuid4()),
                        "position": [i, 0, 0], "occurred_at": T0}).encode() for i in range(n - 1)]

    async def publish(payloads):
        nc = await nats.connect(url)
        for p in payloads:
            await nc.publish("event.graph.any", p)
        await nc.flush()
        await nc.close()

    try:
        t0 = time.monotonic()
        run(publish(events(50)))
        s = request(url, "query.graph.stats", {"min_version": 50, "timeout_ms": 10_000})
        full = time.monotonic() - t0
        assert s["events_applied"] == 50 and s["batches"] == 1
        assert full < 1.5, f"a full batch waited {full:.2f} s"
        run(publish(events(10)))
        time.sleep(0.8)
        assert request(url, "query.graph.stats")["events_applied"] == 50  # still open
        s = request(url, "query.graph.stats", {"min_version": 60, "timeout_ms": 10_000})
        assert s["events_applied"] == 60 and s["batches"] == 2
    finally:
        rs.stop()
        srv.stop()


def test_warm_up_is_quiet_when_cached_and_says_what_it_does_when_not():
    """A start quicker than the threshold says nothing; a slower one (here: made to look
    slow at once) says it is compiling, then that it is done; every step is counted."""
    import io

    from cim_flow.service import WarmProgress, warm_kernels

    class Quick(WarmProgress):
        _QUIET = 3600.0  # (a warm start takes ~1 s; on a loaded machine it could pass 2 s)

    quiet = Quick(io.StringIO())
    warm_kernels(quiet)
    quiet.close()
    assert quiet.done == WarmProgress.STEPS and quiet.out.getvalue() == ""

    class Slow(WarmProgress):
        _QUIET = 0.0  # as if each step compiled

    slow = Slow(io.StringIO())
    warm_kernels(slow)
    slow.close()
    out = slow.out.getvalue()
    assert slow.done == WarmProgress.STEPS
    assert out.startswith("cim_flow: compiling kernels (first start here") and "kernels compiled in" in out


_FUZZ_SUBJECTS = ["summary", "get_graph", "graphs", "graphs_by_date", "graphs_by_node_count", "stats",
                  "nodes_in_radius", "knn", "nodes_in_box", "find_nodes", "find_edges", "neighbors"]
_FUZZ_KEYS = ["graph_id", "center", "centers", "radius", "k", "lo", "hi", "limit", "offset", "with_distance",
              "sort", "min_version", "timeout_ms", "name", "created_between", "node_count_between",
              "top_by_node_count", "node_id", "node_type", "edge_type"]


_FUZZ_NUMERIC = {"radius", "k", "limit", "offset", "min_version", "timeout_ms", "top_by_node_count"}
_FUZZ_EXTREMES = [2**63, 2**63 - 1, -2**63 - 1, 2**64, 10**30, 1e308, -1e308, 1e19, 5e-324]


def _fuzz_value(rnd, depth=0):
    c = rnd.randrange(14)
    if c == 0:
        return None
    if c == 1:
        return rnd.choice([True, False])
    if c == 2:
        return rnd.randint(-10**20, 10**20)
    if c == 3:
        return rnd.choice([0, 1, -1, 3, 2**63, 2**64, 1e308, -0.0, 0.5])
    if c == 4:
        return rnd.uniform(-1e6, 1e6)
    if c == 5:
        return rnd.choice(["", "x", str(uuid.UUID(int=7)), "NaN", "2024-01-01T00:00:00Z", "\u0000", "a" * 3000])
    if c == 6 and depth < 3:
        return [_fuzz_value(rnd, depth + 1) for _ in range(rnd.randrange(5))]
    if c == 7 and depth < 3:
        return {rnd.choice(_FUZZ_KEYS): _fuzz_value(rnd, depth + 1) for _ in range(rnd.randrange(4))}
    if c == 8:
        return [rnd.uniform(-100, 100) for _ in range(3)]
    if c == 9:
        return [[rnd.uniform(-100, 100) for _ in range(3)] for _ in range(rnd.randrange(4))]
    if c == 10:
        return rnd.uniform(0, 50)
    if c == 11:
        return rnd.randint(1, 50)
    if c == 12:
        return ["2024-01-01T00:00:00Z", "2030-01-01T00:00:00Z"]
    return [rnd.randint(0, 100), rnd.randint(0, 100)]


def test_fuzzed_requests_get_answers_or_clear_errors(nats_server, service):
    """Random JSON bodies (wrong types, huge numbers, nested junk, unreachable
    min_versions) on every query subject: each gets a reply, with ``version``, that is
    an answer or an ``{"error": {"code", "message"}}`` other than ``internal``; the
    service keeps serving.  (A fuzz run found an int64 overflow in offsets, float() of
    a list as timeout_ms, and min_version waits for versions no seq can reach.)"""
    rnd = random.Random(20261129)
    g = str(uuid.uuid4())
    events, _pos = _node_events(g, 10, random.Random(5), "internal")
    last = _publish(nats_server.url, events)

    async def go():
        nc = await nats.connect(nats_server.url)
        problems = []
        try:
            for _ in range(1500):
                subject = "query.graph." + rnd.choice(_FUZZ_SUBJECTS)
                if rnd.random() < 0.1:
                    data = rnd.choice([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"radius": NaN}', b"1e999",
                                       b'{"center": [1, 2, 3], "radius": Infinity}'])
                else:
                    body = {}
                    for _ in range(rnd.randrange(6)):
                        key = rnd.choice(_FUZZ_KEYS)
                        body[key] = (rnd.choice(_FUZZ_EXTREMES) if key in _FUZZ_NUMERIC and rnd.random() < 0.3
                                     else _fuzz_value(rnd))
                    t = body.get("timeout_ms")
                    if "min_version" in body and (t is None or isinstance(t, (int, float)) and not 0 <= t <= 20):
                        body["timeout_ms"] = 20  # a wait, not a stall of the run (other junk stays)
                    data = json.dumps(body).encode()
                r = msgspec.json.decode((await nc.request(subject, data, timeout=10)).data)
                err = r.get("error")
                if "version" not in r or (err is not None and (
                        not isinstance(err, dict) or err.get("code") == "internal" or not err.get("message"))):
                    problems.append((subject, data[:200], r))
            return problems, msgspec.json.decode((await nc.request("query.graph.summary", json.dumps(
                {"graph_id": g, "min_version": last}).encode(), timeout=10)).data)
        finally:
            await nc.close()

    problems, summary = run(go())
    assert problems == []
    assert summary["node_count"] == 10


def test_parallel_warm_up_is_opt_out(monkeypatch):
    import os

    from cim_flow import service

    monkeypatch.setenv("CIM_FLOW_WARM_PARALLEL", "0")
    assert service._spawn_warm_helper() is None
    monkeypatch.setenv("CIM_FLOW_WARM_PARALLEL", "1")
    assert service._parallel_warm_ok() == (len(os.sched_getaffinity(0)) >= 2)


@pytest.mark.slow
def test_the_warm_up_helper_leaves_nothing_to_compile(tmp_path):
    """From an empty numba cache: warm_kernels with its helper process, then a fresh
    process's warm-up compiles nothing (the helper's kernels were cached, and none was
    lost to the two processes writing one cache)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), CIM_FLOW_WARM_PARALLEL="1")
    code = ("import time; from cim_flow.service import warm_kernels; t = time.time(); warm_kernels(); "
            "print(round(time.time() - t))")
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr
    check = ("from numba.core import event\n"
             "seen = []\n"
             "class L(event.Listener):\n"
             "    def on_start(self, ev): seen.append(ev.data['dispatcher'].py_func.__qualname__)\n"
             "    def on_end(self, ev): pass\n"
             "event.register('numba:compile', L())\n"
             "from cim_flow.service import warm_kernels\n"
             "warm_kernels()\n"
             "print(seen)\n")
    second = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "[]", second.stdout


def test_a_message_the_projection_refuses_is_dead_lettered_alone(tmp_path, monkeypatch):
    """A run of messages the projection refuses whole (here: past the limit of distinct
    node types, lowered to 6) is applied again message by message: only the messages
    that bring a type past the limit are dead-lettered, with the reason; the others,
    before and after them, JSON and Arrow, apply (the run used to be lost with a log
    line, or retried for ever)."""
    import cim_flow._projection as proj
    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService

    monkeypatch.setattr(proj, "_INT16_MAX", 6)
    cfg = Config.from_dict({"event_processing": {"batch_timeout": "20ms", "batch_size": 1000}})
    svc = Service(cfg, port=0, data_dir=str(tmp_path / "svc"), status_interval=0)
    rs = RunningService(svc).start()
    try:
        url = svc.url
        g = str(uuid.uuid4())
        nids = [str(uuid.UUID(int=500 + i)) for i in range(10)]
        items = [("event.graph.x", json.dumps({"type": "GraphCreated", "graph_id": g, "occurred_at": T0}).encode())]
        items += [("event.graph.x", json.dumps({"type": "NodeAdded", "graph_id": g, "node_id": n, "node_type": f"T{i}",
                                                "position": [i, 0, 0], "occurred_at": T0}).encode())
                  for i, n in enumerate(nids)]
        items.append(("event.graph.x", json.dumps({"type": "NodeMoved", "graph_id": g, "node_id": nids[0],
                                                   "position": [0, 5, 0], "occurred_at": T0}).encode()))

        def arrow_message(types, first):
            rows = [dict(event_type=10, graph_id=uuid.UUID(g).bytes, occurred_at=T0 * 1000,
                         node_id=uuid.UUID(int=first + k).bytes, node_type=t, x=0.0, y=0.0, z=float(k))
                    for k, t in enumerate(types)]
            names = {k for r in rows for k in r}
            table = pa.Table.from_pylist(rows, schema=pa.schema([f for f in EVENT_SCHEMA if f.name in names]))
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
            return ("event.graph.batch", sink.getvalue().to_pybytes())

        items += [arrow_message(["T0", "Z"], 900), arrow_message(["T1", "T2"], 950)]

        async def go():
            nc = await nats.connect(url)
            sub = await nc.subscribe("dlq.graph")
            await nc.flush()
            js = nc.jetstream()
            for subject, data in items:
                await js.publish(subject, data, headers={"Nats-Msg-Id": str(uuid.uuid4())})
            dead = [await sub.next_msg(timeout=10) for _ in range(5)]
            await nc.close()
            return dead

        dead = run(go())
        stats = request(url, "query.graph.stats", {"min_version": len(items)})
        refused = "refused by the projection: more than 6 distinct node/edge types"
        assert [d.headers["Cim-Error"] for d in dead] == [refused] * 5
        assert [json.loads(d.data)["node_type"] for d in dead[:4]] == ["T6", "T7", "T8", "T9"]
        assert dead[4].headers["Cim-Subject"] == "event.graph.batch" and dead[4].data == items[-2][1]
        assert stats["events_dead_lettered"] == 4 + 2 and stats["version"] == len(items)
        nodes = {r["node_id"]: r for r in request(url, "query.graph.find_nodes", {"graph_id": g})["nodes"]}
        assert set(nodes) == set(nids[:6]) | {str(uuid.UUID(int=950 + k)) for k in range(2)}
        assert [nodes[nids[0]][c] for c in ("x", "y", "z")] == [0.0, 5.0, 0.0]
    finally:
        rs.stop()


def test_messages_of_a_run_that_fails_are_dead_lettered_not_dropped(tmp_path):
    """An apply that fails for another reason than a refusal (a bug; here one injected)
    used to drop its run with a log line: the consumer acknowledges everything up to the
    next batch's last message. Its messages now go to dlq.graph with the error, and the
    service goes on applying what follows."""
    import io

    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService

    out = io.StringIO()
    svc = Service(Config.from_dict({}), port=0, data_dir=str(tmp_path / "svc"), status_interval=0, out=out)
    rs = RunningService(svc).start()
    fail = {"on": False}
    real = svc.engine._apply_columns

    def flaky(cols):
        if fail["on"]:
            raise RuntimeError("injected")
        return real(cols)

    svc.engine._apply_columns = flaky
    try:
        url = svc.url
        g = str(uuid.uuid4())

        def node(i):
            return ("event.graph.x", json.dumps({"type": "NodeAdded", "graph_id": g, "node_id": str(uuid.UUID(int=i)),
                                                 "position": [i, 0, 0], "occurred_at": T0}).encode())

        async def go():
            nc = await nats.connect(url)
            sub = await nc.subscribe("dlq.graph")
            await nc.flush()
            js = nc.jetstream()
            await js.publish("event.graph.x", json.dumps({"type": "GraphCreated", "graph_id": g,
                                                          "occurred_at": T0}).encode())
            a = await js.publish(*node(1))
            await nc.request("query.graph.stats", msgspec.json.encode({"min_version": a.seq}), timeout=10)
            fail["on"] = True
            bad = [await js.publish(*node(i)) for i in (2, 3)]
            dead = [await sub.next_msg(timeout=10) for _ in bad]
            fail["on"] = False
            c = await js.publish(*node(4))
            await nc.request("query.graph.stats", msgspec.json.encode({"min_version": c.seq}), timeout=10)
            await nc.close()
            return dead, [x.seq for x in bad]

        dead, seqs = run(go())
        assert [int(d.headers["Cim-Seq"]) for d in dead] == seqs
        assert all(d.headers["Cim-Error"] == "failed while applying (it may be partly applied): RuntimeError: injected"
                   for d in dead)
        assert [json.loads(d.data)["node_id"] for d in dead] == [str(uuid.UUID(int=i)) for i in (2, 3)]
        assert "RuntimeError: injected" in out.getvalue()
        nodes = request(url, "query.graph.find_nodes", {"graph_id": g})["nodes"]
        assert sorted(n["node_id"] for n in nodes) == [str(uuid.UUID(int=i)) for i in (1, 4)]
        assert request(url, "query.graph.stats")["events_dead_lettered"] == 2
    finally:
        rs.stop()
