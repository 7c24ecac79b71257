"""Engine projections against the plain-Python reference, on hostile random streams."""
import datetime as dt
import json
import os
import random
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cim_flow import EVENT_SCHEMA, Engine, EventType
from reference import RefProjection
from streams import random_rows, rows_to_batch

US = dt.timezone.utc


def engine_summaries(eng):
    t = eng.graph_summaries().to_pylist()
    out = {}
    for r in t:
        out[r["graph_id"]] = dict(
            name=r["name"], node_count=r["node_count"], edge_count=r["edge_count"],
            created_at=int(pa.scalar(r["created_at"], pa.timestamp("us", "UTC")).cast(pa.int64()).as_py()),
            last_modified=int(pa.scalar(r["last_modified"], pa.timestamp("us", "UTC")).cast(pa.int64()).as_py()),
            archived=r["archived"],
        )
    return out


def check_same(eng, ref):
    assert eng.totals() == ref.totals()
    assert engine_summaries(eng) == ref.summaries()
    assert eng.version == ref.version
    # node-count index agrees with brute force for a few ranges
    summ = ref.summaries()
    for a, b in [(0, 0), (1, 3), (2, 100), (0, 10**6), (5, 4)]:
        got = {r["graph_id"] for r in eng.graphs_by_node_count(a, b).to_pylist()}
        assert got == {g for g, s in summ.items() if a <= s["node_count"] <= b}
    top = [r["node_count"] for r in eng.top_graphs_by_node_count(3).to_pylist()]
    assert top == sorted((s["node_count"] for s in summ.values()), reverse=True)[:3]
    for name in ["alpha", "beta", "gamma", "nope"]:
        got = {r["graph_id"] for r in eng.graphs_by_name(name).to_pylist()}
        assert got == {g for g, s in summ.items() if s["name"] == name}
    lo, hi = 200_000, 700_000
    got = {r["graph_id"] for r in eng.graphs_created_between(lo, hi).to_pylist()}
    assert got == {g for g, s in summ.items() if lo <= s["created_at"] <= hi}
    # the edges projection, whole, per graph and per type
    def ref_edge(e):
        w = e["weight"]
        return (e["src"], e["dst"], None if w is None or w != w else float(np.float32(w)), e["edge_type"])

    def edge_rows(t):
        return {(r["graph_id"], r["edge_id"]): (r["source_id"], r["target_id"], r["weight"], r["edge_type"])
                for r in t.to_pylist()}

    want = {k: ref_edge(e) for k, e in ref.edges.items()}
    assert edge_rows(eng.find_edges()) == want
    for g in list(summ)[:2]:
        assert edge_rows(eng.find_edges(g)) == {k: v for k, v in want.items() if k[0] == g}
    for typ in {v[3] for v in want.values() if v[3] is not None} | {"no-such-type"}:
        assert edge_rows(eng.find_edges(edge_type=typ)) == {k: v for k, v in want.items() if v[3] == typ}
    # bounds read back from a summary table (pyarrow scalars) select the same graphs
    created = sorted(eng.graph_summaries().column("created_at"), key=lambda x: x.value)
    if created:
        a, b = created[len(created) // 4], created[3 * len(created) // 4]
        got = {r["graph_id"] for r in eng.graphs_created_between(a, b).to_pylist()}
        assert got == {g for g, s in summ.items() if a.value <= s["created_at"] <= b.value}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 400), with_seq=st.booleans(),
       cuts=st.lists(st.integers(0, 400), max_size=6))
def test_random_streams_match_reference(seed, n, with_seq, cuts):
    rng = random.Random(seed)
    rows = random_rows(rng, n, with_seq=with_seq)
    eng, ref = Engine(capacity=4), RefProjection()
    bounds = sorted({0, n, *[c for c in cuts if c <= n]})
    total = [0, 0, 0]
    for a, b in zip(bounds, bounds[1:]):
        res = eng.apply(rows_to_batch(rows[a:b]))
        total[0] += res.applied
        total[1] += res.ignored
        total[2] += res.skipped
        ref.apply(rows[a:b])
        check_same(eng, ref)
    assert total == [ref.applied, ref.ignored, ref.skipped]


def test_bigger_stream_with_growth():
    rng = random.Random(7)
    rows = random_rows(rng, 6000, n_graphs=30, n_nodes=300, n_edges=500, with_seq=True)
    eng, ref = Engine(capacity=2), RefProjection()
    for a in range(0, len(rows), 777):
        eng.apply(rows_to_batch(rows[a:a + 777]))
        ref.apply(rows[a:a + 777])
    check_same(eng, ref)


def _ev(kind, g, t, **kw):
    r = {c: None for c in EVENT_SCHEMA.names}
    r.update(event_type=int(kind), graph_id=g, occurred_at=t, **kw)
    return r


