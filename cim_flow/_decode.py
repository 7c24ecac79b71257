"""JSON wire forms of CIM graph events -> one record batch in EVENT_SCHEMA.

Pure and I/O-free.  Every payload becomes a row or a :class:`DecodeError`;
nothing raises.  The per-payload Python work is one msgspec call into a typed
``Struct`` (validation in C) and a tuple; every column after that is built and
checked as a whole (Arrow arrays, numpy masks), not per event.

Accepted, mixed freely in one call:

* externally tagged ``{"NodeAdded": {...}}`` (cim-domain-graph's serde form);
* internally tagged ``{"type": "NodeAdded", ...}`` or ``{"event_type": ...}``;
* the CIM envelope ``{"event_id", "event_type", "aggregate_id", "timestamp",
  "correlation_id", "causation_id", "payload": {...}}`` (``data`` works as
  ``payload``; the graph id comes from ``payload.graph_id``, else
  ``aggregate_id``).
"""
from __future__ import annotations

import datetime as _dt
import gc
import json as _json_std
import math
import re
import threading
import time as _time
from typing import Annotated, NamedTuple, Sequence, Union

import msgspec
import numpy as np
import pyarrow as pa

from kernels import jsonscan
from kernels.hashing import hash_spans

from ._schema import ALIAS_CODES, ALIAS_NAMES, EVENT_ALIASES, EVENT_SCHEMA, UUID_TYPE, null_array
from ._time import to_micros
from ._uuid_parse import parse_uuid_strings
from ._projection import EventColumns
from ._strings import utf8_array


class DecodeError(NamedTuple):
    """Payload ``index`` (in the input sequence) could not be decoded, for ``reason``."""

    index: int
    reason: str


class _IdObj(msgspec.Struct, gc=False):
    id: str


class _Pos(msgspec.Struct, gc=False):
    x: float
    y: float
    z: float


_Id = Union[str, _IdObj, None]
_PosT = Union[_Pos, "tuple[float, float, float]", None]
# epoch milliseconds must fit int64 microseconds; seq must fit uint64 (kept in int64 here)
_MAX_MS = (2**63 - 1) // 1000
_Ms = Annotated[int, msgspec.Meta(ge=-_MAX_MS, le=_MAX_MS)]
_MsF = Annotated[float, msgspec.Meta(ge=-_MAX_MS, le=_MAX_MS)]
_Time = Union[_dt.datetime, _Ms, _MsF, None]
_Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Type = Union[str, dict, None]


class _Evt(msgspec.Struct, gc=False):
    # field order is the tuple order used by _columns(): keep _F in step
    type: Union[str, int, None] = None
    event_type: Union[str, int, None] = None
    graph_id: _Id = None
    aggregate_id: _Id = None
    node_id: _Id = None
    edge_id: _Id = None
    source: _Id = None
    source_id: _Id = None
    target: _Id = None
    target_id: _Id = None
    position: _PosT = None
    new_position: _PosT = None
    x: Union[float, None] = None
    y: Union[float, None] = None
    z: Union[float, None] = None
    name: Union[str, None] = None
    new_name: Union[str, None] = None
    label: Union[str, None] = None
    weight: Union[float, None] = None
    strength: Union[float, None] = None
    similarity: Union[float, None] = None
    node_type: _Type = None
    edge_type: _Type = None
    occurred_at: _Time = None
    timestamp: _Time = None
    created_at: _Time = None
    updated_at: _Time = None
    event_id: _Id = None
    correlation_id: _Id = None
    causation_id: _Id = None
    seq: Union[_Seq, None] = None
    metadata: msgspec.Raw = msgspec.Raw(b"")
    payload: Union["_Evt", None] = None
    data: Union["_Evt", None] = None


_F = {name: i for i, name in enumerate(_Evt.__struct_fields__)}
_ENVELOPE_KEYS = ("event_id", "correlation_id", "causation_id", "metadata", "seq")
_TIME_FIELDS = ("occurred_at", "timestamp", "created_at", "updated_at")
_ID_FIELDS = ("graph_id", "aggregate_id", "node_id", "edge_id", "source", "source_id",
              "target", "target_id", "event_id", "correlation_id", "causation_id", "id")
_POS_FIELDS = ("position", "new_position", "x", "y", "z")

