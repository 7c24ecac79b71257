"""The NATS service: JetStream (or core NATS) ingest in micro-batches, request/reply
queries as a NATS micro service named ``cim_flow``, results and dead letters out.

Layers: decoding is :mod:`cim_flow._decode` (pure), query handling is
:mod:`cim_flow._queries` (pure). :class:`Service` is put together from one part per
concern, each its own module: connections and the JetStream consumer
(:mod:`cim_flow._service_consumer`), batching, apply, acks, dead letters and updates
(:mod:`cim_flow._service_ingest`), the query endpoints (:mod:`cim_flow._service_queries`)
and snapshots (:mod:`cim_flow._service_snapshots`); this module holds the life cycle
(start, catch-up, status, stop) and the kernels' warm-up.
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque

import numpy as np
import pyarrow as pa

from . import _wire
from ._alloc import allocator_settings
from ._config import Config
from ._datadir import DataDirBusy, DataDirError, DataDirLock
from ._decode import decode_json, decode_spans, decode_spans_columns
from ._latency import LatencyWindow
from ._natsserver import NatsServer
from ._queries import QueryCache, iso_texts_of, uuid_texts_of
from ._service_common import (BATCH_SUBJECT, DLQ_SUBJECT, QUERY_PREFIX, SNAPSHOT_SUBJECT, UPDATES_SUBJECT,
                              JetStreamUnavailable, NatsAuthError)
from ._service_consumer import ConsumerMixin
from ._service_ingest import IngestMixin
from ._service_queries import QueryMixin
from ._service_snapshots import SnapshotMixin
from ._stack import call_with_room
from .engine import Engine

# the subjects and NatsAuthError are part of this module's API (they lived here before the split)
__all__ = ["Service", "LatencyWindow", "NatsAuthError", "JetStreamUnavailable", "DataDirBusy", "DataDirError",
           "warm_kernels", "WarmProgress", "BATCH_SUBJECT", "UPDATES_SUBJECT", "DLQ_SUBJECT", "QUERY_PREFIX",
           "SNAPSHOT_SUBJECT"]


class Service(ConsumerMixin, IngestMixin, QueryMixin, SnapshotMixin):
    """The cim_flow service: one engine fed from JetStream (or core NATS) in micro-batches
    and asked over NATS request/reply. Its parts are the mixins (see the module docstring);
    this class holds the state they share and the life cycle: :meth:`start` (embedded
    server, warm-up, snapshot, connections, catch-up), :meth:`run`, :meth:`stop`."""

    def __init__(self, config: Config | None = None, *, nats_url: str | None = None, port: int = 4222,
                 data_dir: str = ".cim_flow", jetstream: bool | None = None, engine: Engine | None = None,
                 demo: bool = False, demo_rate: float = 5000.0, status_interval: float = 5.0,
                 out=None, connect_options: dict | None = None, queries: bool = True,
                 snapshots: bool | None = None, role: str = "cim_flow serve", create_stream: bool = True,
                 results: bool = True):
        self.config = config or Config()
        self.role = role  # what the data directory's lock file names as its holder
        self._dir_lock: DataDirLock | None = None
        self.nats_url = nats_url or self.config.nats.url or None
        self.port = port
        self.data_dir = data_dir
        self.jetstream = self.config.jetstream.enabled if jetstream is None else jetstream
        self.engine = engine or self.config.projection.engine()
        self._own_engine = engine is None
        self.serve_queries = queries
        self.create_stream = create_stream  # False (replay): a missing events stream is an error
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
        self._in_block = False  # in _on_query_block: its end answers the radius requests
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
        self._processing = False  # a batch is in hand (see _compact_handler)
        self._compact_asked = None  # a compact request's future, for the end of that batch
        self.latency = LatencyWindow()
        self.batch_time = LatencyWindow(4096)  # seconds spent processing each batch
        self.query_time = LatencyWindow(4096)  # seconds from a query's arrival to its reply queued
        self.counters = dict(events_applied=0, events_ignored=0, events_skipped=0, events_dead_lettered=0,
                             batches=0, queries=0, query_errors=0, messages=0, radius_batches=0,
                             index_builds_waited=0, snapshots=0, consumer_resets=0, pull_stalls=0,
                             server_restarts=0, cache_warmed=0, full_updates=0)
        # a results stream keeps the updates.  The replay at start publishes no per-batch
        # updates (they would repeat, older and under the same ids, what went out before
        # the restart): once it is done one full update says it all (see
        # IngestMixin._results_sync), with a results stream only if it lags behind
        self.publish_results = results  # False (replay): no updates at all, no results stream
        self._results_on = bool(results and self.jetstream and self.config.jetstream.results_stream)
        self._results_hold = self.jetstream
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
        self._version_at_start = 0
        self._consume_t0 = 0.0  # when the consumer first pulled (time.time())
        self._error_logged: dict = {}  # error kind -> when it was last logged
        self.stream_behind = 0  # how far the stream's end is behind the version (0: fine)
        self.engine._on_apply(self._note_touched)

    def _note_touched(self, touched, dirty):
        if len(touched):
            self._touched.append(np.asarray(touched, np.int64))

    # -- life cycle -------------------------------------------------------------
    def _log(self, line: str) -> None:
        _say(self.out, line)

    async def start(self) -> str:
        """Everything up to ready (the caller prints the ready line); the data directory
        is this service's alone from here until :meth:`stop` (see ``cim_flow._datadir``)."""
        self._dir_lock = DataDirLock(self.data_dir).acquire(self.role, log=self._log)
        try:
            url = await self._start()
        except BaseException:
            if self.server is not None:
                self.server.stop()
            self._dir_lock.release()
            raise
        self._dir_lock.note(url=url)
        return url

    async def _start(self) -> str:
        self.loop = asyncio.get_running_loop()
        for line in self.config.notices(external_server=bool(self.nats_url)):
            self._log(f"cim_flow: {line}")
        if not self.nats_url:  # the embedded server boots in its own process meanwhile
            js = self.config.jetstream
            self.server = NatsServer(port=self.port, store_dir=js.store_dir or f"{self.data_dir}/jetstream",
                                     jetstream=True, jetstream_limits=js.server_limits(),
                                     pass_fds=(self._dir_lock.fd,)).launch()
        try:
            progress = WarmProgress(self.out)
            try:
                warm_kernels(progress)
            finally:
                progress.close()
            self._load_snapshot()
            self._version_at_start = self.engine.version  # what the replay at start goes on from
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
            await self._results_sync()
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


    def _background(self, coro):
        """Run ``coro`` as a task, referenced until it ends (pull top-ups come every few
        seconds when idle: keeping them all in ``_tasks`` would grow without bound)."""
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)


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
            "results_stream": self.config.jetstream.results_stream if self._results_on else None,
            "full_updates": c["full_updates"],
            "compactions": self.engine.compactions,  # removed nodes/edges and unused strings dropped (Engine.compact)
            # what a compaction would drop now (for an operator who runs `cim_flow compact` off-peak)
            "garbage": dict(zip(("nodes", "edges"), self.engine._p.garbage()), graphs=self.engine._p.graph_garbage()),
            "cpu_s": time.process_time(),  # this process, all threads: a load run's cost is the difference
            "malloc_tuned": allocator_settings() is not None,
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
        if self._dir_lock is not None:
            self._dir_lock.release()

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


