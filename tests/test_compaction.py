"""Compaction: removed nodes and edges, deleted graphs and unused names and types are
dropped and the live ones renumbered (by the engine on its own, in the service once a
batch's update is out, and on request); nothing a query or a later event sees may change."""
import random
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cim_flow import EVENT_SCHEMA, Engine
from reference import RefProjection, brute_box, brute_knn, brute_radius
from streams import random_rows, rows_to_batch
from test_projection import check_same


def _clean(v):
    return None if isinstance(v, float) and v != v else v


def _node_rows(eng):
    """Every live node as a sorted list of rows (NaN as None): node numbers, and so the
    listing order of nodes re-added after a compaction, may differ."""
    return sorted(tuple(_clean(v) for v in r.values()) for r in eng.find_nodes(limit=10**9).to_pylist())


def _neighbor_rows(eng, node_id, graph_id):
    return sorted(tuple(_clean(v) for v in r.values())
                  for r in eng.neighbors(node_id, graph_id=graph_id).to_pylist())


def _spatial_check(eng, ref, rng):
    """Radius, kNN and box answers against brute force over the reference's nodes."""
    pts = ref.positioned_nodes()
    keys = [(g, n) for g, n, _ in pts]
    coords = np.array([p for _, _, p in pts], dtype=np.float64).reshape(-1, 3)
    centers = np.array([[rng.uniform(-6, 6) for _ in range(3)] for _ in range(4)])
    for r in (0.5, 2.5, 8.0):
        t = eng.nodes_within(centers, r)
        q = t.column("query").to_numpy()
        got = list(zip(t.column("graph_id").to_pylist(), t.column("node_id").to_pylist()))
        for j, c in enumerate(centers):
            want = {keys[i] for i in brute_radius(coords, c, r)}
            assert {got[i] for i in np.flatnonzero(q == j)} == want, (r, j)
    if len(keys):
        t = eng.nearest(centers, 3)
        q, d = t.column("query").to_numpy(), t.column("distance").to_numpy()
        for j, c in enumerate(centers):
            np.testing.assert_allclose(d[q == j], brute_knn(coords, c, 3), atol=1e-12)
    lo, hi = centers[0] - 3.0, centers[0] + 3.0
    t = eng.nodes_in_box(lo, hi)
    got = set(zip(t.column("graph_id").to_pylist(), t.column("node_id").to_pylist()))
    assert got == {keys[i] for i in brute_box(coords, lo, hi)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 500), with_seq=st.booleans(),
       cuts=st.lists(st.integers(0, 500), max_size=8), explicit=st.booleans())
def test_random_streams_with_compaction_match_the_reference_and_an_engine_without(seed, n, with_seq, cuts,
                                                                                 explicit):
    """Hostile streams (re-adds of removed nodes and edges, cascades, graph deletes,
    replays) with the engine compacting on its own (with no floor: whenever a batch
    leaves more removed nodes or edges than live ones) or on request at random cuts: summaries, indices, edges and totals equal the
    reference; nodes, incident edges and outcome counts equal an engine that never
    compacts; spatial answers equal brute force (the index is built before)."""
    rng = random.Random(seed)
    rows = random_rows(rng, n, with_seq=with_seq)
    eng, plain, ref = Engine(capacity=4), Engine(capacity=4), RefProjection()
    plain.compact_min = -1
    if not explicit:
        eng.compact_min = 0
    bounds = sorted({0, n, *[c for c in cuts if c <= n]})
    eng.nodes_within([0, 0, 0], 1.0)  # a spatial index to carry across compactions
    for a, b in zip(bounds, bounds[1:]):
        batch = rows_to_batch(rows[a:b])
        got, want = eng.apply(batch), plain.apply(batch)
        assert (got.applied, got.ignored, got.skipped, got.version) == \
               (want.applied, want.ignored, want.skipped, want.version)
        assert got.ignored_rows() == want.ignored_rows()
        ref.apply(rows[a:b])
        if explicit:
            eng.compact()
        check_same(eng, ref)
        assert _node_rows(eng) == _node_rows(plain)
        for g, nid in list(ref.nodes)[:3]:
            assert _neighbor_rows(eng, nid, g) == _neighbor_rows(plain, nid, g)
        _spatial_check(eng, ref, rng)
        if not explicit:  # after a batch, never more removed entries than live ones
            n_dead, e_dead = eng._p.garbage()
            assert n_dead <= eng._p.N.meta[1] and e_dead <= eng._p.E.meta[1]
            assert eng._p.graph_garbage() <= eng._p.G.meta[1]  # (no listener: graphs too)
    assert plain.compactions == 0


