"""cim_flow.Client against a real service on a real nats-server: events published
through it land exactly once and are read back (read-your-writes through the sequence a
publish returns); its query answers equal the reference projection and brute force."""
import asyncio
import json
import math
import random
import uuid

import numpy as np
import pyarrow as pa
import pytest

import nats
from cim_flow import EVENT_SCHEMA, Client, EventType, ServiceError, SyncClient, decode_json
from cim_flow.client import reply_meta
from natsutil import run
from reference import RefProjection, brute_knn, brute_radius, reference_rows


def _events(rng, gid, n_nodes=60, n_edges=40):
    """One graph's events in the service's wire forms: ids as text, positions in a cube."""
    g = str(gid)
    out = [{"type": "GraphCreated", "graph_id": g, "name": "client-test", "occurred_at": "2024-05-01T12:00:00Z"}]
    nodes = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n_nodes)]
    for i, n in enumerate(nodes):
        p = [rng.uniform(0, 10), rng.uniform(0, 10), rng.uniform(0, 10)]
        if i % 2:
            out.append({"NodeAdded": {"graph_id": {"id": g}, "node_id": n, "position": p, "timestamp": 1714564800000 + i}})
        else:
            out.append({"type": "NodeAdded", "graph_id": g, "node_id": n,
                        "position": dict(zip("xyz", p)), "occurred_at": "2024-05-01T12:00:01Z"})
    for _ in range(n_edges):
        out.append({"type": "EdgeAdded", "graph_id": g, "edge_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "source": rng.choice(nodes), "target": rng.choice(nodes), "occurred_at": "2024-05-01T12:00:02Z"})
    for n in rng.sample(nodes, 5):
        out.append({"event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "event_type": "NodeMoved",
                    "aggregate_id": g, "timestamp": "2024-05-01T12:00:03Z",
                    "payload": {"node_id": n, "new_position": [rng.uniform(0, 10) for _ in range(3)]}})
    return out


def _reference(events) -> RefProjection:
    batch, errors = decode_json([json.dumps(e).encode() for e in events], received_at=0)
    assert not errors
    ref = RefProjection()
    ref.apply(reference_rows(batch))
    return ref


def test_published_events_are_read_back_exactly(service):
    rng = random.Random(5)
    gid = uuid.UUID(int=rng.getrandbits(128), version=4)
    events = _events(rng, gid)
    ref = _reference(events)
    pts = ref.positioned_nodes()
    coords = [p for _, _, p in pts]
    keys = sorted((g, n) for g, n, _ in pts)

    async def go():
        async with await Client.connect(service.url) as client:
            seq = await client.publish_many(events)
            summary = await client.graph_summary(gid, min_version=seq)
            centers = np.array([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
            within = await client.nodes_within(centers, 3.0, graph_id=gid, return_distance=True, sort=True,
                                               min_version=seq)
            per_center = await client.nodes_within(centers, [3.0, 1.5], graph_id=gid)
            near = await client.nearest(centers[0], 7, graph_id=gid)
            box = await client.nodes_in_box([0, 0, 0], [5, 5, 5], graph_id=gid)
            nodes = await client.find_nodes(gid, limit=1000)
            edges = await client.find_edges(gid, limit=1000)
            some = keys[0]
            nb = await client.neighbors(some[1], graph_id=gid)
            graphs = await client.graphs(name="client-test")
            stats = await client.stats()
            return seq, summary, within, near, box, nodes, edges, nb, graphs, stats, some, per_center

    seq, summary, within, near, box, nodes, edges, nb, graphs, stats, some, per_center = run(go())
    assert seq > 0 and stats["version"] >= seq
    want = ref.summaries()[gid.bytes]
    assert summary["graph_id"] == str(gid) and summary["name"] == "client-test"
    assert (summary["node_count"], summary["edge_count"]) == (want["node_count"], want["edge_count"])

    # radius: exactly the brute-force set per center, nearest first, full counts in the metadata
    meta = reply_meta(within)
    assert meta["version"] >= seq
    q = within.column("query").to_numpy()
    rows = list(zip(within.column("graph_id").to_pylist(), within.column("node_id").to_pylist()))
    for j, c in enumerate([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0]]):
        got = {rows[i] for i in np.flatnonzero(q == j)}
        assert got == {(pts[i][0], pts[i][1]) for i in brute_radius(coords, c, 3.0)}
        assert np.all(np.diff(within.column("distance").to_numpy()[q == j]) >= 0)
        assert meta["counts"][j] == len(got) > 0
    # one radius per center: each center's own radius
    q = per_center.column("query").to_numpy()
    rows = list(zip(per_center.column("graph_id").to_pylist(), per_center.column("node_id").to_pylist()))
    for j, (c, r) in enumerate([([5.0, 5.0, 5.0], 3.0), ([1.0, 2.0, 3.0], 1.5)]):
        assert {rows[i] for i in np.flatnonzero(q == j)} == {(pts[i][0], pts[i][1]) for i in brute_radius(coords, c, r)}
    np.testing.assert_allclose(near.column("distance").to_numpy(), brute_knn(coords, [5.0, 5.0, 5.0], 7), atol=1e-12)
    in_box = {(g, n) for g, n, p in pts if all(0 <= v <= 5 for v in p)}
    assert set(zip(box.column("graph_id").to_pylist(), box.column("node_id").to_pylist())) == in_box
    assert in_box and nb.num_rows > 0
    assert nodes.num_rows == want["node_count"] and reply_meta(nodes)["total"] == nodes.num_rows
    assert set(nodes.column("node_id").to_pylist()) == {n for g, n in ref.nodes}
    assert edges.num_rows == want["edge_count"]
    # neighbors: what the engine in the service answers, through the Arrow reply
    assert nb.equals(service.engine.neighbors(some[1], graph_id=gid).select(nb.column_names))
    assert str(gid) in [str(uuid.UUID(bytes=b)) for b in graphs.column("graph_id").to_pylist()]


def test_publish_is_idempotent_and_bad_events_send_nothing(service):
    rng = random.Random(6)
    gid = uuid.UUID(int=rng.getrandbits(128), version=4)
    created = {"type": "GraphCreated", "event_id": str(uuid.uuid4()), "graph_id": str(gid),
               "occurred_at": "2024-05-01T12:00:00Z"}
    node = {"type": "NodeAdded", "event_id": str(uuid.uuid4()), "graph_id": str(gid), "node_id": str(uuid.uuid4()),
            "position": [1, 2, 3], "occurred_at": "2024-05-01T12:00:01Z"}

    async def last_seq(nc):
        return (await nc.jetstream().stream_info("CIM_GRAPH_EVENTS")).state.last_seq

    async def go():
        nc = await nats.connect(service.url)
        client = Client(nc)
        a = await client.publish(created)
        b = await client.publish(node)
        again = await client.publish(node)  # the same event id: JetStream keeps the first
        before = await last_seq(nc)
        with pytest.raises(ValueError, match=r"#1: .*position must be 3 finite numbers"):
            await client.publish_many([node, dict(node, position=[1, 2])])
        after = await last_seq(nc)
        summary = await client.graph_summary(gid, min_version=b)
        missing = await client.graph_summary(uuid.uuid4())
        with pytest.raises(ServiceError) as err:
            await client.nodes_within([0, 0, 0], -1.0)
        await client.close()  # a wrapped connection stays open
        assert nc.is_connected
        await nc.close()
        return a, b, again, before, after, summary, missing, err.value

    a, b, again, before, after, summary, missing, err = run(go())
    assert a < b and again == b and before == after
    assert summary["node_count"] == 1
    assert missing is None
    assert err.code == "bad_request" and "radius" in err.message


def test_publish_batch_splits_what_one_message_cannot_carry(service):
    rng = np.random.default_rng(7)
    gid = uuid.uuid4()
    n = 20_000  # ~1.3 MB of Arrow: more than the server's 1 MB max_payload
    ids = rng.integers(0, 2**63, (n, 2), dtype=np.int64).view(np.uint8).reshape(n, 16)
    cols = {
        "event_type": pa.array([EventType.GraphCreated] + [EventType.NodeAdded] * (n - 1), pa.int8()),
        "occurred_at": pa.array(np.full(n, 1_714_564_800_000_000), pa.int64()).cast(
            EVENT_SCHEMA.field("occurred_at").type),
        "graph_id": pa.array([gid.bytes] * n, pa.binary(16)),
        "node_id": pa.array([None] + [bytes(r) for r in ids[1:]], pa.binary(16)),
        "x": pa.array(rng.uniform(0, 1, n)), "y": pa.array(rng.uniform(0, 1, n)), "z": pa.array(rng.uniform(0, 1, n)),
    }
    batch = pa.RecordBatch.from_pydict(cols)

    async def go():
        async with await Client.connect(service.url) as client:
            assert client.nc.max_payload < 2_000_000
            first = (await client.js.stream_info("CIM_GRAPH_EVENTS")).state.last_seq
            seq = await client.publish_batch(batch)
            return first, seq, await client.graph_summary(gid, min_version=seq)

    first, seq, summary = run(go())
    assert seq - first >= 2  # in parts
    assert summary["node_count"] == n - 1


def test_client_arguments_are_checked_before_sending():
    async def go():
        client = Client.__new__(Client)
        with pytest.raises(ValueError, match="shape"):
            await Client.nodes_within(client, [[1, 2]], 1.0)
        with pytest.raises(ValueError, match="time"):
            await Client.graphs(client, created_between=[1.5, math.pi])
        with pytest.raises(ValueError, match="one per center"):
            await Client.nodes_within(client, [[1, 2, 3], [4, 5, 6]], [1.0, 2.0, 3.0])
        with pytest.raises(ValueError, match="one per center"):
            await Client.nodes_within(client, [1, 2, 3], [1.0, 2.0])
        with pytest.raises(ValueError, match="2 subjects for 1 events"):
            await Client.publish_many(client, [{"type": "GraphCreated"}], subjects=["a", "b"])

    asyncio.run(go())


def test_sync_client_blocks_and_gives_the_same_answers(service):
    """SyncClient: the same methods without an event loop (its own, on a thread)."""
    rng = random.Random(8)
    gid = uuid.UUID(int=rng.getrandbits(128), version=4)
    events = _events(rng, gid, n_nodes=30, n_edges=10)
    with SyncClient(service.url) as client:
        seq = client.publish_many(events)
        t = client.nodes_within([5.0, 5.0, 5.0], 4.0, graph_id=gid, min_version=seq)
        near = client.nearest([5.0, 5.0, 5.0], 3, graph_id=gid)
        assert client.graph_summary(gid)["node_count"] == 30
        with pytest.raises(ServiceError):
            client.nearest([0, 0, 0], 0)
        thread = client._thread
    assert not thread.is_alive()
    pts = _reference(events).positioned_nodes()
    coords = [p for _, _, p in pts]
    assert set(t.column("node_id").to_pylist()) == {pts[i][1] for i in brute_radius(coords, [5.0, 5.0, 5.0], 4.0)}
    np.testing.assert_allclose(near.column("distance").to_numpy(), brute_knn(coords, [5.0, 5.0, 5.0], 3), atol=1e-12)
    assert SyncClient.nodes_within.__doc__ == Client.nodes_within.__doc__


def _follow(updates_next, until_version):
    """Updates read until one reaches ``until_version``: the last summary seen per graph
    (what the updates say the graphs now are) and every id listed as deleted."""
    last, deleted, versions = {}, set(), []
    while not versions or versions[-1] < until_version:
        u = updates_next()
        assert set(u) >= {"version", "events_total", "graphs", "deleted"}
        versions.append(u["version"])
        for s in u["graphs"]:
            last[s["graph_id"]] = s
        deleted.update(u["deleted"])
    assert versions == sorted(versions)  # batches are applied, and announced, in order
    return last, deleted


def test_updates_follow_every_applied_batch(service):
    """Client.updates: after a publish, the updates up to its sequence carry each touched
    graph's summary as the reference projection has it, and a deleted graph's id."""
    rng = random.Random(12)
    gid, gone = (uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(2))
    events = _events(rng, gid) + [{"type": "GraphCreated", "graph_id": str(gone), "name": "short-lived"},
                                  {"type": "GraphDeleted", "graph_id": str(gone)}]
    want = _reference(events).summaries()[gid.bytes]

    async def main():
        async with await Client.connect(service.url) as client:
            async with await client.updates() as updates:
                seq = await client.publish_many(events)
                items = []
                while not items or items[-1]["version"] < seq:
                    items.append(await updates.next(timeout=10))
                return seq, items

    async def closed_in_either_order():
        client = await Client.connect(service.url)
        updates = await client.updates()
        await client.close()
        await updates.close()  # after its connection: nothing to do, no error

    async def durable_without_a_results_stream():
        async with await Client.connect(service.url) as client:
            with pytest.raises(ServiceError, match="results_stream") as err:
                await client.updates(durable="reader")
            assert err.value.code == "not_found"

    run(closed_in_either_order())
    run(durable_without_a_results_stream())
    seq, items = run(main())
    it = iter(items)
    last, deleted = _follow(lambda: next(it), seq)
    s = last[str(gid)]
    assert (s["name"], s["node_count"], s["edge_count"]) == ("client-test", want["node_count"], want["edge_count"])
    assert str(gone) in deleted

    # the same through SyncClient, blocking
    rng2 = random.Random(13)
    g2 = uuid.UUID(int=rng2.getrandbits(128), version=4)
    events2 = _events(rng2, g2, n_nodes=20, n_edges=5)
    with SyncClient(service.url) as client, client.updates() as updates:
        seq2 = client.publish_many(events2)
        last, _ = _follow(lambda: updates.next(timeout=10), seq2)
        with pytest.raises(TimeoutError):
            updates.next(timeout=0.2)  # nothing more was published
    assert last[str(g2)]["node_count"] == _reference(events2).summaries()[g2.bytes]["node_count"]