_DEC = msgspec.json.Decoder(_Evt)
_DEC_EXT = msgspec.json.Decoder(dict[str, _Evt])
_ANY = msgspec.json.Decoder()
_EXT_KEYS = {k.encode() for k in EVENT_ALIASES}
_PATH = re.compile(r"at `\$([^`]*)`")
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")



def _pc():
    """pyarrow.compute, imported on first use (~65 ms at start-up otherwise; only the
    Arrow decoding path for rare payload shapes uses it)."""
    import pyarrow.compute

    return pyarrow.compute

def _reason_of(exc: Exception, payload: bytes = b"") -> str:
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        if "UTF-8" in str(exc):  # msgspec >= 0.21 checks strings itself (older ones let
            return "invalid UTF-8 in a string"  # them through to a UnicodeDecodeError later)
        return _non_finite_reason(payload) or "invalid JSON"
    msg = str(exc)
    m = _PATH.search(msg)
    if not m:
        if "Expected `object`" in msg:
            return "payload must be a JSON object"
        return f"invalid event: {msg}"
    segs = _SEGMENT.findall(m.group(1))
    while segs and segs[-1] in ("id",) and len(segs) > 1:
        segs.pop()
    if not segs:  # the value under an external tag, e.g. {"NodeAdded": 5}
        if "Expected `object`" in msg:
            return "event fields must be a JSON object"
        return f"invalid event: {msg.split(' - at ')[0]}"
    field = segs[-1]
    if field in _POS_FIELDS:
        return "position must be 3 finite numbers"
    if field in _ID_FIELDS:
        return f"bad UUID in {field}"
    if field in _TIME_FIELDS:
        return f"bad time in {field}: expected RFC 3339 text or epoch milliseconds"
    return f"bad value in {field}: {msg.split(' - at ')[0]}"


def non_finite_keys(p: bytes) -> list | None:
    """For text that is JSON but for a non-finite number, the object keys down to the
    first one (``["position"]``); None otherwise.  Python's ``json.dumps`` writes ``NaN``
    / ``Infinity`` for such floats by default, and a number beyond float64's range
    (``1e400``) is valid JSON that parses to infinity: such input is named by its field,
    not just called invalid JSON.  For error paths only (the text is read again)."""
    try:
        path = _non_finite_path(_json_std.loads(p), [])  # the standard library reads NaN
    except (ValueError, TypeError, RecursionError):
        return None
    return None if path is None else [k for k in path if isinstance(k, str)]


def _non_finite_path(v, path):
    """Keys and indices down to the first non-finite float in ``v``, or None."""
    if isinstance(v, float):
        return None if math.isfinite(v) else path
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        found = _non_finite_path(x, path + [k])
        if found is not None:
            return found
    return None


def _non_finite_reason(p: bytes) -> str | None:
    keys = non_finite_keys(p)
    if keys is None:
        return None
    field = keys[-1] if keys else "?"
    if "metadata" in keys:
        return f"metadata must be JSON (NaN or Infinity at {field})"
    if any(k in ("position", "new_position") for k in keys) or field in _POS_FIELDS:
        return "position must be 3 finite numbers"
    if field in _TIME_FIELDS:
        return f"bad time in {field}: expected RFC 3339 text or epoch milliseconds"
    return f"{field} must be a finite number (NaN and Infinity are not JSON numbers)"


def _decode_batch(payloads):
    """All payloads in one msgspec call, or None.

    Joined with newlines: when the result holds exactly n - 1 newlines, line i is
    payload i (JSON strings cannot hold a raw newline), so nothing can be
    misattributed.  Any error in any payload, or a payload with a newline of its
    own, returns None and every payload is decoded on its own instead.
    Internally tagged rows are final; envelopes and externally tagged rows are
    redone one by one (they need normalising).
    """
    if not all(type(p) is bytes for p in payloads):
        return None
    joined = b"\n".join(payloads)
    if joined.count(b"\n") != len(payloads) - 1:
        return None
    try:
        out = _DEC.decode_lines(joined)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return out if len(out) == len(payloads) else None


def _meta_text(raw: msgspec.Raw) -> bytes | None:
    """A metadata value's JSON text; absent or ``null`` is none (as in the compiled scanner)."""
    b = bytes(raw)
    return None if not b or b == b"null" else b