def _rows(kind, gid, t, **kw):
    r = {c: None for c in EVENT_SCHEMA.names}
    r.update(event_type=kind, graph_id=gid, occurred_at=t, **kw)
    return r


def test_churn_of_unique_ids_keeps_the_state_bounded():
    """Nodes with unique ids, labels and types, and edges between them, added and then
    removed round after round (as moving entities that come and go): without
    compaction every one of them kept its index, slots and strings for good; with it
    the state stays within a small multiple of what is live, and answers stay exact
    through the compactions (spatial queries in use all along)."""
    rng = random.Random(5)
    g = uuid.UUID(int=1).bytes
    eng, plain, ref = Engine(), Engine(), RefProjection()
    eng.compact_min, plain.compact_min = 300, -1
    t = 1
    first = [_rows(1, g, t, name="churn")]
    for e in (eng, plain):
        e.apply(rows_to_batch(first))
    ref.apply(first)
    prev = []
    per_round = 150
    for rnd in range(40):
        ids = [uuid.UUID(int=(rnd + 1) << 32 | i).bytes for i in range(per_round)]
        rows = [_rows(10, g, t + i, node_id=nid, name=f"n{rnd}-{i}", node_type=f"T{rnd}",
                      x=rng.uniform(-5, 5), y=rng.uniform(-5, 5), z=rng.uniform(-5, 5))
                for i, nid in enumerate(ids)]
        rows += [_rows(20, g, t, edge_id=uuid.UUID(int=(rnd + 1) << 40 | i).bytes, source_id=ids[i],
                       target_id=ids[(i * 7 + 1) % per_round], edge_type=f"E{rnd % 3}") for i in range(per_round)]
        rows += [_rows(13, g, t, node_id=nid) for nid in prev]  # the last round's go, edges with them
        rows += [_rows(12, g, t, node_id=ids[i], x=1.0, y=2.0, z=float(i)) for i in range(0, per_round, 10)]
        t += per_round
        batch = rows_to_batch(rows)
        for e in (eng, plain):
            e.apply(batch)
        ref.apply(rows)
        prev = ids
        if rnd % 5 == 4:
            check_same(eng, ref)
            _spatial_check(eng, ref, rng)
    check_same(eng, ref)
    assert _node_rows(eng) == _node_rows(plain)
    live_nodes, live_edges = eng.totals()["nodes"], eng.totals()["edges"]
    assert (live_nodes, live_edges) == (per_round, per_round)
    N, E = eng._p.N, eng._p.E
    assert eng.compactions >= 5
    # what is held: at most the live entries, one batch's worth and the floor
    assert N.meta[0] <= 2 * live_nodes + per_round + eng.compact_min
    assert E.meta[0] <= 2 * live_edges + per_round + eng.compact_min
    assert len(eng._p.strings) <= 2 * (live_nodes + 1) + per_round + eng.compact_min
    assert eng._p.N.slots.shape[0] < plain._p.N.slots.shape[0]
    # ... where the engine that never compacts holds every node ever added
    assert plain._p.N.meta[0] == 40 * per_round and len(plain._p.strings) == 40 * per_round + 1
    assert len(plain._p.types) > len(eng._p.types)


