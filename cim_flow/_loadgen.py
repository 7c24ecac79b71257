"""``python -m cim_flow loadgen``: open-loop load against a running service.

Events (and queries) are sent on a fixed schedule; every latency is measured
from the *scheduled* time, so a stall in the service or in this client shows
up instead of being hidden by a slower sender (coordinated omission).

Event-to-applied latency: the service publishes ``projection.graph.summary.updated``
after every batch with ``events_total`` (events consumed so far); event ``i`` is
applied at the first update whose total passes ``i``.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import msgspec
import numpy as np
import pyarrow as pa

import nats

from . import _wire
from ._demo import synthetic_batches, synthetic_json

_dec = msgspec.json.Decoder()


def add_parser(sub, env):
    p = sub.add_parser("loadgen", help="open-loop load generator with latency report",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--nats-url", default=env("nats_url"),
                   help="service's NATS server; without it a service is started for the run [CIM_FLOW_NATS_URL]")
    p.add_argument("--rate", type=float, default=env("rate", 10000.0, float), help="events per second [10000]")
    p.add_argument("--duration", type=float, default=env("duration", 10.0, float), help="seconds [10]")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="one JSON event per message (default)")
    mode.add_argument("--arrow-batch", type=int, default=0, metavar="N",
                      help="N events per message, as an Arrow IPC stream on event.graph.batch")
    p.add_argument("--arrow-compression", choices=("none", "lz4", "zstd"),
                   default=env("arrow_compression", "none"),
                   help="with --arrow-batch: Arrow IPC buffer compression of each message [none]")
    p.add_argument("--query-rate", type=float, default=env("query_rate", 0.0, float),
                   help="radius queries per second alongside the events [0]")
    p.add_argument("--report", default=env("report", "loadgen-report.json"), help="JSON report file")
    p.add_argument("--plot", default=env("plot", "loadgen-latency.html"),
                   help="latency-over-time plot (HTML with SVG)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--replay", type=int, default=0, metavar="N",
                   help="instead of live load: fill a fresh stream with N JSON events, then time a "
                        "service catching up on them (replay rate and start-to-ready)")
    p.add_argument("--replay-snapshot", default=None, metavar="FILE",
                   help="with --replay: the service starts from this snapshot (written at version 0), "
                        "so the run times restart-to-ready with that state plus the tail")
    p.add_argument("--seed", type=int, default=None,
                   help="event generator seed; default random, so re-runs get fresh Nats-Msg-Ids "
                        "(JetStream drops repeats within its duplicate window)")
    return p


class _QueryPacer(threading.Thread):
    """Sends the radius queries at their scheduled times, from a thread with a blocking
    connection of its own (replies come back on the event loop's lean connection).

    The event loop's timers tick in milliseconds (uvloop's, and asyncio's epoll wait), so
    queries sent from it left up to ~1-2 ms after their scheduled time, and at 5,000/s
    that lag was half of every latency the report gave (p50 ~1 ms of ~2).  A thread
    sleeping to each send time (``time.sleep`` is a nanosleep: ~60 us late here) sends
    each query on time, one write each (~20 us of this process's CPU); queries already
    due (the thread was late) go out together in one write, still counted from their
    scheduled times.  Open loop: no send waits for a reply."""

    def __init__(self, url, bodies, inbox, sched, n, rate, t0, subject="query.graph.nodes_in_radius"):
        super().__init__(name="cim_flow-loadgen-queries", daemon=True)
        self.sock = _wire.connect_blocking(url, "cim_flow-loadgen-qpub")
        self.bodies, self.inbox, self.sched = bodies, inbox, sched
        self.n, self.rate, self.t0, self.subject = n, rate, t0, subject
        self.sent, self.error = 0, None

    def run(self):
        sock, bodies, n = self.sock, self.bodies, self.n
        head = b"PUB " + self.subject.encode() + b" " + self.inbox.encode() + b"."
        try:
            i = 0
            while i < n:
                due = self.t0 + i / self.rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                now = time.perf_counter()
                frames = []
                while i < n and self.t0 + i / self.rate <= now:
                    body = bodies[i % len(bodies)]
                    self.sched[str(i)] = (self.t0 + i / self.rate, now)
                    frames.append(b"%s%d %d\r\n%s\r\n" % (head, i, len(body), body))
                    i += 1
                sock.sendall(b"".join(frames))
                self.sent = i
                if i % 256 < len(frames):
                    _wire.pong(sock)
        except OSError as exc:  # ConnectionError included
            self.error = str(exc) or type(exc).__name__
        finally:
            try:
                sock.close()
            except OSError:
                pass


def _pct(a) -> dict:
    a = np.asarray(a, np.float64)
    if a.size == 0:
        return {"count": 0}
    q = np.percentile(a, [50, 99, 99.9])
    return {"count": int(a.size), "p50_ms": q[0] * 1e3, "p99_ms": q[1] * 1e3, "p999_ms": q[2] * 1e3,
            "max_ms": float(a.max()) * 1e3, "mean_ms": float(a.mean()) * 1e3}


def _lean(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` without its all-null nullable columns: a valid EVENT_SCHEMA subset (the
    service fills them in), and about 30% fewer bytes through the server."""
    keep = [i for i, f in enumerate(batch.schema)
            if not (f.nullable and batch.column(i).null_count == batch.num_rows)]
    return batch.select(keep)


def _make_messages(n_events: int, arrow_batch: int, seed: int, compression: str = "none"):
    if not arrow_batch:
        # the demo's wire forms, formatted from NumPy-drawn columns (SyntheticEvents, one
        # event at a time, took ~19 us an event: 11 s before a 600k-event run could start)
        events = synthetic_json(n_events, seed, max_graphs=200, nodes_per_graph=2000)
        return [(s, {"Nats-Msg-Id": eid}, d) for s, eid, d in events], 1
    # the same traffic drawn column-wise (one event at a time, 8M events took minutes)
    msgs = []
    for a, batch in zip(range(0, n_events, arrow_batch),
                        synthetic_batches(n_events, arrow_batch, seed, max_graphs=200, nodes_per_graph=2000)):
        batch = _lean(batch)
        sink = pa.BufferOutputStream()
        opts = pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
        with pa.ipc.new_stream(sink, batch.schema, options=opts) as w:
            w.write_batch(batch)
        msgs.append(("event.graph.batch", {"Nats-Msg-Id": f"lg-{seed}-{a}"}, sink.getvalue().to_pybytes()))
    return msgs, arrow_batch


async def _stream_last_seq(nc, stream: str | None) -> int | None:
    """The last sequence of the service's event stream, or None without one."""
    if not stream:
        return None
    try:
        return int((await nc.jetstream().stream_info(stream)).state.last_seq)
    except Exception:  # gone, no permission: nothing to report
        return None


def _check_sizes(msgs, max_payload: int, arrow_batch: int) -> None:
    """A clear error, before anything is sent, for a message the server would refuse (it
    closes a connection that publishes more than its max_payload)."""
    if not msgs:
        return
    _, headers, data = max(msgs, key=lambda m: len(m[2]))
    big = len(data) + len(_header_block(headers))
    if big > max_payload:
        hint = (f"; use --arrow-batch {max(1, int(arrow_batch * max_payload / big * 0.9)):,} or less"
                if arrow_batch else "")
        raise ValueError(f"a message would be {big:,} bytes, more than the server's max_payload "
                         f"({max_payload:,} bytes){hint}")


def _header_block(headers: dict) -> bytes:
    """A message's NATS header block, as HPUB sends it (counted in max_payload)."""
    return b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"


def _hpub_frames(msgs) -> tuple[bytes, np.ndarray]:
    """Every (subject, headers, payload) as one HPUB frame, concatenated; end offsets."""
    parts = []
    for subject, headers, data in msgs:
        hdr = _header_block(headers)
        parts.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (subject.encode(), len(hdr), len(hdr) + len(data), hdr, data))
    return b"".join(parts), np.cumsum([len(p) for p in parts])


async def run_load(url: str, rate: float, duration: float, arrow_batch: int = 0, query_rate: float = 0.0,
                   progress: bool = True, seed: int | None = None, compression: str = "none") -> dict:
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    n_events = int(rate * duration)
    msgs, per_msg = _make_messages(n_events, arrow_batch, seed, compression)
    nc = await nats.connect(url, name="cim_flow-loadgen", pending_size=64 * 2**20)
    _check_sizes(msgs, nc.max_payload, arrow_batch)
    qnc = await nats.connect(url, name="cim_flow-loadgen-q") if query_rate and not _wire.usable(url, {}) else None
    stats = _dec.decode((await nc.request("query.graph.stats", b"{}", timeout=10)).data)
    stream = stats.get("stream")  # the service's event stream (None: it reads core NATS)
    seq0 = await _stream_last_seq(nc, stream)
    base = (stats["events_applied"] + stats["events_ignored"] + stats["events_skipped"]
            + stats["events_dead_lettered"])
    updates_t, updates_n = [], []

    async def on_update(msg):
        body = _dec.decode(msg.data)
        updates_t.append(time.perf_counter())
        updates_n.append(body.get("events_total", 0) - base)

    await nc.subscribe("projection.graph.summary.updated", cb=on_update)
    await nc.flush()
    # per message: scheduled time of its last event
    n_msgs = len(msgs)
    last_event = np.minimum((np.arange(n_msgs) + 1) * per_msg, n_events) - 1
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n_events, unit="ev", desc="loadgen", smoothing=0.1)
        except ImportError:
            bar = None
    q_lat, q_rtt, q_err = [], [], 0  # from the scheduled time, and from the actual send
    q_tasks = []
    centres = np.random.default_rng(seed).uniform(0, 1000, (1024, 3))
    q_bodies = [msgspec.json.encode({"center": c.tolist(), "radius": 25.0, "limit": 100}) for c in centres]
    q_sched = {}
    # Queries, like events, go out on a lean connection when the URL allows: one PUB frame
    # each with its own reply subject, the replies arrive in Blocks on one wildcard
    # subscription, and nothing is created per query (nats-py's request() costs this
    # process ~100 us of a shared core per query).
    qraw = None
    if query_rate and _wire.usable(url, {}):
        q_inbox = f"_INBOX.cimlg{os.getpid()}x{seed}"

        def on_replies(block):
            nonlocal q_err
            now = time.perf_counter()
            for i in range(len(block)):
                times = q_sched.pop(block.subject(i).rsplit(".", 1)[-1], None)
                if times is None:
                    continue
                if block.kind[i] == 2 or b'"error"' in block.data(i)[:20]:
                    q_err += 1
                    continue
                q_lat.append(now - times[0])
                q_rtt.append(now - times[1])

        qraw = await _wire.RawConnection(on_replies, name="cim_flow-loadgen-q").connect(url)
        qraw.subscribe(q_inbox + ".*", sid=1)
        await qraw.flush()


    async def one_query(i, sched):
        nonlocal q_err
        c = centres[i % len(centres)].tolist()
        sent_at = time.perf_counter()
        try:
            r = await qnc.request("query.graph.nodes_in_radius",
                                  msgspec.json.encode({"center": c, "radius": 25.0, "limit": 100}), timeout=5)
            if b'"error"' in r.data[:20]:
                q_err += 1
        except Exception:
            q_err += 1
            return
        now = time.perf_counter()
        q_lat.append(now - sched)
        q_rtt.append(now - sent_at)

    # Events go out on a lean connection as pre-encoded HPUB frames: at send time the loop
    # writes one slice of a prepared buffer per tick, so the sender's own CPU (which shares
    # the machine with the service) does not shape the measurement.
    raw = None
    if _wire.usable(url, {}):
        raw = await _wire.RawConnection(lambda block: None, name="cim_flow-loadgen-pub").connect(url)
        frames, ends = _hpub_frames(msgs)
        view = memoryview(frames)
    t0 = time.perf_counter() + 0.05
    sent = 0
    q_sent = 0
    n_queries = int(query_rate * duration)
    pacer = None
    if qraw is not None and n_queries:
        pacer = _QueryPacer(url, q_bodies, q_inbox, q_sched, n_queries, query_rate, t0)
        pacer.start()
        q_sent = n_queries  # the pacer's job from here
    while sent < n_msgs or q_sent < n_queries:
        now = time.perf_counter()
        # an integer key: a float one makes numpy cast all of last_event on every tick
        # (~40 us a tick, a third of this process's CPU at 5k events/s)
        due = min(n_msgs, int(last_event.searchsorted(np.int64(math.floor((now - t0) * rate)), side="right")))
        if raw is not None and due > sent:
            raw.write(view[ends[sent - 1] if sent else 0:ends[due - 1]])
            sent = due
        while sent < due:
            s, h, d = msgs[sent]
            await nc.publish(s, d, headers=h)
            sent += 1
        if query_rate:
            q_due = min(n_queries, int((now - t0) * query_rate))
            while q_sent < q_due:
                q_tasks.append(asyncio.create_task(one_query(q_sent, t0 + q_sent / query_rate)))
                q_sent += 1
        if bar is not None:
            bar.n = int(min(n_events, last_event[sent - 1] + 1)) if sent else 0
            bar.refresh()
        # a 1 ms tick: each tick is one write, and on this VM a loopback write costs the
        # sender ~130 us of CPU (and the server a wake-up); at 0.5 ms the generator took
        # 75% of a core at 10k events/s and the service's p99 was set by who got a core
        await asyncio.sleep(0.001)
    while pacer is not None and pacer.is_alive():
        await asyncio.sleep(0.005)
    if pacer is not None and pacer.error:
        print(f"loadgen: the query sender stopped: {pacer.error}", file=sys.stderr)
        q_err += n_queries - pacer.sent  # never sent: counted as failed
    send_end = time.perf_counter()
    if raw is not None:
        await raw.flush()
        raw.close()
    await nc.flush()
    # wait for the service to catch up (bounded)
    deadline = time.perf_counter() + max(10.0, duration)
    while (not updates_n or updates_n[-1] < n_events) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    if q_tasks:
        await asyncio.gather(*q_tasks, return_exceptions=True)
    if qraw is not None:
        q_deadline = time.perf_counter() + 5.0  # the same 5 s timeout as the nats-py path
        while q_sched and time.perf_counter() < q_deadline:
            await asyncio.sleep(0.005)
        q_err += len(q_sched)  # timed out
        qraw.close()
    if bar is not None:
        bar.close()
    ut = np.asarray(updates_t)
    un = np.asarray(updates_n)
    sched = t0 + np.arange(n_events) / rate
    # event i is applied at the first update with total > i
    idx = np.searchsorted(np.maximum.accumulate(un) if un.size else un, np.arange(n_events) + 1, side="left")
    applied = idx < un.size
    lat = ut[idx[applied]] - sched[applied] if un.size else np.zeros(0)
    done_t = ut[idx[applied]].max() if applied.any() else send_end
    end_stats = _dec.decode((await nc.request("query.graph.stats", b"{}", timeout=10)).data)
    seq1 = await _stream_last_seq(nc, stream)
    cpu_s = end_stats["cpu_s"] - stats["cpu_s"] if "cpu_s" in stats and "cpu_s" in end_stats else None
    await nc.drain()
    if qnc is not None:
        await qnc.drain()
    return {
        "mode": (f"arrow-batch {arrow_batch}" + (f", {compression}" if compression != "none" else "")
                 if arrow_batch else "json"),
        "rate_target": rate, "duration_s": duration, "events": n_events, "messages": n_msgs,
        "events_applied": int(applied.sum()), "events_lost_or_late": int((~applied).sum()),
        # messages the stream took during the run (None without JetStream): fewer than sent
        # means the server refused some (publishes here are fire-and-forget, open loop)
        "messages_stored": None if seq0 is None or seq1 is None else seq1 - seq0,
        "throughput_events_per_s": float(applied.sum() / max(done_t - t0, 1e-9)),
        "send_rate_events_per_s": float(n_events / max(send_end - t0, 1e-9)),
        "event_to_applied": _pct(lat),
        "queries": {"rate_target": query_rate, "errors": q_err, **_pct(q_lat),
                    # from the moment the request left: without the generator's own send lag
                    # (~60 us from the paced thread; through nats-py, its 1 ms loop tick),
                    # which the scheduled-time figures above include
                    "from_send": _pct(q_rtt)},
        # the service process's CPU over the run (stats cpu_s before and after), per event and query sent
        "service_cpu": None if cpu_s is None else {
            "seconds": cpu_s, "us_per_event": cpu_s / max(n_events, 1) * 1e6,
            "us_per_query": cpu_s / n_queries * 1e6 if n_queries else None},
        "timeline": {"t": (sched[applied] - t0).tolist()[:: max(1, int(applied.sum() // 5000))],
                     "latency_ms": (lat * 1e3).tolist()[:: max(1, int(applied.sum() // 5000))]},
    }


def write_plot(report: dict, path: str) -> None:
    """Latency over time as a self-contained HTML page with an SVG scatter plot."""
    t = np.asarray(report["timeline"]["t"])
    y = np.asarray(report["timeline"]["latency_ms"])
    w, h, pad = 900, 360, 50
    tmax = float(t.max()) if t.size else 1.0
    ymax = float(np.percentile(y, 99.9)) * 1.1 if y.size else 1.0
    pts = "".join(f'<circle cx="{pad + (a / tmax) * (w - 2 * pad):.1f}" cy="{h - pad - min(b, ymax) / ymax * (h - 2 * pad):.1f}" r="1.2"/>'
                  for a, b in zip(t, y))
    e = report["event_to_applied"]
    title = (f"cim_flow loadgen ({report['mode']}, {report['rate_target']:,.0f} ev/s target): "
             f"p50 {e.get('p50_ms', 0):.2f} ms, p99 {e.get('p99_ms', 0):.2f} ms, max {e.get('max_ms', 0):.2f} ms")
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">'
           f'<rect width="{w}" height="{h}" fill="white"/>'
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>'
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>'
           f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">time since start (s), 0 to {tmax:.1f}</text>'
           f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
           f'event-to-applied latency (ms), 0 to {ymax:.2f}</text>'
           f'<g fill="steelblue">{pts}</g></svg>')
    with open(path, "w") as fh:
        fh.write(f"<!doctype html><meta charset=utf-8><title>cim_flow loadgen</title>"
                 f"<h3>{title}</h3>{svg}<pre>{json.dumps({k: v for k, v in report.items() if k != 'timeline'}, indent=2)}</pre>")


async def run_replay(n_events: int, seed: int | None = None, arrow_batch: int = 0,
                     base_snapshot: str | None = None) -> dict:
    """Fill a fresh JetStream stream with ``n_events`` (service not running), then start a
    service on it and time its catch-up (every event applied before ready).

    ``base_snapshot``: a snapshot file (at version 0) the service starts from, so the
    measurement is restart-to-ready with that state plus an ``n_events`` tail."""
    from nats.js.api import StorageType, StreamConfig

    from ._config import Config
    from ._natsserver import NatsServer
    from .service import Service

    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    cfg = Config()
    msgs, per_msg = _make_messages(n_events, arrow_batch, seed)
    with tempfile.TemporaryDirectory(prefix="cim_flow_replay_") as tmp:
        server = NatsServer(port=0, store_dir=f"{tmp}/jetstream", jetstream=True).start()
        try:
            nc = await nats.connect(server.url, pending_size=64 * 2**20)
            _check_sizes(msgs, nc.max_payload, arrow_batch)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=cfg.jetstream.stream, subjects=list(cfg.jetstream.subjects),
                                             storage=StorageType.FILE,
                                             duplicate_window=cfg.jetstream.duplicate_window))
            t0 = time.perf_counter()
            for i, (subj, hdr, data) in enumerate(msgs):
                await nc.publish(subj, data, headers=hdr)
                if i % 5000 == 4999:
                    await nc.flush()
            await nc.flush()
            while (await js.stream_info(cfg.jetstream.stream)).state.messages < len(msgs):
                await asyncio.sleep(0.05)
            fill_s = time.perf_counter() - t0
            await nc.close()
            if base_snapshot:
                from ._snapshot import snapshot_path

                os.makedirs(f"{tmp}/snapshots", exist_ok=True)
                os.symlink(os.path.abspath(base_snapshot), snapshot_path(f"{tmp}/snapshots", 0))
            svc = Service(cfg, nats_url=server.url, data_dir=tmp, queries=False, snapshots=bool(base_snapshot),
                          status_interval=0, out=open(os.devnull, "w"))
            t0 = time.perf_counter()
            await svc.start()
            ready_s = time.perf_counter() - t0
            applied = svc.events_total()
            replay = svc.catch_up_stats
            base = svc.engine.totals() if base_snapshot else None
            svc.snapshots = False  # no shutdown snapshot: this was a measurement
            svc.request_stop()
            await svc.stop()
        finally:
            server.stop()
    return {"mode": "replay-arrow" if arrow_batch else "replay-json", "events": n_events, "messages": len(msgs),
            "events_applied": applied, "fill_s": fill_s, "start_to_ready_s": ready_s,
            "replay_s": replay[1], "replay_events_per_s": replay[0] / max(replay[1], 1e-9) * per_msg,
            "seed": seed, "base_snapshot": base_snapshot, "state_after": base}


def _start_service(tmp: str):
    proc = subprocess.Popen([sys.executable, "-m", "cim_flow", "serve", "--port", "0", "--data-dir", tmp,
                             "--status-interval", "0"], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.match(r"cim_flow ready (\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("the service did not become ready")


def cmd_loadgen(args) -> int:
    bad = [f"--{name.replace('_', '-')} must be {why}" for name, ok, why in (
        ("rate", args.rate > 0, "> 0"), ("duration", args.duration > 0, "> 0"),
        ("query_rate", args.query_rate >= 0, ">= 0"), ("arrow_batch", args.arrow_batch >= 0, ">= 0"),
        ("replay", (args.replay or 0) >= 0, ">= 0")) if not ok]
    if bad:
        print("cim_flow loadgen: " + "; ".join(bad), file=sys.stderr)
        return 2
    try:
        return _loadgen(args)
    except ValueError as exc:  # e.g. messages bigger than the server accepts
        print(f"cim_flow loadgen: {exc}", file=sys.stderr)
        return 2


def _loadgen(args) -> int:
    from .__main__ import _run

    if args.replay:
        r = _run(run_replay(args.replay, args.seed, args.arrow_batch, args.replay_snapshot))
        print(f"replay: {r['events_applied']:,}/{r['events']:,} events ({r['messages']:,} messages) "
              f"caught up in {r['replay_s']:.2f} s = {r['replay_events_per_s']:,.0f} events/s; "
              f"start to ready {r['start_to_ready_s']:.2f} s (stream filled in {r['fill_s']:.1f} s)"
              + (f"; state after: {r['state_after']}" if r["state_after"] else ""))
        with open(args.report, "w") as fh:
            json.dump(r, fh, indent=2)
        print(f"report: {args.report}")
        return 0 if r["events_applied"] == r["events"] else 1
    proc = None
    tmp = None
    url = args.nats_url
    if not url:
        tmp = tempfile.TemporaryDirectory(prefix="cim_flow_loadgen_")
        proc, url = _start_service(tmp.name)
    try:
        report = _run(run_load(url, args.rate, args.duration, args.arrow_batch, args.query_rate,
                               progress=not args.no_progress and sys.stderr.isatty(), seed=args.seed,
                               compression=args.arrow_compression))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
            tmp.cleanup()
    e, q = report["event_to_applied"], report["queries"]
    print(f"events: {report['events_applied']:,}/{report['events']:,} applied, "
          f"throughput {report['throughput_events_per_s']:,.0f} events/s ({report['mode']})")
    if e.get("count"):
        print(f"event-to-applied: p50 {e['p50_ms']:.2f} ms  p99 {e['p99_ms']:.2f} ms  "
              f"p99.9 {e['p999_ms']:.2f} ms  max {e['max_ms']:.2f} ms")
    if q.get("count"):
        print(f"queries: {q['count']:,} ok, {q['errors']} errors; p50 {q['p50_ms']:.2f} ms  "
              f"p99 {q['p99_ms']:.2f} ms  p99.9 {q['p999_ms']:.2f} ms  max {q['max_ms']:.2f} ms")
        r = q["from_send"]
        print(f"  from the send: p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
              f"p99.9 {r['p999_ms']:.2f} ms  (the rest: the generator's own send lag)")
    stored = report["messages_stored"]
    if stored is not None and stored < report["messages"]:
        print(f"the server stored {stored:,} of {report['messages']:,} messages: JetStream refused "
              f"{report['messages'] - stored:,} at this rate (sent without waiting for an ack, open "
              f"loop), so their events never reached the service")
    cpu = report["service_cpu"]
    if cpu is not None:
        per_q = f", {cpu['us_per_query']:.0f} us a query" if cpu["us_per_query"] else ""
        print(f"service CPU: {cpu['seconds']:.2f} s over the run ({cpu['us_per_event']:.1f} us an event{per_q}, "
              f"both sharing it)")
    with open(args.report, "w") as fh:
        json.dump(report, fh, indent=2)
    write_plot(report, args.plot)
    print(f"report: {args.report}  plot: {args.plot}")
    return 0 if report["events_lost_or_late"] == 0 else 1
