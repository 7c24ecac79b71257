"""The service's queries: the NATS micro service ``cim_flow`` and its endpoints, answered on
a lean connection of their own when nats-py's micro internals allow, radius requests
answered in batches, the query cache, ``min_version`` waits and reply size limits (part of
:class:`cim_flow.service.Service`).
"""
from __future__ import annotations

import asyncio
import time


from . import __version__
from . import _wire
from ._queries import (ARROW_MIME, HANDLERS, QueryError, _number, encode_answer, error_reply, parse_request,
                       q_nodes_in_radius_many, q_radius_fast)
from ._service_common import COMPACT_SUBJECT, QUERY_PREFIX, SNAPSHOT_SUBJECT, _REPLY_HEADROOM


class QueryMixin:
    """The query endpoints; see the module docstring."""

    async def _warm_cache(self):
        """Answer ``[query_cache] warm_cache_queries`` once before ready, into the cache.

        An entry is an endpoint name (``"graphs"``: its request with no body and ``{}``)
        or a name and the exact request text (``'graphs {"limit": 50}'``); the cache
        matches request bytes, so a client sending that text hits.  Entries are keyed by
        version like every other, so they serve until the next batch is applied; the
        first answer also builds what it needs (a graph index, the spatial grid) before
        clients come.  The seed's ``get_all_graphs`` means ``graphs``; other unknown names
        are reported and skipped.
        """
        if not self.cache.enabled:
            return
        version = self.engine.version
        for entry in self.config.query_cache.warm_cache_queries:
            name, _, text = str(entry).strip().partition(" ")
            name = _WARM_ALIASES.get(name, name)
            if name not in HANDLERS or name == "stats":
                self._log(f"cim_flow: query_cache.warm_cache_queries: {entry!r} is not a cached query "
                          f"(known: {', '.join(n for n in HANDLERS if n != 'stats')}); skipped")
                continue
            bodies = [text.strip().encode()] if text.strip() else [b"", b"{}"]
            for data in bodies:
                try:
                    if name in _SPATIAL and not self.engine._spatial.built:
                        await self._spatial_ready()
                    ans = HANDLERS[name](self.engine, parse_request(data), self.limits)
                except QueryError as exc:
                    self._log(f"cim_flow: query_cache.warm_cache_queries: {entry!r}: {exc.message}; skipped")
                    break
                self.cache.put((name, data, False, version), encode_answer(ans, version, False))
                self.counters["cache_warmed"] += 1

    async def _start_queries(self):
        from nats.micro import add_service

        self.svc = await add_service(self.qnc, name="cim_flow", version=__version__,
                                     description="cim_flow graph projections and spatial queries")
        for name in HANDLERS:
            await self.svc.add_endpoint(name=name, subject=QUERY_PREFIX + name, handler=self._handler(name))
        await self.svc.add_endpoint(name="snapshot", subject=SNAPSHOT_SUBJECT, handler=self._snapshot_handler)
        await self.svc.add_endpoint(name="compact", subject=COMPACT_SUBJECT, handler=self._compact_handler)
        if self.config.queries.raw_connection and _wire.usable(self.url, self.connect_options):
            if not _micro_internals_known(self.svc):
                self._log("cim_flow: queries stay on nats-py: its micro service's internals are not the "
                          "ones the lean connection takes its endpoints from (nats-py 2.16)")
                return
            try:
                await self._query_raw_connect()
            except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                self._log(f"cim_flow: queries stay on nats-py: {exc}")

    # At 5k radius requests/s nats-py took ~40% of the service thread (py-spy): parsing,
    # a Msg and a micro Request, a callback coroutine, a publish through its buffer per
    # request (the whole change saved ~7% of CPU a query: 183 -> 170 us; the rest is our
    # own Python and the kernel).  The micro service stays registered on nats-py ($SRV.PING, INFO
    # and STATS, its endpoints and their counters), but its query endpoints' subscriptions
    # move to a RawConnection in the same queue group: frames parsed per socket read,
    # each request answered on the spot, replies written once per loop turn.
    def _query_endpoints(self) -> list:
        return [ep for ep in getattr(self.svc, "_endpoints", []) if ep._name in HANDLERS]

    async def _query_raw_connect(self):
        o = self.connect_options
        conn = _wire.RawConnection(self._on_query_block, self._query_raw_lost, name="cim_flow-query-raw")
        await conn.connect(self.url, user=o.get("user"), password=o.get("password"), token=o.get("token"))
        eps = self._query_endpoints()
        self.qraw, self._qroutes = conn, {ep._subject.encode(): (ep, self._handler(ep._name)) for ep in eps}
        for sid, ep in enumerate(eps, 1):
            conn.subscribe(ep._subject, sid, queue=ep._queue_group)
        await conn.flush()  # the server holds the lean subscriptions: now drop nats-py's
        if self.qnc.is_connected:
            await self._drop_micro_query_subs(conn)
        else:
            self._background(self._drop_micro_query_subs(conn))

    async def _drop_micro_query_subs(self, conn):
        """Unsubscribe nats-py's query endpoints once nats-py is connected.  Not before:
        while nats-py reconnects it holds back UNSUB (its re-subscription is meant to
        cover that) but still sends a SUB queued meanwhile, so the server would keep a
        subscription nats-py no longer reads, and the queue group would send it every
        other request, never answered (seen after a server restart)."""
        while not self._stop.is_set() and conn is self.qraw and not conn.closed:
            if self.qnc.is_connected:
                for ep in self._query_endpoints():
                    sub = ep._subscription
                    if sub is not None:
                        # drained, not just unsubscribed: a request the server handed to
                        # nats-py during the handover is still answered (unsubscribing
                        # dropped it, and its requester timed out)
                        ep._subscription = None
                        try:
                            await sub.drain()
                        except Exception:  # closed or draining: nothing left to answer
                            pass
                return
            await asyncio.sleep(0.1)

    def _query_raw_lost(self, exc):
        if self._stop.is_set():
            return
        self._log("cim_flow: lean query connection lost: queries go through nats-py until it is back")
        self._background(self._query_raw_reconnect())

    async def _query_raw_reconnect(self):
        for ep in self._query_endpoints():  # nats-py re-subscribes these once it is back
            if ep._subscription is None:
                await ep._start()
        await self._retry(self._query_raw_connect)

    def _on_query_block(self, block: _wire.Block):
        """Requests of one socket read on the lean query connection, each handled now."""
        conn, routes, buf, sp = self.qraw, self._qroutes, block.buf, block.sp
        self._in_block = True  # radius requests wait for the end of the block, not a task
        try:
            self._route_block(conn, routes, block, buf, sp)
        finally:
            self._in_block = False
        if self._radius_pending and self._radius_flush is None:
            # answered here, together: at 5k requests/s a read holds one, and a task and a
            # loop turn for it cost more than its answer (_flush_radius never waits here:
            # its replies are queued for the write below)
            self._run_eagerly(self._flush_radius())
        conn._send_queued()  # the read's replies now, in one write (not a callback later)

    def _route_block(self, conn, routes, block, buf, sp):
        for i in range(len(block)):
            route = routes.get(buf[sp[0, i]:sp[1, i]])
            if route is None:
                continue
            ep, handler = route
            t0 = time.perf_counter_ns()
            ep._num_requests += 1
            req = _RawRequest(conn, buf[sp[4, i]:sp[5, i]], buf[sp[2, i]:sp[3, i]].decode(),
                              _wire.headers_of(block, i) if sp[4, i] - sp[1, i] > 40 else None)
            self._run_eagerly(handler(req))
            ep._processing_time += time.perf_counter_ns() - t0
            ep._average_processing_time = int(ep._processing_time / ep._num_requests)

    def _run_eagerly(self, coro):
        """Run ``coro`` on the spot until it first has to wait; only then does the rest go
        to a task.  A query answered from memory never waits: no task, no loop turn."""
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:  # the handler answers its own errors: this is a bug
            self._log(f"cim_flow: query handler failed: {type(exc).__name__}: {exc}")
            return
        self._background(_finish(coro, waiting_on))

    def _handler(self, name):
        fn = HANDLERS[name]
        batched = name == "nodes_in_radius"
        spatial = name in _SPATIAL

        async def handle(req):
            self.counters["queries"] += 1
            t0 = time.perf_counter()
            try:
                body = parse_request(req.data)
                minv = body.get("min_version")
                if minv is not None:
                    if isinstance(minv, bool) or not isinstance(minv, int) or not 0 <= minv < 2**64:
                        raise QueryError("bad_request", "min_version must be an integer in [0, 2**64)")
                    timeout_ms = body.get("timeout_ms")
                    if timeout_ms is not None:
                        timeout_ms = _number(timeout_ms, "timeout_ms", minimum=0)
                        if timeout_ms > 86_400_000:
                            raise QueryError("bad_request", "timeout_ms must be at most a day (86400000)")
                    await self._wait_version(minv, timeout_ms)
                if spatial and not self.engine._spatial.built:
                    await self._spatial_ready()
                arrow = (req.headers or {}).get("Accept") == ARROW_MIME
                version = self.engine.version
                key = (name, req.data, arrow, version)
                hit = self.cache.get(key) if name != "stats" else None
                if hit is None and batched and not arrow:
                    raw = q_radius_fast(self.engine, body, self.limits)  # the plain one-center kind
                    if raw is not None:
                        data = raw + b',"version":%d}' % version
                        if len(data) + _REPLY_HEADROOM <= self._payload_limit():
                            hit = (data, None)
                            self.cache.put(key, hit)
                if hit is None and batched:
                    # answered with every other radius request that arrives before the
                    # event loop turns: one kernel call and one id conversion for all
                    self._radius_pending.append((req, body, arrow, t0))
                    if self._radius_flush is None and not self._in_block:
                        self._radius_flush = asyncio.get_running_loop().create_task(self._flush_radius())
                    return
                if hit is None:
                    if name == "stats":
                        ans = fn(self.engine, body, self.limits, self.stats)
                    else:
                        ans = fn(self.engine, body, self.limits)
                    hit = self._to_fit(name, body, encode_answer(ans, version, arrow), version, arrow)
                    if name != "stats":
                        self.cache.put(key, hit)
                data, headers = hit
                await req.respond(self._fits(data), headers=headers)
            except Exception as exc:  # a bug must not silence the reply
                await req.respond(self._error_reply(exc))
            self.query_time.add1(time.perf_counter() - t0)

        return handle

    async def _spatial_ready(self):
        """The first spatial query: build the index on the background thread and wait for
        it there, so the event loop keeps ingesting (a 1M-node build takes 50-150 ms, a
        10M-node one over a second).  Batches applied meanwhile are folded in when the
        query adopts the build, so its answer is still exact for the version it reports."""
        job = self.engine._spatial.start_build(self.engine._p.N)
        if job is not None and not job.done():
            self.counters["index_builds_waited"] += 1
            await asyncio.wrap_future(job)

    def _to_fit(self, name: str, body: dict, reply: tuple, version: int, arrow: bool) -> tuple:
        """``reply`` (data, headers), or, when it is too big for one message and the
        request set no ``limit``, the same query answered with fewer rows: the default
        limit promises an answer capped with ``"truncated": true``, and 10,000 rows of
        ids (~100 bytes each) exceed the usual 1 MB max_payload.  An explicit limit is
        the requester's choice: that answer stays a ``too_large`` error (see _fits)."""
        data = reply[0]
        room = self._payload_limit() - _REPLY_HEADROOM
        if len(data) <= room or "limit" in body or name not in _PAGED:
            return reply
        fn, limit = HANDLERS[name], min(self.limits["default"], self.limits["max"])
        for _ in range(8):
            limit = max(1, min(limit - 1, int(limit * room / len(data) * 0.9)))
            reply = encode_answer(fn(self.engine, {**body, "limit": limit}, self.limits), version, arrow)
            data = reply[0]
            if len(data) <= room or limit == 1:
                break
        return reply

    def _fits(self, data: bytes) -> bytes:
        """``data``, if a reply that size can be published; else a ``too_large`` error.
        The server closes a connection that publishes more than its max_payload (on the
        lean query connection, with every reply queued behind it), and nats-py refuses
        with a bare MaxPayloadError."""
        limit = self._payload_limit()
        if len(data) + _REPLY_HEADROOM > limit:
            raise QueryError("too_large", f"the reply is {len(data):,} bytes, more than the NATS server's "
                                          f"max_payload ({limit:,} bytes) allows: ask for fewer rows (limit, "
                                          f"offset) or fewer centers")
        return data

    def _error_reply(self, exc) -> bytes:
        self.counters["query_errors"] += 1
        if isinstance(exc, QueryError):
            return error_reply(exc.code, exc.message, self.engine.version)
        if isinstance(exc, ValueError):
            return error_reply("bad_request", str(exc), self.engine.version)
        return error_reply("internal", f"{type(exc).__name__}: {exc}", self.engine.version)

    async def _flush_radius(self):
        pend, self._radius_pending = self._radius_pending, []
        self._radius_flush = None
        self.counters["radius_batches"] += 1
        version = self.engine.version
        try:
            answers = q_nodes_in_radius_many(self.engine, [p[1] for p in pend], self.limits,
                                             [p[2] for p in pend])
        except Exception as exc:
            answers = [exc] * len(pend)
        for (req, _body, arrow, t0), ans in zip(pend, answers):
            try:
                if isinstance(ans, Exception):
                    await req.respond(self._error_reply(ans))
                    continue
                data, headers = self._to_fit("nodes_in_radius", _body, encode_answer(ans, version, arrow),
                                             version, arrow)
                self.cache.put(("nodes_in_radius", req.data, arrow, version), (data, headers))
                await req.respond(self._fits(data), headers=headers)
            except Exception as exc:
                try:
                    await req.respond(self._error_reply(exc))
                except Exception:
                    pass  # the connection is gone; the requester times out
            finally:
                self.query_time.add1(time.perf_counter() - t0)

    async def _wait_version(self, v: int, timeout_ms=None):
        if self.engine.version >= v:
            return
        t = self.config.queries.min_version_timeout if timeout_ms is None else float(timeout_ms) / 1000
        try:
            async with self._applied_cond:
                await asyncio.wait_for(self._applied_cond.wait_for(lambda: self.engine.version >= v), t)
        except asyncio.TimeoutError:
            raise QueryError("timeout", f"version {v} not applied within {t:g}s "
                             f"(at {self.engine.version})") from None


