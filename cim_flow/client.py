"""An asyncio client for a running cim_flow service.

Events go in through JetStream with ``Nats-Msg-Id`` set to the event id, so a publisher
that retries after a lost ack never applies an event twice, and each publish returns the
stream sequence it got: pass it as ``min_version`` to read your own writes. Queries come
back as pyarrow Tables (the service's Arrow replies: the same columns as the Engine's
tables) or, for summaries and stats, as dicts::

    async with await cim_flow.Client.connect("nats://127.0.0.1:4222") as client:
        seq = await client.publish({"type": "NodeAdded", "graph_id": g, "node_id": n,
                                    "position": [1, 2, 3]})
        near = await client.nodes_within([1, 2, 3], 5.0, return_distance=True, min_version=seq)
        reply_meta(near)   # {"version": ..., "truncated": ..., "counts": [...]}

:meth:`Client.updates` follows the service's results: the summaries of the graphs each
applied batch changed, as they are published (or, with ``durable="name"``, from the
service's results stream, none missed)::

    async with await client.updates() as updates:
        async for u in updates:   # {"version", "events_total", "graphs": [...], "deleted": [...]}
            ...

An error reply raises :class:`ServiceError` with the service's code (``bad_request``,
``not_found``, ``timeout``, ``too_large``, ...) and message. :class:`SyncClient` has the
same methods for code without an event loop (scripts, pipelines): they block.
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import functools
import json
import threading
import uuid

import msgspec
import numpy as np
import pyarrow as pa
import xxhash

import nats
import nats.errors
import nats.js.errors

from ._decode import decode_json
from ._ids import to_uuid_bytes
from ._queries import ARROW_MIME
from ._schema import SUBJECT_OF, EventType
from ._service_common import BATCH_SUBJECT, COMPACT_SUBJECT, QUERY_PREFIX, SNAPSHOT_SUBJECT, UPDATES_SUBJECT

RESULTS_STREAM = "CIM_GRAPH_RESULTS"  # the usual [jetstream] results_stream name

_json = msgspec.json.Encoder()
_ARROW = {"Accept": ARROW_MIME}


class ServiceError(RuntimeError):
    """An error reply from the service: ``code`` and ``message`` as it sent them."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def reply_meta(table: pa.Table) -> dict:
    """What an Arrow reply says beside its rows: ``version`` and, where the JSON reply
    has them, ``truncated``, ``count``, ``total`` and per-center ``counts``."""
    meta = table.schema.metadata or {}
    out = {}
    for k, v in meta.items():
        key = k.decode()
        if key == "truncated":
            out[key] = v == b"true"
        elif key == "counts":
            out[key] = json.loads(v)
        elif key in ("version", "count", "total"):
            out[key] = int(v)
    return out


def _id_text(value) -> str:
    return str(uuid.UUID(bytes=to_uuid_bytes(value)))


def _points(centers) -> dict:
    """``center`` for one point, ``centers`` for several (an (n, 3) array-like)."""
    a = np.asarray(centers, dtype=np.float64)
    if a.ndim == 1:
        return {"center": a.tolist()}
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"centers must have shape (3,) or (n, 3), got {a.shape}")
    return {"centers": a.tolist()}


def _time_text(v):
    """A time for a request: RFC 3339 text, or an int of epoch milliseconds, as-is; a
    datetime (naive: UTC) as RFC 3339 text."""
    if isinstance(v, datetime.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=datetime.timezone.utc)).isoformat()
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        return v
    raise ValueError(f"a time must be RFC 3339 text, epoch milliseconds or a datetime, got {type(v).__name__}")


def _body(**fields) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