def test_semantics_by_hand():
    g, n1, n2, e = (uuid.uuid4().bytes for _ in range(4))
    eng = Engine()
    rows = [
        _ev(EventType.GraphCreated, g, 10, name="roads"),
        _ev(EventType.NodeAdded, g, 11, node_id=n1, x=0.0, y=0.0, z=0.0),
        _ev(EventType.NodeAdded, g, 12, node_id=n2, x=1.0, y=0.0, z=0.0),
        _ev(EventType.EdgeAdded, g, 13, edge_id=e, source_id=n1, target_id=n2, weight=1.5),
        # CIM's move = remove then add with the same id: a replace; the edge goes with the removal
        _ev(EventType.NodeRemoved, g, 14, node_id=n1),
        _ev(EventType.NodeAdded, g, 15, node_id=n1, x=5.0, y=5.0, z=5.0),
        _ev(EventType.NodeRemoved, g, 16, node_id=uuid.uuid4().bytes),  # missing: no-op
        _ev(EventType.NodeMoved, g, 17, node_id=n2, x=float("nan"), y=0.0, z=0.0),  # rejected
    ]
    res = eng.apply(rows_to_batch(rows))
    assert (res.applied, res.ignored, res.skipped, res.version) == (6, 2, 0, 8)
    assert [r for _, r in res.ignored_rows()] == ["unknown or removed node", "position must be 3 finite numbers"]
    s = eng.graph_summary(uuid.UUID(bytes=g))
    assert s["node_count"] == 2 and s["edge_count"] == 0 and s["name"] == "roads"
    assert s["created_at"] == dt.datetime(1970, 1, 1, 0, 0, 0, 10, tzinfo=US)
    assert s["last_modified"] == dt.datetime(1970, 1, 1, 0, 0, 0, 15, tzinfo=US)
    assert eng.graph_summary(str(uuid.UUID(bytes=g)))["graph_id"] == uuid.UUID(bytes=g)
    # replays at or below the version are skipped
    res = eng.apply(rows_to_batch([dict(r, seq=3) for r in rows[:2]]))
    assert (res.applied, res.skipped) == (0, 2)
    # delete cascades
    res = eng.apply(rows_to_batch([_ev(EventType.GraphDeleted, g, 20)]))
    assert eng.totals() == {"graphs": 0, "nodes": 0, "edges": 0}
    assert eng.graph_summary(g) is None


def test_each_missing_field_has_its_own_reason():
    g, n1, n2, e = (uuid.uuid4().bytes for _ in range(4))
    eng = Engine()
    ok = eng.apply(rows_to_batch([_ev(EventType.GraphCreated, g, 1),
                                  _ev(EventType.NodeAdded, g, 2, node_id=n1, x=0.0, y=0.0, z=0.0),
                                  _ev(EventType.NodeAdded, g, 3, node_id=n2, x=1.0, y=0.0, z=0.0)]))
    assert ok.applied == 3
    bad = [
        (_ev(EventType.GraphUpdated, None, 4, name="x"), "graph_id missing"),
        (_ev(EventType.GraphUpdated, g, None, name="x"), "occurred_at missing (every event needs its time)"),
        (_ev(EventType.NodeUpdated, g, 5, name="x"), "node_id missing"),
        (_ev(EventType.NodeMoved, g, 6, node_id=n1), "NodeMoved without a position"),
        (_ev(EventType.EdgeAdded, g, 7, source_id=n1, target_id=n2), "edge_id missing"),
        (_ev(EventType.EdgeAdded, g, 8, edge_id=e, source_id=n1), "source_id or target_id missing"),
    ]
    res = eng.apply(rows_to_batch([r for r, _ in bad]))
    assert (res.applied, res.ignored) == (0, len(bad))
    assert res.ignored_rows() == [(i, why) for i, (_, why) in enumerate(bad)]
    assert eng.totals() == {"graphs": 1, "nodes": 2, "edges": 0}


def test_bad_schema_names_the_column():
    eng = Engine()
    with pytest.raises(ValueError, match="'x'"):
        eng.apply(pa.table({"event_type": pa.array([1], pa.int8()), "graph_id": pa.array([b"a" * 16], pa.binary(16)),
                            "x": pa.array(["oops"])}))
    with pytest.raises(ValueError, match="graph_id"):
        eng.apply(pa.table({"event_type": pa.array([1], pa.int8())}))
    with pytest.raises(ValueError, match="nodeid"):
        eng.apply(pa.table({"event_type": pa.array([1], pa.int8()), "graph_id": pa.array([b"a" * 16], pa.binary(16)),
                            "nodeid": [1]}))
    with pytest.raises(TypeError):
        eng.apply([{"event_type": 1}])


def test_empty_engine_queries():
    eng = Engine()
    assert eng.totals() == {"graphs": 0, "nodes": 0, "edges": 0}
    assert eng.graph_summaries().num_rows == 0
    assert eng.top_graphs_by_node_count(5).num_rows == 0
    assert eng.graphs_by_node_count(0, 10).num_rows == 0
    assert eng.graphs_created_between("2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z").num_rows == 0
    assert eng.graph_summary(uuid.uuid4()) is None
    assert eng.apply(rows_to_batch([])).version == 0


def test_friendly_inputs_uuid_text_python_values():
    g, n = uuid.uuid4(), uuid.uuid4()
    eng = Engine()
    res = eng.apply(pa.table({"event_type": [1, 10], "graph_id": [str(g), str(g)], "node_id": [None, str(n)],
                              "occurred_at": [dt.datetime(2024, 1, 1, tzinfo=US)] * 2,
                              "x": [None, 1], "y": [None, 2], "z": [None, 3]}))
    assert (res.applied, eng.totals()["nodes"]) == (2, 1)
    assert repr(eng) == "Engine(version=2, graphs=1, nodes=1, edges=0)"
    assert eng.graph_summary(g)["created_at"] == dt.datetime(2024, 1, 1, tzinfo=US)
    # an id read back from a result table (a pyarrow scalar), and CIM's {"id": ...} form
    gid = eng.graph_summaries().column("graph_id")[0]
    assert eng.graph_summary(gid)["graph_id"] == g == eng.graph_summary({"id": str(g)})["graph_id"]
    assert eng.nodes_within([1, 2, 3], 0.5, graph_id=gid).column("node_id").to_pylist() == [n.bytes]
    with pytest.raises(ValueError, match="null"):
        eng.graph_summary(pa.scalar(None, pa.binary(16)))
    with pytest.raises(ValueError, match="'node_id': row 1"):
        eng.apply(pa.table({"event_type": [10, 10], "graph_id": [str(g)] * 2, "node_id": [str(n), "nope"]}))


