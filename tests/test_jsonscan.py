"""The compiled JSON scanner (decode fast path) against the general msgspec path and
against Python's own float parsing: whatever it accepts must come out identical."""
import json
import random
import struct
import sys
import uuid

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cim_flow import decode_json
from cim_flow._decode import _decode_general
from kernels import jsonscan

from test_decode import SEEDS, _mutate

G = str(uuid.UUID("11111111-2222-4333-8444-555555555555"))
N = str(uuid.UUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"))


def parse(strings):
    data = [s.encode() for s in strings]
    offs = np.zeros(len(data) + 1, np.int64)
    offs[1:] = np.cumsum([len(d) for d in data])
    out = np.zeros(len(data))
    ok = np.zeros(len(data), bool)
    bits = np.zeros(1, np.uint64)
    jsonscan.parse_floats(np.frombuffer(b"".join(data), np.uint8), offs, out, ok, bits, bits.view(np.float64))
    return out, ok


def bits_of(x):
    return struct.pack("<d", x)


def check_floats(strings, min_ok=0.0):
    out, ok = parse(strings)
    for s, v, good in zip(strings, out, ok):
        if good:
            want = float(s) if any(c in s for c in ".eE") else float(int(s))
            assert bits_of(v) == bits_of(want), (s, v, want)
    assert ok.mean() >= min_ok


def test_float_reprs_round_trip_exactly():
    rng = np.random.default_rng(1)
    vals = np.concatenate([rng.random(20000) * 100, rng.normal(0, 1e6, 5000),
                           np.exp(rng.uniform(-700, 700, 20000)), rng.integers(-2**62, 2**62, 2000) / 7])
    strings = [repr(float(v)) for v in vals] + [repr(-float(v)) for v in vals[:3000]]
    check_floats(strings, min_ok=0.99)


def test_float_random_decimal_strings():
    rng = random.Random(2)
    strings = []
    for _ in range(30000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 20))).lstrip("0") or "0"
        k = rng.randrange(0, len(digits) + 1)
        s = digits[:k] + ("." + digits[k:] if k < len(digits) else "")
        s = s if not s.startswith(".") else "0" + s
        if rng.random() < 0.5:
            s += f"e{rng.randrange(-330, 310)}"
        strings.append(("-" if rng.random() < 0.3 else "") + s)
    check_floats(strings, min_ok=0.9)


def test_float_edge_cases():
    cases = ["0", "-0", "0.0", "-0.0", "1", "9007199254740992", "9007199254740993", "9007199254740995",
             "1e23", "8.98846567431158e307", "1.7976931348623157e308", "2.2250738585072014e-308",
             "0.1", "0.3", "123456789012345678e-5", "1e-22", "1e22", "4.35679e-10", "7.2057594037927933e16",
             "3.0517578125e-05", "2.9802322387695312e-08", "1.00000000000000011102230246251565404236316680908203125"]
    check_floats(cases)
    out, ok = parse(["-0", "-0.0"])
    assert bits_of(out[0]) == bits_of(0.0) and bits_of(out[1]) == bits_of(-0.0)  # as msgspec does
    _, ok = parse(["1e400", "4.9e-324", "01", "1.", ".5", "-", "1e", "1.5e+"])
    assert not ok.any()


def same(payloads):
    b1, e1 = decode_json(payloads, received_at=0)
    b2, e2 = _decode_general(payloads, 0)
    assert e1 == e2
    assert b1.schema.equals(b2.schema)
    for name in b1.schema.names:
        assert b1.column(name).to_pylist() == b2.column(name).to_pylist(), name
    return b1, e1


def test_scanner_equals_general_path_on_fuzzed_payloads():
    rng = random.Random(3)
    payloads = []
    for _ in range(4000):
        if rng.random() < 0.05:
            payloads.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))))
        else:
            payloads.append(_mutate(rng, rng.choice(SEEDS)))
    payloads += SEEDS * 20
    rng.shuffle(payloads)
    batch, errors = same(payloads)
    assert batch.num_rows > 100 and errors