def _unwrap_envelope(e: _Evt, inner: _Evt) -> _Evt:
    """The CIM envelope's payload, with the envelope's type, ids, time and metadata filled in."""
    if inner.type is None:
        inner.type = e.event_type if e.event_type is not None else e.type
    if inner.graph_id is None:
        inner.graph_id = e.aggregate_id
    for k in _ENVELOPE_KEYS:
        if getattr(inner, k) is None or (k == "metadata" and not _meta_text(inner.metadata)):
            setattr(inner, k, getattr(e, k))
    if all(getattr(inner, t) is None for t in _TIME_FIELDS):
        inner.timestamp = e.timestamp if e.timestamp is not None else e.occurred_at
    return inner


def _decode_one(p: bytes) -> _Evt:
    """One payload to an _Evt whose ``type`` holds the event name (may raise)."""
    if p[:2] == b'{"' and p[2:p.find(b'"', 2, 64)] in _EXT_KEYS:
        d = _DEC_EXT.decode(p)
        if len(d) == 1:
            ((name, e),) = d.items()
            e.type = name
            return e
    e = _DEC.decode(p)
    inner = e.payload if e.payload is not None else e.data
    if inner is not None:  # the CIM envelope
        return _unwrap_envelope(e, inner)
    if e.type is None and e.event_type is None:
        # maybe an externally tagged event with whitespace before the tag
        d = _ANY.decode(p)
        if isinstance(d, dict) and len(d) == 1:
            ((name, inner),) = d.items()
            if isinstance(inner, dict):
                if name not in EVENT_ALIASES:
                    raise _Reject(f"unknown event type {name!r}")
                d = _DEC_EXT.decode(p)
                ((name, e),) = d.items()
                e.type = name
    return e


class _Reject(Exception):
    pass


def _coalesce(cols, *names):
    arrs = [cols[n] for n in names]
    out = arrs[0]
    for a in arrs[1:]:
        if a.null_count < len(a):
            out = _pc().coalesce(out, a)
    return out


def _first_present(cols_raw, names, typ, m):
    """Arrow column of the first non-null of several alternative fields (absent ones skipped)."""
    out = None
    for n in names:
        col = cols_raw[_F[n]]
        if col.count(None) == m:
            continue
        arr = pa.array(col, typ)
        out = arr if out is None else _pc().coalesce(out, arr)
    return out if out is not None else pa.nulls(m, typ)


def _pyarray(values, typ):
    try:
        return pa.array(values, typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _id_strings(col) -> pa.Array:
    arr = _pyarray(col, pa.utf8())
    if arr is None:  # {"id": ...} objects mixed in
        arr = pa.array([v.id if type(v) is _IdObj else v for v in col], pa.utf8())
    return arr


def _type_strings(col) -> pa.Array:
    arr = _pyarray(col, pa.utf8())
    if arr is None:  # {"Custom": "x"} style enums: keep the variant name
        arr = pa.array(
            [next(iter(v), None) if isinstance(v, dict) else v for v in col], pa.utf8())
    return arr


def _types(col, m):
    if col.count(None) == m:
        return pa.DictionaryArray.from_arrays(pa.nulls(m, pa.int32()), pa.array([], pa.utf8()))
    return _type_strings(col).dictionary_encode()


def _positions(col):
    """(x, y, z float64 arrays, valid mask) from a column of _Pos / tuples / None."""
    n = len(col)
    lst = _pyarray(col, pa.list_(pa.float64(), 3))
    if lst is None:
        lst = pa.array([(v.x, v.y, v.z) if type(v) is _Pos else v for v in col],
                       pa.list_(pa.float64(), 3))
    valid = np.ones(n, bool) if lst.null_count == 0 else lst.is_valid().to_numpy(zero_copy_only=False)
    flat = lst.flatten().to_numpy(zero_copy_only=False)
    xyz = np.full((n, 3), np.nan)
    xyz[valid] = flat.reshape(-1, 3)
    return xyz, valid


_NONE = type(None)


def _time_column(col):
    """(µs int64, valid) of one time field: datetimes, or ints/floats = epoch ms."""
    m = len(col)
    kinds = set(map(type, col))
    if kinds <= {_NONE}:
        return None
    if kinds <= {int, _NONE}:
        a = pa.array(col, pa.int64())
        return (a.fill_null(0).to_numpy() * 1000,
                np.ones(m, bool) if a.null_count == 0 else a.is_valid().to_numpy(zero_copy_only=False))
    if kinds <= {_dt.datetime, _NONE}:
        a = pa.array(col, pa.timestamp("us", tz="UTC")).cast(pa.int64())
        return (a.fill_null(0).to_numpy(),
                np.ones(m, bool) if a.null_count == 0 else a.is_valid().to_numpy(zero_copy_only=False))
    us = np.zeros(m, np.int64)
    valid = np.zeros(m, bool)
    for i, v in enumerate(col):
        if v is None:
            continue
        valid[i] = True
        if isinstance(v, _dt.datetime):
            us[i] = to_micros(v)
        else:
            us[i] = int(round(v * 1000))
    return us, valid


def _times(cols, received):
    """First present time field per row, as µs; ``received`` where none is."""
    us = received.copy()
    have = np.zeros(len(received), bool)
    for col in cols:
        r = _time_column(col)
        if r is None:
            continue
        t, valid = r
        use = valid & ~have
        us[use] = t[use]
        have |= valid
        if have.all():
            break
    return us


def _received_micros(received_at, n):
    if received_at is None:
        return np.full(n, _time.time_ns() // 1000, np.int64)
    if isinstance(received_at, (list, tuple, np.ndarray)) and not isinstance(received_at, str):
        arr = np.asarray([to_micros(v) for v in received_at] if not isinstance(received_at, np.ndarray)
                         or received_at.dtype == object else received_at, np.int64)
        if arr.shape != (n,):
            raise ValueError(f"received_at has {arr.shape[0]} entries for {n} payloads")
        return arr
    return np.full(n, to_micros(received_at), np.int64)


def _stable_event_ids(payloads, rows):
    """Content-derived ids (UUID v8 from a 128-bit hash of the payload bytes)."""
    spans = [payloads[i] for i in rows]
    spans = [s if isinstance(s, bytes) else bytes(s) if not isinstance(s, str) else s.encode() for s in spans]
    offsets = np.zeros(len(spans) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, spans), np.int64, len(spans)), out=offsets[1:])
    data = np.frombuffer(b"".join(spans), np.uint8)
    return hash_spans(data, offsets)


