"""decode_json: every wire form and alias, every error reason, and fuzzing."""
import json
import random
import uuid

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cim_flow import EVENT_SCHEMA, DecodeError, Engine, EventType, decode_json

G = uuid.UUID("11111111-2222-4333-8444-555555555555")
N = uuid.UUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
N2 = uuid.UUID("abababab-bbbb-4ccc-8ddd-eeeeeeeeeeee")
E = uuid.UUID("99999999-8888-4777-8666-555555555555")
T_MS = 1714564800123  # 2024-05-01T12:00:00.123Z
T_US = T_MS * 1000


def enc(obj) -> bytes:
    return json.dumps(obj).encode()


def one(obj, **kw):
    batch, errors = decode_json([enc(obj) if not isinstance(obj, bytes) else obj], **kw)
    assert errors == [], errors
    assert batch.schema.equals(EVENT_SCHEMA)
    assert batch.num_rows == 1
    return batch.to_pylist()[0]


def ts(row):
    return pa.scalar(row["occurred_at"], pa.timestamp("us", "UTC")).cast(pa.int64()).as_py()


FIELDS = {"graph_id": str(G), "node_id": str(N), "position": {"x": 1.0, "y": 2.0, "z": 3.0},
          "label": "n1", "node_type": "Concept", "occurred_at": "2024-05-01T12:00:00.123Z"}


def check_node_added(row):
    assert row["event_type"] == EventType.NodeAdded
    assert row["graph_id"] == G.bytes and row["node_id"] == N.bytes
    assert (row["x"], row["y"], row["z"]) == (1.0, 2.0, 3.0)
    assert row["name"] == "n1" and row["node_type"] == "Concept"
    assert ts(row) == T_US


def test_externally_tagged():
    check_node_added(one({"NodeAdded": FIELDS}))


def test_internally_tagged_type_and_event_type():
    check_node_added(one({"type": "NodeAdded", **FIELDS}))
    check_node_added(one({"event_type": "NodeAdded", **FIELDS}))


def test_cim_envelope():
    ev, corr, cause = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    payload = dict(FIELDS)
    del payload["graph_id"], payload["occurred_at"]
    row = one({"event_id": str(ev), "event_type": "NodeAdded", "aggregate_id": str(G),
               "timestamp": "2024-05-01T14:00:00.123+02:00", "correlation_id": str(corr),
               "causation_id": str(cause), "payload": payload})
    check_node_added(row)
    assert row["event_id"] == ev.bytes
    assert row["correlation_id"] == corr.bytes and row["causation_id"] == cause.bytes
    # payload.graph_id wins over aggregate_id
    other = uuid.uuid4()
    row = one({"event_type": "NodeAdded", "aggregate_id": str(other), "timestamp": T_MS,
               "payload": dict(payload, graph_id=str(G))})
    assert row["graph_id"] == G.bytes


@pytest.mark.parametrize("form", ["str", "obj"])
def test_id_forms(form):
    idv = (lambda u: str(u)) if form == "str" else (lambda u: {"id": str(u)})
    row = one({"EdgeAdded": {"graph_id": idv(G), "edge_id": idv(E), "source": idv(N),
                             "target_id": idv(N2), "weight": 0.25, "edge_type": "Similarity",
                             "occurred_at": T_MS}})
    assert row["event_type"] == EventType.EdgeAdded
    assert (row["graph_id"], row["edge_id"], row["source_id"], row["target_id"]) == (G.bytes, E.bytes, N.bytes, N2.bytes)
    assert row["weight"] == 0.25 and row["edge_type"] == "Similarity"
    assert ts(row) == T_US


def test_positions_and_times():
    base = {"type": "NodeMoved", "graph_id": str(G), "node_id": str(N)}
    r = one({**base, "new_position": [4, 5, 6], "timestamp": T_MS})
    assert (r["x"], r["y"], r["z"], ts(r)) == (4.0, 5.0, 6.0, T_US)
    r = one({**base, "position": {"x": -1, "y": 0.5, "z": 1e300}, "created_at": "2024-05-01T12:00:00.123+00:00"})
    assert (r["x"], r["y"], r["z"], ts(r)) == (-1.0, 0.5, 1e300, T_US)
    r = one({**base, "position": [1, 1, 1], "updated_at": "2024-05-01T12:00:00.123Z"})
    assert ts(r) == T_US
    # no time anywhere: received_at
    r = one({**base, "position": [1, 1, 1]}, received_at=T_US)
    assert ts(r) == T_US


