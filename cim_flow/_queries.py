"""Query requests and replies, I/O-free: parse a request, run it on an Engine,
encode the reply (JSON by default, Arrow IPC when asked).  Also the query cache.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
import uuid
from collections import OrderedDict

import msgspec
import numpy as np
import pyarrow as pa

from kernels import traverse as kt
from kernels.traverse import ROW_LEN

from ._decode import non_finite_keys
from ._ids import validity

ARROW_MIME = "application/vnd.apache.arrow.stream"
_json = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class QueryError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def error_reply(code: str, message: str, version: int | None = None) -> bytes:
    body = {"error": {"code": code, "message": message}}
    if version is not None:
        body["version"] = version
    return _json.encode(body)


def parse_request(data: bytes) -> dict:
    if not data or not data.strip():
        return {}
    try:
        req = _dec.decode(data)
    except msgspec.DecodeError:
        raise QueryError("bad_request", _non_finite_message(data) or "invalid JSON") from None
    if not isinstance(req, dict):
        raise QueryError("bad_request", "request must be a JSON object")
    return req


def _non_finite_message(data: bytes) -> str | None:
    """For a request that is JSON but for a NaN or Infinity (what Python's json.dumps
    writes for such floats): the field it is in, as for other non-finite values."""
    keys = non_finite_keys(data)
    if keys is None:
        return None
    return f"{keys[-1] if keys else 'request'} must be finite (NaN and Infinity are not JSON numbers)"


def _iso(v):
    if v is None:
        return None
    if isinstance(v, _dt.datetime):
        return v.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return v




def uuid_texts(arr: pa.Array) -> list:
    """Canonical UUID text for a fixed_size_binary(16) array (None for nulls), vectorised."""
    n = len(arr)
    if n == 0:
        return []
    raw = np.frombuffer(arr.buffers()[1], np.uint8, count=16 * n, offset=16 * arr.offset).reshape(n, 16)
    return _with_nulls(uuid_texts_of(raw), arr)


def _with_nulls(texts: list, arr: pa.Array) -> list:
    ok = validity(arr)
    return texts if ok is None else [t if v else None for t, v in zip(texts, ok.tolist())]


def uuid_texts_of(raw: np.ndarray) -> list:
    """Canonical UUID text for each row of an ``(n, 16)`` uint8 array (the kernel that
    also writes the radius replies' rows)."""
    words = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, 16).view("<u8")
    return [t.decode() for t in kt.uuid_text_rows(words).view("S36").tolist()]


def iso_texts_of(us: np.ndarray) -> list:
    """RFC 3339 text (UTC, 'Z'; microseconds only when not zero) per int64 µs value."""
    us = np.ascontiguousarray(us, np.int64)
    rows, ok = kt.iso_text_rows(us)  # ~10x numpy's datetime_as_string (twice) on small arrays
    if ok:
        return [t.decode() for t in rows.view(f"S{kt.ISO_LEN}").tolist()]
    return _iso_texts_numpy(us)


def _iso_texts_numpy(us: np.ndarray) -> list:
    t = us.astype("datetime64[us]")
    whole = (us % 1_000_000 == 0).tolist()
    s_us = np.datetime_as_string(t, unit="us").tolist()
    s_s = np.datetime_as_string(t, unit="s").tolist()
    return [(a if w else b) + "Z" for a, b, w in zip(s_s, s_us, whole)]


def iso_texts(arr: pa.Array) -> list:
    """RFC 3339 text (UTC, 'Z'; microseconds only when not zero, like isoformat) per timestamp."""
    return _with_nulls(iso_texts_of(arr.cast(pa.int64()).fill_null(0).to_numpy()), arr)


def _rows(table: pa.Table) -> list[dict]:
    """JSON-ready rows: ids as UUID text, times as RFC 3339 text (column-wise conversion)."""
    cols = []
    for name, col in zip(table.column_names, table.columns):
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if name in ("graph_id", "node_id", "edge_id", "source_id", "target_id") and arr.type == pa.binary(16):
            cols.append(uuid_texts(arr))
        elif pa.types.is_timestamp(arr.type):
            cols.append(iso_texts(arr))
        else:
            cols.append(arr.to_pylist())
    names = table.column_names
    return [dict(zip(names, vals)) for vals in zip(*cols)]