class Client:
    """A connection to a cim_flow service (see the module docstring).

    ``Client(nc)`` wraps a connected nats-py client (left open by :meth:`close`);
    :meth:`connect` makes one. ``timeout`` is each request's, in seconds.
    """

    def __init__(self, nc, *, timeout: float = 10.0, _owned: bool = False):
        self.nc = nc
        self.js = nc.jetstream()
        self.timeout = timeout
        self._owned = _owned

    @classmethod
    async def connect(cls, url: str = "nats://127.0.0.1:4222", *, timeout: float = 10.0, **options) -> Client:
        """Connect to the service's NATS server; ``options`` go to ``nats.connect``
        (user/password, token, credentials, TLS)."""
        return cls(await nats.connect(url, **options), timeout=timeout, _owned=True)

    async def close(self) -> None:
        if self._owned:
            await self.nc.drain()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- events in --------------------------------------------------------------
    async def publish(self, event, *, subject: str | None = None) -> int:
        """Publish one JSON event (a dict, or its JSON text or bytes, any CIM wire form);
        returns its stream sequence. It is decoded here first: a bad event raises
        ValueError with the decoder's reason and is not sent. ``Nats-Msg-Id`` is the
        event's id (derived from its bytes when it has none), so a retry is deduplicated."""
        return await self.publish_many([event], subjects=None if subject is None else [subject])

    async def publish_many(self, events, *, subjects=None) -> int:
        """Publish JSON events in order, pipelined; returns the last stream sequence
        (0 for none). Every event is decoded before any is sent: one bad event raises
        ValueError naming each bad one by position, and nothing is sent."""
        payloads = [e if isinstance(e, bytes) else e.encode() if isinstance(e, str) else _json.encode(e)
                    for e in events]
        if subjects is not None and len(subjects) != len(payloads):
            raise ValueError(f"{len(subjects)} subjects for {len(payloads)} events")
        if not payloads:
            return 0
        batch, errors = decode_json(payloads, received_at=0)
        if errors:
            raise ValueError("bad events, none sent: " + "; ".join(f"#{e.index}: {e.reason}" for e in errors[:10])
                             + (f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""))
        ids = batch.column("event_id").to_pylist()
        kinds = batch.column("event_type").to_numpy()
        acks = []
        for i, data in enumerate(payloads):
            subject = subjects[i] if subjects is not None else SUBJECT_OF[EventType(int(kinds[i]))]
            acks.append(await self.js.publish_async(subject, data,
                                                    headers={"Nats-Msg-Id": str(uuid.UUID(bytes=ids[i]))}))
        return max(a.seq for a in await asyncio.gather(*acks))

    async def publish_batch(self, batch, *, msg_id: str | None = None) -> int:
        """Publish a record batch or table of events in ``EVENT_SCHEMA`` (or any columns
        ``Engine.apply`` takes) as Arrow IPC on ``event.graph.batch``; returns the last
        stream sequence. A batch bigger than the server's ``max_payload`` goes out in
        parts. ``msg_id`` (default: a hash of the bytes) de-duplicates a retry."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        seq = 0
        for k, data in enumerate(self._ipc_parts(table)):
            mid = msg_id if msg_id is None or k == 0 else f"{msg_id}.{k}"
            ack = await self.js.publish(BATCH_SUBJECT, data,
                                        headers={"Nats-Msg-Id": mid or f"batch-{xxhash.xxh3_128_hexdigest(data)}"},
                                        timeout=self.timeout)
            seq = ack.seq
        return seq

    def _ipc_parts(self, table: pa.Table):
        room = self.nc.max_payload - 4096  # headers
        stack = [table]
        while stack:
            t = stack.pop()
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, t.schema) as w:
                w.write_table(t)
            data = sink.getvalue().to_pybytes()
            if len(data) <= room:
                yield data
            elif t.num_rows <= 1:
                raise ValueError(f"one event is {len(data):,} bytes of Arrow, more than the server's "
                                 f"max_payload ({self.nc.max_payload:,}) allows")
            else:
                half = t.num_rows // 2
                stack += [t.slice(half), t.slice(0, half)]  # the first half goes out first

    # -- queries ----------------------------------------------------------------
    async def request(self, endpoint: str, body: dict | None = None, *, arrow: bool = False):
        """Any query endpoint (``query.graph.<endpoint>``): the reply as a dict, or with
        ``arrow`` as a pyarrow Table (:func:`reply_meta` reads its version and totals)."""
        msg = await self.nc.request(QUERY_PREFIX + endpoint, _json.encode(body or {}), timeout=self.timeout,
                                    headers=_ARROW if arrow else None)
        return _decode_reply(msg)

    async def stats(self, *, min_version: int | None = None) -> dict:
        """Totals, version, event and query counts, latencies (``query.graph.stats``)."""
        return await self.request("stats", _body(min_version=min_version))

    async def graph_summary(self, graph_id, *, min_version: int | None = None) -> dict | None:
        """The graph's summary (ids and times as text, as the service writes them), or
        None for a graph the service does not know."""
        try:
            return await self.request("summary", _body(graph_id=_id_text(graph_id), min_version=min_version))
        except ServiceError as exc:
            if exc.code == "not_found":
                return None
            raise

    async def graphs(self, *, name: str | None = None, created_between=None, node_count_between=None,
                     top_by_node_count: int | None = None, offset: int | None = None, limit: int | None = None,
                     min_version: int | None = None) -> pa.Table:
        """Graph summaries, one filter at most (as ``query.graph.graphs``), paged."""
        return await self.request("graphs", _body(
            name=name, created_between=None if created_between is None else [_time_text(v) for v in created_between],
            node_count_between=None if node_count_between is None else list(node_count_between),
            top_by_node_count=top_by_node_count, offset=offset, limit=limit, min_version=min_version), arrow=True)

    async def nodes_within(self, centers, radius, *, graph_id=None, return_distance: bool = False,
                           sort: bool = False, limit: int | None = None, min_version: int | None = None) -> pa.Table:
        """Live nodes within ``radius`` (a number, or one per center) of each center:
        ``query``, ``node_id``, ``graph_id`` [, ``distance``], at most ``limit`` a center
        (``reply_meta(t)["counts"]``: the full counts)."""
        pts = _points(centers)
        r = np.asarray(radius, np.float64)
        if r.ndim > 1 or (r.ndim == 1 and r.shape[0] != len(pts.get("centers", [None]))):
            raise ValueError(f"radius must be a number or one per center, got shape {r.shape}")
        return await self.request("nodes_in_radius", _body(
            **pts, radius=r.tolist() if r.ndim == 1 else float(r),
            graph_id=None if graph_id is None else _id_text(graph_id),
            with_distance=return_distance or None, sort=sort or None, limit=limit, min_version=min_version),
            arrow=True)

    async def nearest(self, centers, k: int, *, graph_id=None, min_version: int | None = None) -> pa.Table:
        """The ``k`` nearest live nodes of each center, with ``distance``, nearest first."""
        return await self.request("knn", _body(
            **_points(centers), k=int(k), graph_id=None if graph_id is None else _id_text(graph_id),
            min_version=min_version), arrow=True)

    async def nodes_in_box(self, lo, hi, *, graph_id=None, limit: int | None = None,
                           min_version: int | None = None) -> pa.Table:
        return await self.request("nodes_in_box", _body(
            lo=np.asarray(lo, np.float64).tolist(), hi=np.asarray(hi, np.float64).tolist(),
            graph_id=None if graph_id is None else _id_text(graph_id), limit=limit, min_version=min_version),
            arrow=True)

    async def find_nodes(self, graph_id=None, *, node_type: str | None = None, name: str | None = None,
                         offset: int | None = None, limit: int | None = None,
                         min_version: int | None = None) -> pa.Table:
        return await self.request("find_nodes", _body(
            graph_id=None if graph_id is None else _id_text(graph_id), node_type=node_type, name=name,
            offset=offset, limit=limit, min_version=min_version), arrow=True)

    async def find_edges(self, graph_id=None, *, edge_type: str | None = None, offset: int | None = None,
                         limit: int | None = None, min_version: int | None = None) -> pa.Table:
        return await self.request("find_edges", _body(
            graph_id=None if graph_id is None else _id_text(graph_id), edge_type=edge_type,
            offset=offset, limit=limit, min_version=min_version), arrow=True)

    async def neighbors(self, node_id, *, graph_id=None, limit: int | None = None,
                        min_version: int | None = None) -> pa.Table:
        return await self.request("neighbors", _body(
            node_id=_id_text(node_id), graph_id=None if graph_id is None else _id_text(graph_id),
            limit=limit, min_version=min_version), arrow=True)

    async def snapshot(self) -> dict:
        """Have the service write a snapshot now; its reply (``path``, ``version``)."""
        msg = await self.nc.request(SNAPSHOT_SUBJECT, b"{}", timeout=max(self.timeout, 600.0))
        return _decode_reply(msg)

    async def compact(self) -> dict:
        """Have the service compact its engine now (between batches); its reply: what went
        (``nodes``, ``edges``, ``graphs``, ``strings``, ``types``), ``version``, ``seconds``."""
        msg = await self.nc.request(COMPACT_SUBJECT, b"{}", timeout=max(self.timeout, 600.0))
        return _decode_reply(msg)

    # -- results out ------------------------------------------------------------
    async def updates(self, *, pending: int = 65536, durable: str | None = None,
                      stream: str = RESULTS_STREAM) -> Updates:
        """Subscribe to ``projection.graph.summary.updated``: what the service publishes
        after each applied batch, from now on (the subscription is live on the server when
        this returns). Iterate the result; close it (or use ``async with``) to stop.

        With ``durable`` (a consumer name), from the service's results stream ``stream``
        instead (the service's ``[jetstream] results_stream``): through a durable JetStream
        consumer of that name, created on first use at the stream's start; a later reader
        of the same name goes on where the last one stopped.  Each update is acknowledged
        when the next one is asked for (or at close), so none is lost to a reader that
        dies; one it held comes again (at least once; applying an update twice is
        harmless).  A ``"full": true`` update lists every live graph: replace what you
        hold with it (the service sends one when the stream's updates no longer add up
        to its state, e.g. after a restart)."""
        if durable is None:
            sub = await self.nc.subscribe(UPDATES_SUBJECT, pending_msgs_limit=pending)
            await self.nc.flush()
            return Updates(sub)
        js = self.nc.jetstream()
        try:
            sub = await js.pull_subscribe(UPDATES_SUBJECT, durable=durable, stream=stream)
        except nats.js.errors.NotFoundError:
            raise ServiceError("not_found", f"no results stream {stream!r} on the server: the service keeps "
                                            "one when its config sets [jetstream] results_stream") from None
        return DurableUpdates(sub)


class Updates:
    """The service's update messages, decoded, in the order they arrive: dicts with
    ``version`` (the last applied sequence), ``events_total`` (events consumed so far),
    ``graphs`` (the summaries of the graphs the batch changed, as ``query.graph.summary``
    answers them: ids as UUID text, times as RFC 3339) and ``deleted`` (ids of graphs it
    deleted); a batch that touched more graphs than one message holds comes as several
    messages with the same ``version`` and ``part``/``parts``.

    Core NATS, at most once: a reader more than ``pending`` messages behind loses the
    excess (nats-py's slow-consumer limit); ``version`` tells what was missed, and a
    query with ``min_version`` reads the state itself.  (:meth:`Client.updates` with
    ``durable`` reads them from a results stream instead: none lost.)

    An update older than one already given is dropped (a reader that was connected to
    more than one service, or to a results stream written before and after a restart,
    can see versions out of order).  A ``"full": true`` update lists every live graph:
    replace what you hold with it; a restarted service sends one after its replay
    instead of that replay's per-batch updates."""

    def __init__(self, sub):
        self._sub = sub
        self._it = sub.messages
        self._seen = -1  # the highest version given

    def __aiter__(self) -> Updates:
        return self

    def _fresh(self, data: bytes) -> dict | None:
        u = json.loads(data)
        v = u.get("version") if isinstance(u, dict) else None
        if isinstance(v, int):
            if v < self._seen:
                return None
            self._seen = v
        return u

    async def __anext__(self) -> dict:
        while True:
            u = self._fresh((await self._it.__anext__()).data)
            if u is not None:
                return u

    async def next(self, timeout: float | None = None) -> dict:
        """The next update; ``asyncio.TimeoutError`` when none comes within ``timeout`` s."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
            pass  # its connection closed first: the subscription went with it

    async def __aenter__(self) -> Updates:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class SyncClient:
    """:class:`Client` for code without an event loop: the same methods, blocking. The
    connection lives on an event loop of its own, on a daemon thread::

        with cim_flow.SyncClient("nats://127.0.0.1:4222") as client:
            seq = client.publish(event)
            table = client.nodes_within([0, 0, 0], 5.0, min_version=seq)
    """

    def __init__(self, url: str = "nats://127.0.0.1:4222", *, timeout: float = 10.0, **options):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cim_flow-client", daemon=True)
        self._thread.start()
        try:
            self._client = self._call(Client.connect(url, timeout=timeout, **options))
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            try:
                self._call(self._client.close())
            finally:
                self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def updates(self, *, pending: int = 65536, durable: str | None = None,
                stream: str = RESULTS_STREAM) -> SyncUpdates:
        """:meth:`Client.updates`, as a blocking iterator."""
        return SyncUpdates(self, self._call(self._client.updates(pending=pending, durable=durable, stream=stream)))


class DurableUpdates(Updates):
    """:class:`Updates` from a results stream through a durable consumer (see
    :meth:`Client.updates`): fetched ``batch`` at a time, each acknowledged when the
    next is asked for or at close."""

    def __init__(self, sub, batch: int = 64):
        self._sub = sub
        self._batch = batch
        self._buf: collections.deque = collections.deque()
        self._held = None  # the message given last, acknowledged once the next is asked for
        self._seen = -1

    async def _ack_held(self) -> None:
        if self._held is not None:
            msg, self._held = self._held, None
            await msg.ack()

    async def __anext__(self) -> dict:
        while True:
            await self._ack_held()
            while not self._buf:
                try:
                    self._buf.extend(await self._sub.fetch(self._batch, timeout=1.0))
                except (nats.errors.TimeoutError, asyncio.TimeoutError):  # none yet: wait on,
                    continue  # like the core subscription (a caller's timeout is next()'s)
            self._held = msg = self._buf.popleft()
            u = self._fresh(msg.data)
            if u is not None:
                return u

    async def close(self) -> None:
        try:
            await self._ack_held()
            # fetched but not given: back to the consumer now, for the next reader of this
            # name (left alone they would come again only after the ack wait, 30 s)
            while self._buf:
                await self._buf.popleft().nak()
        except (nats.errors.ConnectionClosedError, nats.errors.Error):
            pass  # unacknowledged: they come again to the next reader of this name
        try:
            await self._sub.unsubscribe()
        except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError, nats.errors.Error):
            pass


class SyncUpdates:
    """:class:`Updates` for a :class:`SyncClient`: ``for u in updates`` blocks for each."""

    def __init__(self, owner: SyncClient, updates: Updates):
        self._owner = owner
        self._updates = updates

    def __iter__(self) -> SyncUpdates:
        return self

    def __next__(self) -> dict:
        try:
            return self._owner._call(self._updates.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def next(self, timeout: float | None = None) -> dict:
        return self._owner._call(self._updates.next(timeout))

    def close(self) -> None:
        self._owner._call(self._updates.close())

    def __enter__(self) -> SyncUpdates:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _blocking(name):
    method = getattr(Client, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self._call(method(self._client, *args, **kwargs))

    return call


for _name in ("publish", "publish_many", "publish_batch", "request", "stats", "graph_summary", "graphs",
              "nodes_within", "nearest", "nodes_in_box", "find_nodes", "find_edges", "neighbors", "snapshot",
              "compact"):
    setattr(SyncClient, _name, _blocking(_name))
del _name


def _decode_reply(msg):
    if (msg.headers or {}).get("Content-Type") == ARROW_MIME:
        with pa.ipc.open_stream(pa.py_buffer(msg.data)) as reader:
            return reader.read_all()
    body = json.loads(msg.data)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        raise ServiceError(str(err.get("code")), str(err.get("message")))
    return body