def test_apply_messages_equals_apply_at_one_by_one():
    """Arrow stream messages applied together give what applying them one at a time gives,
    including messages redelivered at or below the version (skipped whole)."""
    rng = random.Random(11)
    msgs = []
    for seq in (3, 5, 9, 9, 4, 12, 20):  # 9 twice and 4: redeliveries
        msgs.append(([rows_to_batch(random_rows(rng, rng.randrange(1, 30)))], seq))
    one, many = Engine(), Engine()
    applied = ignored = skipped = 0
    for batches, seq in msgs:
        r = one._apply_at(batches, seq)
        applied, ignored, skipped = applied + r.applied, ignored + r.ignored, skipped + r.skipped
    r = many._apply_messages(msgs[:3])
    r2 = many._apply_messages(msgs[3:])
    assert (r.applied + r2.applied, r.ignored + r2.ignored, r.skipped + r2.skipped) == (applied, ignored, skipped)
    assert many.version == one.version == 20 and r2.version == 20
    assert many.graph_summaries().equals(one.graph_summaries())
    assert many.totals() == one.totals()


@pytest.mark.parametrize("seed", [0, 1])
def test_sliced_batches_apply_like_the_whole(seed):
    """Arrow slices (non-zero offsets in every column) read the same values as the whole."""
    rows = random_rows(random.Random(seed), 400, with_seq=bool(seed))
    batch = rows_to_batch(rows)
    whole = Engine()
    whole.apply(batch)
    for cut in (37, 53):
        parts = Engine()
        table = pa.Table.from_batches([batch])
        for a in range(0, batch.num_rows, cut):
            parts.apply(batch.slice(a, cut) if cut == 53 else table.slice(a, cut))
        assert parts.version == whole.version
        assert parts.totals() == whole.totals()
        assert parts.graph_summaries().equals(whole.graph_summaries())
        assert _nodes_equal(parts, whole)


def _nodes_equal(a, b):
    def rows(e):
        return [tuple(-1.0 if isinstance(v, float) and v != v else v for v in r.values())
                for r in e.find_nodes().to_pylist()]
    return rows(a) == rows(b)


def test_summary_rows_match_the_summary_table():
    """The service's update rows (built from the state arrays) equal the JSON rows of the
    summary table the queries serve, for live, archived, renamed and unnamed graphs."""
    from cim_flow._queries import _rows

    rows = random_rows(random.Random(21), 600)
    eng = Engine()
    eng.apply(rows_to_batch(rows))
    gidx = eng._live_graphs()
    assert len(gidx) >= 2
    assert eng._summary_rows(gidx) == _rows(eng._summary_table(gidx))
    assert eng._summary_rows(gidx[:0]) == []
    assert _summary_json_rows(eng, gidx) == eng._summary_rows(gidx)
    assert _summary_json_rows(eng, gidx[:0]) == []


def _summary_json_rows(eng, gidx):
    got = eng._summary_json(gidx)
    assert got is not None
    text, ends = got
    assert len(ends) == len(gidx) and (not len(ends) or ends[-1] == len(text))
    starts = [0, *ends[:-1].tolist()]
    assert all(text[e - 1] == ord(",") for e in ends.tolist())
    return [json.loads(text[a:e - 1].tobytes()) for a, e in zip(starts, ends.tolist())]


def test_summary_json_is_the_summary_rows_for_any_name_and_time():
    """The update message's compiled JSON rows say what the dict rows say: names with
    quotes, backslashes, control characters, non-ASCII and none; times before 1970, with
    and without microseconds; counts; archived.  A year JSON's RFC 3339 cannot hold gives
    None (the caller's general path)."""
    names = ['plain', 'q"uote', "back\\slash", "tab\tnew\nline\x01", "ünïcødé ✓ 🚀", "", None]
    times = [0, -1, -86_400_000_001, 1_700_000_000_123_456, 1_700_000_000_000_000, 253_402_300_799_999_999]
    rows, gs = [], []
    for i, name in enumerate(names):
        g = uuid.uuid4().bytes
        gs.append(g)
        rows.append(_ev(EventType.GraphCreated, g, times[i % len(times)], name=name))
        for k in range(i):
            rows.append(_ev(EventType.NodeAdded, g, times[(i + k) % len(times)], node_id=uuid.uuid4().bytes,
                            x=0.0, y=0.0, z=0.0))
    rows.append(_ev(EventType.GraphArchived, gs[2], 5))
    eng = Engine()
    eng.apply(rows_to_batch(rows))
    gidx = eng._live_graphs()
    assert len(gidx) == len(names)
    want = eng._summary_rows(gidx)
    assert [r["name"] for r in want] == names and any(r["archived"] for r in want)
    assert _summary_json_rows(eng, gidx) == want
    assert _summary_json_rows(eng, gidx[::-1]) == want[::-1]
    late = uuid.uuid4().bytes  # year 10000: past what RFC 3339 text holds
    eng.apply(rows_to_batch([_ev(EventType.GraphCreated, late, 253_402_300_800_000_000)]))
    assert eng._summary_json(eng._live_graphs()) is None
    assert eng._summary_json(gidx) is not None


