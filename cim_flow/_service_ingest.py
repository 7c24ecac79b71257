"""The service's ingest: micro-batches closed on size or timeout (adaptive between min and
max), decode and apply, acknowledgement after apply, dead letters, the summary updates
published after each batch, catch-up before ready (part of :class:`cim_flow.service.Service`).
"""
from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors
import nats.js.errors
import numpy as np
import pyarrow as pa
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from . import _wire
from ._decode import decode_spans_columns
from ._projection import INVALID, REASONS, BatchRefused, normalize_batch
from ._queries import uuid_texts_of
from ._service_common import DLQ_SUBJECT, RESULTS_SUBJECTS, UPDATES_SUBJECT, _REPLY_HEADROOM, _json, _resolve

_dec = msgspec.json.Decoder()


class IngestMixin:
    """Batching, apply, acks, dead letters and updates; see the module docstring."""

    async def _catch_up(self):
        """Replay the stream up to its last sequence at start, before reporting ready."""
        info = await self.js.stream_info(self.config.jetstream.stream)
        target = info.state.last_seq
        self._check_stream(target)
        # from the version the snapshot gave and the first pull: batches may have applied
        # since, before this first looked (counted from here they made a replay look shorter)
        start_v = self._version_at_start
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
        t0 = self._consume_t0 or time.time()
        last_log = time.time()
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
        compactions = eng.compactions
        self._processing = True
        try:
            await self._process_block(block, eng, n, compactions, t_start)
        finally:
            self._processing = False
            asked, self._compact_asked = self._compact_asked, None
            if asked is not None:  # the batch ended before its compaction point: now
                try:
                    self._compact_now(asked)
                except Exception as exc:  # (the request's reply says it too)
                    self._log(f"cim_flow: compaction failed: {type(exc).__name__}: {exc}")

    async def _process_block(self, block, eng, n, compactions, t_start):
        # runs of JSON messages and runs of Arrow messages, in stream order
        kind = block.kind
        cuts = [0, *(np.flatnonzero(kind[1:] != kind[:-1]) + 1).tolist(), n] if n else [0]
        for a, b in zip(cuts[:-1], cuts[1:]):
            try:
                if kind[a] == 1:
                    await self._apply_arrow(block, a, b)
                else:
                    await self._apply_json(block, a, b)
            except Exception as exc:  # not a refusal (those are handled inside): a bug
                # the block is acknowledged with the rest (the consumer acks all up to a
                # sequence): its messages go to dlq.graph rather than nowhere
                why = f"failed while applying (it may be partly applied): {type(exc).__name__}: {exc}"
                self._log(f"cim_flow: messages {int(block.seq[a])}..{int(block.seq[b - 1])} {why}"
                          if self.jetstream else f"cim_flow: {b - a} messages {why}")
                for i in range(a, b):
                    await self._dead_letter(block.subject(i), block.data(i), why,
                                            int(block.seq[i]) if self.jetstream else None)
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
        asked = self._compact_asked
        if asked is not None or eng._wants_graph_compaction():
            # here, with the batch's update out, no graph number is held any more (the
            # engine compacts nodes and edges on its own inside apply, graphs only when asked)
            self._compact_asked = None
            self._compact_now(asked)
        elif eng.compactions != compactions:  # the engine's own, inside the batch
            self._log_compaction()
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

    def _compact_now(self, asked=None) -> dict:
        """Compact the engine, graphs too (only where no graph number is held: between
        batches); ``asked``: the future of a compact request waiting for this."""
        self._touched = []
        try:
            self.engine.compact()
        except BaseException as exc:
            if asked is not None and not asked.done():
                asked.set_exception(exc)
            raise
        self._log_compaction()
        if asked is not None and not asked.done():
            asked.set_result(self.engine.last_compaction)
        return self.engine.last_compaction

    def _log_compaction(self):
        c = self.engine.last_compaction
        self._log(f"cim_flow: compacted at version {c['version']}: dropped "
                  + ", ".join(f"{c[k]:,} {k}" for k in ("nodes", "edges", "graphs", "strings", "types") if k in c)
                  + f" in {c['seconds']:.2f} s")

    async def _compact_handler(self, req):
        """``cmd.cim_flow.compact``: compact now (between batches: a batch in hand finishes
        first); the reply says what went (``nodes``, ``edges``, ``graphs``, ``strings``,
        ``types``), at which ``version`` and in how many ``seconds``."""
        try:
            if self._processing:  # a batch holds graph numbers until its update is out
                if self._compact_asked is None:
                    self._compact_asked = asyncio.get_running_loop().create_future()
                c = await asyncio.shield(self._compact_asked)
            else:  # nothing in hand: now (no await below, so no batch starts meanwhile)
                c = self._compact_now()
            await req.respond(_json.encode(c))
        except Exception as exc:
            await req.respond(_json.encode({"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"},
                                            "version": self.engine.version}))

    def _count(self, res):
        self.counters["events_applied"] += res.applied
        self.counters["events_ignored"] += res.ignored
        self.counters["events_skipped"] += res.skipped

    async def _apply_json(self, block: _wire.Block, a: int, b: int):
        """JSON messages a..b-1 in one kernel call.  A run the projection refuses whole
        (:class:`BatchRefused`, before anything is applied: past the int16 type codes or an
        index limit) is applied again message by message, and only the messages it still
        refuses are dead-lettered, with its reason: one bad message must not take the
        run's others with it, nor come back forever."""
        try:
            await self._apply_json_run(block, a, b)
        except BatchRefused as exc:
            if b - a > 1:
                for i in range(a, b):
                    await self._apply_json(block, i, i + 1)
                return
            await self._dead_letter(block.subject(a), block.data(a), f"refused by the projection: {exc}",
                                    int(block.seq[a]) if self.jetstream else None)

    async def _apply_json_run(self, block: _wire.Block, a: int, b: int):
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
        if seqs is not None and batch.num_rows:
            batch = batch.set_column(0, "seq", pa.array(seqs if keep is None else seqs[keep], pa.uint64()))
        res = self.engine.apply(batch) if batch.num_rows else None  # (refused: nothing dead-lettered twice)
        for e in errors:
            i = a + e.index
            await self._dead_letter(block.subject(i), block.data(i), e.reason,
                                    int(block.seq[i]) if self.jetstream else None)
        if res is not None:
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
                # the reader checks buffer sizes, not each offset, dictionary index or UTF-8
                # sequence: a damaged message must not send the kernels outside its buffers
                # (3 µs for 5,000 events without strings, ~46 µs with them)
                table.validate(full=True)
                batches = [normalize_batch(x) for x in table.to_batches()]
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OSError) as exc:
                await self._dead_letter(block.subject(i), data, f"bad Arrow batch: {exc}",
                                        int(block.seq[i]) if self.jetstream else None)
                continue
            messages.append((batches, int(block.seq[i])))
            where.append(i)
        if not messages:
            return
        try:
            await self._apply_arrow_messages(block, where, messages)
        except BatchRefused:  # refused whole (see _apply_json): message by message
            for i, msg in zip(where, messages):
                try:
                    await self._apply_arrow_messages(block, [i], [msg])
                except BatchRefused as exc:
                    await self._dead_letter(block.subject(i), block.data(i), f"refused by the projection: {exc}",
                                            int(block.seq[i]) if self.jetstream else None)
                    self.counters["events_dead_lettered"] += sum(x.num_rows for x in msg[0]) - 1

    async def _apply_arrow_messages(self, block: _wire.Block, where: list, messages: list):
        """Arrow messages ``[(batches, seq), ...]`` (block positions ``where``) in one
        apply, all or nothing; then their rows that were not events dead-lettered."""
        if self.jetstream:
            res = self.engine._apply_messages(messages)
        else:
            flat = [x for batches, _ in messages for x in batches]
            if len(flat) > 1:  # one batch: a refusal leaves none of it applied
                flat = pa.Table.from_batches(flat).combine_chunks().to_batches()
            res = self.engine.apply(flat)
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
        if self._results_hold or not self.publish_results:
            # replaying at start: one full update once it is done says it all (see
            # _results_sync); per-batch ones would repeat, out of date and under the same
            # ids, what went out before the restart
            return
        eng = self.engine
        G = eng._p.G
        t = self._touched
        # one apply's touched graphs are each listed once: sorting is enough (np.unique's
        # general path cost ~6 us a batch)
        gidx = np.sort(t[0]) if len(t) == 1 else np.unique(np.concatenate(t))
        alive = G.alive[gidx].astype(bool)
        dead = gidx[~alive]
        deleted = uuid_texts_of(G.keys[dead]) if dead.size else []
        await self._publish_summaries(gidx[alive], deleted, f"summary-{eng.version}")

    async def _publish_summaries(self, live, deleted: list, msg_id: str, extra: bytes = b""):
        """One update: the summaries of graphs ``live`` (indices) and the ids ``deleted``,
        at the current version; ``extra`` goes into the object (its first part's, when it
        comes in parts) as it is: ``,"full":true`` tells a reader to drop what it holds."""
        eng = self.engine
        head = _json.encode({"version": eng.version, "events_total": self.events_total()})[:-1]
        got = eng._summary_json(live)
        if got is None:  # a time RFC 3339 cannot say: the general path names it
            rows = [_json.encode(r) + b"," for r in eng._summary_rows(live)]
            ends = np.cumsum(np.fromiter(map(len, rows), np.int64, len(rows)))
            got = (np.frombuffer(b"".join(rows), np.uint8), ends)
        text, ends = got
        n_rows = len(ends)

        def message(a: int, b: int, da: int, db: int, part: bytes = b"", first: bool = True) -> bytes:
            # rows a..b-1 (their bytes without the last row's comma), deleted da..db-1
            lo = int(ends[a - 1]) if a else 0
            hi = int(ends[b - 1]) - 1 if b > a else lo
            return b"".join((head, extra if first else b"", b',"graphs":[', text[lo:hi].tobytes(),
                             b'],"deleted":', _json.encode(deleted[da:db]), part, b"}"))

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
                             b',"part":%d,"parts":%d' % (k, n), k == 0) for k in range(n)]
            if max(map(len, parts)) <= limit or n >= n_rows + nd:
                break
            n *= 2
        for k, part in enumerate(parts):
            await self._send(UPDATES_SUBJECT, part, headers={"Nats-Msg-Id": msg_id if k == 0 else f"{msg_id}.{k}"})

    # -- the results stream ([jetstream] results_stream) ---------------------------------
    async def _ensure_results_stream(self):
        """Create the results stream if missing (subjects ``projection.graph.>``)."""
        js_cfg = self.config.jetstream
        try:
            await self.js.stream_info(js_cfg.results_stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        await self.js.add_stream(StreamConfig(
            name=js_cfg.results_stream, subjects=[RESULTS_SUBJECTS],
            storage=StorageType.FILE if js_cfg.storage == "file" else StorageType.MEMORY,
            # (the server refuses a duplicate window longer than the age limit)
            duplicate_window=min(js_cfg.duplicate_window, js_cfg.results_max_age or js_cfg.duplicate_window),
            max_age=js_cfg.results_max_age or None,
            max_bytes=js_cfg.results_max_bytes or None, discard=DiscardPolicy.OLD))

    async def _results_through(self) -> int:
        """The version whose state the results stream's updates add up to: that of its
        last update (one before it when that is a part of an update whose later parts are
        missing); 0 when it holds none."""
        try:
            msg = await self.js.get_last_msg(self.config.jetstream.results_stream, UPDATES_SUBJECT)
        except nats.js.errors.NotFoundError:
            return 0
        try:
            body = _dec.decode(msg.data)
            v = int(body["version"])
            return v if int(body.get("part", 0)) + 1 >= int(body.get("parts", 1)) else v - 1
        except (ValueError, TypeError, KeyError, msgspec.DecodeError):
            return 0  # not ours: count nothing as covered

    async def _results_sync(self):
        """Make the results stream add up to the current state.  Its updates lag behind
        the version when some were lost (published while the server restarted, or with
        a connection), were held back during the replay at start, or came before the
        stream did: then one full update (every live graph's summary, ``"full": true``:
        a reader replaces what it holds) at the current version goes out.  Without a
        results stream, after the replay at start: one full update when it applied
        anything (what went out before the restart is unknown; a full one never repeats
        an earlier update's id)."""
        if not self._results_on:
            if self._results_hold:
                self._results_hold = False
                # (not catch_up_stats: batches may apply before the catch-up looks)
                if self.engine.version > self._version_at_start and self.publish_results:
                    await self._publish_full()
            return
        try:
            through = await self._results_through()
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            self._log(f"cim_flow: results stream {self.config.jetstream.results_stream}: cannot read its "
                      f"last update ({exc}); a full update goes out")
            through = -1
        finally:
            self._results_hold = False
        if through >= self.engine.version:
            return
        await self._publish_full()

    async def _publish_full(self):
        eng = self.engine
        G = eng._p.G
        live = np.flatnonzero(G.alive[: int(G.meta[0])]).astype(np.int64)
        self.counters["full_updates"] += 1
        await self._publish_summaries(live, [], f"summary-{eng.version}-full", b',"full":true')

    def events_total(self) -> int:
        c = self.counters
        return c["events_applied"] + c["events_ignored"] + c["events_skipped"] + c["events_dead_lettered"]