# endpoints whose answers are capped by "limit" (and so can be answered with fewer rows)
_PAGED = frozenset({"graphs", "graphs_by_date", "graphs_by_node_count", "nodes_in_radius", "nodes_in_box",
                    "find_nodes", "find_edges", "neighbors"})


def _micro_internals_known(svc) -> bool:
    """The lean query connection takes over the endpoints' subscriptions through nats-py's
    micro internals (2.16): check they are what it uses before relying on them."""
    eps = getattr(svc, "_endpoints", None)
    if not eps:
        return False
    return all(hasattr(ep, a) for ep in eps
               for a in ("_name", "_subject", "_queue_group", "_subscription", "_stop", "_start",
                         "_num_requests", "_processing_time"))


_WARM_ALIASES = {"get_all_graphs": "graphs", "get_graphs": "graphs"}  # the seed's names


_SPATIAL = frozenset({"nodes_in_radius", "knn", "nodes_in_box"})  # endpoints that need the grid


class _RawRequest:
    """A request read on the lean query connection, shaped like nats.micro's Request."""

    __slots__ = ("conn", "data", "reply", "headers")

    def __init__(self, conn, data: bytes, reply: str, headers: dict | None):
        self.conn, self.data, self.reply, self.headers = conn, data, reply, headers

    async def respond(self, data: bytes, headers: dict | None = None) -> None:
        if self.reply:
            try:
                self.conn.publish_soon(self.reply, data, headers=headers)
            except ConnectionError:
                pass  # the connection is gone: the requester times out


async def _finish(coro, waiting_on):
    """Go on with a coroutine that :meth:`Service._run_eagerly` started and that is now
    waiting on the future ``waiting_on`` (None: it only yielded the loop)."""
    while True:
        if waiting_on is None:
            await asyncio.sleep(0)
        else:
            await asyncio.wait((waiting_on,))
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