def test_names():
    assert one({"GraphCreated": {"graph_id": str(G), "name": "roads", "occurred_at": T_MS}})["name"] == "roads"
    assert one({"GraphRenamed": {"graph_id": str(G), "new_name": "streets", "occurred_at": T_MS}})["name"] == "streets"


def test_metadata_kept_as_json_text():
    r = one({"type": "GraphCreated", "graph_id": str(G), "occurred_at": T_MS,
             "metadata": {"owner": "ops", "tags": [1, 2], "nested": {"a": None}}})
    assert json.loads(r["metadata"]) == {"owner": "ops", "tags": [1, 2], "nested": {"a": None}}



def test_metadata_null_is_null_in_every_path():
    """``"metadata": null`` is no metadata (not the text "null"), in a small call and in a
    batch of 64+ (the other decoding path); an envelope's metadata fills a null payload's."""
    plain = enc({"type": "GraphCreated", "graph_id": str(G), "occurred_at": T_MS, "metadata": None})
    env = enc({"event_type": "GraphCreated", "aggregate_id": str(G), "timestamp": T_MS,
               "event_id": str(uuid.UUID(int=7)), "metadata": {"src": "env"}, "payload": {"metadata": None}})
    for payloads in ([plain, env], [plain, env] * 40):
        batch, errors = decode_json(payloads, received_at=0)
        assert errors == []
        meta = batch.column("metadata").to_pylist()
        assert meta[0::2] == [None] * (len(payloads) // 2)
        assert [json.loads(m) for m in meta[1::2]] == [{"src": "env"}] * (len(payloads) // 2)


ALIASES = {
    "GraphCreated": 1, "GraphUpdated": 2, "GraphRenamed": 2, "GraphArchived": 3, "GraphDeleted": 4,
    "NodeAdded": 10, "NodeCreated": 10, "NodeUpdated": 11, "NodeMoved": 12, "NodeRemoved": 13,
    "NodeDeleted": 13, "EdgeAdded": 20, "EdgeConnected": 20, "EdgeCreated": 20, "EdgeUpdated": 21,
    "EdgeRemoved": 23, "EdgeDeleted": 23, "EdgeDisconnected": 23,
}


@pytest.mark.parametrize("name,code", sorted(ALIASES.items()))
def test_aliases_every_form(name, code):
    f = {"graph_id": str(G), "occurred_at": T_MS}
    assert one({name: f})["event_type"] == code
    assert one({"type": name, **f})["event_type"] == code
    assert one({"event_type": name, "aggregate_id": str(G), "timestamp": T_MS, "payload": {}})["event_type"] == code


def test_stable_derived_event_id():
    p = enc({"type": "GraphCreated", "graph_id": str(G), "occurred_at": T_MS})
    q = enc({"type": "GraphCreated", "graph_id": str(G), "occurred_at": T_MS + 1})
    b1, _ = decode_json([p, q])
    b2, _ = decode_json([p])
    ids = b1.column("event_id").to_pylist()
    assert ids[0] == b2.column("event_id")[0].as_py()
    assert ids[0] != ids[1]
    assert uuid.UUID(bytes=ids[0]).version == 8


ERRORS = [
    (b"{bad", "invalid JSON"),
    (b"", "invalid JSON"),
    (b"[1, 2]", "payload must be a JSON object"),
    (enc({"type": "Foo", "graph_id": str(G)}), "unknown event type 'Foo'"),
    (enc({"Foo": {"graph_id": str(G)}}), "unknown event type 'Foo'"),
    (enc({"NodeAdded": 5}), "event fields must be a JSON object"),
    (enc({"NodeAdded": [str(G)]}), "event fields must be a JSON object"),
    (enc({"graph_id": str(G)}), "event type missing"),
    (enc({"type": "NodeAdded", "node_id": str(N)}), "graph_id missing"),
    (enc({"type": "NodeAdded", "graph_id": str(G), "node_id": "not-a-uuid"}), "bad UUID in node_id"),
    (enc({"type": "NodeAdded", "graph_id": 17}), "bad UUID in graph_id"),
    (enc({"type": "NodeAdded", "graph_id": str(G), "position": [1, 2]}), "position must be 3 finite numbers"),
    (enc({"type": "NodeAdded", "graph_id": str(G), "position": {"x": 1}}), "position must be 3 finite numbers"),
    (b'{"type": "NodeAdded", "graph_id": "%s", "position": [1, 2, 1e999]}' % str(G).encode(),
     "position must be 3 finite numbers"),
    (enc({"type": "NodeAdded", "graph_id": str(G), "timestamp": "yesterday"}), "bad time in timestamp"),
    # what Python's json.dumps writes for non-finite floats (NaN, Infinity: not JSON numbers)
    (json.dumps({"type": "NodeAdded", "graph_id": str(G), "position": [float("nan"), 0, 0]}).encode(),
     "position must be 3 finite numbers"),
    (json.dumps({"type": "NodeMoved", "graph_id": str(G), "new_position": {"x": 0, "y": float("-inf"), "z": 0}}
                ).encode(), "position must be 3 finite numbers"),
    (json.dumps({"type": "EdgeAdded", "graph_id": str(G), "weight": float("inf")}).encode(),
     "weight must be a finite number"),
    (json.dumps({"type": "NodeAdded", "graph_id": str(G), "metadata": {"k": float("nan")}}).encode(),
     "metadata must be JSON"),
    (b'{"type": "NodeAdded", "graph_id": "%s", "position": [1, 2, NaN' % str(G).encode(), "invalid JSON"),
    # nested deep: the walk to the NaN finds it (no RecursionError out of decode_json)
    (b'{"type": "NodeAdded", "graph_id": "%s", "metadata": %sNaN%s}' % (str(G).encode(), b"[" * 200, b"]" * 200),
     "metadata must be JSON"),
    # nested past Python's recursion limit, and bytes that are not UTF-8 inside a string:
    # reasons that say so (they read "invalid event: RecursionError: ..." before)
    (b'{"type": "GraphCreated", "graph_id": "%s", "metadata": {"a": %s1%s}}' % (
        str(G).encode(), b"[" * 20000, b"]" * 20000), "JSON nested too deeply"),
    (b'{"type": "GraphCreated", "graph_id": "%s", "name": "\xff\xfe"}' % str(G).encode(), "invalid UTF-8 in a string"),
]


@pytest.mark.parametrize("payload,reason", ERRORS)
def test_error_reasons(payload, reason):
    good = enc({"type": "GraphCreated", "graph_id": str(G), "occurred_at": T_MS})
    batch, errors = decode_json([good, payload, good])
    assert batch.num_rows == 2
    assert len(errors) == 1 and isinstance(errors[0], DecodeError)
    assert errors[0].index == 1
    assert errors[0].reason.startswith(reason), errors[0].reason


def test_mixed_forms_one_call_feed_engine():
    rng = random.Random(3)
    nodes = [uuid.uuid4() for _ in range(5)]
    payloads = [enc({"GraphCreated": {"graph_id": {"id": str(G)}, "name": "g", "occurred_at": T_MS}})]
    for i, n in enumerate(nodes):
        form = i % 3
        f = {"node_id": str(n), "position": [rng.random(), rng.random(), rng.random()]}
        if form == 0:
            payloads.append(enc({"NodeAdded": {"graph_id": str(G), **f, "timestamp": T_MS + i}}))
        elif form == 1:
            payloads.append(enc({"type": "NodeCreated", "graph_id": str(G), **f, "occurred_at": T_MS + i}))
        else:
            payloads.append(enc({"event_type": "NodeAdded", "aggregate_id": str(G), "timestamp": T_MS + i,
                                 "payload": f}))
    payloads.append(b"garbage")
    payloads.append(enc({"EdgeConnected": {"graph_id": str(G), "edge_id": str(E), "source": str(nodes[0]),
                                           "target": str(nodes[1]), "occurred_at": T_MS + 99}}))
    out = decode_json(payloads)
    assert [e.index for e in out[1]] == [6]
    eng = Engine()
    res = eng.apply(out)
    assert (res.applied, res.ignored) == (7, 0)
    s = eng.graph_summary(G)
    assert (s["node_count"], s["edge_count"], s["name"]) == (5, 1, "g")


def test_a_utf8_byte_order_mark_is_skipped():
    p = enc({"type": "GraphCreated", "graph_id": str(G), "name": "bom", "occurred_at": T_MS})
    b, e = decode_json([b"\xef\xbb\xbf" + p, p])
    assert e == [] and b.column("name").to_pylist() == ["bom", "bom"]


def test_accepts_str_and_memoryview():
    p = enc({"type": "GraphCreated", "graph_id": str(G), "occurred_at": T_MS})
    b, e = decode_json([p.decode(), memoryview(p), bytearray(p)])
    assert b.num_rows == 3 and e == []


def test_empty_input():
    b, e = decode_json([])
    assert b.num_rows == 0 and e == [] and b.schema.equals(EVENT_SCHEMA)


def _mutate(rng, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(4)
        if op == 0 and b:
            del b[rng.randrange(len(b))]
        elif op == 1:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif op == 2 and b:
            b[rng.randrange(len(b))] = rng.choice(b'{}[]":,0123456789.-eE tfn\\')
        else:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.choice([b'"x"', b"null", b"[]", b"{}", b"1e999", b'"NodeAdded"', b"-"])
    return bytes(b)


SEEDS = [
    enc({"NodeAdded": FIELDS}), enc({"type": "EdgeConnected", "graph_id": {"id": str(G)}, "edge_id": str(E),
                                     "source": str(N), "target": str(N2), "weight": 1}),
    enc({"event_type": "NodeMoved", "aggregate_id": str(G), "timestamp": T_MS,
         "payload": {"node_id": str(N), "new_position": [1, 2, 3]}}),
]


def _fuzz(n, seed):
    rng = random.Random(seed)
    payloads = []
    for _ in range(n):
        if rng.random() < 0.1:
            payloads.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))))
        else:
            payloads.append(_mutate(rng, rng.choice(SEEDS)))
    for start in range(0, n, 5000):
        chunk = payloads[start:start + 5000]
        batch, errors = decode_json(chunk, received_at=0)
        assert batch.num_rows + len(errors) == len(chunk)
        assert len({e.index for e in errors}) == len(errors)
        assert all(e.reason for e in errors)
        Engine().apply(batch)  # whatever decoded is acceptable to the engine