def test_capacity_grows_only_for_the_kinds_a_batch_can_add():
    """A batch of edges must not grow the node arrays (it reserved room for every row
    as a possible node before: a pre-sized 10M-node engine grew to 15M on the first
    edge batch)."""
    g = uuid.uuid4().bytes
    nodes = [uuid.uuid4().bytes for _ in range(100)]
    eng = Engine(node_capacity=100, edge_capacity=400)
    eng.apply(rows_to_batch([_ev(EventType.GraphCreated, g, 1)]
                            + [_ev(EventType.NodeAdded, g, 2, node_id=n) for n in nodes]))
    caps = list(eng._p._caps)
    rng = random.Random(3)
    edges = [_ev(EventType.EdgeAdded, g, 3, edge_id=uuid.uuid4().bytes, source_id=rng.choice(nodes),
                 target_id=rng.choice(nodes)) for _ in range(300)]
    r = eng.apply(rows_to_batch(edges))
    assert r.applied == 300 and eng.totals()["edges"] == 300
    assert eng._p._caps[1] == caps[1] == 100  # nodes: untouched
    more = [uuid.uuid4().bytes for _ in range(50)]
    eng.apply(rows_to_batch([_ev(EventType.NodeAdded, g, 4, node_id=n) for n in more]))
    assert eng._p._caps[1] >= 150 and eng.totals()["nodes"] == 150


def test_synthetic_batches_apply_cleanly_and_match_the_reference():
    """The load generator's column-wise traffic: every move and edge refers to a node
    added before it, so every event applies, and the projection is the reference's."""
    from cim_flow._demo import synthetic_batches

    batches = synthetic_batches(4000, 777, seed=5, max_graphs=9, nodes_per_graph=60, t0_ms=1_700_000_000_000)
    assert sum(b.num_rows for b in batches) == 4000 and all(b.schema == EVENT_SCHEMA for b in batches)
    again = synthetic_batches(4000, 777, seed=5, max_graphs=9, nodes_per_graph=60, t0_ms=1_700_000_000_000)
    assert all(a.equals(b) for a, b in zip(batches, again))  # seeded
    eng, ref = Engine(), RefProjection()
    for b in batches:
        assert eng.apply(b).ignored == 0
        t = pa.Table.from_batches([b])
        ref.apply(t.set_column(3, "occurred_at", t.column(3).cast(pa.int64())).to_pylist())
    assert ref.ignored == 0
    check_same(eng, ref)
    counts = [s["node_count"] for s in ref.summaries().values()]
    assert counts == [60] * 9  # ~200 adds a graph, capped
    kinds = pa.Table.from_batches(batches).column("event_type").to_numpy()
    assert (kinds == EventType.EdgeAdded).sum() > 300 and (kinds == EventType.NodeMoved).sum() > 1500


def test_synthetic_json_is_the_synthetic_batches_in_the_demo_wire_forms():
    """The load generator's JSON traffic (formatted from the same columns) decodes to the
    very events of synthetic_batches, in the four wire forms of SyntheticEvents."""
    from cim_flow import decode_json
    from cim_flow._demo import synthetic_batches, synthetic_json

    kw = dict(seed=8, max_graphs=7, nodes_per_graph=40, t0_ms=1_700_000_000_000)
    msgs = synthetic_json(3000, **kw)
    want = pa.Table.from_batches(synthetic_batches(3000, 1000, **kw))
    got, errors = decode_json([p for _, _, p in msgs])
    assert errors == [] and got.num_rows == 3000
    got = pa.Table.from_batches([got])
    for col in ("event_id", "event_type", "occurred_at", "graph_id", "node_id", "edge_id", "source_id",
                "target_id", "x", "y", "z", "name", "weight"):
        assert got.column(col).to_pylist() == want.column(col).to_pylist(), col
    assert [uuid.UUID(e).bytes for _, e, _ in msgs] == want.column("event_id").to_pylist()
    forms = {s: p[:12] for s, _, p in msgs}
    assert forms == {"event.graph.graph.created": b'{"type":"Gra', "event.graph.node.created": b'{"NodeAdded"',
                     "event.graph.node.moved": b'{"event_id":', "event.graph.edge.created": b'{"type":"Edg'}


def test_read_events_takes_parquet_arrow_and_json_lines(tmp_path):
    """read_events on a Parquet file, a directory of them, an Arrow IPC file and stream,
    and JSON Lines (the demo's four wire forms): every one applies like the events
    themselves; a bad JSON line is named; another kind of file is a clear error."""
    from cim_flow import read_events
    from cim_flow._demo import synthetic_batches, synthetic_json

    kw = dict(seed=9, max_graphs=5, nodes_per_graph=30, t0_ms=1_700_000_000_000)
    table = pa.Table.from_batches(synthetic_batches(1200, 400, **kw))
    want = Engine()
    want.apply(table)
    (tmp_path / "dir").mkdir()
    pq.write_table(table.slice(0, 500), tmp_path / "dir" / "part-0.parquet")
    pq.write_table(table.slice(500), tmp_path / "dir" / "part-1.parquet")
    pq.write_table(table, tmp_path / "events.parquet")
    with pa.OSFile(str(tmp_path / "events.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    with pa.OSFile(str(tmp_path / "events.arrows"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    lines = [p for _, _, p in synthetic_json(1200, **kw)]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines[:600]) + b"\n\n" + b"\n".join(lines[600:]) + b"\n")
    for name in ("dir", "events.parquet", "events.arrow", "events.arrows", "events.jsonl"):
        eng = Engine()
        res = eng.apply(read_events(tmp_path / name))
        assert res.applied + res.ignored == 1200, name
        assert eng.totals() == want.totals() and engine_summaries(eng) == engine_summaries(want), name
    # a byte order mark, and an event without a time: it gets the file's modification time
    g = uuid.uuid4()
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"type": "GraphCreated", "graph_id": str(g)}).encode() + b"\n")
    os.utime(path, ns=(1_700_000_000_123_456_000, 1_700_000_000_123_456_000))
    got = read_events(path)
    assert got.num_rows == 1 and got.column("graph_id").to_pylist() == [g.bytes]
    assert got.column("occurred_at").cast(pa.int64()).to_pylist() == [1_700_000_000_123_456]
    assert read_events(path).column("event_id").to_pylist() == got.column("event_id").to_pylist()  # stable
    lines[700] = b'{"type": "NodeTeleported"}'
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="bad.jsonl: line 701: unknown event type 'NodeTeleported'"):
        read_events(tmp_path / "bad.jsonl")
    (tmp_path / "events.csv").write_text("event_type,graph_id\n1,x\n")
    with pytest.raises(ValueError, match="not a Parquet, Arrow IPC or JSON Lines file"):
        read_events(tmp_path / "events.csv")