def test_compact_reports_what_it_dropped_and_answers_stay_the_same(tmp_path):
    """An explicit compact(): counts of what went; a removed node re-added afterwards
    starts afresh as it would have anyway; a snapshot of the compacted engine loads and
    answers the same."""
    g = uuid.UUID(int=7).bytes
    a, b, c = (uuid.UUID(int=i).bytes for i in (11, 12, 13))
    rows = [_rows(1, g, 1, name="g"),
            _rows(10, g, 2, node_id=a, name="keep", node_type="A", x=0.0, y=0.0, z=0.0),
            _rows(10, g, 3, node_id=b, name="gone", node_type="B", x=1.0, y=0.0, z=0.0),
            _rows(10, g, 4, node_id=c, name="back", node_type="C", x=2.0, y=0.0, z=0.0),
            _rows(20, g, 5, edge_id=uuid.UUID(int=21).bytes, source_id=a, target_id=b, edge_type="AB"),
            _rows(20, g, 6, edge_id=uuid.UUID(int=22).bytes, source_id=a, target_id=c, edge_type="AC"),
            _rows(13, g, 7, node_id=b), _rows(13, g, 8, node_id=c)]
    eng = Engine()
    eng.compact_min = -1
    eng.apply(rows_to_batch(rows))
    assert eng._p.garbage() == (2, 2)
    assert eng.compact() == {"nodes": 2, "edges": 2, "strings": 2, "types": 4, "graphs": 0}
    assert eng._p.garbage() == (0, 0)
    assert eng.compact(graphs=False) == {"nodes": 0, "edges": 0, "strings": 0, "types": 0}
    # c comes back: no label, type or position of its first life
    eng.apply(rows_to_batch([_rows(10, g, 9, node_id=c), _rows(13, g, 10, node_id=b)]))
    nodes = {r["node_id"]: r for r in eng.find_nodes().to_pylist()}
    assert nodes[a]["name"] == "keep" and nodes[a]["node_type"] == "A"
    assert nodes[c]["name"] is None and nodes[c]["node_type"] is None and nodes[c]["x"] != nodes[c]["x"]
    assert eng.graph_summary(g)["node_count"] == 2 and eng.graph_summary(g)["edge_count"] == 0
    assert eng.nodes_within([0, 0, 0], 5.0).column("node_id").to_pylist() == [a]
    path = tmp_path / "s.arrow"
    eng.snapshot(path)
    back = Engine.from_snapshot(path)
    assert back.graph_summaries().equals(eng.graph_summaries())
    assert _node_rows(back) == _node_rows(eng)
    assert back.nodes_within([0, 0, 0], 5.0).equals(eng.nodes_within([0, 0, 0], 5.0))
    more = rows_to_batch([_rows(12, g, 11, node_id=c, x=0.5, y=0.0, z=0.0), _rows(11, g, 12, node_id=a, name="b2")])
    assert back.apply(more).applied == eng.apply(more).applied == 2
    assert _node_rows(back) == _node_rows(eng)


@pytest.mark.parametrize("which", ["nodes", "edges"])
def test_apply_compacts_on_its_own_past_the_floor(which):
    """Garbage above ``compact_min`` and above the live count triggers a compaction at
    the end of the batch that left it; below either, none."""
    g = uuid.UUID(int=3).bytes
    eng = Engine()
    eng.compact_min = 50
    n = 120
    ids = [uuid.UUID(int=1000 + i).bytes for i in range(n)]
    rows = [_rows(1, g, 1)] + [_rows(10, g, 2, node_id=i) for i in ids]
    rows += [_rows(20, g, 3, edge_id=uuid.UUID(int=5000 + k).bytes, source_id=ids[k], target_id=ids[k])
             for k in range(n)]
    eng.apply(rows_to_batch(rows))
    if which == "nodes":
        first, rest = ids[:40], ids[40:90]  # 40 removed: under the floor; 90: over it and over the 30 live
        kind, key = 13, "node_id"
    else:
        first, rest = [uuid.UUID(int=5000 + k).bytes for k in range(40)], \
            [uuid.UUID(int=5000 + k).bytes for k in range(40, 90)]
        kind, key = 23, "edge_id"
    eng.apply(rows_to_batch([_rows(kind, g, 4, **{key: i}) for i in first]))
    assert eng.compactions == 0
    eng.apply(rows_to_batch([_rows(kind, g, 5, **{key: i}) for i in rest]))
    assert eng.compactions == 1 and eng._p.garbage() == (0, 0)
    assert eng.totals()["nodes"] == (30 if which == "nodes" else n)
    assert eng.totals()["edges"] == 30