def _say(out, line: str) -> None:
    try:
        print(line, file=out, flush=True)
    except (BrokenPipeError, OSError):  # whoever read our output has gone: keep serving
        pass


class WarmProgress:
    """What a cold start is doing. With numba's cache warm the whole warm-up takes about
    a second and nothing is said; when it runs longer (a first start on this machine, or
    kernels edited since) it says so after 2 s (from a timer: the first step alone can
    compile for half a minute), then shows a bar on a terminal or a line every 20 s
    elsewhere, so a first ``make serve`` does not look hung for minutes."""

    STEPS = 18  # the tick() calls in warm_kernels (a test counts them)
    _QUIET = 2.0  # seconds of warm-up before anything is said

    def __init__(self, out=None):
        self.out = out if out is not None else sys.stdout
        self.t0 = self.last = time.monotonic()
        self.done = 0
        self.bar = None
        self.said = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(self._QUIET, self._announce)
        self._timer.daemon = True
        self._timer.start()

    def _announce(self) -> None:
        with self._lock:
            if self.said or self.done >= self.STEPS:
                return
            self.said = True
            _say(self.out, "cim_flow: compiling kernels (first start here, or kernels changed since: a few minutes; "
                      "numba caches them, so later starts take ~1 s)")
            if getattr(self.out, "isatty", lambda: False)():
                from tqdm import tqdm

                self.bar = tqdm(total=self.STEPS, initial=self.done, desc="compiling", unit="step",
                                file=self.out, leave=False)
            self.last = time.monotonic()

    def tick(self, what: str) -> None:
        with self._lock:
            self.done += 1
            now = time.monotonic()
            if self.bar is not None:
                self.bar.set_postfix_str(what[:40], refresh=False)
                self.bar.update(1)
            elif self.said and now - self.last >= 20.0:
                _say(self.out, f"cim_flow: compiling kernels, {self.done}/{self.STEPS} steps, {now - self.t0:.0f} s")
                self.last = now

    def close(self) -> None:
        self._timer.cancel()
        if not self.said and time.monotonic() - self.t0 >= self._QUIET:
            self._announce()  # (the timer may not have run yet)
        with self._lock:
            if self.bar is not None:
                self.bar.close()
            if self.said:
                _say(self.out, f"cim_flow: kernels compiled in {time.monotonic() - self.t0:.0f} s")