def _fsb(b16: np.ndarray, valid: np.ndarray) -> pa.Array:
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(UUID_TYPE, len(valid), [mask, pa.py_buffer(np.ascontiguousarray(b16))],
                                 null_count=-1 if mask is not None else 0)


def decode_json(payloads: Sequence[bytes], *, received_at=None) -> tuple[pa.RecordBatch, list[DecodeError]]:
    """Decode one JSON event per payload into a record batch in ``EVENT_SCHEMA``.

    Returns ``(batch, errors)``: one row per decodable payload (in input
    order) and one :class:`DecodeError` per payload that could not be decoded.
    ``received_at`` (a time, or one per payload: a datetime, RFC 3339 text, numpy
    datetime64, or an int of µs since the epoch, the unit of ``occurred_at``) stands in
    for events that carry no time; without it the decode time is used.  An event without an
    id gets a stable one derived from its bytes (same bytes, same id).
    """
    n = len(payloads)
    if n:
        try:
            joined = b"".join(payloads)  # bytes-like payloads only (str goes the general way)
        except TypeError:
            joined = None
        if joined is not None:
            lens = np.fromiter(map(len, payloads), np.int64, n)  # ~8x a list comprehension
            ends = np.cumsum(lens)
            return _decode_scanned(joined, ends - lens, ends, _received_micros(received_at, n))
    return _decode_general(payloads, received_at)


_KW = jsonscan.keyword_table(EVENT_ALIASES)
_TS_TYPE = EVENT_SCHEMA.field("occurred_at").type


def _utf8_from_spans(buf, spans, present, col, typ):
    offs, data = jsonscan.gather_spans(buf, spans, present, col)
    return utf8_array(offs, data, present[:, col], typ)


def decode_spans(buf: bytes, starts: np.ndarray, ends: np.ndarray, *, received_at=None
                 ) -> tuple[pa.RecordBatch, list[DecodeError]]:
    """:func:`decode_json` of the payloads ``buf[starts[i]:ends[i]]`` without copying them
    out first (the NATS consumer hands over socket reads this way)."""
    starts = np.ascontiguousarray(starts, np.int64)
    ends = np.ascontiguousarray(ends, np.int64)
    return _decode_scanned(buf, starts, ends, _received_micros(received_at, len(starts)))