@pytest.mark.parametrize("seed", range(6))
def test_small_batch_columns_read_in_one_pass_equal_the_arrow_views(seed, monkeypatch):
    """A small batch's kernel columns come from one compiled read of the Arrow buffers,
    a big one's from zero-copy views: for random rows (null times, ids and seqs, NaN and
    missing positions), sliced batches (an offset into every buffer) and all-null
    columns, both give the same columns."""
    import numpy as np

    import cim_flow._projection as pj

    rng = random.Random(seed)
    batch = rows_to_batch(random_rows(rng, 300, with_seq=seed % 2 == 0))
    cases = [batch, batch.slice(rng.randrange(1, 50), rng.randrange(1, 200)), batch.slice(7, 0),
             pj.normalize_batch(pa.RecordBatch.from_pydict({"event_type": pa.array([1, 10], pa.int8()),
                                                            "graph_id": pa.array([bytes(16)] * 2, pa.binary(16))}))]
    # strings: empty ones, nulls, non-ASCII, a dictionary with a null value and a sliced one
    d = pa.DictionaryArray.from_arrays(pa.array([0, None, 2, 1, 2], pa.int32()), pa.array(["a", "", None]))
    d2 = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1, 1, 0], pa.int32()), pa.array(["x", "yz", "w"]).slice(1))
    cases.append(pj.normalize_batch(pa.RecordBatch.from_pydict({
        "event_type": pa.array([1] * 5, pa.int8()), "graph_id": pa.array([bytes(16)] * 5, pa.binary(16)),
        "name": pa.array(["", None, "é🙂", "b", ""]), "node_type": d, "edge_type": d2})).slice(1))
    for b in cases:
        small = pj._events_of_small(b)
        monkeypatch.setattr(pj, "_SMALL_ROWS", -1)
        big = pj.events_of(b)
        monkeypatch.undo()
        assert small.n == big.n == b.num_rows
        for f in ("seq_ok", "kind", "t_ok", "pos_ok", "w_ok"):
            assert np.array_equal(getattr(small, f), getattr(big, f)), f
        for f, ok in (("seq", "seq_ok"), ("t", "t_ok")):
            m = getattr(big, ok)
            assert np.array_equal(getattr(small, f)[m], getattr(big, f)[m]), f
        for f in ("x", "y", "z", "w"):
            assert np.array_equal(getattr(small, f), getattr(big, f), equal_nan=True), f
        for (sw, sv), (bw, bv) in zip(small.ids, big.ids):
            assert np.array_equal(sv, bv) and np.array_equal(sw[sv], bw[bv])
            assert sw.shape == bw.shape == (b.num_rows, 2) and sw.dtype == bw.dtype
        for a in (small.seq, small.kind, small.t, small.x, small.w, *small.ids[0]):
            assert not a.flags.writeable and a.flags.c_contiguous
        for f in ("name", "ntype", "etype"):  # (offsets, bytes, present) against the Arrow column
            offs, data, present = getattr(small, f)
            got = [bytes(data[offs[i]:offs[i + 1]]).decode() if present[i] else None for i in range(b.num_rows)]
            assert got == getattr(big, f).to_pylist(), f


@pytest.mark.parametrize("typ", [pa.utf8(), pa.large_utf8()])
def test_uuid_text_id_columns_apply_as_the_binary_ones(typ):
    """Id columns given as UUID text (either string type, sliced, with nulls) are parsed
    from the string buffers: the projection equals the reference's over the same events;
    bad text names its column and row."""
    rows = random_rows(random.Random(4), 400)
    ids = ("graph_id", "node_id", "edge_id", "source_id", "target_id")
    binary = rows_to_batch(rows)
    text = pa.RecordBatch.from_arrays(
        [pa.array([None if v is None else str(uuid.UUID(bytes=v)) for v in binary.column(f).to_pylist()], typ)
         if f in ids else binary.column(f) for f in binary.schema.names], names=binary.schema.names)
    eng, ref = Engine(), RefProjection()
    eng.apply(text.slice(0, 150))  # offsets into the string buffers
    eng.apply(text.slice(150))
    ref.apply(rows)
    check_same(eng, ref)
    bad = text.column("node_id").to_pylist()
    row = next(i for i, v in enumerate(bad) if v is not None)
    bad[row] = "not-a-uuid"
    broken = text.set_column(text.schema.get_field_index("node_id"), "node_id", pa.array(bad, typ))
    with pytest.raises(ValueError, match=rf"column 'node_id': row {row} is not a UUID"):
        Engine().apply(broken)