def warm_kernels(progress: WarmProgress | None = None) -> None:
    """Compile (or load from numba's cache) every kernel before reporting ready;
    ``progress`` hears of each step (see :class:`WarmProgress`).

    On a cold cache (the first step compiles instead of loading) with two or more cores,
    a helper process compiles the radius queries, index updates and builds while this
    one compiles the rest (kNN, boxes, JSON, replies...); this one then loads the
    helper's kernels from the cache. numba compiles on one core per process: one kernel
    after another, a first start took 198 s here, with the helper ~110-135 s.
    ``CIM_FLOW_WARM_PARALLEL=0`` keeps it to this process."""
    tick = progress.tick if progress is not None else (lambda what: None)
    _skip_numba_blas_probe()
    t = time.perf_counter()
    state = _warm_projection()
    tick("projection")
    if time.perf_counter() - t > 1.0:
        # compiling, not loading (~0.1 s): the rest, with room on the interpreter's frame
        # stack. Called from some depths, a cold warm-up spent a third of its ~6 min
        # mapping and unmapping frame chunks (see cim_flow._stack); the room costs ~40 ms
        # to make, which a warm start does not pay.
        helper = _spawn_warm_helper()
        try:
            call_with_room(_warm_other, tick, *state)
            # the helper compiles radius queries, index updates and builds (~80 s here),
            # this process the rest, kNN, boxes and sparse grids (the index build, which
            # the first query of each does, in both)
            call_with_room(_warm_spatial, tick, *state, parts=_OWN_PARTS)
            if helper is not None:
                _join_warm_helper(helper)
        finally:  # (interrupted: no orphan left compiling)
            if helper is not None and helper.poll() is None:
                helper.kill()
                helper.wait()
        call_with_room(_warm_spatial, tick, *state, parts=_HELPER_PARTS)
        call_with_room(_warm_json_apply, state[0], _warm_frames(state[1]))  # now with an index to update
    else:
        _warm_other(tick, *state)
        _warm_spatial(tick, *state)
        _warm_json_apply(state[0], _warm_frames(state[1]))