def test_scanner_handles_every_common_shape():
    """Rows the scanner takes (status 0) and rows it hands on, in one call, in order."""
    ev = str(uuid.uuid4())
    payloads = [
        json.dumps({"type": "GraphCreated", "graph_id": G, "name": "g", "created_at": "2024-05-01T12:00:00+02:00"}),
        json.dumps({"NodeAdded": {"graph_id": {"id": G}, "node_id": N, "position": {"z": 3, "x": 1, "y": 2.5},
                                  "node_type": "T", "metadata": {"a": [1, {"b": None}], "c": "\u00e9"}}}),
        json.dumps({"event_type": "NodeMoved", "aggregate_id": G, "timestamp": 1714564800123, "event_id": ev,
                    "correlation_id": ev, "metadata": {"m": 1}, "seq": 7,
                    "data": {"node_id": N, "new_position": [1e-3, -2E2, 0]}}),
        json.dumps({"type": "NodeUpdated", "graph_id": G, "node_id": N, "x": 1, "y": 2, "z": 3, "label": "a b",
                    "unknown": [True, False, None, {"k": "\\n\""}], "weight": None}),
        json.dumps({"type": "EdgeAdded", "graph_id": G, "edge_id": N, "source": N, "target_id": N,
                    "strength": 0.25, "edge_type": "E", "occurred_at": "2024-05-01 12:00:00.5z"}),
        json.dumps({"type": "NodeAdded", "graph_id": G, "node_id": N, "name": "caf\u00e9"}, ensure_ascii=False),
        json.dumps({"type": "NodeAdded", "graph_id": G, "node_id": N.upper()}),
        json.dumps({"type": "node.created", "graph_id": G, "node_id": N, "position": [1, 2, 3]}, indent=2),
        '{"type": "NodeAdded", "graph_id": "%s", "type": "NodeRemoved", "node_id": "%s"}' % (G, N),
        json.dumps({"type": 10, "graph_id": G}),
        json.dumps({"type": "GraphCreated", "graph_id": G, "timestamp": 1714564800123.5}),
        json.dumps({"event_type": "GraphCreated", "aggregate_id": G, "payload": {"graph_id": G, "payload": {}}}),
    ]
    payloads = [p.encode() for p in payloads]
    same(payloads)
    for p in payloads:
        same([p])


def test_special_byte_at_every_offset_of_a_string_or_number():
    """Strings are scanned and digits parsed eight bytes at a time: a quote, backslash,
    control or non-ASCII byte, or a non-digit, at every offset of a long name or number
    (and across the 8-byte steps) must give exactly what the general path gives."""
    payloads = []
    for k in range(20):
        for ch in ['"', "\\", "\n", "\u00e9", "\x01", "x"]:
            name = "n" * k + ch + "m" * (19 - k)
            payloads.append(json.dumps({"type": "GraphCreated", "graph_id": G, "name": name},
                                       ensure_ascii=(ch != "\u00e9")).encode())
        digits = "1234567890123456789"
        for bad in ("a", ".", "e", "-", " "):
            num = digits[:k] + bad + digits[k:]
            payloads.append(('{"type": "NodeAdded", "graph_id": "%s", "node_id": "%s", '
                             '"position": [%s, 0.%s, 1]}' % (G, N, num, num)).encode())
        payloads.append(('{"type": "GraphCreated", "graph_id": "%s", "timestamp": %s}'
                         % (G, digits[: k % 13 + 1])).encode())
    batch, errors = same(payloads)
    assert batch.num_rows > 100 and errors


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6) | st.sampled_from([G, N, "NodeAdded", "EdgeRemoved", "2024-05-01T12:00:00Z"]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
        ["type", "event_type", "graph_id", "aggregate_id", "node_id", "source", "target_id", "position",
         "new_position", "payload", "data", "NodeAdded", "id", "x", "y", "z", "weight", "name", "label",
         "timestamp", "occurred_at", "metadata", "seq", "event_id", "node_type"]), c, max_size=6),
    max_leaves=16)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, min_size=1, max_size=6))
def test_scanner_equals_general_path_hypothesis(values):
    same([json.dumps(v).encode() for v in values])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_uuid_text_with_one_byte_changed_is_accepted_exactly_when_valid():
    """The scanner reads UUID text eight hex digits at a time (SWAR): any single byte
    swapped for any printable or non-ASCII character, upper and lower case mixed,
    must be accepted exactly when it is still canonical UUID text, with the same bytes."""
    rng = random.Random(5)
    chars = [chr(c) for c in range(32, 127)] + ["\u00e9", "\x7f"]
    hexdigits = set("0123456789abcdefABCDEF")
    payloads, want = [], []
    for _ in range(3000):
        u = str(uuid.UUID(int=rng.getrandbits(128)))
        u = "".join(c.upper() if rng.random() < 0.3 else c for c in u)
        if rng.random() < 0.6:
            p = rng.randrange(36)
            u = u[:p] + rng.choice(chars) + u[p + 1:]
        canonical = all((c == "-") if i in (8, 13, 18, 23) else (c in hexdigits) for i, c in enumerate(u))
        payloads.append(json.dumps({"type": "GraphCreated", "graph_id": u, "occurred_at": 1}).encode())
        want.append(uuid.UUID(u).bytes if canonical else None)
    batch, errors = decode_json(payloads)
    rejected = {e.index for e in errors}
    got = iter(batch.column("graph_id").to_pylist())
    for i, w in enumerate(want):
        if w is None:
            assert i in rejected, payloads[i]
        else:
            assert i not in rejected and next(got) == w, payloads[i]
    assert 0 < len(rejected) < len(payloads)