@pytest.mark.parametrize("form", ["name", "alias", "dictionary"])
def test_event_type_names_apply_as_the_codes(form):
    """An event_type column of names (as other tools write Parquet) applies as the int8
    codes; an unknown name is a ValueError naming the row and the name."""
    from cim_flow._schema import EVENT_ALIASES

    known = {int(e) for e in EventType}
    rows = [r for r in random_rows(random.Random(5), 300) if int(r["event_type"]) in known]  # names exist
    binary = rows_to_batch(rows)
    alias_of = {}
    for name, code in EVENT_ALIASES.items():
        alias_of.setdefault(int(code), []).append(name)
    codes = binary.column("event_type").to_pylist()
    if form == "alias":  # the last alias of each code (snake or dotted forms, EdgeConnected ...)
        names = [alias_of[c][-1] for c in codes]
    else:
        names = [EventType(c).name for c in codes]
    col = pa.array(names)
    if form == "dictionary":
        col = col.dictionary_encode()
    named = binary.set_column(binary.schema.get_field_index("event_type"), "event_type", col)
    eng, ref = Engine(), RefProjection()
    eng.apply(named)
    ref.apply(rows)
    check_same(eng, ref)
    names[7] = "NodeTeleported"
    broken = binary.set_column(binary.schema.get_field_index("event_type"), "event_type", pa.array(names))
    with pytest.raises(ValueError, match="column 'event_type': row 7 has unknown event type 'NodeTeleported'"):
        Engine().apply(broken)


def test_readers_and_arrow_pycapsule_producers_apply_like_the_table(tmp_path):
    """A RecordBatchReader (read batch by batch), an iterator of batches or tables, and
    any object exposing the Arrow PyCapsule stream or array interface (as polars and
    pandas frames do) apply like the table itself; anything else is a TypeError that
    says what is taken."""
    rows = random_rows(random.Random(6), 400)
    table = pa.Table.from_batches([rows_to_batch(rows[:150]), rows_to_batch(rows[150:])])

    class Producer:  # a foreign library's frame: only the protocol, no pyarrow type
        def __init__(self, obj):
            self._obj = obj

        def __arrow_c_stream__(self, requested_schema=None):
            return self._obj.__arrow_c_stream__(requested_schema)

    class ArrayProducer:  # one batch, through the array interface only
        def __init__(self, obj):
            self._obj = obj

        def __arrow_c_array__(self, requested_schema=None):
            return self._obj.__arrow_c_array__(requested_schema)

    ref = RefProjection()
    ref.apply(rows)
    parquet = tmp_path / "events.parquet"
    pq.write_table(table, parquet, row_group_size=100)
    for data in (pa.RecordBatchReader.from_batches(table.schema, table.to_batches()), Producer(table),
                 ArrayProducer(table.combine_chunks().to_batches()[0]),
                 pq.ParquetFile(parquet).iter_batches(batch_size=64),  # an iterator of batches
                 (t for t in (table.slice(0, 99), table.slice(99)))):  # ... or of tables
        eng = Engine()
        res = eng.apply(data)
        assert res.applied + res.ignored + res.skipped == len(rows)
        check_same(eng, ref)
    with pytest.raises(TypeError, match="PyCapsule"):
        Engine().apply({"event_type": [1]})
    with pytest.raises(TypeError, match="item 1 is a dict"):
        Engine().apply(iter([table.to_batches()[0], {"event_type": [1]}]))


def test_string_pool_codes_dictionary_and_plain_columns_with_nulls_and_offsets():
    """Codes read from the Arrow buffers: a sliced array (offset), nulls, int8 and int32
    dictionary indices and a plain string column give the same codes, -1 at nulls."""
    import numpy as np

    from cim_flow._strings import StringPool

    vals = ["a", None, "b", "a", None, "c", "b"]
    pool = StringPool(["z"])
    plain = pa.array(vals, pa.utf8())
    want = [pool.code(v) if v is not None else -1 for v in vals]
    assert pool.encode(plain).tolist() == want
    for index_type in (pa.int8(), pa.int32()):
        d = plain.dictionary_encode().cast(pa.dictionary(index_type, pa.utf8()))
        assert pool.encode(d).tolist() == want
        assert pool.encode(d.slice(2, 4)).tolist() == want[2:6]
    assert pool.encode(plain.slice(1, 5)).tolist() == want[1:6]
    assert np.array_equal(pool.encode(pa.nulls(3, pa.dictionary(pa.int32(), pa.utf8()))), [-1, -1, -1])
    assert pool.value(want[0]) == "a" and len(pool) == 4
    # plain and large strings read from their buffers: empty, non-ASCII, sliced
    more = ["", "ünï ✓", None, "a", "", "ünï ✓", "b"]
    want = [pool.code(v) if v is not None else -1 for v in more]
    for typ in (pa.utf8(), pa.large_utf8()):
        arr = pa.array(["pad", *more], typ).slice(1)
        assert pool.encode(arr).tolist() == want
        assert pool.encode(arr.slice(2, 3)).tolist() == want[2:5]
        assert pool.encode(pa.array(["", ""], typ)).tolist() == [pool.code("")] * 2


def test_few_row_string_coding_equals_the_grouped_path(monkeypatch):
    """Columns of up to _FEW_ROWS rows are coded row by row, longer ones by the compiled
    grouping: on the same inputs and pools both give the same codes."""
    import numpy as np

    import cim_flow._strings as S

    rng = random.Random(9)
    words = [None, "", "a", "é", "node", "nine char", "x" * 40]
    cases = [[rng.choice(words) for _ in range(n)] for n in range(1, 7) for _ in range(30)]

    def code_all(few):
        monkeypatch.setattr(S, "_FEW_ROWS", few)
        pool = S.StringPool(["a"])
        out = []
        for vals in cases:
            raw = [v.encode() if v is not None else b"" for v in vals]
            offs = np.zeros(len(vals) + 1, np.int64)
            np.cumsum([len(b) for b in raw], out=offs[1:])
            present = np.array([v is not None for v in vals], bool)
            out.append(pool.encode((offs, np.frombuffer(b"".join(raw), np.uint8), present)).tolist())
        return out, pool.values()

    assert code_all(S._FEW_ROWS) == code_all(0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["", "a", "ab", "node", "exactly8", "nine char", "x" * 40]),
                          st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)), max_size=80),
       st.lists(st.text(max_size=5), max_size=5))