def test_the_service_compacts_graphs_after_publishing_their_deletion(tmp_path):
    """In the service, graphs are compacted only once a batch's update is out: the
    update still names the deleted graphs, stats count the compactions, and queries
    (graph listing, radius with a graph filter) answer exactly afterwards."""
    import io
    import json

    import msgspec

    import nats
    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService
    from natsutil import js_publish, request, run

    out = io.StringIO()
    svc = Service(Config.from_dict({"event_processing": {"batch_timeout": "2ms"}}), port=0,
                  data_dir=str(tmp_path / "svc"), status_interval=0, out=out)
    svc.engine.compact_min = 8
    rs = RunningService(svc).start()
    try:
        url = svc.url
        gids = [str(uuid.UUID(int=100 + i)) for i in range(30)]
        keep = gids[:4]

        def ev(body):
            return ("event.graph.x", json.dumps(body).encode(), {"Nats-Msg-Id": str(uuid.uuid4())})

        items = [ev({"type": "GraphCreated", "graph_id": g, "name": f"g{i}", "occurred_at": 1000 + i})
                 for i, g in enumerate(gids)]
        items += [ev({"type": "NodeAdded", "graph_id": g, "node_id": str(uuid.UUID(int=10_000 + 10 * i + k)),
                      "position": [i, k, 0.0], "occurred_at": 2000}) for i, g in enumerate(gids) for k in range(3)]
        seq = js_publish(url, items)
        assert request(url, "query.graph.stats", {"min_version": seq})["compactions"] == 0

        async def delete_and_watch():
            nc = await nats.connect(url)
            sub = await nc.subscribe("projection.graph.summary.updated")
            await nc.flush()
            js = nc.jetstream()
            for g in gids[4:]:
                await js.publish("event.graph.x", json.dumps(
                    {"type": "GraphDeleted", "graph_id": g, "occurred_at": 3000}).encode(),
                    headers={"Nats-Msg-Id": str(uuid.uuid4())})
            deleted = set()
            while len(deleted) < len(gids) - 4:
                deleted |= set(msgspec.json.decode((await sub.next_msg(timeout=10)).data)["deleted"])
            await nc.close()
            return deleted

        assert run(delete_and_watch()) == set(gids[4:])
        stats = request(url, "query.graph.stats")
        assert stats["compactions"] >= 1, out.getvalue()
        assert svc.engine._p.G.meta[0] <= len(keep) + svc.engine.compact_min
        assert "compacted at version" in out.getvalue()
        listed = request(url, "query.graph.graphs", {"limit": 100})
        assert sorted(r["graph_id"] for r in listed["graphs"]) == sorted(keep)
        for i, g in enumerate(keep):
            r = request(url, "query.graph.nodes_in_radius", {"center": [i, 1, 0], "radius": 0.5, "graph_id": g})
            assert [n["node_id"] for n in r["nodes"]] == [str(uuid.UUID(int=10_000 + 10 * i + 1))]
        assert request(url, "query.graph.summary", {"graph_id": gids[10]})["error"]["code"] == "not_found"
        # a deleted graph's id created again starts afresh
        seq = js_publish(url, [ev({"type": "GraphCreated", "graph_id": gids[10], "name": "again",
                                   "occurred_at": 4000})])
        again = request(url, "query.graph.summary", {"graph_id": gids[10], "min_version": seq})
        assert again["name"] == "again" and again["node_count"] == 0
    finally:
        rs.stop()


def test_many_types_in_use_do_not_compact_every_batch():
    """Past 16,384 types the engine compacts to free unused ones; when they are all in
    use that frees nothing, and it must not then compact again after every batch (a
    pass over the whole state each time): only once more than 4,096 more have come."""
    g = uuid.UUID(int=9).bytes
    eng = Engine()
    n = (1 << 14) + 10
    rows = [_rows(1, g, 1)] + [_rows(10, g, 2, node_id=uuid.UUID(int=1000 + i).bytes, node_type=f"T{i}")
                               for i in range(n)]
    eng.apply(rows_to_batch(rows))
    assert eng.compactions == 1 and len(eng._p.types) == n
    for k in range(5):
        eng.apply(rows_to_batch([_rows(12, g, 3, node_id=uuid.UUID(int=1000 + k).bytes, x=1.0, y=2.0, z=3.0)]))
    assert eng.compactions == 1
    more = [_rows(10, g, 4, node_id=uuid.UUID(int=10**6 + i).bytes, node_type=f"U{i}") for i in range((1 << 12) + 1)]
    eng.apply(rows_to_batch(more[:-1]))
    assert eng.compactions == 1
    eng.apply(rows_to_batch(more[-1:]))
    assert eng.compactions == 2 and eng.totals()["nodes"] == n + (1 << 12) + 1