def decode_spans_columns(buf: bytes, starts: np.ndarray, ends: np.ndarray, *, received_at=None):
    """:func:`decode_spans` for the engine's own use: ``(EventColumns, None, [])`` when the
    compiled scanner understood every payload (no Arrow arrays are built: the service's
    small batches spent most of their time building and taking them apart again), else
    ``(None, batch, errors)`` as :func:`decode_spans` gives them."""
    starts = np.ascontiguousarray(starts, np.int64)
    ends = np.ascontiguousarray(ends, np.int64)
    received = _received_micros(received_at, len(starts))
    ok, seq, kind, t, p, ids, pos, w, sp, offs, nb, tb, eb = jsonscan.scan_columns(
        np.frombuffer(buf, np.uint8), starts, ends, *_KW, received)
    if not ok:  # some payload needs the general decoder (or is bad): the batch path names why
        return (None, *_decode_scanned(buf, starts, ends, received))
    # the kernels take read-only columns (one compiled type whatever the batch: see
    # _projection._ro); rows of a read-only array are read-only views, so one flag
    # each for the packed arrays.  The string triples stay writable, as the Arrow
    # path's are (StringPool's grouping kernel sees one type).
    for a in (seq, kind, t, p, ids, pos, w):
        a.setflags(write=False)
    return EventColumns(
        len(starts), seq=seq, seq_ok=p[0], kind=kind, t=t, t_ok=p[1],
        ids=((ids[0], p[2]), (ids[1], p[3]), (ids[2], p[4]), (ids[3], p[5]), (ids[4], p[6])),
        x=pos[0], y=pos[1], z=pos[2], pos_ok=p[7], w=w, w_ok=p[8],
        name=(offs[0], nb, sp[0]), ntype=(offs[1], tb, sp[1]), etype=(offs[2], eb, sp[2])), None, []


_TLS = threading.local()


def _scratch():
    """The scanner's working arrays, one set per thread, kept between calls (``scan``
    resets what it reads at each payload; making 14 arrays a call cost ~20 µs)."""
    s = getattr(_TLS, "scratch", None)
    if s is None:
        s = _TLS.scratch = jsonscan.new_scratch()
    return s


def _decode_scanned(joined, starts, ends, received):
    """The compiled scanner for every payload it fully understands; the general path
    (which also names every error) for the rest; rows back in input order."""
    n = len(starts)
    buf = np.frombuffer(joined, np.uint8)
    status = np.empty(n, np.uint8)
    kind = np.empty(n, np.int8)
    oid = np.zeros((8, n, 16), np.uint8)
    oidp = np.zeros((8, n), bool)
    tus = np.empty(n, np.int64)
    tusp = np.zeros(n, bool)
    seq = np.zeros(n, np.int64)
    seqp = np.zeros(n, bool)
    spans = np.zeros((n, 4, 2), np.int64)
    spp = np.zeros((n, 4), bool)
    xyz = np.zeros((n, 3))
    xyzp = np.zeros(n, bool)
    wgt = np.zeros(n)
    wgtp = np.zeros(n, bool)
    jsonscan.scan(buf, starts, ends, *_KW, status, kind, oid, oidp, tus, tusp, seq, seqp,
                  spans, spp, xyz, xyzp, wgt, wgtp, _scratch())
    ok = status == 0
    if ok.all():
        return _decode_scanned_rows(buf, None, received, kind, oid, oidp, tus, tusp,
                                    seq, seqp, spans, spp, xyz, xyzp, wgt, wgtp), []
    slow = np.flatnonzero(~ok)
    slow_payloads = [joined[starts[i]:ends[i]] for i in slow]
    sel = np.flatnonzero(ok)
    if sel.size == 0:
        return _decode_general(slow_payloads, received)
    fast = _decode_scanned_rows(buf, sel, received, kind, oid, oidp, tus, tusp,
                                seq, seqp, spans, spp, xyz, xyzp, wgt, wgtp)
    sb, serr = _decode_general(slow_payloads, received[slow])
    errors = [DecodeError(int(slow[e.index]), e.reason) for e in serr]
    bad = np.zeros(slow.size, bool)
    bad[[e.index for e in serr]] = True
    rows = np.concatenate([sel, slow[~bad]])
    table = pa.Table.from_batches([fast, sb], schema=EVENT_SCHEMA).combine_chunks()
    table = table.take(pa.array(np.argsort(rows, kind="stable")))
    batches = table.combine_chunks().to_batches()
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=EVENT_SCHEMA)
    return batch, errors