def test_string_pool_codes_spans_as_a_dict_would(vals, known):
    """The scanner's (offsets, bytes, present) columns: rows grouped by their bytes in a
    compiled pass, then coded; the same codes a plain dict gives, -1 where absent, and
    values first seen in row order get the next codes."""
    import numpy as np

    from cim_flow._strings import StringPool

    pool = StringPool(known)
    ref = {v: i for i, v in enumerate(dict.fromkeys(known))}
    raw = [v.encode() if v is not None else b"" for v in vals]
    offs = np.zeros(len(vals) + 1, np.int64)
    np.cumsum([len(b) for b in raw], out=offs[1:])
    present = np.array([v is not None for v in vals], bool)
    for _ in range(2):  # the second time every value is known
        got = pool.encode((offs, np.frombuffer(b"".join(raw), np.uint8), present))
        want = [ref.setdefault(v, len(ref)) if v is not None else -1 for v in vals]
        assert got.dtype == np.int32 and got.tolist() == want
        assert [pool.value(c) for c in got.tolist()] == vals
        # and back: decode builds the utf8 column from the pool's bytes (nulls at -1),
        # also for values added since its last call
        col = pool.decode(got)
        assert col.type == pa.utf8() and col.to_pylist() == vals
        assert pool.decode(got[::-1].copy()).to_pylist() == vals[::-1]
    assert pool.decode(np.zeros(0, np.int32)).to_pylist() == []
    assert StringPool().decode(np.array([-1, -1], np.int32)).to_pylist() == [None, None]


def _longest_run(slots):
    """Longest run of occupied slots (wrapping): long runs mean clustered hashes."""
    occ = np.concatenate([slots, slots]) >= 0
    edges = np.diff(np.concatenate([[0], occ.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


@pytest.mark.parametrize("shape", ["random", "sequential_k0", "sequential_k1", "same_id_many_graphs",
                                   "k0_high_bits"])
def test_hash_spreads_structured_keys(shape):
    """Interning's hash on key sets real feeds have (counters in one half of the id, the
    same node id in many graphs): no long probe runs, as for random keys.  A weak mix
    (e.g. one multiply by a constant) gave runs of ~2,000 slots for the same-id case."""
    import kernels.intern as ki

    n = 150_000
    seq = np.arange(1, n + 1, dtype=np.uint64)
    rng = np.random.default_rng(3)
    keys = {"random": rng.integers(0, 2**63, (n, 2)).astype(np.uint64),
            "sequential_k0": np.stack([seq, np.full(n, 7, np.uint64)], 1),
            "sequential_k1": np.stack([np.full(n, 7, np.uint64), seq], 1),
            "same_id_many_graphs": np.tile(np.array([[5, 9]], np.uint64), (n, 1)),
            "k0_high_bits": np.stack([seq << np.uint64(40), np.zeros(n, np.uint64)], 1)}[shape]
    owner = (np.arange(n) if shape == "same_id_many_graphs" else np.arange(n) % 100).astype(np.int32)
    slots = ki.rehash(np.ascontiguousarray(keys), owner, n, np.full(1 << 18, -1, np.int32))
    assert (slots >= 0).sum() == n
    assert _longest_run(slots) < 200  # random keys at this load (0.57): ~60-80


def test_find_edges_of_a_graph_walks_its_nodes_and_keeps_first_seen_order():
    """find_edges(graph) collects a graph's edges from its nodes' incident lists; on
    streams with self-loops, re-adds, endpoint moves, node and graph removals it gives
    exactly the rows (and order) of the whole edge table cut to that graph, and pages
    the same way."""
    for seed in range(25):
        rng = random.Random(seed)
        eng = Engine()
        rows = random_rows(rng, 600, n_graphs=3, n_nodes=10, n_edges=30)
        for a in range(0, len(rows), 150):
            eng.apply(rows_to_batch(rows[a:a + 150]))
        every = eng.find_edges().to_pylist()
        graphs = {r["graph_id"] for r in every} | {r["graph_id"] for r in eng.graph_summaries().to_pylist()}
        for g in graphs:
            want = [r for r in every if r["graph_id"] == g]
            assert eng.find_edges(g).to_pylist() == want
            assert eng.find_edges(g, offset=1, limit=2).to_pylist() == want[1:3]
            assert eng.graph_summary(g) is None or eng.graph_summary(g)["edge_count"] == len(want)
        assert sum(len(eng.find_edges(g)) for g in graphs) == len(every)


def test_assigned_sequence_numbers_never_wrap_past_2_64():
    """Rows without seq get version + 1, ...: a batch that would carry that past 2**64 - 1
    is refused whole (the version once wrapped to 0, and a later seq 5 was applied after
    seq 2**64 - 1), the engine untouched; explicit seqs up to 2**64 - 1 still apply."""
    g = uuid.uuid4().bytes

    def row(kind, seq=None, t=1):
        r = {c: None for c in EVENT_SCHEMA.names}
        r.update(event_type=kind, graph_id=g, occurred_at=t, seq=seq)
        return r

    eng = Engine()
    assert eng.apply(rows_to_batch([row(1, 2**64 - 2)])).applied == 1
    assert eng.apply(rows_to_batch([row(2)])).applied == 1 and eng.version == 2**64 - 1  # the last one left
    with pytest.raises(ValueError, match="would pass 2\\*\\*64 - 1"):
        eng.apply(rows_to_batch([row(2, t=7)]))
    with pytest.raises(ValueError, match="would pass"):  # an explicit seq earlier in the batch counts too
        Engine().apply(rows_to_batch([row(1, 2**64 - 1), row(2)]))
    assert eng.version == 2**64 - 1 and eng.graph_summary(g)["last_modified"] == eng.graph_summary(g)["created_at"]
    res = eng.apply(rows_to_batch([row(2, 5), row(2, 2**64 - 1)]))
    assert (res.applied, res.skipped, eng.version) == (0, 2, 2**64 - 1)


def test_one_engine_shared_by_threads():
    """A writer thread applying moves and new nodes while three threads query (radius,
    kNN, box, counts, summaries, listings): every call succeeds (this crashed the
    process: a query's kernel, which runs without the GIL, read arrays another thread's
    apply had just grown), every answer is one of a whole batch's state (held under the
    engine's lock, the live count is 5000 plus whole batches of 200 and a radius around
    everything finds exactly those nodes; kNN distances are the brute force's for the
    positions the answer names), and the end state is the one the writer's batches give."""
    import threading

    from test_spatial import engine_with_points

    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (5000, 3))
    eng, nids, owner = engine_with_points(pts, n_graphs=4)
    errors, added = [], []
    done = threading.Event()

    def writer():
        r = np.random.default_rng(1)
        try:
            for _ in range(60):
                rows = []
                for _ in range(100):
                    i = int(r.integers(0, len(nids)))
                    rows.append({**{c: None for c in EVENT_SCHEMA.names}, "event_type": 12, "graph_id": owner[i],
                                 "occurred_at": 5, "node_id": nids[i], "x": float(r.uniform(0, 100)), "y": 1.0,
                                 "z": 1.0})
                for _ in range(200):  # growth: the arrays are replaced by bigger ones
                    n = uuid.uuid4().bytes
                    added.append(n)
                    rows.append({**{c: None for c in EVENT_SCHEMA.names}, "event_type": 10, "graph_id": owner[0],
                                 "occurred_at": 6, "node_id": n, "x": float(r.uniform(0, 100)), "y": 2.0, "z": 2.0})
                eng.apply(rows_to_batch(rows))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))
        finally:
            done.set()

    def reader(seed):
        r = np.random.default_rng(seed)
        while not done.is_set():
            c = r.uniform(0, 100, (int(r.choice([1, 5, 100])), 3))
            try:
                with eng._lock:  # one state for these calls (re-entrant: each takes it too)
                    n = eng.totals()["nodes"]
                    everything = int(eng.nodes_within([50, 50, 50], 1000.0, count_only=True)[0])
                    knn = eng.nearest(c[:1], 5).column("distance").to_numpy()
                    N = eng._p.N  # brute force over the live nodes' positions of that state
                    live = np.flatnonzero(N.alive[: int(N.meta[0])])
                    want = np.sort(np.sqrt(((N.pos[live] - c[0]) ** 2).sum(1)))[:5]
                assert (n - 5000) % 200 == 0 and everything == n, (n, everything)
                np.testing.assert_allclose(knn, want, rtol=0, atol=1e-9)
                eng.nodes_within(c, 3.0)
                eng.nearest(c, 5)
                eng.nodes_in_box([0, 0, 0], [10, 10, 10])
                eng.nodes_within(c, 3.0, count_only=True)
                eng.graph_summaries()
                eng.find_nodes(owner[1], limit=10)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert eng.totals()["nodes"] == 5000 + len(added)
    assert eng.nodes_within([50, 50, 50], 1000.0, count_only=True).tolist() == [5000 + len(added)]