def _require(req, key):
    if key not in req or req[key] is None:
        raise QueryError("bad_request", f"missing field {key!r}")
    return req[key]


def _graph_id(req, key="graph_id", required=True):
    v = req.get(key)
    if v is None:
        if required:
            raise QueryError("bad_request", f"missing field {key!r}")
        return None
    if isinstance(v, dict) and len(v) == 1 and isinstance(v.get("id"), str):
        v = v["id"]  # {"id": "<uuid>"}, as events may carry it (cim-domain-graph's GraphId)
    if not isinstance(v, str):
        raise QueryError("bad_request", f"{key} must be UUID text")
    try:
        return uuid.UUID(v)
    except ValueError:
        raise QueryError("bad_request", f"bad UUID in {key}") from None


_INT64_MAX = 2**63 - 1


def _number(v, name, *, minimum=None, integer=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise QueryError("bad_request", f"{name} must be a number")
    try:
        finite = math.isfinite(v)
    except OverflowError:  # a JSON integer past float's range (msgspec gives it as an int)
        raise QueryError("bad_request", f"{name} is too large") from None
    if not finite:
        raise QueryError("bad_request", f"{name} must be finite")
    if integer and int(v) != v:
        raise QueryError("bad_request", f"{name} must be an integer")
    if integer and abs(v) > _INT64_MAX:  # (the engine's arguments are int64)
        raise QueryError("bad_request", f"{name} is too large")
    if minimum is not None and v < minimum:
        raise QueryError("bad_request", f"{name} must be >= {minimum}")
    return int(v) if integer else float(v)


def _time_arg(v, name):
    """A time in a JSON request: RFC 3339 text, or a number of epoch milliseconds (as
    the events' times on the wire), passed on to the engine as µs."""
    if isinstance(v, str):
        return v
    ms = _number(v, name)
    return int(v) * 1000 if isinstance(v, int) else round(ms * 1000)


def _point(v, name):
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise QueryError("bad_request", f"{name} must be [x, y, z]")
    return [_number(c, name) for c in v]


def _centers(req):
    if "centers" in req and req["centers"] is not None:
        cs = req["centers"]
        if not isinstance(cs, list) or not cs:
            raise QueryError("bad_request", "centers must be a non-empty list of [x, y, z]")
        return [_point(c, "centers[]") for c in cs], False
    return [_point(_require(req, "center"), "center")], True


class Answer:
    """A query's result: a JSON-able dict and, for Arrow replies, a table.  ``raw_json``,
    when set, is the body already encoded without its closing brace (``version`` is
    appended to it); ``body`` may then be None."""

    __slots__ = ("body", "table", "raw_json", "truncated", "counts")

    def __init__(self, body: dict | None, table: pa.Table | None = None, raw_json: bytes | None = None,
                 truncated: bool | None = None, counts: list | None = None):
        self.body = body
        self.table = table
        self.raw_json = raw_json
        # whether a limit cut rows (for Arrow replies' metadata); from body when not given
        self.truncated = truncated if truncated is not None or body is None else body.get("truncated")
        # a radius reply's full hit count per center (the JSON results' "count"), for Arrow
        self.counts = counts


def _limit(req, default, maximum):
    lim = req.get("limit", default)
    lim = _number(lim, "limit", minimum=1, integer=True)
    return min(lim, maximum)


def _graph_filter(engine, req):
    g = _graph_id(req, required=False)
    if g is not None and engine.graph_summary(g) is None:
        raise QueryError("not_found", f"unknown graph {g}")
    return g


def q_summary(engine, req, limits) -> Answer:
    g = _graph_id(req)
    s = engine.graph_summary(g)
    if s is None:
        raise QueryError("not_found", f"unknown graph {g}")
    body = {k: (str(v) if k == "graph_id" else _iso(v)) for k, v in s.items()}
    return Answer(body)


def q_graphs(engine, req, limits) -> Answer:
    filters = [k for k in ("name", "created_between", "node_count_between", "top_by_node_count") if req.get(k) is not None]
    if len(filters) > 1:
        raise QueryError("bad_request", f"use one filter at a time, got {filters}")
    if not filters:
        t = engine._live_graphs()
    elif filters[0] == "name":
        if not isinstance(req["name"], str):
            raise QueryError("bad_request", "name must be a string")
        t = engine._graphs_by_name(req["name"])
    elif filters[0] == "created_between":
        v = req["created_between"]
        if not isinstance(v, list) or len(v) != 2:
            raise QueryError("bad_request", "created_between must be [start, end]")
        try:
            t = engine._graphs_created_between(*(_time_arg(x, "created_between") for x in v))
        except ValueError as exc:
            raise QueryError("bad_request", str(exc)) from None
    elif filters[0] == "node_count_between":
        v = req["node_count_between"]
        if not isinstance(v, list) or len(v) != 2:
            raise QueryError("bad_request", "node_count_between must be [min, max]")
        a, b = (_number(x, "node_count_between", integer=True) for x in v)
        t = engine._graphs_by_node_count(a, b)
    else:
        k = _number(req["top_by_node_count"], "top_by_node_count", minimum=1, integer=True)
        t = engine._top_graphs_by_node_count(k)
    offset = _number(req.get("offset", 0), "offset", minimum=0, integer=True)
    limit = _limit(req, limits["default"], limits["max"])
    # graph indices so far: rows are built for the page only (see q_find_nodes)
    total = len(t)
    page = engine._summary_table(t[offset:offset + limit])
    return Answer({"total": total, "offset": offset, "limit": limit,
                   "truncated": offset + page.num_rows < total, "graphs": _rows(page)}, page)


def q_stats(engine, req, limits, stats=None) -> Answer:
    body = dict(engine.totals())
    if stats is not None:
        body.update(stats())
    return Answer(body)


def _group_nodes(t: pa.Table, n_centers, centers, single, limit, with_distance):
    q = t.column("query").to_numpy()
    counts = np.bincount(q, minlength=n_centers) if len(q) else np.zeros(n_centers, np.int64)
    rows = _rows(t.drop_columns(["query"]))
    if not with_distance:
        for r in rows:
            r.pop("distance", None)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return _grouped(rows, offsets, centers, single, limit)


def _grouped(rows, offsets, centers, single, limit) -> dict:
    """The reply body: per center its count, whether it was cut at ``limit`` and its first
    ``limit`` rows (center j's rows are ``rows[offsets[j]:offsets[j + 1]]``)."""
    results, truncated = [], False
    for j, c in enumerate(centers):
        a, b = int(offsets[j]), int(offsets[j + 1])
        tr = b - a > limit
        truncated |= tr
        results.append({"center": c, "count": b - a, "truncated": tr, "nodes": rows[a:min(b, a + limit)]})
    body = {"results": results, "truncated": truncated}
    if single:
        body.update(nodes=results[0]["nodes"], count=results[0]["count"])
    return body


def _radius_args(engine, req, limits):
    centers, single = _centers(req)
    radius = _require(req, "radius")
    if isinstance(radius, list):  # one radius per center
        if len(radius) != len(centers):
            raise QueryError("bad_request", f"radius must be a number or a list of {len(centers)} "
                                            f"(one per center), got {len(radius)}")
        radius = [_number(r, "radius", minimum=0) for r in radius]
    else:
        radius = [_number(radius, "radius", minimum=0)] * len(centers)
    g = _graph_filter(engine, req)
    limit = _limit(req, limits["default"], limits["max"])
    return centers, single, radius, g, limit, bool(req.get("with_distance", False)), bool(req.get("sort", False))


def q_nodes_in_radius(engine, req, limits) -> Answer:
    return q_nodes_in_radius_many(engine, [req], limits)[0]


def q_nodes_in_radius_many(engine, reqs, limits, want_arrow=None) -> list:
    """Answers for many radius requests with one kernel call per (graph filter, sort)
    group and one id-to-text conversion for all rows; a bad request gets its
    QueryError in its place and does not affect the others.  ``want_arrow[i]`` false
    skips building request i's Arrow table."""
    out = [None] * len(reqs)
    groups = {}
    for i, req in enumerate(reqs):
        try:
            args = _radius_args(engine, req, limits)
        except QueryError as exc:
            out[i] = exc
            continue
        groups.setdefault((args[3], args[6]), []).append((i, args))
    for (g, sort), items in groups.items():
        centers = [c for _, a in items for c in a[0]]
        radii = [r for _, a in items for r in a[2]]
        # every value checked by _radius_args already: straight to the kernels
        offsets, idx, d2 = engine._radius(np.array(centers, np.float64), np.array(radii, np.float64),
                                          engine._gsel(g), sort, False)
        any_d = any(a[5] for _, a in items)
        any_arrow = want_arrow is None or any(want_arrow[i] for i, _ in items)
        t = engine._node_table(None, idx, np.sqrt(d2), offsets) if any_d or any_arrow else None
        # rows as dicts only when a request wants distances (float text); otherwise
        # fixed-width JSON rows (one compiled pass) sliced straight out of one buffer
        rows = _rows(t.drop_columns(["query"])) if any_d else None
        if not all(a[5] for _, a in items):
            # JSON rows only for what the replies carry: the first `limit` hits of each
            # center (a clustered center at radius 25 has ~2,000, a reply 100 by default)
            kept, blob = engine._first_rows_json(offsets, np.array([a[4] for _, a in items for _c in a[0]], np.int64),
                                                 idx)
        else:
            blob, kept = b"", offsets
        j, offs, kp = 0, None, None
        for i, (cs, single, _r, _g, limit, with_d, _s) in items:
            j0 = j
            if with_d:
                ans = Answer(_grouped(rows, offsets[j:j + len(cs) + 1], cs, single, limit))
                j += len(cs)
            else:
                if offs is None:  # plain ints once for the group (a numpy scalar each is ~0.2 µs)
                    offs, kp = offsets.tolist(), kept.tolist()
                parts, truncated = [], False
                for c in cs:
                    n = offs[j + 1] - offs[j]
                    tr = n > limit
                    truncated |= tr
                    ka, kb = kp[j], kp[j + 1]  # this center's kept rows
                    nodes = blob[ka * ROW_LEN:kb * ROW_LEN - 1] if kb > ka else b""
                    parts.append(_center_json(c, n, tr, nodes))
                    j += 1
                ans = Answer(None, raw_json=_radius_json(parts, truncated, (nodes, n) if single else None),
                             truncated=truncated)
            if want_arrow is None or want_arrow[i]:
                a0, b0 = int(offsets[j0]), int(offsets[j])
                part = t.slice(a0, b0 - a0)
                keep = _first_per_center(offsets[j0:j + 1] - a0, limit)
                if keep is not None:  # `limit` caps each center's rows, as in the JSON reply
                    part = part.take(pa.array(keep))
                part = part.set_column(0, "query", pa.array(part.column("query").to_numpy() - j0))
                ans.table = part if with_d else part.drop_columns(["distance"])
                ans.counts = np.diff(offsets[j0:j + 1]).tolist()
            out[i] = ans
    return out


def _center_json(c: list, n: int, truncated: bool, nodes: bytes) -> bytes:
    """One center's part of a radius reply: ``nodes``, its JSON rows (comma-joined)."""
    return (b'{"center":%s,"count":%d,"truncated":%s,"nodes":[%s]}'
            % (_json.encode(c), n, b"true" if truncated else b"false", nodes))


def _radius_json(parts: list, truncated: bool, single: tuple | None) -> bytes:
    """A JSON radius reply without its closing ``,"version":V}``; ``single``: the one
    center's ``(nodes, count)``, repeated at the top level."""
    raw = b'{"results":[%s],"truncated":%s' % (b",".join(parts), b"true" if truncated else b"false")
    if single is not None:
        raw += b',"nodes":[%s],"count":%d' % single
    return raw


_FAST_KEYS = frozenset({"center", "radius", "limit"})


def q_radius_fast(engine, req: dict, limits) -> bytes | None:
    """The JSON reply, without its closing ``,"version":V}``, to a plain one-center radius
    request (``{"center": [x, y, z], "radius": r[, "limit": n]}``, every value valid),
    byte for byte what :func:`q_nodes_in_radius_many` writes for it; None for any other
    request, which the general path answers (and names its errors).  A request this plain
    is what most clients send one at a time: two kernel calls, one reply, no per-request
    group, Answer or array of requests (~25 us of a ~145 us request at 5k/s).  Checked
    by the general path's own :func:`_radius_args`, so both accept the same requests."""
    if not req.keys() <= _FAST_KEYS:
        return None
    try:
        (c,), _single, (r,), _g, lim, _d, _s = _radius_args(engine, req, limits)
    except QueryError:
        return None
    offsets, idx, _d2 = engine._radius(np.array([c]), np.array([r]), -1, False, False)
    kept, blob = engine._first_rows_json(offsets, np.array([lim], np.int64), idx)
    n, k = int(offsets[1]), int(kept[1])
    nodes = blob[:k * ROW_LEN - 1] if k else b""
    return _radius_json([_center_json(c, n, n > lim, nodes)], n > lim, (nodes, n))


def _first_per_center(offs: np.ndarray, limit: int):
    """Rows of the first ``limit`` hits of each center, for CSR ``offs`` (from 0); None
    when no center has more."""
    cnt = np.diff(offs)
    k = np.minimum(cnt, limit)
    if (k == cnt).all():
        return None
    first = np.cumsum(k) - k  # where each center's kept rows start among the kept
    return np.repeat(offs[:-1], k) + np.arange(int(k.sum())) - np.repeat(first, k)


def q_knn(engine, req, limits) -> Answer:
    centers, single = _centers(req)
    k = _number(_require(req, "k"), "k", minimum=1, integer=True)
    k = min(k, limits["max"])
    g = _graph_filter(engine, req)
    t = engine.nearest(np.array(centers), k, graph_id=g)
    return Answer(_group_nodes(t, len(centers), centers, single, k, True), t)


def q_nodes_in_box(engine, req, limits) -> Answer:
    lo = _point(_require(req, "lo"), "lo")
    hi = _point(_require(req, "hi"), "hi")
    if any(a > b for a, b in zip(lo, hi)):
        raise QueryError("bad_request", "lo must be <= hi on every axis")
    g = _graph_filter(engine, req)
    limit = _limit(req, limits["default"], limits["max"])
    page, total = engine._box_page(lo, hi, g, limit)  # the page's ids only, and the count
    return Answer({"count": total, "truncated": total > limit, "nodes": _rows(page)}, page)


def q_graphs_by_date(engine, req, limits) -> Answer:
    start, end = _require(req, "start"), _require(req, "end")
    return q_graphs(engine, {**req, "created_between": [start, end]}, limits)


def q_graphs_by_node_count(engine, req, limits) -> Answer:
    if req.get("top") is not None:
        return q_graphs(engine, {"top_by_node_count": req["top"], "limit": req.get("limit")} if req.get("limit")
                        else {"top_by_node_count": req["top"]}, limits)
    lo = req.get("min", 0)
    hi = req.get("max", 2**62)
    return q_graphs(engine, {**{k: v for k, v in req.items() if k not in ("min", "max")},
                             "node_count_between": [lo, hi]}, limits)


def _opt_str(req, key):
    v = req.get(key)
    if v is not None and not isinstance(v, str):
        raise QueryError("bad_request", f"{key} must be a string")
    return v


def q_find_nodes(engine, req, limits) -> Answer:
    g = _graph_filter(engine, req)
    node_type, name = _opt_str(req, "node_type"), _opt_str(req, "name")
    offset = _number(req.get("offset", 0), "offset", minimum=0, integer=True)
    limit = _limit(req, limits["default"], limits["max"])
    # the rows of the page only: building every match's row to slice a page took
    # seconds (and the memory of the whole listing) on an engine of millions of nodes
    idx, total = engine._node_page(g, node_type, name, offset, limit)
    page = engine._node_rows(idx)
    return Answer({"total": total, "offset": offset, "limit": limit,
                   "truncated": offset + page.num_rows < total, "nodes": _rows(page)}, page)


def q_find_edges(engine, req, limits) -> Answer:
    g = _graph_filter(engine, req)
    edge_type = _opt_str(req, "edge_type")
    offset = _number(req.get("offset", 0), "offset", minimum=0, integer=True)
    limit = _limit(req, limits["default"], limits["max"])
    idx, total = engine._edge_page(g, edge_type, offset, limit)  # the page's rows only, as for nodes
    page = engine._edge_rows(idx)
    return Answer({"total": total, "offset": offset, "limit": limit,
                   "truncated": offset + page.num_rows < total, "edges": _rows(page)}, page)


def q_neighbors(engine, req, limits) -> Answer:
    node = _graph_id(req, "node_id")
    g = _graph_filter(engine, req)
    if engine._nodes_of(node, g).size == 0:
        raise QueryError("not_found", f"unknown node {node}")
    t = engine.neighbors(node, graph_id=g)
    limit = _limit(req, limits["default"], limits["max"])
    page = t.slice(0, limit)
    return Answer({"node_id": str(node), "count": t.num_rows, "truncated": t.num_rows > limit,
                   "neighbors": _rows(page)}, page)


HANDLERS = {
    "summary": q_summary,
    "get_graph": q_summary,
    "graphs": q_graphs,
    "graphs_by_date": q_graphs_by_date,
    "graphs_by_node_count": q_graphs_by_node_count,
    "stats": q_stats,
    "nodes_in_radius": q_nodes_in_radius,
    "knn": q_knn,
    "nodes_in_box": q_nodes_in_box,
    "find_nodes": q_find_nodes,
    "find_edges": q_find_edges,
    "neighbors": q_neighbors,
}


def encode_answer(ans: Answer, version: int, arrow: bool) -> tuple[bytes, dict | None]:
    if arrow and ans.table is not None:
        sink = pa.BufferOutputStream()
        meta = {b"version": str(version).encode()}
        if ans.truncated is not None:  # as the JSON reply's "truncated": a limit cut rows
            meta[b"truncated"] = b"true" if ans.truncated else b"false"
        body = ans.body or {}
        for key in ("count", "total"):  # the JSON reply's totals, where it has them
            if isinstance(body.get(key), int):
                meta[key.encode()] = str(body[key]).encode()
        if ans.counts is not None:  # each center's full count (its rows may stop at limit)
            meta[b"counts"] = _json.encode(ans.counts)
        table = ans.table.replace_schema_metadata(meta)
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        return sink.getvalue().to_pybytes(), {"Content-Type": ARROW_MIME, "Cim-Version": str(version)}
    if ans.raw_json is not None:
        return ans.raw_json + b',"version":%d}' % version, None
    body = dict(ans.body)
    body["version"] = version
    return _json.encode(body), None


class QueryCache:
    """LRU with TTL; keys include the engine version, so a hit is never stale data."""

    def __init__(self, max_entries: int = 10000, ttl: float = 300.0, enabled: bool = True):
        self.max_entries = max_entries
        self.ttl = ttl
        self.enabled = enabled and max_entries > 0
        self._d: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        if not self.enabled:
            return None
        e = self._d.get(key)
        if e is None or (self.ttl and time.monotonic() - e[0] > self.ttl):
            if e is not None:
                del self._d[key]
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return e[1]

    def put(self, key, value) -> None:
        if not self.enabled:
            return
        self._d[key] = (time.monotonic(), value)
        self._d.move_to_end(key)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)

    def __len__(self):
        return len(self._d)
