"""The NATS service: JetStream (or core NATS) ingest in micro-batches, request/reply
queries as a NATS micro service named ``cim_flow``, results and dead letters out.

Layers: decoding is :mod:`cim_flow._decode` (pure), query handling is
:mod:`cim_flow._queries` (pure); this module owns connections, subscriptions,
batching, acks and the life cycle.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import signal
import sys
import time
import uuid
from collections import deque

import msgspec
import numpy as np
import pyarrow as pa

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StoreCompression, StreamConfig

from . import __version__
from . import _wire
from ._config import Config
from ._decode import decode_json, decode_spans, decode_spans_columns
from ._natsserver import NatsServer
from ._projection import INVALID, REASONS, normalize_batch
from ._queries import (ARROW_MIME, HANDLERS, QueryCache, QueryError, encode_answer, error_reply, parse_request,
                       iso_texts_of, q_nodes_in_radius_many, uuid_texts_of)
from .engine import Engine

BATCH_SUBJECT = "event.graph.batch"
UPDATES_SUBJECT = "projection.graph.summary.updated"
DLQ_SUBJECT = "dlq.graph"
QUERY_PREFIX = "query.graph."
SNAPSHOT_SUBJECT = "cmd.cim_flow.snapshot"
_json = msgspec.json.Encoder()
_PULL_EXPIRES = 2.0  # seconds a pull request waits for messages before the server ends it
_SNAPSHOT_CHILD_LIMIT = 900  # seconds a background snapshot writer may take before it is killed
_SNAPSHOT_WAIT_AT_STOP = 120.0  # seconds shutdown waits for one before writing in-line


def _stream_seq(reply: str) -> int:
    """Stream sequence from a JetStream ack subject (v1 and v2 token layouts)."""
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5])
    return int(t[-5])


class LatencyWindow:
    """The last ``size`` latencies (seconds) in a ring; percentiles on demand."""

    def __init__(self, size: int = 65536):
        self.buf = np.zeros(size)
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64)[-self.buf.size:]
        i = self.n % self.buf.size
        k = values.size
        first = min(k, self.buf.size - i)
        self.buf[i:i + first] = values[:first]
        self.buf[: k - first] = values[first:]
        self.n += k

    def add1(self, value: float) -> None:
        """One value (what :meth:`add` does for an array, without making one)."""
        self.buf[self.n % self.buf.size] = value
        self.n += 1

    def _last(self, k: int) -> np.ndarray:
        """The last ``k`` values (``k`` at most what the window holds), oldest first."""
        i = self.n % self.buf.size
        if i >= k:
            return self.buf[i - k:i]
        return np.concatenate([self.buf[self.buf.size - (k - i):], self.buf[:i]])  # wraps the ring's end

    def percentiles(self, qs=(50, 99, 99.9), last: int | None = None) -> list[float]:
        """Percentiles over the window, or over the ``last`` values only."""
        m = min(self.n, self.buf.size)
        if m == 0:
            return [0.0 for _ in qs]
        vals = self._last(last) if last is not None and last < m else self.buf[:m]
        return [float(v) for v in np.percentile(vals, qs)]

    def recent_quantile(self, q: float, last: int) -> float:
        """The ``q`` quantile (0..1, the nearest value at or below) of the ``last`` values:
        one ``np.partition`` (~8 us for 2,048 values; ``np.percentile`` took ~95 us)."""
        m = min(self.n, self.buf.size, last)
        if m == 0:
            return 0.0
        k = int(q * (m - 1))
        return float(np.partition(self._last(m), k)[k])  # (partition sorts a copy)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Service:
    def __init__(self, config: Config | None = None, *, nats_url: str | None = None, port: int = 4222,
                 data_dir: str = ".cim_flow", jetstream: bool | None = None, engine: Engine | None = None,
                 demo: bool = False, demo_rate: float = 5000.0, status_interval: float = 5.0,
                 out=None, connect_options: dict | None = None, queries: bool = True,
                 snapshots: bool | None = None):
        self.config = config or Config()
        self.nats_url = nats_url or self.config.nats.url or None
        self.port = port
        self.data_dir = data_dir
        self.jetstream = self.config.jetstream.enabled if jetstream is None else jetstream
        self.engine = engine or Engine()
        self._own_engine = engine is None
        self.serve_queries = queries
        self.snapshots = self.config.snapshots.enabled if snapshots is None else snapshots
        self.snapshot_dir = f"{data_dir}/snapshots"
        self._snap_version = 0
        self._snap_time = time.time()
        self._snap_child = None  # (pid, version, path, started) of a background snapshot
        self._snap_good = -1  # version of the last snapshot written (-1: none yet)
        self.snapshot_seconds = 0.0  # how long the last background one took
        self.demo = demo
        self.demo_rate = demo_rate
        self.status_interval = status_interval
        self.out = out or sys.stdout
        self.connect_options = connect_options or {}
        ep = self.config.event_processing
        self.batch_size = ep.batch_size
        self._adapt_t = 0.0  # when _adapt last read the p99
        self._phase_s = [0.0, 0.0, 0.0, 0.0]  # decode + apply, ack, update message, snapshot check
        self.cache = QueryCache(self.config.query_cache.max_entries, self.config.query_cache.ttl_seconds,
                                self.config.query_cache.enabled)
        self.limits = {"default": self.config.queries.default_limit, "max": self.config.queries.max_limit}
        self._radius_pending: list = []  # radius requests waiting for the next batched answer
        self._radius_flush = None
        self.server: NatsServer | None = None
        self.nc = self.qnc = None
        # what arrived and is not applied yet: raw-connection Blocks and nats-py Msgs, in order
        self._pending: list = []
        self._pending_n = 0
        self._pending_t0 = 0.0
        self._has_data = asyncio.Event()
        self._full_waiter: asyncio.Future | None = None  # the batch loop waiting for a full batch
        self._stop = asyncio.Event()
        self._applied_cond = asyncio.Condition()
        self._pulls: deque = deque()
        self._tasks: list = []
        self._bg: set = set()
        self._touched: list = []  # graph indices each apply of the batch changed (arrays)
        self.latency = LatencyWindow()
        self.batch_time = LatencyWindow(4096)  # seconds spent processing each batch
        self.query_time = LatencyWindow(4096)  # seconds from a query's arrival to its reply queued
        self.counters = dict(events_applied=0, events_ignored=0, events_skipped=0, events_dead_lettered=0,
                             batches=0, queries=0, query_errors=0, messages=0, radius_batches=0,
                             index_builds_waited=0, snapshots=0, consumer_resets=0, pull_stalls=0,
                             server_restarts=0, cache_warmed=0)
        self.started = time.time()
        self.connected = False
        self.url = None
        self.raw: _wire.RawConnection | None = None  # the consumer's inbox, off nats-py (see _wire)
        self._resume_lock = asyncio.Lock()
        # Pull-request liveness. A pull request sent while the durable consumer is being
        # re-created, or lost with a connection, is never answered; counted as open, it
        # would stop all pulling for good. So no pulls go out during a reset, and a
        # watchdog re-creates the consumer when open pulls get no reply in 3 expiries.
        self._resetting = False
        self._lost_n = 0  # connection losses seen (nats-py or raw)
        self._resumed_n = 0  # losses a completed resume has covered
        # Deliveries are trusted only from pull requests sent since the consumer was last
        # (re)created, on an inbox of that generation (see _fresh_inbox): from a loss of the
        # connection that reads them until then, whatever arrives is dropped.
        self._discard = False
        self._inbox_sid = 1
        self._inbox_sub = None  # the nats-py subscription, when the inbox is read by nats-py
        self._inbox_seen = self._pull_sent = time.monotonic()
        self.raw_wanted = False
        # queries on a lean connection of their own (see _on_query_block): subject -> route
        self.qraw: _wire.RawConnection | None = None
        self._qroutes: dict[bytes, tuple] = {}
        self.catch_up_stats = (0, 0.0)  # (stream messages, seconds) replayed before ready
        self._error_logged: dict = {}  # error kind -> when it was last logged
        self.stream_behind = 0  # how far the stream's end is behind the version (0: fine)
        self.engine._on_apply(self._note_touched)

    def _note_touched(self, touched, dirty):
        if len(touched):
            self._touched.append(np.asarray(touched, np.int64))

    # -- life cycle -------------------------------------------------------------
    def _log(self, line: str) -> None:
        try:
            print(line, file=self.out, flush=True)
        except (BrokenPipeError, OSError):  # whoever read our output has gone: keep serving
            pass

    async def start(self) -> str:
        self.loop = asyncio.get_running_loop()
        for line in self.config.notices(external_server=bool(self.nats_url)):
            self._log(f"cim_flow: {line}")
        if not self.nats_url:  # the embedded server boots in its own process meanwhile
            js = self.config.jetstream
            self.server = NatsServer(port=self.port, store_dir=js.store_dir or f"{self.data_dir}/jetstream",
                                     jetstream=True, jetstream_limits=js.server_limits()).launch()
        try:
            warm_kernels()
            self._load_snapshot()
            if self.server is not None:
                self.server.wait_ready()
        except BaseException:
            if self.server is not None:
                self.server.stop()
            raise
        if not self.nats_url:
            self.url = self.server.url
        else:
            self.url = self.nats_url
        opts = dict(self.connect_options)
        opts.setdefault("max_reconnect_attempts", -1)
        opts.setdefault("drain_timeout", 5)
        opts.setdefault("reconnect_time_wait", 0.5)
        opts.setdefault("error_cb", self._nats_error)
        pending = self.config.nats.pending_size
        self.nc = await self._connect(name="cim_flow-ingest", pending_size=pending,
                                      disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                                      **opts)
        self.qnc = await self._connect(name="cim_flow-query", **opts)
        self.connected = True
        if self.serve_queries:
            await self._start_queries()
        if self.jetstream:
            await self._start_jetstream()
        else:
            for subj in self.config.jetstream.subjects:
                await self.nc.subscribe(subj, cb=self._on_msg, pending_msgs_limit=1_000_000,
                                        pending_bytes_limit=1 << 30)
        # nats-py only buffers a SUB until its next flush: make sure the server holds every
        # subscription (events, queries) before we say ready, or a message published right
        # after the ready line can find no subscriber (core NATS drops it).
        await self.nc.flush()
        await self.qnc.flush()
        self._tasks.append(asyncio.create_task(self._batch_loop()))
        if self.status_interval:
            self._tasks.append(asyncio.create_task(self._status_loop()))
        if self.jetstream:
            self._tasks.append(asyncio.create_task(self._watch_pulls()))
        if self.server is not None:
            self._tasks.append(asyncio.create_task(self._watch_server()))
        if self.jetstream:
            await self._catch_up()
        if self.config.query_cache.warm_cache_on_startup:
            await self._warm_cache()
        if self.engine._spatial_hint and not self.engine._spatial.built:
            # the snapshot's service kept a spatial index: build it again now, in the
            # background, so the first query after a restart need not wait for it
            self.engine._spatial.start_build(self.engine._p.N)
        if self.demo:
            from ._demo import demo_publisher
            self._tasks.append(asyncio.create_task(demo_publisher(self.url, self.demo_rate, self._stop)))
        # Everything alive now (numba's compiler state, nats-py, the engine) lives for the whole
        # run: keep it out of the cyclic collector's full passes, which otherwise walk it all.
        gc.freeze()
        return self.url

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

    def _load_snapshot(self):
        if self.snapshots and self._own_engine:
            from ._snapshot import load_latest

            eng, path = load_latest(self.snapshot_dir, log=self._log)
            if eng is not None:
                self.engine = eng
                self.engine._on_apply(self._note_touched)
                self._log(f"cim_flow: loaded snapshot {path} (version {eng.version})")
                self._snap_good = eng.version  # on disk already: no need to write it again at stop
            self._snap_version = self.engine.version

    async def _catch_up(self):
        """Replay the stream up to its last sequence at start, before reporting ready."""
        info = await self.js.stream_info(self.config.jetstream.stream)
        target = info.state.last_seq
        self._check_stream(target)
        start_v = self.engine.version
        self.catch_up_stats = (0, 0.0)
        if target <= start_v:
            return
        self._log(f"cim_flow: replaying {target - start_v:,} events (from seq {start_v + 1} to {target})")
        bar = None
        if hasattr(self.out, "isatty") and self.out.isatty():
            try:
                from tqdm import tqdm

                bar = tqdm(total=target - start_v, unit="ev", desc="replay", file=self.out)
            except ImportError:
                bar = None
        t0 = last_log = time.time()
        while self.engine.version < target and not self._stop.is_set():
            # woken by the batch that reaches the target (polling every 50 ms made ready
            # up to 50 ms late); the timeout keeps the progress display and stop check going
            try:
                async with self._applied_cond:
                    await asyncio.wait_for(self._applied_cond.wait_for(lambda: self.engine.version >= target), 0.25)
            except asyncio.TimeoutError:
                pass
            now = time.time()
            done = self.engine.version - start_v
            if bar is not None:
                bar.n = done
                bar.refresh()
            elif now - last_log >= 2.0:
                rate = done / max(now - t0, 1e-9)
                eta = (target - self.engine.version) / max(rate, 1e-9)
                self._log(f"cim_flow: replay {done:,}/{target - start_v:,} events, {rate:,.0f}/s, eta {eta:.0f}s")
                last_log = now
        if bar is not None:
            bar.close()
        dt = time.time() - t0
        self.catch_up_stats = (self.engine.version - start_v, dt)
        self._log(f"cim_flow: replayed {self.engine.version - start_v:,} events in {dt:.2f}s "
                  f"({(self.engine.version - start_v) / max(dt, 1e-9):,.0f}/s)")

    async def _connect(self, **opts):
        """A first connection. A server not up yet is waited for (nats-py retries, and we
        log each kind of error every 5 s); a server that rejects our credentials fails
        the start at once: retrying cannot fix a configuration error."""
        rejected = []
        log = opts.pop("error_cb", self._nats_error)

        async def on_error(exc):
            if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower():
                rejected.append(exc)
            await log(exc)

        task = asyncio.ensure_future(nats.connect(self.url, error_cb=on_error, **opts))
        while not task.done():
            await asyncio.wait([task], timeout=0.1)
            if rejected and not task.done():
                task.cancel()
                raise NatsAuthError(f"the NATS server at {self.url} rejected our credentials "
                                    f"({rejected[0]}): check --user/--password, --token or --creds")
        return task.result()

    async def _nats_error(self, exc):
        """nats-py's errors (refused connections while a server restarts, ...): one log
        line per kind every 5 s, instead of nats-py's default traceback each time."""
        key = type(exc).__name__
        now = time.monotonic()
        if now - self._error_logged.get(key, -1e9) >= 5.0:
            self._error_logged[key] = now
            self._log(f"cim_flow: NATS connection to {self.url}: {key}: {exc} (retrying)")

    async def _disconnected(self):
        self._lost_n += 1
        self.connected = False
        if self.jetstream and not self.raw_wanted:  # nats-py reads the inbox: suspect until the resume
            self._discard = True

    async def _reconnected(self):
        if self.jetstream:
            await self._resume()
        else:
            self.connected = True

    async def _resume(self, force: bool = False):
        """After any connection came back: restart the consumer at version + 1 and pull.

        Both connections come back on their own and each one's return calls this; the
        second call finds the losses already covered and does nothing (``force``: the pull
        watchdog, which resets whatever the losses say).
        """
        async with self._resume_lock:
            if self.raw_wanted and (self.raw is None or self.raw.closed):
                return  # the raw connection's own reconnect loop resumes when it is back
            if not self.nc.is_connected:
                return  # nats-py's reconnected callback resumes
            lost = self._lost_n
            if lost == self._resumed_n and not force:
                self.connected = True
                return
            self._pulls.clear()
            self._resetting = True
            wait = 0.1
            try:
                while not self._stop.is_set():
                    try:
                        await self._fresh_inbox()
                        await self._reset_consumer()
                        break
                    except Exception as exc:
                        # JetStream may still be recovering its streams after a server restart.
                        # Pulling now could find no consumer at all (deleted, not yet re-added)
                        # and wait forever, so retry the reset with back-off until it holds.
                        self._log(f"cim_flow: consumer reset after reconnect failed ({exc}); retrying")
                        if not self.nc.is_connected or (self.raw_wanted and (self.raw is None or self.raw.closed)):
                            return  # lost again: the next reconnect resumes
                        try:
                            await asyncio.wait_for(self._stop.wait(), wait)
                        except asyncio.TimeoutError:
                            pass
                        wait = min(2.0, wait * 2)
            finally:
                self._resetting = False
            self._resumed_n = lost
            self.counters["consumer_resets"] += 1
            self.connected = True
            self._log(f"cim_flow: consuming again from seq {self.engine.version + 1}")
            await self._pull()
            try:
                info = await self.js.stream_info(self.config.jetstream.stream)
                self._check_stream(info.state.last_seq)
            except Exception:  # a check, not a step: the consumer runs either way
                pass

    async def _fresh_inbox(self):
        """Read the consumer's deliveries on a new inbox from now on, and drop the old one.

        Pull requests outlive the connection that reads their deliveries: after the inbox's
        reader was cut off (a slow consumer, a network break) they kept delivering, and a
        reader back on the same inbox got the tail of a run whose head was lost with the
        old connection.  Applied, its last seq was acknowledged (AckAll), the lost head
        with it: a gap, never redelivered (seen when a server cut the consumer off again
        and again).  Now the reader subscribes a new inbox, unsubscribes the old, and after
        a round trip (everything the server queued for the old inbox has come and been
        dropped) takes deliveries again; the consumer is re-created after this at version
        + 1 and only pull requests sent after that reply to the new inbox."""
        inbox = self.nc.new_inbox()
        raw = self.raw if self.raw_wanted else None
        # also when nothing was lost (the watchdog, a nats-py reconnect): the old inbox's
        # last deliveries and statuses are dropped, and the new consumer sends them again
        self._discard = True
        if raw is not None:
            if raw.closed:
                raise ConnectionError("the consumer connection is down")
            self._inbox_sid += 1
            raw.subscribe(inbox, self._inbox_sid)
            raw.unsubscribe(self._inbox_sid - 1)
            await raw.flush()
            raw.set_inbox(inbox)  # only now: until here a status on the old inbox is one
            self._inbox = inbox
        elif self._inbox_sub is not None:
            sub = await self.nc.subscribe(inbox, cb=self._on_msg, pending_msgs_limit=1_000_000,
                                          pending_bytes_limit=1 << 30)
            stale, self._inbox_sub, self._inbox = self._inbox_sub, sub, inbox
            await stale.unsubscribe()
            await self.nc.flush()
        self._discard = False

    def _check_stream(self, last_seq: int) -> None:
        """Warn when the stream ends before the projection's version: it lost events the
        projection has applied (a new stream under the old name, a server that died
        before writing what it had acknowledged). New events would then get sequences
        the projection counts as seen and skip them, so say it loudly and in stats."""
        v = self.engine.version
        self.stream_behind = max(0, v - last_seq)
        if last_seq < v:
            self._log(f"cim_flow: WARNING: stream {self.config.jetstream.stream} ends at seq {last_seq} but the "
                      f"projection is at version {v}: events up to {v} were lost by the server or the stream "
                      f"was re-created; new events up to seq {v} will be skipped. Rebuild with "
                      f"`python -m cim_flow replay` or remove the snapshots to start over.")

    async def _watch_server(self):
        """Restart the embedded nats-server when it dies (a crash, the OOM killer, an
        operator's kill): same port, same store. JetStream recovers the stream from its
        files, both connections reconnect on their own and the consumer resumes at
        version + 1, so nothing is lost or applied twice."""
        loop = asyncio.get_running_loop()
        wait = 0.5
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), wait)
                return
            except asyncio.TimeoutError:
                pass
            if self.server.alive:
                wait = 0.5
                continue
            self.counters["server_restarts"] += 1
            last = " | ".join(list(self.server.log)[-3:]) or "(nothing logged)"
            self._log(f"cim_flow: the embedded nats-server exited ({self.server.returncode}); "
                      f"restarting it. Its last lines: {last}")
            try:
                await loop.run_in_executor(None, self.server.restart)
                self._log(f"cim_flow: embedded nats-server back on {self.server.url}")
            except Exception as exc:  # the port still held, the store unreadable, ...: retry
                self._log(f"cim_flow: restarting the embedded nats-server failed: {exc}")
                wait = min(10.0, wait * 2)

    async def _watch_pulls(self):
        """Re-create the consumer if open pull requests get no reply for 3 expiries.

        Every pull request expires after ``_PULL_EXPIRES`` seconds with a status reply, so
        silence that long means the requests were lost (sent to a consumer that was
        being re-created, or on a connection that died): without this, the service
        would wait for them forever.
        """
        limit = 3 * _PULL_EXPIRES
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), 1.0)
                return
            except asyncio.TimeoutError:
                pass
            if not (self.connected and self._pulls) or self._resetting or self._pending:
                continue
            quiet = time.monotonic() - max(self._inbox_seen, self._pull_sent)
            if quiet > limit:
                await asyncio.sleep(0.2)  # replies may be waiting behind a long blocking step
                quiet = time.monotonic() - max(self._inbox_seen, self._pull_sent)
            if quiet > limit and self._pulls and not self._pending:
                self.counters["pull_stalls"] += 1
                self._log(f"cim_flow: no reply to pull requests in {quiet:.0f}s; re-creating the consumer")
                try:
                    await self._resume(force=True)
                except Exception as exc:  # keep watching; the next round tries again
                    self._log(f"cim_flow: consumer re-creation failed: {exc}")

    # -- the consumer's inbox on a raw connection ------------------------------------
    async def _raw_connect(self):
        o = self.connect_options
        conn = _wire.RawConnection(self._on_block, self._raw_lost, inbox=self._inbox,
                                   batch_subject=BATCH_SUBJECT, name="cim_flow-consumer")
        await conn.connect(self.url, user=o.get("user"), password=o.get("password"), token=o.get("token"))
        conn.subscribe(self._inbox, self._inbox_sid)
        await conn.flush()
        self.raw = conn

    def _raw_lost(self, exc):
        self._lost_n += 1
        self.connected = False
        self._discard = True
        if not self._stop.is_set():
            self._background(self._raw_reconnect())

    async def _raw_reconnect(self):
        if await self._retry(self._raw_connect):
            await self._resume()

    async def _retry(self, connect) -> bool:
        """Await ``connect()`` until it succeeds (True) or the service stops (False),
        waiting 0.1 s, doubling up to 2 s, after each failed attempt."""
        wait = 0.1
        while not self._stop.is_set():
            try:
                await connect()
                return True
            except (OSError, ConnectionError, asyncio.TimeoutError):
                pass
            try:
                await asyncio.wait_for(self._stop.wait(), wait)
            except asyncio.TimeoutError:
                pass
            wait = min(2.0, wait * 2)
        return False

    def _on_block(self, block: _wire.Block):
        """The messages of one socket read: pull statuses end pull requests, the rest wait."""
        if self._discard:
            return  # from before the consumer's reset (see _fresh_inbox): it redelivers
        pulls = self._pulls
        self._inbox_seen = time.monotonic()
        kind = block.kind
        status = np.flatnonzero(kind == 2)
        prev = 0
        for i in [*status.tolist(), len(block)]:
            k = i - prev  # data messages before this status
            while k and pulls:
                take = min(k, pulls[0])
                pulls[0] -= take
                k -= take
                if pulls[0] <= 0:
                    pulls.popleft()
            if i < len(block) and pulls:
                pulls.popleft()
            prev = i + 1
        if status.size:
            block = block.select(kind != 2)
        if len(block):
            self._add_pending(block, len(block), float(block.t[0]))
        elif status.size and not self._pending:
            self._background(self._pull())

    def _background(self, coro):
        """Run ``coro`` as a task, referenced until it ends (pull top-ups come every few
        seconds when idle: keeping them all in ``_tasks`` would grow without bound)."""
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    def _add_pending(self, item, n: int, t: float):
        if not self._pending:
            self._pending_t0 = t
            self._has_data.set()
        self._pending.append(item)
        self._pending_n += n
        if self._pending_n >= self.batch_size:
            self._wake_full()

    def _wake_full(self) -> None:
        if self._full_waiter is not None:
            _resolve(self._full_waiter)

    def _take_pending(self) -> _wire.Block | None:
        items, self._pending, self._pending_n = self._pending, [], 0
        blocks, msgs = [], []
        for it in items + [None]:
            if isinstance(it, _wire.Block) or it is None:
                if msgs:
                    blocks.append(_wire.Block.from_msgs([m for m, _ in msgs], [t for _, t in msgs],
                                                        BATCH_SUBJECT, _stream_seq if self.jetstream else None))
                    msgs = []
                if it is not None:
                    blocks.append(it)
            else:
                msgs.append(it)
        return _wire.Block.concat(blocks) if blocks else None

    async def _start_jetstream(self):
        js_cfg = self.config.jetstream
        self.js = self.nc.jetstream()
        await self._ensure_stream()
        await self._reset_consumer()
        self._inbox = self.nc.new_inbox()
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{js_cfg.stream}.{js_cfg.durable}"
        self.raw_wanted = js_cfg.raw_consumer and _wire.usable(self.url, self.connect_options)
        if self.raw_wanted:
            await self._raw_connect()
        else:
            self._inbox_sub = await self.nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=1_000_000,
                                                      pending_bytes_limit=1 << 30)
        await self._pull()

    async def _ensure_stream(self):
        """Create the stream if missing.  On an existing one of the embedded server, apply
        the configured duplicate window and compression (the settings a stream can change)
        and say so; on a server given by --nats-url only say how it differs."""
        js_cfg = self.config.jetstream
        storage = StorageType.FILE if js_cfg.storage == "file" else StorageType.MEMORY
        compression = StoreCompression.S2 if js_cfg.compression == "s2" else StoreCompression.NONE
        try:
            info = await self.js.stream_info(js_cfg.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(StreamConfig(
                name=js_cfg.stream, subjects=list(js_cfg.subjects), storage=storage,
                duplicate_window=js_cfg.duplicate_window, compression=compression))
            return
        have = info.config
        if have.storage != storage:  # (nats-py gives these back as plain strings)
            self._log(f"cim_flow: stream {js_cfg.stream} keeps its {getattr(have.storage, 'value', have.storage)} storage "
                      f"(jetstream.storage = {js_cfg.storage!r} applies to a new stream)")
        changes = {}
        if abs((have.duplicate_window or 0) - js_cfg.duplicate_window) > 1e-6:
            changes["duplicate_window"] = js_cfg.duplicate_window
        if (have.compression or "none") != compression:
            changes["compression"] = compression
        if changes and self.nats_url:
            # someone else's server: their stream, their settings (a shorter window there
            # would drop de-duplication their publishers rely on); say what differs
            self._log(f"cim_flow: stream {js_cfg.stream} on {self.nats_url} kept as it is; it differs from the "
                      "config in " + ", ".join(f"{k} (config {getattr(v, 'value', v)})" for k, v in changes.items()))
        elif changes:
            try:
                await self.js.update_stream(dataclasses.replace(have, **changes))
                self._log(f"cim_flow: stream {js_cfg.stream} updated: "
                          + ", ".join(f"{k} = {getattr(v, 'value', v)}" for k, v in changes.items()))
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                self._log(f"cim_flow: stream {js_cfg.stream} not updated ({exc}); using it as it is")

    async def _reset_consumer(self):
        """(Re)create the durable consumer right after the engine's version.

        The version is the checkpoint: on start and after a reconnect the consumer
        resumes at version + 1, so messages that were in flight when the connection
        dropped come back at once instead of after ack_wait; any repeat is skipped
        by its seq.
        """
        js_cfg = self.config.jetstream
        try:
            await self.js.delete_consumer(js_cfg.stream, js_cfg.durable)
        except nats.js.errors.NotFoundError:
            pass
        await self.js.add_consumer(js_cfg.stream, ConsumerConfig(
            durable_name=js_cfg.durable, ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.engine.version + 1,
            max_ack_pending=-1, ack_wait=60, max_waiting=64, filter_subject=None))

    async def _pull(self):
        """Keep two pull batches requested (pull requests on a plain subscription), so the
        server always has an open request while a batch is being applied."""
        if self._resetting:
            return  # the consumer is being re-created: the reset pulls when it is done
        b = self.config.jetstream.pull_batch
        # at least two of the largest messages the server takes, else one would never come
        max_bytes = max(self.config.jetstream.pull_max_bytes, 2 * self._payload_limit() + 4096)
        while sum(self._pulls) <= b:
            self._pulls.append(b)
            self._pull_sent = time.monotonic()
            req = _json.encode({"batch": b, "expires": int(_PULL_EXPIRES * 1e9), "max_bytes": max_bytes})
            # on nats-py, not the raw connection: the raw one holds the inbox and asks for
            # no-responder statuses, so with the consumer gone (deleted from outside) each
            # request's 503 would come straight back, end the pull and send the next one, a
            # loop the watchdog (which waits for silence) would never see
            await self.nc.publish(self._next_subject, req, reply=self._inbox)

    async def _on_msg(self, msg):
        if self._discard:
            return  # from before the consumer's reset (see _fresh_inbox): it redelivers
        if self.jetstream and msg.subject == self._inbox:
            self._inbox_seen = time.monotonic()
            # a status message: the front pull request ended (timeout, no messages, ...)
            if self._pulls:
                self._pulls.popleft()
            if not self._pending:
                await self._pull()
            return
        if self.jetstream and self._pulls:
            self._inbox_seen = time.monotonic()
            self._pulls[0] -= 1
            if self._pulls[0] <= 0:
                self._pulls.popleft()
        self._add_pending((msg, time.time()), 1, time.time())

    async def _batch_loop(self):
        timeout = self.config.event_processing.batch_timeout
        while True:
            if not self._pending:
                # request_stop sets _has_data too.  (Two tasks and asyncio.wait for data
                # or stop, then wait_for's task and timer for a full batch, were ~10% of
                # the service's CPU a batch at 10k events/s: a future and a timer now.)
                self._has_data.clear()
                await self._has_data.wait()
                if self._stop.is_set() and not self._pending:
                    return
            deadline = self._pending_t0 + timeout if self._pending else time.time()
            loop = asyncio.get_running_loop()
            while self._pending_n < self.batch_size and not self._stop.is_set():
                left = deadline - time.time()
                if left <= 0:
                    break
                if left < 0.001:
                    # below the loop's timer resolution (uvloop: 1 ms) a timer fires at
                    # once, again and again until the deadline: a busy wait that took a
                    # third of the service's CPU at 10k events/s.  One pass of the loop
                    # instead takes in what has arrived; then the batch closes.
                    await asyncio.sleep(0)
                    break
                fut = self._full_waiter = loop.create_future()
                timer = loop.call_later(left, _resolve, fut)
                try:
                    await fut
                finally:
                    timer.cancel()
                    self._full_waiter = None
            self._closed_full = self._pending_n >= self.batch_size
            block = self._take_pending()
            try:
                if block is not None:
                    await self._process(block)
            except Exception as exc:  # never let one batch kill the service
                self._log(f"cim_flow: batch failed: {type(exc).__name__}: {exc}")
            if self.jetstream and self.connected:
                await self._pull()

    async def _dead_letter(self, subject: str, data: bytes, reason: str, seq=None):
        self.counters["events_dead_lettered"] += 1
        headers = {"Cim-Error": reason[:1000], "Cim-Subject": subject}
        if seq:
            headers["Cim-Seq"] = str(seq)
        # the headers count against max_payload too: a payload near the limit would make the
        # server drop the connection, so it is cut (the original stays in the stream at Cim-Seq)
        room = self._payload_limit() - sum(len(k) + len(v) + 4 for k, v in headers.items()) - 64
        if len(data) > room:
            headers["Cim-Truncated"] = str(len(data))
            data = data[:max(room, 0)]
        await self._send(DLQ_SUBJECT, data, headers=headers)

    async def _send(self, subject: str, data: bytes, *, reply=None, headers=None):
        """Publish what a batch sends (acks, dead letters, updates) on the
        consumer's raw connection while it is up: queued, then written together once this
        turn of the event loop ends, in order on one connection.  Through nats-py they
        went by way of its flusher task, a task wake-up and a write for each batch (at
        10k events/s a batch closes every ~0.5 ms)."""
        raw = self.raw
        if raw is not None and not raw.closed:
            try:
                raw.publish_soon(subject, data, reply, headers)
                return
            except ConnectionError:
                pass  # lost just now: nats-py holds it until it reconnects
        await self.nc.publish(subject, data, reply=reply, headers=headers)

    def _payload_limit(self) -> int:
        """The server's max_payload, the most one message (headers included) may carry."""
        return (self.nc.max_payload if self.nc is not None else 0) or 1 << 20

    async def _process(self, block: _wire.Block):
        t_start = time.perf_counter()
        eng = self.engine
        n = len(block)
        self._touched = []
        # runs of JSON messages and runs of Arrow messages, in stream order
        kind = block.kind
        cuts = [0, *(np.flatnonzero(kind[1:] != kind[:-1]) + 1).tolist(), n] if n else [0]
        for a, b in zip(cuts[:-1], cuts[1:]):
            if kind[a] == 1:
                await self._apply_arrow(block, a, b)
            else:
                await self._apply_json(block, a, b)
        t_applied = time.perf_counter()
        self.latency.add(time.time() - block.t)
        self.counters["batches"] += 1
        self.counters["messages"] += n
        if self.jetstream and n:
            eng._advance_to(int(block.seq[n - 1]))
            await self._send(block.reply(n - 1), b"+ACK")
        self._adapt()
        t_acked = time.perf_counter()
        try:
            await self._publish_updates()
        except Exception as exc:  # applied and acknowledged all the same: say so, go on
            self._log(f"cim_flow: update for version {eng.version} not published: {type(exc).__name__}: {exc}")
        t_updated = time.perf_counter()
        try:
            self._maybe_snapshot()
        except Exception as exc:  # a full disk, ...: the batch is applied and acknowledged all the same
            self._log(f"cim_flow: snapshot at version {eng.version} failed: {type(exc).__name__}: {exc}")
        t_end = time.perf_counter()
        self.batch_time.add(np.array([t_end - t_start]))
        ph = self._phase_s  # where a batch's time goes, summed (stats: batch_phase_us, per batch)
        ph[0] += t_applied - t_start
        ph[1] += t_acked - t_applied
        ph[2] += t_updated - t_acked
        ph[3] += t_end - t_updated
        async with self._applied_cond:
            self._applied_cond.notify_all()

    def _maybe_snapshot(self, force: bool = False):
        """Take a snapshot when one is due (every N events or T seconds): in a forked
        child when ``[snapshots] background`` (the default), else here and now.
        ``force`` (shutdown) writes here, after any background one has finished."""
        if not self.snapshots:
            return None
        self._reap_snapshot(block=force)
        sc = self.config.snapshots
        v = self.engine.version
        if v <= self._snap_version and not force:
            return None
        due = force or v - self._snap_version >= sc.every_events or time.time() - self._snap_time >= sc.every_seconds
        if not due or (force and v == self._snap_good):  # shutdown right after one was written
            return None
        if not force and sc.background and self._snap_child is None and hasattr(os, "fork"):
            path = self._fork_snapshot()
            if path is not None:
                return path
        if self._snap_child is not None:
            return None  # one is being written; the next batch looks again
        return self.write_snapshot()

    def write_snapshot(self) -> str:
        from ._snapshot import prune, snapshot_path, write_snapshot

        path = write_snapshot(self.engine, snapshot_path(self.snapshot_dir, self.engine.version))
        prune(self.snapshot_dir, self.config.snapshots.keep)
        self._snap_version = self._snap_good = self.engine.version
        self._snap_time = time.time()
        self.counters["snapshots"] += 1
        return path

    def _fork_snapshot(self) -> str | None:
        """Write the current state from a forked child (copy-on-write pages: the parent
        goes on applying while the child writes; a 10M-node snapshot takes seconds of
        disk time here, all of which blocked ingest and queries before).  Returns the
        path the child writes; :meth:`_reap_snapshot` collects it.  None when no child
        can be forked (no memory or process slot): the caller writes in-line."""
        from ._snapshot import snapshot_path, write_state

        path = snapshot_path(self.snapshot_dir, self.engine.version)
        st = self.engine._snapshot_state()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            self._log(f"cim_flow: cannot fork a snapshot writer ({exc}); writing in-line")
            return None
        if pid == 0:  # the child: write and leave, touching nothing of the parent's
            code = 1
            try:
                os.closerange(3, max(65536, os.sysconf("SC_OPEN_MAX")))  # sockets, the loop: the parent's
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
                    signal.signal(sig, signal.SIG_DFL)
                # a child that cannot finish (a lock some parent thread held at the fork,
                # a hung disk) dies on its own: the parent then logs it and goes on
                signal.alarm(_SNAPSHOT_CHILD_LIMIT)
                write_state(st, path)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported, then exit
                try:
                    os.write(2, f"cim_flow: background snapshot failed: {exc}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        self._snap_child = (pid, self.engine.version, path, time.perf_counter())
        self._snap_version = self.engine.version  # not due again while it is written
        self._snap_time = time.time()
        return path

    def _reap_snapshot(self, block: bool = False) -> str | None:
        """Collect a finished background snapshot (prune old ones); its path, or None
        while it is still being written (``block``: wait for it)."""
        if self._snap_child is None:
            return None
        pid, version, path, t0 = self._snap_child
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0 and block:  # shutdown: wait, but not forever
                deadline = time.monotonic() + _SNAPSHOT_WAIT_AT_STOP
                while done == 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                    done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    self._log(f"cim_flow: background snapshot at version {version} still running after "
                              f"{_SNAPSHOT_WAIT_AT_STOP:.0f} s: stopped")
                    os.kill(pid, signal.SIGKILL)
                    done, status = os.waitpid(pid, 0)
        except ChildProcessError:
            done, status = pid, 1 << 8
        if done == 0:
            return None
        self._snap_child = None
        if os.waitstatus_to_exitcode(status) == 0:
            from ._snapshot import prune

            prune(self.snapshot_dir, self.config.snapshots.keep)
            self.counters["snapshots"] += 1
            self.snapshot_seconds = time.perf_counter() - t0
            self._snap_good = version
            return path
        # not retried at once (a full disk would fork a writer every batch): the next
        # one is due N events or T seconds after this attempt
        self._log(f"cim_flow: background snapshot at version {version} failed "
                  f"(exit {os.waitstatus_to_exitcode(status)})")
        return None

    async def _snapshot_done(self) -> str | None:
        """Wait (without blocking the loop) for the background snapshot in flight."""
        while self._snap_child is not None:
            path = self._reap_snapshot()
            if path is not None:
                return path
            if self._snap_child is not None:
                await asyncio.sleep(0.02)
        return None

    def _count(self, res):
        self.counters["events_applied"] += res.applied
        self.counters["events_ignored"] += res.ignored
        self.counters["events_skipped"] += res.skipped

    async def _apply_json(self, block: _wire.Block, a: int, b: int):
        if b <= a:
            return
        recv = (block.t[a:b] * 1e6).astype(np.int64)
        cols, batch, errors = decode_spans_columns(block.buf, block.ds[a:b], block.de[a:b], received_at=recv)
        seqs = block.seq[a:b].astype(np.uint64) if self.jetstream else None
        if cols is not None:  # every payload scanned: no Arrow arrays on the way
            if seqs is not None:
                cols = cols.with_seq(seqs)
            res = self.engine._apply_columns(cols)
            self._count(res)
            if res.ignored:
                await self._dead_letter_invalid(block, a, None, res)
            return
        keep = None
        if errors:
            keep = np.ones(b - a, bool)
            for e in errors:
                keep[e.index] = False
                i = a + e.index
                await self._dead_letter(block.subject(i), block.data(i), e.reason,
                                        int(block.seq[i]) if self.jetstream else None)
        if seqs is not None and batch.num_rows:
            batch = batch.set_column(0, "seq", pa.array(seqs if keep is None else seqs[keep], pa.uint64()))
        if batch.num_rows:
            res = self.engine.apply(batch)
            self._count(res)
            if res.ignored:
                await self._dead_letter_invalid(block, a, None if keep is None else np.flatnonzero(keep), res)

    async def _dead_letter_invalid(self, block: _wire.Block, a: int, message_of_row, res):
        """Dead-letter the rows of an applied JSON batch that were not events at all (a
        field their kind needs missing, such as a NodeAdded without node_id): decoding
        took them, the projection could not.  Their payload goes to dlq.graph with the
        projection's reason; they count as dead-lettered, not ignored.  Valid events that
        change nothing (an unknown node, a removed edge) stay ignored."""
        rows = np.flatnonzero(np.isin(res.status, INVALID))
        for r in rows:
            i = a + int(r if message_of_row is None else message_of_row[r])
            await self._dead_letter(block.subject(i), block.data(i), REASONS[int(res.status[r])],
                                    int(block.seq[i]) if self.jetstream else None)
        self.counters["events_ignored"] -= rows.size

    async def _apply_arrow(self, block: _wire.Block, a: int, b: int):
        """Arrow IPC messages a..b-1: every good one applied, in one kernel call."""
        messages, where = [], []
        for i in range(a, b):
            data = block.data(i)
            try:
                with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
                    table = reader.read_all()
                batches = [normalize_batch(x) for x in table.to_batches()]
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OSError) as exc:
                await self._dead_letter(block.subject(i), data, f"bad Arrow batch: {exc}",
                                        int(block.seq[i]) if self.jetstream else None)
                continue
            messages.append((batches, int(block.seq[i])))
            where.append(i)
        if not messages:
            return
        if self.jetstream:
            res = self.engine._apply_messages(messages)
        else:
            res = self.engine.apply([x for batches, _ in messages for x in batches])
        self._count(res)
        if res.ignored:
            await self._dead_letter_invalid_rows(block, where, [batches for batches, _ in messages], res)

    async def _dead_letter_invalid_rows(self, block: _wire.Block, where: list, messages: list, res):
        """For Arrow batch messages: the rows that were not events (as for JSON in
        :meth:`_dead_letter_invalid`), one dead letter per message holding them, an Arrow
        IPC stream of just those rows; the reason names each row (its number in the
        message) and why.  The message's other rows stay applied."""
        bad = np.isin(res.status, INVALID)
        if not bad.any():
            return
        sizes = [sum(x.num_rows for x in batches) for batches in messages]
        starts = np.concatenate([[0], np.cumsum(sizes)])  # rows in message order (see _apply_messages)
        for k, i in enumerate(where):
            rows = np.flatnonzero(bad[starts[k]:starts[k + 1]])
            if rows.size == 0:
                continue
            codes = res.status[starts[k] + rows]
            table = pa.Table.from_batches(messages[k]).take(pa.array(rows))
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
            why = "; ".join(f"row {r}: {REASONS[int(c)]}" for r, c in zip(rows[:20].tolist(), codes[:20]))
            more = f"; and {rows.size - 20} more" if rows.size > 20 else ""
            await self._dead_letter(block.subject(i), sink.getvalue().to_pybytes(),
                                    f"{rows.size} of {sizes[k]} rows are not events: {why}{more}",
                                    int(block.seq[i]) if self.jetstream else None)
            self.counters["events_dead_lettered"] += rows.size - 1  # (_dead_letter counted one)
            self.counters["events_ignored"] -= rows.size

    def _adapt(self):
        """Move the batch size between min and max to hold p99 at target_latency.

        A batch that closed full means events arrive faster than batches are
        applied: per-batch overhead is what adds latency, so batches grow.  A
        batch that closed on the timeout with p99 over target is waiting for
        events that come too slowly to fill it: batches shrink, so they close
        sooner.  (Shrinking on every miss, as a naive controller does, drives
        the size to the minimum under load and makes latency worse: measured.)
        """
        ep = self.config.event_processing
        if not ep.enable_adaptive_batching:
            return
        if getattr(self, "_closed_full", False):
            self.batch_size = min(ep.max_batch_size, int(self.batch_size * 1.5) + 1)
            return
        # p99 of the last 2048 latencies, at most every 20 ms: at 10k events/s batches close
        # ~2000 times a second, and a percentile every 4th batch took ~4% of the loop
        now = time.perf_counter()
        if self.latency.n < 64 or now - self._adapt_t < 0.02:
            return
        self._adapt_t = now
        p99 = self.latency.recent_quantile(0.99, 2048)
        if p99 > ep.target_latency:
            self.batch_size = max(ep.min_batch_size, int(self.batch_size * 0.95))

    async def _publish_updates(self):
        if not self._touched:
            return
        eng = self.engine
        G = eng._p.G
        t = self._touched
        # one apply's touched graphs are each listed once: sorting is enough (np.unique's
        # general path cost ~6 us a batch)
        gidx = np.sort(t[0]) if len(t) == 1 else np.unique(np.concatenate(t))
        alive = G.alive[gidx].astype(bool)
        live = gidx[alive]
        dead = gidx[~alive]
        deleted = uuid_texts_of(G.keys[dead]) if dead.size else []
        head = _json.encode({"version": eng.version, "events_total": self.events_total()})[:-1]
        msg_id = f"summary-{eng.version}"
        got = eng._summary_json(live)
        if got is None:  # a time RFC 3339 cannot say: the general path names it
            rows = [_json.encode(r) + b"," for r in eng._summary_rows(live)]
            ends = np.cumsum(np.fromiter(map(len, rows), np.int64, len(rows)))
            got = (np.frombuffer(b"".join(rows), np.uint8), ends)
        text, ends = got
        n_rows = len(ends)

        def message(a: int, b: int, da: int, db: int, part: bytes = b"") -> bytes:
            # rows a..b-1 (their bytes without the last row's comma), deleted da..db-1
            lo = int(ends[a - 1]) if a else 0
            hi = int(ends[b - 1]) - 1 if b > a else lo
            return b"".join((head, b',"graphs":[', text[lo:hi].tobytes(), b'],"deleted":',
                             _json.encode(deleted[da:db]), part, b"}"))

        data = message(0, n_rows, 0, len(deleted))
        limit = self._payload_limit() - _REPLY_HEADROOM
        if len(data) <= limit:
            await self._send(UPDATES_SUBJECT, data, headers={"Nats-Msg-Id": msg_id})
            return
        # a batch that touched more graphs than one message holds (a bulk import): in
        # parts, each with the version, "part" and "parts"; part k > 0 is "<id>.<k>"
        n = -(-len(data) // limit) + 1
        nd = len(deleted)
        while True:
            parts = [message(k * n_rows // n, (k + 1) * n_rows // n, k * nd // n, (k + 1) * nd // n,
                             b',"part":%d,"parts":%d' % (k, n)) for k in range(n)]
            if max(map(len, parts)) <= limit or n >= n_rows + nd:
                break
            n *= 2
        for k, part in enumerate(parts):
            await self._send(UPDATES_SUBJECT, part, headers={"Nats-Msg-Id": msg_id if k == 0 else f"{msg_id}.{k}"})

    def events_total(self) -> int:
        c = self.counters
        return c["events_applied"] + c["events_ignored"] + c["events_skipped"] + c["events_dead_lettered"]

    # -- queries ------------------------------------------------------------------
    async def _start_queries(self):
        from nats.micro import add_service

        self.svc = await add_service(self.qnc, name="cim_flow", version=__version__,
                                     description="cim_flow graph projections and spatial queries")
        for name in HANDLERS:
            await self.svc.add_endpoint(name=name, subject=QUERY_PREFIX + name, handler=self._handler(name))
        await self.svc.add_endpoint(name="snapshot", subject=SNAPSHOT_SUBJECT, handler=self._snapshot_handler)
        if self.config.queries.raw_connection and _wire.usable(self.url, self.connect_options):
            if not _micro_internals_known(self.svc):
                self._log("cim_flow: queries stay on nats-py: its micro service's internals are not the "
                          "ones the lean connection takes its endpoints from (nats-py 2.16)")
                return
            try:
                await self._query_raw_connect()
            except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                self._log(f"cim_flow: queries stay on nats-py: {exc}")

    # -- queries on a lean connection ----------------------------------------------
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

    async def _snapshot_handler(self, req):
        try:
            if not self.snapshots:
                raise QueryError("disabled", "snapshots are disabled ([snapshots] enabled = false)")
            await self._snapshot_done()  # one in flight may predate what was asked for
            if self.config.snapshots.background and hasattr(os, "fork") and self._fork_snapshot() is not None:
                path = await self._snapshot_done()
                if path is None:
                    raise QueryError("internal", "the background snapshot failed (see the service log)")
            else:  # in-line: configured so, or no child could be forked
                path = self.write_snapshot()
            await req.respond(_json.encode({"version": self.engine.version, "path": path}))
        except QueryError as exc:
            await req.respond(error_reply(exc.code, exc.message, self.engine.version))
        except Exception as exc:
            await req.respond(error_reply("internal", f"{type(exc).__name__}: {exc}", self.engine.version))

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
                    if isinstance(minv, bool) or not isinstance(minv, int) or minv < 0:
                        raise QueryError("bad_request", "min_version must be an integer >= 0")
                    await self._wait_version(minv, body.get("timeout_ms"))
                if spatial and not self.engine._spatial.built:
                    await self._spatial_ready()
                arrow = (req.headers or {}).get("Accept") == ARROW_MIME
                version = self.engine.version
                key = (name, req.data, arrow, version)
                hit = self.cache.get(key) if name != "stats" else None
                if hit is None and batched:
                    # answered with every other radius request that arrives before the
                    # event loop turns: one kernel call and one id conversion for all
                    self._radius_pending.append((req, body, arrow, t0))
                    if self._radius_flush is None:
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

    def stats(self) -> dict:
        p50, p99, p999 = self.latency.percentiles()
        c = self.counters
        return {
            "version": self.engine.version,
            "events_applied": c["events_applied"], "events_ignored": c["events_ignored"],
            "events_skipped": c["events_skipped"], "events_dead_lettered": c["events_dead_lettered"],
            "batches": c["batches"], "batch_size": self.batch_size,
            "latency_ms": {"p50": p50 * 1e3, "p99": p99 * 1e3, "p999": p999 * 1e3},
            "batch_ms": dict(zip(("p50", "p99", "max"), (v * 1e3 for v in self.batch_time.percentiles((50, 99, 100))))),
            "batch_phase_us": dict(zip(("decode_apply", "ack", "update", "snapshot_check"),
                                       (v / max(c["batches"], 1) * 1e6 for v in self._phase_s))),
            "queries": c["queries"], "query_errors": c["query_errors"], "radius_batches": c["radius_batches"],
            "query_ms": dict(zip(("p50", "p99", "max"), (v * 1e3 for v in self.query_time.percentiles((50, 99, 100))))),
            "index_builds_waited": c["index_builds_waited"], "index": self.engine._spatial.stats(),
            "cache_hits": self.cache.hits, "cache_misses": self.cache.misses, "cache_entries": len(self.cache),
            "cache_warmed": c["cache_warmed"],
            "uptime_s": time.time() - self.started, "connected": self.connected,
            "jetstream": self.jetstream, "stream": self.config.jetstream.stream if self.jetstream else None,
            "snapshots": c["snapshots"], "snapshot_version": self._snap_good,
            "snapshot_in_progress": self._snap_child is not None,
            "snapshot_seconds": self.snapshot_seconds,
            "consumer_resets": c["consumer_resets"], "pull_stalls": c["pull_stalls"],
            "server_restarts": c["server_restarts"], "stream_behind": self.stream_behind,
            "cpu_s": time.process_time(),  # this process, all threads: a load run's cost is the difference
        }

    async def _status_loop(self):
        last_n, last_t, last_q = 0, time.time(), 0
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.status_interval)
                return
            except asyncio.TimeoutError:
                pass
            now = time.time()
            n = self.events_total()
            dt = now - last_t
            rate = (n - last_n) / dt
            last_n, last_t = n, now
            p99 = self.latency.percentiles((99,))[0] * 1e3
            t = self.engine.totals()
            state = "" if self.connected else " DISCONNECTED"
            if self.stream_behind:
                state += f" STREAM BEHIND BY {self.stream_behind:,}"
            q = self.counters["queries"]
            queries = ""
            if q > last_q:  # only while queries come: their rate and p99 in the service
                qr = (q - last_q) / dt  # a few queries a status interval: a decimal, not "0/s"
                queries = (f"  queries {qr:,.0f}/s p99 " if qr >= 10 else f"  queries {qr:.1f}/s p99 ")
                queries += f"{self.query_time.percentiles((99,), last=q - last_q)[0] * 1e3:.2f} ms"
            last_q = q
            self._log(f"cim_flow {rate:,.0f} events/s  p99 {p99:.2f} ms{queries}  graphs {t['graphs']:,}  "
                      f"nodes {t['nodes']:,}  edges {t['edges']:,}  batch {self.batch_size}  "
                      f"version {self.engine.version}{state}")

    # -- stop -------------------------------------------------------------------------
    def request_stop(self):
        self._stop.set()
        self._has_data.set()
        self._wake_full()

    async def stop(self):
        self.request_stop()
        for t in self._tasks:
            try:
                await asyncio.wait_for(t, 10)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                t.cancel()
        for t in list(self._bg):  # pull top-ups, a reconnect loop: nothing left to do
            t.cancel()
        try:
            self._maybe_snapshot(force=True)
        except Exception as exc:
            self._log(f"cim_flow: snapshot at shutdown failed: {exc}")
        for c in (self.raw, self.qraw):
            if c is not None:
                if not c.closed:  # the last batch's ack is queued on it: see it processed
                    try:
                        await asyncio.wait_for(c.flush(), 2)
                    except (ConnectionError, OSError, asyncio.TimeoutError):
                        pass
                c.close()
        for c in (self.qnc, self.nc):
            if c is not None and not c.is_closed:
                try:
                    await c.drain()
                except Exception:
                    await c.close()
        if self.server is not None:
            self.server.stop()

    async def run(self):
        """Start, print the ready line, serve until SIGINT/SIGTERM, stop cleanly."""
        url = await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        self._log(f"cim_flow ready {url}")
        await self._stop.wait()
        await self.stop()
        self._log("cim_flow stopped")


_REPLY_HEADROOM = 1024  # bytes of max_payload kept for a reply's headers
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


class NatsAuthError(RuntimeError):
    """The NATS server rejected the service's credentials at start."""


def _skip_numba_blas_probe() -> None:
    """Spare start-up numba's BLAS probe: ~0.27 s of a ~2 s warm start here.

    The first kernel numba loads (even from its cache) imports ``numba.np.arraymath``,
    whose import runs ``ensure_blas()``, i.e. ``import scipy.linalg.cython_blas`` -- all of
    scipy.linalg. The probe only decides how a compiled ``np.correlate``/``np.convolve``
    computes inner products (BLAS or a loop); no kernel here uses them. So import
    arraymath with the probe answering "no BLAS", then put the real ``ensure_blas`` back:
    ``np.dot`` and ``np.linalg`` compile as before. Nothing happens if arraymath is
    already imported (someone compiled before us).
    """
    if "numba.np.arraymath" in sys.modules:
        return
    import numba.np.linalg as linalg

    real = linalg.ensure_blas

    def no_blas():
        raise ImportError("BLAS probe skipped at start-up")

    linalg.ensure_blas = no_blas
    try:
        import numba.np.arraymath  # noqa: F401  (binds _HAVE_BLAS = False)
    finally:
        linalg.ensure_blas = real


def warm_kernels() -> None:
    """Compile (or load from numba's cache) every kernel before reporting ready."""
    _skip_numba_blas_probe()
    rng = np.random.default_rng(0)
    eng = Engine(capacity=16)
    g = uuid.uuid4().bytes
    nodes = [uuid.UUID(int=i + 1).bytes for i in range(40)]
    rows = [dict(event_type=1, graph_id=g, occurred_at=1, name="warm")]
    for i, n in enumerate(nodes):
        p = rng.uniform(0, 10, 3)
        rows.append(dict(event_type=10, graph_id=g, occurred_at=2, node_id=n, x=p[0], y=p[1], z=p[2], name="n"))
    for i in range(30):  # enough edges to rehash their table (rehash_edges)
        rows.append(dict(event_type=20, graph_id=g, occurred_at=3, edge_id=nodes[i], source_id=nodes[i],
                         target_id=nodes[i + 1], weight=1.0))
    rows.append(dict(event_type=12, graph_id=g, occurred_at=4, node_id=nodes[2], x=1.0, y=1.0, z=1.0))
    rows.append(dict(event_type=13, graph_id=g, occurred_at=5, node_id=nodes[3]))
    from ._schema import EVENT_SCHEMA
    cols = {f.name: pa.array([r.get(f.name) for r in rows], f.type)  # (no pyarrow.compute: see _pc)
            for f in EVENT_SCHEMA if not pa.types.is_dictionary(f.type)}
    eng.apply(pa.table(cols))
    for q in (rng.uniform(0, 10, (1, 3)), rng.uniform(0, 10, (100, 3))):  # serial and parallel paths
        eng.nodes_within(q, 2.0, return_distance=True, sort=True)
        eng.nodes_within(q, 2.0, count_only=True)
        eng.nearest(q, 3)
    eng.nodes_in_box([0, 0, 0], [5, 5, 5])
    eng._box_page([0, 0, 0], [5, 5, 5], None, 2)  # query.graph.nodes_in_box's capped page
    eng._first_rows_json(np.array([0, 2, 3]), np.array([1, 5]), np.arange(3))  # radius replies' JSON rows
    uuid_texts_of(np.zeros((1, 16), np.uint8))  # ids as text in every reply and update
    iso_texts_of(np.zeros(1, np.int64))  # times as text in summaries
    eng.apply(pa.table({k: v for k, v in cols.items()}).slice(0, 3))  # incremental index update
    eng.nodes_within(rng.uniform(0, 10, (1, 3)), 2.0)
    from . import _spatial

    _spatial._main_grid(eng._p.N, True)  # the background rebuild's serial kernels
    # what only bigger grids reach: the cell-size search, and tall columns' z ranges
    from kernels import spatial as ks

    pts = rng.uniform(0, 10, (8, 3))
    ks.occupancy(pts, np.arange(8), np.zeros(3), 1.0, np.arange(8))
    tall = np.array([1, 1, ks.ZR_MIN_Z], np.int64)
    for zr in (ks.column_zrange, ks.column_zrange_serial):
        zr(np.zeros(ks.ZR_MIN_Z + 1, np.int32), tall)
    far = np.array([[0.0, 0, 0], [1e9, 0, 0]])
    _spatial.SpatialIndex._grid(far, np.arange(2), np.zeros(2, np.int32), far[0], far[1], 1.0)  # hashed
    payload = json.dumps({"type": "NodeAdded", "graph_id": str(uuid.UUID(bytes=g)),
                          "node_id": str(uuid.uuid4()), "position": [1, 2, 3]}).encode()
    decode_json([payload])
    from kernels import traverse as kt

    N, G = eng._p.N, eng._p.G
    kt.gather_ids(N.keys, N.graph, G.keys, np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([0, 1]))
    eng.find_nodes(g)
    eng.find_nodes(limit=1)  # an unfiltered page: the live-slot walks
    eng.find_edges(limit=1)
    eng.neighbors(nodes[1], graph_id=g)
    # the consumer's framing kernel, on one frame as the server sends it
    frame = b"MSG event.graph.x 1 $JS.ACK.S.C.1.1.1.0.0 %d\r\n%s\r\n" % (len(payload), payload)
    got = []
    conn = _wire.RawConnection(got.append, inbox="_INBOX.warm", batch_subject=BATCH_SUBJECT)
    conn._frames(frame)
    decode_spans(got[0].buf, got[0].ds, got[0].de)
    cols, _, _ = decode_spans_columns(got[0].buf, got[0].ds, got[0].de)
    eng._apply_columns(cols.with_seq(np.array([eng.version + 1], np.uint64)))