def test_a_batch_refused_past_the_type_limit_leaves_the_pools_as_they_were(monkeypatch):
    """Past the int16 type codes a batch is refused whole (ValueError, nothing applied),
    and the names and types it brought are forgotten: later batches within the limit
    apply (the pool had kept them, so every later batch was refused too); a compaction
    frees the types nothing live uses."""
    import cim_flow._projection as proj

    monkeypatch.setattr(proj, "_INT16_MAX", 10)
    g = uuid.UUID(int=1).bytes

    def node(i, typ, name=None):
        return _ev(10, g, 2, node_id=uuid.UUID(int=100 + i).bytes, node_type=typ, name=name, x=0.0, y=0.0, z=0.0)

    eng = Engine()
    eng.compact_min = -1
    eng.apply(rows_to_batch([_ev(1, g, 1)] + [node(i, f"T{i}") for i in range(8)]))
    strings, types = len(eng._p.strings), len(eng._p.types)
    with pytest.raises(ValueError, match="more than 10 distinct node/edge types"):
        eng.apply(rows_to_batch([node(20 + i, f"N{i}", name=f"label{i}") for i in range(4)]))
    assert (len(eng._p.strings), len(eng._p.types)) == (strings, types)
    assert eng.totals()["nodes"] == 8 and eng._p.strings.get("label0") == -1 and eng._p.types.get("N0") == -1
    res = eng.apply(rows_to_batch([node(30, "T1"), node(31, "N0", name="label0"), node(32, "N1")]))
    assert res.applied == 3 and len(eng._p.types) == 10
    assert [r["node_type"] for r in eng.find_nodes(node_type="N0").to_pylist()] == ["N0"]
    # the nodes typed T2..T7 removed: a compaction frees those codes for new types
    eng.apply(rows_to_batch([_ev(13, g, 3, node_id=uuid.UUID(int=100 + i).bytes) for i in range(2, 8)]))
    with pytest.raises(ValueError):
        eng.apply(rows_to_batch([node(40, "X1")]))
    assert eng.compact()["types"] == 6
    assert eng.apply(rows_to_batch([node(40, "X1")])).applied == 1
    assert sorted(r["node_type"] for r in eng.find_nodes().to_pylist()) == ["N0", "N1", "T0", "T1", "T1", "X1"]