def test_fuzz_small():
    _fuzz(5000, 1)


@pytest.mark.slow
def test_fuzz_100k():
    _fuzz(100_000, 2)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_fuzz_hypothesis_random_bytes(payloads):
    batch, errors = decode_json(payloads, received_at=0)
    assert batch.num_rows + len(errors) == len(payloads)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
        ["type", "graph_id", "node_id", "position", "payload", "NodeAdded", "id", "x", "timestamp", "metadata"]),
        c, max_size=4), max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=6))
def test_fuzz_hypothesis_json_shapes(values):
    payloads = [json.dumps(v).encode() for v in values]
    batch, errors = decode_json(payloads, received_at=0)
    assert batch.num_rows + len(errors) == len(payloads)


def test_batch_path_equals_payload_by_payload():
    """Batches of 64+ take the one-call msgspec path; rows must equal decoding one by one."""
    rng = random.Random(8)
    payloads = []
    for i in range(300):
        f = {"graph_id": str(G), "node_id": str(uuid.UUID(int=i + 1)), "position": [rng.random(), 1, 2],
             "occurred_at": T_MS + i, "label": f"n{i}", "metadata": {"i": i}}
        form = i % 3
        if form == 0:
            payloads.append(enc({"type": "NodeAdded", **f}))
        elif form == 1:
            payloads.append(enc({"NodeCreated": f}))
        else:
            g = f.pop("graph_id")
            payloads.append(enc({"event_type": "NodeAdded", "aggregate_id": g, "timestamp": T_MS + i,
                                 "event_id": str(uuid.UUID(int=10**6 + i)), "payload": f}))
    batch, errors = decode_json(payloads, received_at=0)
    assert errors == []
    one_by_one = [decode_json([p], received_at=0)[0].to_pylist()[0] for p in payloads]
    assert batch.to_pylist() == one_by_one
    # one bad payload anywhere: the batch path is abandoned, errors still exact
    bad = payloads[:150] + [b'{"type": "NodeAdded", "graph_id": 5}'] + payloads[150:]
    batch, errors = decode_json(bad, received_at=0)
    assert [(e.index, e.reason) for e in errors] == [(150, "bad UUID in graph_id")]
    assert batch.to_pylist() == one_by_one
    # a payload with its own newline (pretty-printed) also falls back safely
    pretty = payloads[:100] + [json.dumps(json.loads(payloads[100]), indent=2).encode()] + payloads[101:]
    rows = decode_json(pretty, received_at=0)[0].to_pylist()
    assert rows[:100] + rows[101:] == one_by_one[:100] + one_by_one[101:]
    # that payload's bytes differ, so its derived id and raw metadata text do too
    strip = lambda r: {k: v for k, v in r.items() if k not in ("event_id", "metadata")}  # noqa: E731
    assert strip(rows[100]) == strip(one_by_one[100])
    assert json.loads(rows[100]["metadata"]) == {"i": 100}