def _decode_scanned_rows(buf, sel, received, kind, oid, oidp, tus, tusp, seq, seqp,
                         spans, spp, xyz, xyzp, wgt, wgtp):
    if sel is not None:
        kind, tus, tusp, seq, seqp, spans, spp, xyz, xyzp, wgt, wgtp, received = (
            a[sel] for a in (kind, tus, tusp, seq, seqp, spans, spp, xyz, xyzp, wgt, wgtp, received))
        oid, oidp = oid[:, sel], oidp[:, sel]
    m = len(kind)
    t_us = np.where(tusp, tus, received)
    # which columns hold anything: a few events fill a few of the 19 columns, and a
    # column no row fills skips its building (validity checks and bitmaps, the span
    # gather, dictionary encoding: ~5-15 µs each, most of a one-event decode_json) for
    # a slice of a shared all-null block
    id_any = oidp.any(axis=1).tolist()
    str_any = spp.any(axis=0).tolist()

    def fsb(k):
        return _fsb(oid[k], oidp[k]) if id_any[k] else _nulls(_FSB_COLS[k], m)

    def col(values, valid, c, some=None, every=None):
        if not (valid.any() if some is None else some):
            return _nulls(c, m)
        return pa.array(values, mask=None if (valid.all() if every is None else every) else ~valid)

    def text(k, c, typ):
        return _utf8_from_spans(buf, spans, spp, k, typ) if str_any[k] else _nulls(c, m)

    def types(k, c):
        return _utf8_from_spans(buf, spans, spp, k, pa.utf8()).dictionary_encode() if str_any[k] else _nulls(c, m)

    some, every = bool(xyzp.any()), bool(xyzp.all())
    with np.errstate(over="ignore"):  # a weight past float32's range is inf, as the Arrow cast makes it
        weight32 = wgt.astype(np.float32)
    arrays = [
        col(seq.view(np.uint64), seqp, 0),
        fsb(5),
        pa.array(kind, pa.int8()),
        pa.Array.from_buffers(_TS_TYPE, m, [None, pa.py_buffer(np.ascontiguousarray(t_us, np.int64))]),
        fsb(0), fsb(1), fsb(2), fsb(3), fsb(4),
        col(xyz[:, 0], xyzp, 9, some, every), col(xyz[:, 1], xyzp, 10, some, every),
        col(xyz[:, 2], xyzp, 11, some, every),
        text(0, 12, pa.utf8()),
        types(1, 13),
        types(2, 14),
        col(weight32, wgtp, 15),
        text(3, 16, pa.large_utf8()),
        fsb(6), fsb(7),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=EVENT_SCHEMA)


# the EVENT_SCHEMA column of each scanner id slot: graph, node, edge, source, target,
# event, correlation, causation
_FSB_COLS = [EVENT_SCHEMA.get_field_index(c) for c in (
    "graph_id", "node_id", "edge_id", "source_id", "target_id", "event_id", "correlation_id", "causation_id")]


def _nulls(c: int, m: int) -> pa.Array:
    """An all-null array for EVENT_SCHEMA column ``c``, ``m`` rows (see null_array); for
    small ``m`` the array itself is kept (a decode of a few events needs a dozen: ~2.5 µs
    each to slice, against a dict lookup)."""
    if m > _SMALL_NULLS:
        return null_array(_TYPES[c], m)
    a = _NULLS.get((c, m))
    if a is None:
        a = _NULLS[(c, m)] = null_array(_TYPES[c], m)
    return a


_SMALL_NULLS = 64  # at most 19 x 65 arrays kept
_NULLS: dict = {}


_TYPES = [f.type for f in EVENT_SCHEMA]