def _state_arrays(engine):
    st = engine._p.state()
    out = {"strings": st["strings"], "types": st["types"], "version": st["version"]}
    for ent in ("G", "N", "E"):
        for k, v in st[ent].items():
            if k not in ("tlist", "dlist"):  # per-batch scratch
                out[f"{ent}.{k}"] = v
    return out


def test_column_fast_path_equals_arrow_path():
    """The service's decoder -> kernel path (no Arrow arrays) leaves exactly the state, and
    gives exactly the per-row outcomes, of decode -> record batch -> ``Engine.apply``."""
    from cim_flow import Engine
    from cim_flow._decode import decode_spans, decode_spans_columns
    from cim_flow._demo import SyntheticEvents

    rng = random.Random(11)
    gen = SyntheticEvents(5, max_graphs=6, nodes_per_graph=40)
    payloads = [gen.next()[2] for _ in range(2500)]
    g2 = str(uuid.uuid4())
    extra = [  # types, labels, null weights, missing positions, unknown things, a scanner fallback
        {"type": "GraphCreated", "graph_id": g2, "name": "two words"},
        {"type": "NodeAdded", "graph_id": g2, "node_id": N, "position": [1, 2, 3], "node_type": "T1", "label": "x"},
        {"type": "NodeAdded", "graph_id": g2, "node_id": G, "node_type": "T2"},
        {"type": "EdgeAdded", "graph_id": g2, "edge_id": G, "source": N, "target": G, "edge_type": "E1",
         "weight": None},
        {"type": "NodeRemoved", "graph_id": g2, "node_id": str(uuid.uuid4())},
        {"type": "EdgeAdded", "graph_id": str(uuid.uuid4()), "edge_id": G, "source": N, "target": G},
        {"type": "GraphRenamed", "graph_id": g2, "new_name": "caf\u00e9"},
        {"type": "NodeMoved", "graph_id": g2, "node_id": N, "position": {"x": 1, "y": "bad", "z": 2}},
    ]
    for e in extra:
        payloads.insert(rng.randrange(len(payloads)), json.dumps(e, ensure_ascii=False).encode())
    a, b = Engine(), Engine()
    i, seq, fast = 0, 0, 0
    while i < len(payloads):
        size = rng.choice([1, 3, 25, 70, 300, 900])
        part = payloads[i:i + size]
        i += size
        joined = b"".join(part)
        ends = np.cumsum([len(p) for p in part])
        starts = ends - [len(p) for p in part]
        recv = np.full(len(part), 1_700_000_000_000_000 + i, np.int64)
        batch, errors = decode_spans(joined, starts, ends, received_at=recv)
        cols, batch2, errors2 = decode_spans_columns(joined, starts, ends, received_at=recv)
        assert errors == errors2
        seqs = np.arange(seq + 1, seq + 1 + batch.num_rows, dtype=np.uint64)
        seq += batch.num_rows
        ra = a.apply(batch.set_column(0, "seq", pa.array(seqs, pa.uint64())))
        if cols is None:
            rb = b.apply(batch2.set_column(0, "seq", pa.array(seqs, pa.uint64())))
        else:
            fast += 1
            rb = b._apply_columns(cols.with_seq(seqs))
        assert (ra.applied, ra.ignored, ra.skipped, ra.version) == (rb.applied, rb.ignored, rb.skipped, rb.version)
        np.testing.assert_array_equal(ra.status, rb.status)
    assert fast > 5 and a.totals()["nodes"] > 50 and a.totals()["edges"] > 20
    sa, sb = _state_arrays(a), _state_arrays(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], np.ndarray):
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
        else:
            assert sa[k] == sb[k], k
    assert a.graph_summaries().equals(b.graph_summaries())