def _parallel_warm_ok() -> bool:
    if os.environ.get("CIM_FLOW_WARM_PARALLEL", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores >= 2


def _spawn_warm_helper():
    """A process compiling :data:`_HELPER_PARTS` of :func:`_warm_spatial` into numba's
    cache (see :func:`_warm_helper`), or None (one core, opted out, or it cannot start)."""
    if not _parallel_warm_ok():
        return None
    env = dict(os.environ, CIM_FLOW_WARM_PARALLEL="0",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # imports as this process does
    try:
        return subprocess.Popen([sys.executable, "-c", "from cim_flow.service import _warm_helper; _warm_helper()"],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None


def _join_warm_helper(helper, timeout: float = 900.0) -> None:
    """Wait for the helper; whatever it did not finish, this process compiles itself."""
    try:
        helper.wait(timeout)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()


def _warm_helper() -> None:
    """The helper process's work (see :func:`warm_kernels`): the projection kernels load
    from the cache the parent has just written, then the spatial index's
    :data:`_HELPER_PARTS` compile (radius queries and counts, index updates, builds)."""
    _skip_numba_blas_probe()
    state = _warm_projection()
    call_with_room(_warm_spatial, lambda what: None, *state, parts=_HELPER_PARTS)


def _warm_projection():
    """An engine holding a small graph (the projection's kernels): ``(eng, g, nodes, cols, rng)``."""
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
    return eng, g, nodes, cols, rng


# The spatial warm-up's parts, split between the processes of a cold warm-up by the
# per-step compile times (see warm_kernels): the helper's, and this process's.
_HELPER_PARTS = ("radius", "updates", "builds")
_OWN_PARTS = ("nearest", "boxes", "sparse")


def _warm_spatial(tick, eng, g, nodes, cols, rng, parts=_HELPER_PARTS + _OWN_PARTS) -> None:
    """The spatial index's kernels: queries of every kind, serial and parallel, the
    incremental update, background and hashed builds; ``parts`` chooses (any order:
    each part needs only an index, which the first query builds)."""
    q1, q100 = rng.uniform(0, 10, (1, 3)), rng.uniform(0, 10, (100, 3))  # serial and parallel paths
    for q in (q1, q100):
        if "radius" in parts:
            eng.nodes_within(q, 2.0, return_distance=True, sort=True)
            tick("radius queries")
            eng.nodes_within(q, 2.0, count_only=True)
            tick("radius counts")
        if "nearest" in parts:
            eng.nearest(q, 3)
            tick("nearest neighbours")
    if "boxes" in parts:
        eng.nodes_in_box([0, 0, 0], [5, 5, 5])
        eng._box_page([0, 0, 0], [5, 5, 5], None, 2)  # query.graph.nodes_in_box's capped page
        tick("boxes")
    from . import _spatial

    if "updates" in parts:
        eng.nodes_within(q1, 2.0)  # (an index to update)
        eng.apply(pa.table({k: v for k, v in cols.items()}).slice(0, 3))  # incremental index update
        eng.nodes_within(rng.uniform(0, 10, (1, 3)), 2.0)
        tick("index updates")
    if "builds" in parts:
        _spatial._main_grid(eng._p.N, True)  # the background rebuild's serial kernels
        tick("index builds")
    if "sparse" in parts:
        # what only bigger grids reach: the cell-size search, and tall columns' z ranges
        from kernels import spatial as ks

        pts = rng.uniform(0, 10, (8, 3))
        ks.occupancy(pts, np.arange(8), np.zeros(3), 1.0, np.arange(8))
        tall = np.array([1, 1, ks.ZR_MIN_Z], np.int64)
        for zr in (ks.column_zrange, ks.column_zrange_serial):
            zr(np.zeros(ks.ZR_MIN_Z + 1, np.int32), tall)
        far = np.array([[0.0, 0, 0], [1e9, 0, 0]])
        _spatial.SpatialIndex._grid(far, np.arange(2), np.zeros(2, np.int32), far[0], far[1], 1.0)  # hashed
        tick("sparse grids")


def _warm_other(tick, eng, g, nodes, cols, rng) -> None:
    """Everything else: reply text, JSON decoding, listings and walks, NATS framing."""
    eng._first_rows_json(np.array([0, 2, 3]), np.array([1, 5]), np.arange(3))  # radius replies' JSON rows
    uuid_texts_of(np.zeros((1, 16), np.uint8))  # ids as text in every reply and update
    iso_texts_of(np.zeros(1, np.int64))  # times as text in summaries
    tick("replies")
    decode_json([_warm_payload(g)])
    tick("JSON decoding")
    from kernels import traverse as kt

    N, G = eng._p.N, eng._p.G
    kt.gather_ids(N.keys, N.graph, G.keys, np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([0, 1]),
                  np.empty((1, 2), np.uint64), np.empty((1, 2), np.uint64))
    eng.find_nodes(g)
    tick("listings")
    eng.find_nodes(limit=1)  # an unfiltered page: the live-slot walks
    eng.find_edges(limit=1)
    eng.neighbors(nodes[1], graph_id=g)
    tick("graph walks")
    got = _warm_frames(g)
    tick("NATS framing")
    decode_spans(got[0].buf, got[0].ds, got[0].de)
    tick("JSON spans")
    _warm_json_apply(eng, got)
    tick("JSON columns")


def _warm_payload(g: bytes) -> bytes:
    return json.dumps({"type": "NodeAdded", "graph_id": str(uuid.UUID(bytes=g)),
                       "node_id": str(uuid.uuid4()), "position": [1, 2, 3]}).encode()


def _warm_frames(g: bytes) -> list:
    """The consumer's framing kernel, on one frame as the server sends it; the blocks it made."""
    payload = _warm_payload(g)
    frame = b"MSG event.graph.x 1 $JS.ACK.S.C.1.1.1.0.0 %d\r\n%s\r\n" % (len(payload), payload)
    got = []
    conn = _wire.RawConnection(got.append, inbox="_INBOX.warm", batch_subject=BATCH_SUBJECT)
    conn._frames(frame)
    return got


def _warm_json_apply(eng, got) -> None:
    """The service's JSON path: scanner columns straight into the engine (with a spatial
    index, its incremental update too)."""
    cols, _, _ = decode_spans_columns(got[0].buf, got[0].ds, got[0].de)
    eng._apply_columns(cols.with_seq(np.array([eng.version + 1], np.uint64)))