def test_compact_on_request_between_batches(tmp_path):
    """With compaction off on its own (``[projection] compact_min = -1``), an operator
    compacts when it suits (off-peak): ``python -m cim_flow compact`` and
    ``SyncClient.compact()`` answer what went; answers are the same after."""
    import io
    import json
    import subprocess
    import sys

    from cim_flow import SyncClient
    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService
    import asyncio

    import nats
    from natsutil import js_publish, request, run
    from test_cli import ROOT

    out = io.StringIO()
    svc = Service(Config.from_dict({"projection": {"compact_min": -1}}), port=0, data_dir=str(tmp_path / "svc"),
                  status_interval=0, out=out)
    rs = RunningService(svc).start()
    try:
        url = svc.url
        gids = [str(uuid.UUID(int=200 + i)) for i in range(6)]

        def ev(body):
            return ("event.graph.x", json.dumps(body).encode(), {"Nats-Msg-Id": str(uuid.uuid4())})

        items = [ev({"type": "GraphCreated", "graph_id": g, "name": f"g{i}", "occurred_at": 1}) for i, g in enumerate(gids)]
        items += [ev({"type": "NodeAdded", "graph_id": gids[0], "node_id": str(uuid.UUID(int=3000 + k)),
                      "node_type": f"K{k}", "position": [k, 0, 0], "occurred_at": 2}) for k in range(50)]
        items += [ev({"type": "NodeRemoved", "graph_id": gids[0], "node_id": str(uuid.UUID(int=3000 + k)),
                      "occurred_at": 3}) for k in range(40)]
        items += [ev({"type": "GraphDeleted", "graph_id": g, "occurred_at": 4}) for g in gids[3:]]
        seq = js_publish(url, items)
        before = request(url, "query.graph.graphs", {"limit": 100, "min_version": seq})
        stats = request(url, "query.graph.stats")
        assert stats["compactions"] == 0 and stats["garbage"] == {"nodes": 40, "edges": 0, "graphs": 3}
        got = subprocess.run([sys.executable, "-m", "cim_flow", "compact", "--nats-url", url],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert got.returncode == 0, got.stderr
        reply = json.loads(got.stdout)
        assert {k: reply[k] for k in ("nodes", "edges", "graphs", "strings", "types", "version")} == \
            {"nodes": 40, "edges": 0, "graphs": 3, "strings": 3, "types": 40, "version": seq}
        assert reply["seconds"] >= 0 and "compacted at version" in out.getvalue()
        assert request(url, "query.graph.stats")["garbage"] == {"nodes": 0, "edges": 0, "graphs": 0}
        assert request(url, "query.graph.graphs", {"limit": 100})["graphs"] == before["graphs"]
        nodes = request(url, "query.graph.find_nodes", {"graph_id": gids[0]})["nodes"]
        assert sorted(n["node_id"] for n in nodes) == [str(uuid.UUID(int=3000 + k)) for k in range(40, 50)]
        with SyncClient(url) as client:
            again = client.compact()
        assert again["nodes"] == again["graphs"] == 0 and request(url, "query.graph.stats")["compactions"] == 2

        # with a batch in hand, the request waits for that batch's end
        svc._processing = True  # (as if one were: the next real batch ends it)

        async def ask_then_publish():
            nc = await nats.connect(url)
            asked = asyncio.ensure_future(nc.request("cmd.cim_flow.compact", b"{}", timeout=30))
            await asyncio.sleep(0.5)
            waited = not asked.done()
            ack = await nc.jetstream().publish(*ev({"type": "NodeRemoved", "graph_id": gids[0],
                                                    "node_id": str(uuid.UUID(int=3040)), "occurred_at": 5})[:2])
            reply = json.loads((await asked).data)
            await nc.close()
            return waited, reply, ack.seq

        waited, reply, seq = run(ask_then_publish())
        assert waited and reply["nodes"] == 1 and reply["version"] == seq
        assert request(url, "query.graph.stats")["compactions"] == 3
    finally:
        rs.stop()


def test_each_kind_of_garbage_alone_compacts_like_all_of_it():
    """Compaction keeps a kind's numbers when it has nothing to drop (only edges removed;
    only an empty graph deleted; both), updating its fields in place and building a hash
    table again only when graph numbers changed: after each, events and answers are
    those of an engine that never compacts."""
    gs = [uuid.UUID(int=70 + i).bytes for i in range(3)]  # gs[1] stays empty
    nid = [uuid.UUID(int=700 + i).bytes for i in range(8)]
    eid = [uuid.UUID(int=800 + i).bytes for i in range(8)]
    rows = [_rows(1, g, 1, name=f"g{i}") for i, g in enumerate(gs)]
    for i, n in enumerate(nid):
        rows.append(_rows(10, gs[0 if i < 4 else 2], 2, node_id=n, node_type=f"T{i % 3}", name=f"n{i}",
                          x=float(i), y=0.0, z=0.0))
    for k, e in enumerate(eid):
        base = 0 if k < 4 else 4
        rows.append(_rows(20, gs[0 if k < 4 else 2], 3, edge_id=e, source_id=nid[base + k % 4],
                          target_id=nid[base + (k + 1) % 4], edge_type=f"E{k}"))
    eng, plain = Engine(), Engine()
    eng.compact_min = plain.compact_min = -1

    def both(batch_rows):
        b = rows_to_batch(batch_rows)
        r1, r2 = eng.apply(b), plain.apply(b)
        assert (r1.applied, r1.ignored) == (r2.applied, r2.ignored)

    def same():
        assert _node_rows(eng) == _node_rows(plain)
        assert sorted(map(tuple, map(dict.values, eng.find_edges().to_pylist()))) == \
            sorted(map(tuple, map(dict.values, plain.find_edges().to_pylist())))
        for i, n in enumerate(nid):
            g = gs[0 if i < 4 else 2]
            assert _neighbor_rows(eng, n, g) == _neighbor_rows(plain, n, g)
        assert eng.graph_summaries().sort_by("graph_id").equals(plain.graph_summaries().sort_by("graph_id"))
        for c in ([0.0, 0, 0], [5.0, 0, 0]):
            assert sorted(eng.nodes_within(c, 2.5).column("node_id").to_pylist()) == \
                sorted(plain.nodes_within(c, 2.5).column("node_id").to_pylist())

    both(rows)
    eng.nodes_within([0, 0, 0], 1.0)
    both([_rows(23, gs[0], 4, edge_id=eid[0]), _rows(23, gs[0], 4, edge_id=eid[2])])
    assert eng.compact(graphs=False) == {"nodes": 0, "edges": 2, "strings": 0, "types": 2}  # E0, E2
    same()
    both([_rows(4, gs[1], 5), _rows(23, gs[2], 5, edge_id=eid[5])])  # an empty graph, an edge
    assert eng.compact() == {"nodes": 0, "edges": 1, "strings": 1, "types": 1, "graphs": 1}  # g1's name, E5
    same()
    both([_rows(4, gs[1], 6), _rows(1, uuid.UUID(int=99).bytes, 6)])  # gone already; another graph
    both([_rows(4, uuid.UUID(int=99).bytes, 7)])  # ... deleted, empty: only graph garbage
    assert eng.compact() == {"nodes": 0, "edges": 0, "strings": 0, "types": 0, "graphs": 1}
    same()
    both([_rows(13, gs[2], 8, node_id=nid[5])])  # a node and its edges
    assert eng.compact()["nodes"] == 1
    same()
    # the tables still find everything: re-adds, moves, removals by id
    both([_rows(20, gs[0], 9, edge_id=eid[0], source_id=nid[3], target_id=nid[1]),
          _rows(12, gs[2], 9, node_id=nid[6], x=0.5, y=0.0, z=0.0), _rows(23, gs[0], 9, edge_id=eid[1]),
          _rows(10, gs[2], 9, node_id=nid[5]), _rows(11, gs[0], 9, node_id=nid[0], name="renamed")])
    same()


def test_deleted_graphs_alone_compact_an_engine_nobody_listens_to():
    """Graph churn with nothing else: past the floor and the live count of graphs, the
    engine compacts its deleted graphs on its own (a service, which listens, does it
    after each batch's update instead: see the service test above)."""
    gs = [uuid.UUID(int=4000 + i).bytes for i in range(10)]
    eng = Engine()
    eng.compact_min = 2
    eng.apply(rows_to_batch([_rows(1, g, 10 + i) for i, g in enumerate(gs)]))  # (no names: no string garbage)
    eng.apply(rows_to_batch([_rows(4, g, 2) for g in gs[:3]]))  # 3 deleted, 7 live: not yet
    assert eng.compactions == 0 and eng._p.graph_garbage() == 3
    eng.apply(rows_to_batch([_rows(4, g, 3) for g in gs[3:8]]))  # 8 deleted, 2 live
    assert eng.compactions == 1 and eng._p.graph_garbage() == 0 and eng._p.G.meta[0] == 2
    assert sorted(r["graph_id"] for r in eng.graph_summaries().to_pylist()) == gs[8:]
    assert [r["graph_id"] for r in eng.graphs_created_between(0, 10**6).to_pylist()] == gs[8:]
    assert eng.graph_summary(gs[9]) is not None and eng.graph_summary(gs[1]) is None
