"""The service's connections and its JetStream consumer: connect, reconnect and resume at
``version + 1``, the stream and the durable consumer, pull requests on a lean connection
of its own, and the pending blocks they deliver (part of :class:`cim_flow.service.Service`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StoreCompression, StreamConfig

from . import _wire
from ._service_common import (BATCH_SUBJECT, _PULL_EXPIRES, JetStreamUnavailable, NatsAuthError, _json,
                              _resolve, _stream_seq)


class ConsumerMixin:
    """Connections, the stream and the consumer; see the module docstring."""

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
            if self._results_on:  # updates published while the server was away may be lost
                self._background(self._results_sync_after_resume())

    async def _results_sync_after_resume(self):
        try:
            await self._ensure_results_stream()  # a server restarted with an empty store has none
            await self._results_sync()
        except Exception as exc:  # the next batch's update goes out either way
            self._log(f"cim_flow: results stream not checked after the reconnect: {type(exc).__name__}: {exc}")

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
        try:
            await self._ensure_stream()
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise JetStreamUnavailable(
                f"the NATS server at {self.url} does not offer JetStream to this connection: start it with "
                f"JetStream on (nats-server -js), enable JetStream for this account, or run with "
                f"--no-jetstream to consume {', '.join(js_cfg.subjects)} on core NATS") from None
        except nats.js.errors.APIError as exc:
            raise JetStreamUnavailable(f"the NATS server at {self.url} refused stream {js_cfg.stream}: "
                                       f"{exc.description or exc}") from None
        if self._results_on:
            try:
                await self._ensure_results_stream()
            except nats.js.errors.APIError as exc:  # e.g. another stream already takes its subjects
                self._log(f"cim_flow: results stream {js_cfg.results_stream} not created ({exc}); updates go "
                          "out on core NATS only")
                self._results_on = False
        await self._reset_consumer()
        self._inbox = self.nc.new_inbox()
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{js_cfg.stream}.{js_cfg.durable}"
        self.raw_wanted = js_cfg.raw_consumer and _wire.usable(self.url, self.connect_options)
        if self.raw_wanted:
            await self._raw_connect()
        else:
            self._inbox_sub = await self.nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=1_000_000,
                                                      pending_bytes_limit=1 << 30)
        self._consume_t0 = time.time()
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
            if not self.create_stream:
                raise JetStreamUnavailable(f"there is no stream {js_cfg.stream} on the NATS server at {self.url}: "
                                           "nothing to replay") from None
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