def _decode_general(payloads, received_at):
    """Payload by payload (after one batched msgspec attempt): every form, every error."""
    n = len(payloads)
    errors: dict[int, str] = {}
    evts: list = []
    idx: list[int] = []
    was_gc = gc.isenabled()
    gc.disable()  # the Structs are gc=False; no cycles are made here
    try:
        fast = _decode_batch(payloads) if n >= 64 else None
        for i, p in enumerate(payloads):
            if fast is not None:
                e = fast[i]
                if e.payload is None and e.data is None:
                    if e.type is not None or e.event_type is not None:  # internally tagged
                        evts.append(e)
                        idx.append(i)
                        continue
                else:  # an envelope: unwrap it here, no second decode
                    evts.append(_unwrap_envelope(e, e.payload if e.payload is not None else e.data))
                    idx.append(i)
                    continue
            try:
                if type(p) is not bytes:
                    p = p.encode() if isinstance(p, str) else bytes(p)
                if p[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte order mark (some writers add one)
                    p = p[3:]
                evts.append(_decode_one(p))
                idx.append(i)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                errors[i] = _reason_of(exc, p)
            except _Reject as exc:
                errors[i] = str(exc)
            except Exception as exc:  # never let one payload stop the others
                errors[i] = _unforeseen(exc)
        received = _received_micros(received_at, n)
        try:
            batch, bad = _columns(evts, idx, payloads, received)
        except Exception:  # a value no check above foresaw: isolate it, keep the rest
            batch, bad = _columns_one_by_one(evts, idx, payloads, received)
    finally:
        if was_gc:
            gc.enable()
    errors.update(bad)
    return batch, [DecodeError(i, errors[i]) for i in sorted(errors)]


def _unforeseen(exc: Exception) -> str:
    """The reason for a payload that failed where no check foresaw it."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "invalid UTF-8 in a string"
    return f"invalid event: {type(exc).__name__}: {exc}"


def _columns_one_by_one(evts, idx, payloads, received):
    good, bad = [], {}
    for e, i in zip(evts, idx):
        try:
            b, b_bad = _columns([e], [i], payloads, received)
            good.append(b)
            bad.update(b_bad)
        except Exception as exc:
            bad[i] = _unforeseen(exc)
    if not good:
        return _columns([], [], payloads, received)[0], bad
    return pa.Table.from_batches(good, schema=EVENT_SCHEMA).combine_chunks().to_batches()[0], bad


def _columns(evts, idx, payloads, received):
    m = len(evts)
    if m == 0:
        return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in EVENT_SCHEMA], schema=EVENT_SCHEMA), {}
    astuple = msgspec.structs.astuple
    cols_raw = list(zip(*[astuple(e) for e in evts]))
    rows = np.asarray(idx)
    reasons = [None] * m

    def reject(mask, reason):
        for j in np.flatnonzero(mask):
            if reasons[j] is None:
                reasons[j] = reason(j) if callable(reason) else reason

    # event type
    tcol = cols_raw[_F["type"]]
    tarr = _pyarray(tcol, pa.utf8())
    if tarr is None:  # integer codes mixed in
        tarr = pa.array([str(v) if v is not None else None for v in tcol], pa.utf8())
    etarr = _pyarray(cols_raw[_F["event_type"]], pa.utf8())
    if etarr is None:
        etarr = pa.array([str(v) if v is not None else None for v in cols_raw[_F["event_type"]]], pa.utf8())
    names = _pc().coalesce(tarr, etarr)
    pos_in = _pc().index_in(names, value_set=ALIAS_NAMES).fill_null(len(ALIAS_CODES) - 1).to_numpy()
    kind = ALIAS_CODES[pos_in].copy()
    numeric = np.flatnonzero(kind == 0)
    py_names = names.to_pylist() if numeric.size else None
    for j in numeric:  # numeric codes as text, unknown names, missing type
        nm = py_names[j]
        if nm is not None and nm.lstrip("-").isdigit() and int(nm) in _VALID_CODES:
            kind[j] = int(nm)
        elif nm is None:
            reasons[j] = "event type missing"
        else:
            reasons[j] = f"unknown event type {nm!r}"

    # every id column parsed in one vectorised pass (fixed costs add up on small batches)
    id_cols = {}
    for name in ("graph_id", "aggregate_id", "node_id", "edge_id", "source", "source_id",
                 "target", "target_id", "event_id", "correlation_id", "causation_id"):
        col = cols_raw[_F[name]]
        id_cols[name] = None if col.count(None) == m else col
    pairs = {"graph_id": ("graph_id", "aggregate_id"), "node_id": ("node_id",), "edge_id": ("edge_id",),
             "source_id": ("source_id", "source"), "target_id": ("target_id", "target"),
             "event_id": ("event_id",), "correlation_id": ("correlation_id",),
             "causation_id": ("causation_id",)}
    present, arrays_in = [], []
    for out_name, srcs in pairs.items():
        got = [_id_strings(id_cols[n]) for n in srcs if id_cols[n] is not None]
        if not got:
            continue
        arr = got[0]
        for other in got[1:]:
            arr = _pc().coalesce(arr, other)
        present.append(out_name)
        arrays_in.append(arr)
    out_ids = {name: (np.zeros((m, 16), np.uint8), np.zeros(m, bool)) for name in pairs}
    if present:
        b16, valid, bad = parse_uuid_strings(pa.concat_arrays(arrays_in))
        for k, name in enumerate(present):
            sl = slice(k * m, (k + 1) * m)
            if bad[sl].any():
                reject(bad[sl], f"bad UUID in {name}")
            out_ids[name] = (b16[sl], valid[sl])
    gvalid = out_ids["graph_id"][1]
    reject(~gvalid, "graph_id missing")

    # position: nested object / array, else flat x, y, z
    pos_col = cols_raw[_F["position"]]
    newp = cols_raw[_F["new_position"]]
    xyz, pvalid = _positions(pos_col)
    if newp.count(None) != m:
        xyz2, pvalid2 = _positions(newp)
        use = ~pvalid & pvalid2
        xyz[use], pvalid = xyz2[use], pvalid | pvalid2
    flat_cols = [cols_raw[_F[a]] for a in "xyz"]
    if any(c.count(None) != m for c in flat_cols):
        flat = [pa.array(c, pa.float64()) for c in flat_cols]
        fvalid = np.logical_and.reduce([f.is_valid().to_numpy(zero_copy_only=False) for f in flat])  # noqa
        use = ~pvalid & fvalid
        for a, f in enumerate(flat):
            xyz[use, a] = f.fill_null(0).to_numpy()[use]
        pvalid = pvalid | fvalid
    reject(pvalid & ~np.isfinite(xyz).all(axis=1), "position must be 3 finite numbers")

    name = _first_present(cols_raw, ("name", "new_name", "label"), pa.utf8(), m)
    weight = _first_present(cols_raw, ("weight", "strength", "similarity"), pa.float64(), m).cast(
        pa.float32(), safe=False)

    t_us = _times([cols_raw[_F[k]] for k in _TIME_FIELDS], received[rows])

    seqs = pa.array(cols_raw[_F["seq"]], pa.int64()).cast(pa.uint64())  # bounds checked by msgspec

    mcol = cols_raw[_F["metadata"]]
    meta = pa.array([_meta_text(r) for r in mcol] if any(map(len, mcol)) else [None] * m, pa.large_binary())
    try:
        meta = meta.cast(pa.large_utf8())
    except pa.ArrowInvalid:
        meta = pa.array([None if b is None else b.decode("utf-8", "replace") for b in meta.to_pylist()],
                        pa.large_utf8())

    eb, ev = out_ids["event_id"]
    if not ev.all():
        missing = np.flatnonzero(~ev)
        eb = eb.copy()
        eb[missing] = _stable_event_ids(payloads, rows[missing])
        ev = np.ones(m, bool)

    if reasons.count(None) == m:
        keep, bad = None, {}
    else:
        keep = np.array([r is None for r in reasons], bool)
        bad = {int(rows[j]): reasons[j] for j in range(m) if reasons[j] is not None}
    arrays = [
        seqs,
        _fsb(eb, ev),
        pa.array(kind, pa.int8()),
        pa.array(t_us, pa.int64()).cast(EVENT_SCHEMA.field("occurred_at").type),
        _fsb(*out_ids["graph_id"]),
        _fsb(*out_ids["node_id"]),
        _fsb(*out_ids["edge_id"]),
        _fsb(*out_ids["source_id"]),
        _fsb(*out_ids["target_id"]),
        pa.array(xyz[:, 0], mask=~pvalid),
        pa.array(xyz[:, 1], mask=~pvalid),
        pa.array(xyz[:, 2], mask=~pvalid),
        name,
        _types(cols_raw[_F["node_type"]], m),
        _types(cols_raw[_F["edge_type"]], m),
        weight,
        meta,
        _fsb(*out_ids["correlation_id"]),
        _fsb(*out_ids["causation_id"]),
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=EVENT_SCHEMA)
    if keep is not None:
        batch = batch.filter(pa.array(keep))
    return batch, bad


_VALID_CODES = {1, 2, 3, 4, 10, 11, 12, 13, 20, 21, 23}
