"""Crash recovery with real processes: kill -9 the service while events stream in,
restart, and the projection equals the reference over every event in the stream."""
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import nats
from cim_flow import decode_json
from cim_flow._demo import SyntheticEvents
from cim_flow._natsserver import NatsServer
from natsutil import request, wait_until_restarted
from natsutil import run as run_async
from reference import RefProjection, reference_rows
from test_cli import ROOT, _spawn, _wait_ready


def _publisher(url, payloads, done, pace):
    async def go():
        nc = await nats.connect(url)
        js = nc.jetstream()
        for i, (subject, eid, data) in enumerate(payloads):
            # as a real publisher does: retry until JetStream acknowledges (it may still
            # be recovering after a server restart); Nats-Msg-Id makes a retry harmless
            for attempt in range(100):
                try:
                    await js.publish(subject, data, headers={"Nats-Msg-Id": eid}, timeout=2.0)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError,
                        nats.js.errors.ServiceUnavailableError):
                    if attempt == 99:
                        raise
                    await asyncio.sleep(0.2)
            if i % 50 == 0:
                await asyncio.sleep(pace)
        await nc.close()

    asyncio.run(go())
    done.set()


def _reference(payloads):
    batch, errors = decode_json([d for _, _, d in payloads])
    assert not errors
    rows = reference_rows(batch)
    for i, r in enumerate(rows):
        r["seq"] = i + 1
    ref = RefProjection()
    ref.apply(rows)
    return ref


def _stop(proc) -> str:
    """SIGTERM the service; its log (stdout) and errors (stderr) go to stderr, so a
    failing test shows them; returns the log."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    sys.stderr.write(out)
    sys.stderr.write(err)
    return out


def _check(url, ref, n):
    # the client waits longer than the service does, so a slow catch-up fails on the
    # version assert (with the state it reached) rather than on a bare timeout
    stats = request(url, "query.graph.stats", {"min_version": n, "timeout_ms": 60000}, timeout=75.0)
    assert stats["version"] == n
    assert (stats["graphs"], stats["nodes"], stats["edges"]) == tuple(ref.totals().values())
    got = request(url, "query.graph.graphs", {"limit": 100000})["graphs"]
    want = ref.summaries()
    assert {uuid.UUID(g["graph_id"]).bytes: (g["node_count"], g["edge_count"], g["name"]) for g in got} == \
        {g: (s["node_count"], s["edge_count"], s["name"]) for g, s in want.items()}


@pytest.mark.parametrize("kills", [3])
def test_kill9_restart_is_exact(tmp_path, kills):
    _run_kill_test(tmp_path, kills, n_events=3000, seed=11)


def test_kill9_restart_is_exact_while_compacting(tmp_path):
    """The same with churn (nodes removed about as fast as they come, graphs deleted) and
    a compaction floor of 20, so the engine compacts every few batches: the kills land at
    random moments among compactions, and the snapshots restarts load were written by
    compacted engines."""
    out = _run_kill_test(tmp_path, 3, n_events=3000, seed=13, churn=True,
                         config="[projection]\ncompact_min = 20\n")
    assert "compacted at version" in out


@pytest.mark.slow
def test_kill9_many_points(tmp_path):
    _run_kill_test(tmp_path, 12, n_events=20000, seed=12)


@pytest.mark.slow
def test_kill9_many_points_while_compacting(tmp_path):
    _run_kill_test(tmp_path, 12, n_events=20000, seed=14, churn=True, config="[projection]\ncompact_min = 50\n")


def _churning(seed: int, n: int) -> list:
    """The demo's events with removals mixed in: a random node of a random graph removed
    (its edges with it) about as often as nodes are added, and now and then a whole graph
    deleted (the generator makes nothing more for it, and new graphs take its place)."""
    gen = SyntheticEvents(seed, max_graphs=30, nodes_per_graph=300)
    rng = random.Random(-seed - 1)  # not the generator's sequence: its ids would repeat (and be de-duplicated)
    out = []
    while len(out) < n:
        graphs = [x for x in gen.graphs if len(x[2]) > 2]
        r = rng.random()
        if graphs and r < 0.3:
            gid, _, nodes = rng.choice(graphs)
            nid = nodes.pop(rng.randrange(len(nodes)))
            eid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            gen.t += 1
            out.append(("event.graph.node.removed", eid, json.dumps(
                {"type": "NodeRemoved", "event_id": eid, "graph_id": gid, "node_id": nid,
                 "occurred_at": gen.t}).encode()))
        elif len(gen.graphs) > 3 and r < 0.31:
            gid, _, _ = gen.graphs.pop(rng.randrange(len(gen.graphs)))
            eid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            gen.t += 1
            out.append(("event.graph.graph.deleted", eid, json.dumps(
                {"GraphDeleted": {"event_id": eid, "graph_id": gid, "occurred_at": gen.t}}).encode()))
        else:
            out.append(gen.next())
    return out


def _kill_rounds(args, kills, rng, publisher, done, first=None, logs=None):
    """``kills`` times: start the service, let it run a random while, kill -9 it.  The
    publisher starts once the first service is ready (it created the stream), then
    ``first(url)`` runs; returns when the publisher is done.  Each killed service's log
    goes to ``logs`` (a list)."""
    for _ in range(kills):
        proc = _spawn(args)
        url = _wait_ready(proc)
        if not publisher.is_alive() and not done.is_set():
            publisher.start()
            if first is not None:
                first(url)
        time.sleep(rng.uniform(0.1, 0.8))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        if logs is not None:
            logs.append(out)
    assert done.wait(120)


def _run_kill_test(tmp_path, kills, n_events, seed, churn=False, config=""):
    """Returns every service's log."""
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    try:
        cfg = tmp_path / "c.toml"
        cfg.write_text("[snapshots]\nevery_events = 400\nkeep = 2\n[event_processing]\nbatch_timeout = \"2ms\"\n"
                       + config)
        if churn:
            payloads = _churning(seed, n_events)
        else:
            gen = SyntheticEvents(seed, max_graphs=30, nodes_per_graph=300)
            payloads = [gen.next() for _ in range(n_events)]
        done = threading.Event()
        publisher = threading.Thread(target=_publisher, args=(srv.url, payloads, done, 0.01), daemon=True)
        rng = random.Random(seed)
        args = ["serve", "--nats-url", srv.url, "--data-dir", str(tmp_path / "svc"), "--status-interval", "0",
                "--config", str(cfg)]
        logs = []
        _kill_rounds(args, kills, rng, publisher, done, logs=logs)
        proc = _spawn(args)
        url = _wait_ready(proc)
        try:
            _check(url, _reference(payloads), n_events)
        finally:
            logs.append(_stop(proc))
        assert proc.returncode == 0
        assert os.listdir(tmp_path / "svc" / "snapshots")
        # restart from the shutdown snapshot alone: still exact, nothing replayed twice
        proc = _spawn(args)
        url = _wait_ready(proc)
        try:
            _check(url, _reference(payloads), n_events)
            assert request(url, "query.graph.stats")["events_applied"] == 0
        finally:
            logs.append(_stop(proc))
    finally:
        srv.stop()
    return "".join(logs)


def test_snapshot_command_and_offline_replay(tmp_path, nats_server, service):
    # the running in-process service writes one on request
    out = subprocess.run([sys.executable, "-m", "cim_flow", "snapshot", "--nats-url", nats_server.url],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert os.path.exists(reply["path"]) and reply["version"] == service.engine.version
    # offline replay of the same stream reproduces the service's projection
    target = tmp_path / "replay.arrow"
    out = subprocess.run([sys.executable, "-m", "cim_flow", "replay", "--nats-url", nats_server.url,
                          "--to", str(target)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    from cim_flow import Engine

    eng = Engine.from_snapshot(target)
    live = service.engine
    # nothing is published meanwhile: both consumed the whole stream
    assert eng.version == live.version == reply["version"]
    assert eng.totals() == live.totals()
    assert eng.graph_summaries().to_pylist() == live.graph_summaries().to_pylist()


def test_offline_replay_needs_only_the_data_dir(tmp_path):
    """``replay`` with no --nats-url: while the service runs, from its embedded server
    (named in the data directory's lock file); once it has stopped, from a server started
    on the directory's own JetStream store.  Both snapshots equal the reference."""
    from cim_flow import Engine

    gen = SyntheticEvents(31, max_graphs=12, nodes_per_graph=60)
    payloads = [gen.next() for _ in range(600)]
    ref = _reference(payloads)
    data = tmp_path / "data"
    proc = _spawn(["serve", "--port", "0", "--data-dir", str(data), "--status-interval", "0"])
    try:
        url = _wait_ready(proc)
        done = threading.Event()
        _publisher(url, payloads, done, 0.0)
        _check(url, ref, len(payloads))

        def replay(target):
            env = {k: v for k, v in os.environ.items() if k != "CIM_FLOW_NATS_URL"}
            out = subprocess.run([sys.executable, "-m", "cim_flow", "replay", "--data-dir", str(data),
                                  "--to", str(target)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                                 env=env)
            assert out.returncode == 0, out.stderr
            eng = Engine.from_snapshot(target)
            assert eng.version == len(payloads)
            assert eng.totals() == ref.totals()
            assert {g: (s["node_count"], s["edge_count"]) for g, s in ref.summaries().items()} == {
                r["graph_id"]: (r["node_count"], r["edge_count"]) for r in eng.graph_summaries().to_pylist()}
            return out.stderr

        assert f"replaying from its server at {url}" in replay(tmp_path / "running.arrow")
    finally:
        _stop(proc)
    assert proc.returncode == 0
    assert "replaying from its server" not in replay(tmp_path / "stopped.arrow")


@pytest.mark.parametrize("reader", ["lean", "nats-py"])
def test_nats_server_restart_mid_ingest(tmp_path, reader):
    """Stop and restart an external nats-server (same port, same store) while the
    service ingests: no loss, no double counting; with the consumer's deliveries read on
    the lean connection, and on nats-py (as with TLS or a credentials file), whose
    reconnect moves them to a fresh inbox too."""
    store = str(tmp_path / "js")
    srv = NatsServer(port=0, store_dir=store).start()
    port = srv.port
    gen = SyntheticEvents(21, max_graphs=20, nodes_per_graph=200)
    payloads = [gen.next() for _ in range(2400)]
    extra = []
    if reader == "nats-py":
        (tmp_path / "c.toml").write_text("[jetstream]\nraw_consumer = false\n")
        extra = ["--config", str(tmp_path / "c.toml")]
    proc = _spawn(["serve", "--nats-url", srv.url, "--data-dir", str(tmp_path / "svc"), "--status-interval", "0",
                   *extra])
    url = _wait_ready(proc)
    try:
        done = threading.Event()
        _publisher(url, payloads[:1200], done, 0.0)
        srv.stop()  # mid-ingest: the service has not necessarily caught up
        time.sleep(1.0)
        srv = NatsServer(port=port, store_dir=store).start()
        time.sleep(1.0)
        done = threading.Event()
        _publisher(url, payloads[1200:], done, 0.0)
        _check(url, _reference(payloads), len(payloads))
        stats = request(url, "query.graph.stats")
        assert stats["connected"] is True and stats["consumer_resets"] >= 1
    finally:
        _stop(proc)
        srv.stop()
    assert proc.returncode == 0


def _children(pid):
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return kids


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task"), reason="needs Linux /proc")
def test_embedded_server_killed_mid_ingest_is_restarted(tmp_path):
    """kill -9 the service's own embedded nats-server while events stream in: the service
    restarts it (same port, same store), reconnects, resumes at version + 1, and the
    projection is exact over every event."""
    gen = SyntheticEvents(22, max_graphs=20, nodes_per_graph=200)
    payloads = [gen.next() for _ in range(2400)]
    proc = _spawn(["serve", "--port", "0", "--data-dir", str(tmp_path / "svc"), "--status-interval", "0"])
    url = _wait_ready(proc)
    try:
        servers = [k for k in _children(proc.pid)
                   if b"nats-server" in open(f"/proc/{k}/cmdline", "rb").read()]
        assert len(servers) == 1
        _publisher(url, payloads[:1200], threading.Event(), 0.0)
        os.kill(servers[0], signal.SIGKILL)
        wait_until_restarted(url)
        _publisher(url, payloads[1200:], threading.Event(), 0.0)
        _check(url, _reference(payloads), len(payloads))
        # every request answered: a subscription left behind by the reconnect in the
        # endpoints' queue group would take (and drop) about every other one
        for _ in range(8):
            for subject in ("query.graph.graphs", "query.graph.nodes_in_box"):
                assert "version" in request(url, subject, {"lo": [0, 0, 0], "hi": [1, 1, 1]}, timeout=5.0)
        stats = request(url, "query.graph.stats")
        assert stats["server_restarts"] == 1 and stats["stream_behind"] == 0
    finally:
        _stop(proc)
    assert proc.returncode == 0


def _pulling_service(tmp_path, seed):
    """An in-process service on a fresh nats-server, with 300 events applied."""
    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService

    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    svc = Service(Config.from_dict({}), nats_url=srv.url, data_dir=str(tmp_path / "svc"), status_interval=0)
    rs = RunningService(svc).start()
    gen = SyntheticEvents(seed, max_graphs=10, nodes_per_graph=100)
    payloads = [gen.next() for _ in range(600)]
    _publisher(srv.url, payloads[:300], threading.Event(), 0.0)
    assert request(srv.url, "query.graph.stats", {"min_version": 300, "timeout_ms": 30000}, timeout=40)["version"] == 300
    return srv, svc, rs, payloads


def test_stream_behind_the_projection_is_reported(tmp_path):
    """The stream is deleted and re-created under the same name while the snapshot holds
    version 300: new events would get sequences the projection counts as seen. The
    service says so at start, in its log and as stats.stream_behind."""
    import io

    from cim_flow._config import Config, JetStream
    from cim_flow.service import Service
    from conftest import RunningService

    srv, svc, rs, payloads = _pulling_service(tmp_path, 53)
    try:
        rs.stop()  # writes the shutdown snapshot at version 300

        async def drop_stream():
            nc = await nats.connect(srv.url)
            await nc.jetstream().delete_stream(JetStream.stream)
            await nc.close()

        asyncio.run(drop_stream())
        out = io.StringIO()
        svc = Service(Config.from_dict({}), nats_url=srv.url, data_dir=str(tmp_path / "svc"),
                      status_interval=0, out=out)
        rs = RunningService(svc).start()
        stats = request(srv.url, "query.graph.stats")
        assert stats["version"] == 300 and stats["stream_behind"] == 300
        assert "WARNING: stream CIM_GRAPH_EVENTS ends at seq 0 but the projection is at version 300" in out.getvalue()
    finally:
        rs.stop()
        srv.stop()


def test_spatial_index_is_rebuilt_ahead_of_queries_after_a_restart(tmp_path):
    """A service that kept a spatial index marks its snapshots so; restarted from one,
    it builds the index in the background after ready and takes it with the next batch,
    so the first query after a restart does not wait for a build. Answers stay exact."""
    import uuid

    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService
    from reference import brute_radius

    srv, svc, rs, payloads = _pulling_service(tmp_path, 54)
    try:
        assert "count" in request(srv.url, "query.graph.nodes_in_radius", {"center": [0, 0, 0], "radius": 5})
        rs.stop()  # shutdown snapshot at version 300, from an engine with an index
        svc = Service(Config.from_dict({}), nats_url=srv.url, data_dir=str(tmp_path / "svc"), status_interval=0)
        rs = RunningService(svc).start()
        assert svc.engine.version == 300 and svc.engine._spatial_hint
        svc.engine._spatial.wait()  # the background build (no query has asked for it)
        _publisher(srv.url, payloads[300:], threading.Event(), 0.0)
        assert request(srv.url, "query.graph.stats", {"min_version": 600, "timeout_ms": 30000}, timeout=40)["version"] == 600
        assert svc.engine._spatial.built and not svc.engine._spatial._job_dirty  # taken by a batch
        ref = _reference(payloads)
        nodes = ref.positioned_nodes()
        pts = [p for _, _, p in nodes]
        sizes = []
        for center, radius in ((pts[0], 20.0), (pts[len(pts) // 2], 50.0), (pts[-1], 8.0)):
            got = request(srv.url, "query.graph.nodes_in_radius", {"center": list(center), "radius": radius,
                                                                   "limit": 100000})
            want = {nodes[i][1] for i in brute_radius(pts, center, radius)}
            assert {uuid.UUID(n["node_id"]).bytes for n in got["nodes"]} == want
            sizes.append(len(want))
        assert min(sizes) >= 1 and max(sizes) >= 10  # real answers, not empty ones
        assert request(srv.url, "query.graph.stats")["index_builds_waited"] == 0
    finally:
        rs.stop()
        srv.stop()


def test_consumer_deleted_from_outside_is_recreated(tmp_path):
    """Someone deletes the durable consumer while the service waits for events: its open
    pull requests end, and new ones reach no consumer and are never answered. The
    watchdog sees the silence, re-creates the consumer at version + 1, and nothing is lost."""
    from cim_flow._config import JetStream

    srv, svc, rs, payloads = _pulling_service(tmp_path, 51)
    try:
        async def delete():
            nc = await nats.connect(srv.url)
            await nc.jetstream().delete_consumer(JetStream.stream, JetStream.durable)
            await nc.close()

        asyncio.run(delete())
        _publisher(srv.url, payloads[300:], threading.Event(), 0.0)
        _check(srv.url, _reference(payloads), 600)
        stats = request(srv.url, "query.graph.stats")
        assert stats["pull_stalls"] >= 1 and stats["connected"] is True
    finally:
        rs.stop()
        srv.stop()


def test_consumer_resets_keep_pulling(tmp_path):
    """After a server restart both connections come back and each asked for a consumer
    reset. Deleting the consumer ends its waiting pull requests with "409 Consumer
    Deleted"; the top-up pull that status triggered went out before the consumer was
    re-added, reached nothing and, counted as open, stopped all pulling (the CI failure
    of test_nats_server_restart_mid_ingest). Now one loss gives one reset, and a reset
    holds pulls back until the consumer exists: events flow on without the watchdog."""
    srv, svc, rs, payloads = _pulling_service(tmp_path, 52)
    try:
        add = svc.js.add_consumer

        async def slow_add(*a, **k):  # a busy JetStream API: the 409s land before the re-add
            await asyncio.sleep(0.3)
            return await add(*a, **k)

        async def resets():
            svc.js.add_consumer = slow_add
            svc._lost_n += 1  # one connection loss, then both connections report back
            await svc._resume()  # pull requests are waiting on the consumer it deletes
            await svc._resume()

        asyncio.run_coroutine_threadsafe(resets(), rs.loop).result(30)
        _publisher(srv.url, payloads[300:], threading.Event(), 0.0)
        _check(srv.url, _reference(payloads), 600)
        stats = request(srv.url, "query.graph.stats")
        assert stats["consumer_resets"] == 1 and stats["pull_stalls"] == 0
    finally:
        rs.stop()
        srv.stop()


def test_background_snapshots_are_exact_at_their_version(tmp_path):
    """Periodic snapshots are written by a forked child while ingest goes on; each one
    holds exactly the projection of the stream up to its version."""
    from cim_flow import Engine
    from cim_flow._config import Config
    from cim_flow._snapshot import list_snapshots
    from cim_flow.service import Service
    from conftest import RunningService
    from test_projection import check_same

    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    try:
        cfg = Config.from_dict({"snapshots": {"every_events": 300, "keep": 50},
                                "event_processing": {"batch_size": 100, "enable_adaptive_batching": False}})
        svc = Service(cfg, nats_url=srv.url, data_dir=str(tmp_path / "svc"), status_interval=0)
        rs = RunningService(svc).start()
        gen = SyntheticEvents(31, max_graphs=10, nodes_per_graph=200)
        payloads = [gen.next() for _ in range(2000)]
        _publisher(srv.url, payloads, threading.Event(), 0.005)
        stats = request(srv.url, "query.graph.stats", {"min_version": 2000, "timeout_ms": 30000}, timeout=40)
        assert stats["version"] == 2000
        rs.stop()
        snaps = list_snapshots(str(tmp_path / "svc" / "snapshots"))
        background = [v for v, _ in snaps if v < 2000]
        assert len(background) >= 3 and svc.counters["snapshots"] >= len(snaps)
        assert snaps[0][0] == 2000  # and the one at shutdown
        for version, path in snaps:
            check_same(Engine.from_snapshot(path), _reference(payloads[:version]))
    finally:
        srv.stop()


def test_snapshot_failures_never_stop_ingest(tmp_path, monkeypatch):
    """No child can be forked (ENOMEM): snapshots are written in-line instead. Writing
    fails (a full disk): logged, and ingest and queries go on; later snapshots, once the
    disk is back, are exact."""
    import errno
    import io

    import cim_flow._snapshot as snap
    import cim_flow._service_snapshots as snapshots_mod  # where the snapshot writer lives
    import cim_flow.service as service
    from cim_flow import Engine
    from cim_flow._config import Config
    from cim_flow._snapshot import list_snapshots
    from conftest import RunningService
    from test_projection import check_same

    def no_fork():
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(snapshots_mod.os, "fork", no_fork)
    real, broken = snap.write_state, {"on": False}

    def write_state(st, path, *args, **kwargs):
        if broken["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(st, path, *args, **kwargs)

    monkeypatch.setattr(snap, "write_state", write_state)
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    out = io.StringIO()
    try:
        cfg = Config.from_dict({"snapshots": {"every_events": 100, "keep": 50},
                                "event_processing": {"batch_size": 50, "enable_adaptive_batching": False}})
        svc = service.Service(cfg, nats_url=srv.url, data_dir=str(tmp_path / "svc"), status_interval=0, out=out)
        rs = RunningService(svc).start()
        gen = SyntheticEvents(61, max_graphs=5, nodes_per_graph=100)
        payloads = [gen.next() for _ in range(900)]
        _publisher(srv.url, payloads[:300], threading.Event(), 0.01)
        assert request(srv.url, "query.graph.stats", {"min_version": 300, "timeout_ms": 30000}, timeout=40)["version"] == 300
        broken["on"] = True
        _publisher(srv.url, payloads[300:600], threading.Event(), 0.01)
        assert request(srv.url, "query.graph.stats", {"min_version": 600, "timeout_ms": 30000}, timeout=40)["version"] == 600
        broken["on"] = False
        _publisher(srv.url, payloads[600:], threading.Event(), 0.01)
        _check(srv.url, _reference(payloads), 900)
        rs.stop()
        log = out.getvalue()
        assert "cannot fork a snapshot writer" in log and "No space left on device" in log
        versions = [v for v, _ in list_snapshots(str(tmp_path / "svc" / "snapshots"))]
        assert any(v <= 300 for v in versions) and any(600 < v for v in versions)
        for version, path in list_snapshots(str(tmp_path / "svc" / "snapshots")):
            check_same(Engine.from_snapshot(path), _reference(payloads[:version]))
    finally:
        srv.stop()


def test_stuck_background_snapshot_is_stopped_at_shutdown(tmp_path, monkeypatch):
    """A background writer that never finishes does not hang shutdown: after the wait
    it is killed and the shutdown snapshot is written in-line, exact as ever."""
    import cim_flow._snapshot as snap
    import cim_flow._service_snapshots as snapshots_mod  # where the snapshot writer lives
    import cim_flow.service as service
    from cim_flow import Engine
    from cim_flow._config import Config
    from cim_flow._snapshot import list_snapshots
    from conftest import RunningService
    from test_projection import check_same

    parent, real = os.getpid(), snap.write_state

    def write_state(st, path, *args, **kwargs):
        if os.getpid() != parent:  # the forked writer hangs
            time.sleep(3600)
        return real(st, path, *args, **kwargs)

    monkeypatch.setattr(snap, "write_state", write_state)
    monkeypatch.setattr(snapshots_mod, "_SNAPSHOT_WAIT_AT_STOP", 1.0)
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    try:
        cfg = Config.from_dict({"snapshots": {"every_events": 100}})
        svc = service.Service(cfg, nats_url=srv.url, data_dir=str(tmp_path / "svc"), status_interval=0)
        rs = RunningService(svc).start()
        gen = SyntheticEvents(41, max_graphs=5, nodes_per_graph=100)
        payloads = [gen.next() for _ in range(500)]
        _publisher(srv.url, payloads, threading.Event(), 0.0)
        stats = request(srv.url, "query.graph.stats", {"min_version": 500, "timeout_ms": 30000}, timeout=40)
        assert stats["version"] == 500 and stats["snapshot_in_progress"] is True
        t0 = time.monotonic()
        rs.stop()
        assert not rs.thread.is_alive() and time.monotonic() - t0 < 20
        snaps = list_snapshots(str(tmp_path / "svc" / "snapshots"))
        assert [v for v, _ in snaps] == [500]  # the hung one never renamed a file
        check_same(Engine.from_snapshot(snaps[0][1]), _reference(payloads))
    finally:
        srv.stop()


def test_acks_reach_the_server_and_the_last_one_before_stop(tmp_path):
    """A batch's ack leaves on the lean connection, queued until the event loop's turn
    ends: the consumer's ack floor, read from the server, follows the version, and the
    last batch's ack has been processed when stop returns.  Broken acks would not change
    the projection, only bring every event back after ack_wait, so this reads the
    server's own count (with the ack left out, the floor stays 0: checked).  stop also
    flushes the connection; here the loop's own turns had sent it already, so that flush
    is a safeguard this test does not isolate."""
    from cim_flow._config import JetStream

    async def consumer(url):
        nc = await nats.connect(url)
        try:
            return await nc.jetstream().consumer_info(JetStream.stream, JetStream.durable)
        finally:
            await nc.close()

    srv, svc, rs, payloads = _pulling_service(tmp_path, 55)
    try:
        deadline = time.time() + 10
        while (info := asyncio.run(consumer(srv.url))).ack_floor.stream_seq < 300 and time.time() < deadline:
            time.sleep(0.05)
        assert info.ack_floor.stream_seq == 300 and info.num_ack_pending == 0, info
        _publisher(srv.url, payloads[300:], threading.Event(), 0.0)
        assert request(srv.url, "query.graph.stats", {"min_version": 600, "timeout_ms": 30000},
                       timeout=40)["version"] == 600
        rs.stop()
        info = asyncio.run(consumer(srv.url))
        assert info.ack_floor.stream_seq == 600 and info.num_ack_pending == 0, info
    finally:
        rs.stop()
        srv.stop()


def _fold(state: dict, u: dict) -> None:
    """A results reader's view: a full update replaces it, others add, change, delete."""
    if u.get("full"):
        state.clear()
    for g in u["graphs"]:
        state[uuid.UUID(g["graph_id"]).bytes] = (g["node_count"], g["edge_count"], g["name"])
    for d in u["deleted"]:
        state.pop(uuid.UUID(d).bytes, None)


def _read_results(url, durable, state, until=None, count=None):
    """Read updates with the durable consumer ``durable`` into ``state``: ``count`` of
    them, or until the last part of version ``until``; returns the versions read."""
    from cim_flow import Client

    async def go():
        seen = []
        async with await Client.connect(url) as client:
            updates = await client.updates(durable=durable)
            try:
                while True:
                    u = await updates.next(timeout=60)
                    _fold(state, u)
                    seen.append(u["version"])
                    if count is not None and len(seen) >= count:
                        return seen
                    if until is not None and u["version"] >= until and u.get("part", 0) + 1 >= u.get("parts", 1):
                        return seen
            finally:
                await updates.close()

    return asyncio.run(go())


@contextlib.contextmanager
def _results_service_on_external_server(tmp_path, seed, n):
    """A nats-server of its own (store ``tmp_path/js``), ``n`` synthetic payloads and a
    service on that server keeping its updates in a results stream, ready:
    ``(box, payloads, url)`` with the server in ``box["srv"]`` (a test that restarts it
    puts the new one there); both stopped at the end, the service cleanly."""
    box = {"srv": NatsServer(port=0, store_dir=str(tmp_path / "js")).start()}
    (tmp_path / "c.toml").write_text("[jetstream]\nresults_stream = \"CIM_GRAPH_RESULTS\"\n")
    gen = SyntheticEvents(seed, max_graphs=20, nodes_per_graph=200)
    payloads = [gen.next() for _ in range(n)]
    proc = _spawn(["serve", "--nats-url", box["srv"].url, "--data-dir", str(tmp_path / "svc"),
                   "--status-interval", "0", "--config", str(tmp_path / "c.toml")])
    try:
        yield box, payloads, _wait_ready(proc)
    finally:
        _stop(proc)
        if box.get("srv") is not None:  # (a failed restart leaves none)
            box["srv"].stop()
    assert proc.returncode == 0


def _publish_rest_and_fold(url, payloads, start, durable):
    """Publish ``payloads[start:]``; the projection then equals the reference over all of
    them, and so does what a durable reader ``durable`` folds from the results stream."""
    _publisher(url, payloads[start:], threading.Event(), 0.0)
    ref = _reference(payloads)
    _check(url, ref, len(payloads))
    state = {}
    _read_results(url, durable, state, until=len(payloads))
    assert state == {g: (s["node_count"], s["edge_count"], s["name"]) for g, s in ref.summaries().items()}


async def _stored_versions(url, stream):
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        return [json.loads((await js.get_msg(stream, seq)).data)["version"]
                for seq in range(state.first_seq, state.last_seq + 1)]
    finally:
        await nc.close()


def test_results_stream_adds_up_to_the_projection_across_kills(tmp_path):
    """With [jetstream] results_stream, the updates a durable reader gets add up to the
    projection, however often the service is killed (-9) meanwhile: per-batch updates of a
    replay are held back, and a full update goes out when the stream's updates no longer
    add up to the state; a reader that stops and comes back misses nothing, and one that
    starts at the end reads the same state from the stream's start."""
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    try:
        cfg = tmp_path / "c.toml"
        cfg.write_text("[snapshots]\nevery_events = 400\nkeep = 2\n[event_processing]\nbatch_timeout = \"2ms\"\n"
                       "[jetstream]\nresults_stream = \"CIM_GRAPH_RESULTS\"\n")
        n_events = 2000
        gen = SyntheticEvents(31, max_graphs=25, nodes_per_graph=300)
        payloads = [gen.next() for _ in range(n_events)]
        args = ["serve", "--nats-url", srv.url, "--data-dir", str(tmp_path / "svc"), "--status-interval", "0",
                "--config", str(cfg)]
        early = {}
        rng = random.Random(31)
        done = threading.Event()
        publisher = threading.Thread(target=_publisher, args=(srv.url, payloads, done, 0.01), daemon=True)
        # a reader takes 5 updates from the first service, then stops for a while
        _kill_rounds(args, 3, rng, publisher, done, first=lambda url: _read_results(url, "early", early, count=5))
        proc = _spawn(args)
        url = _wait_ready(proc)
        try:
            ref = _reference(payloads)
            _check(url, ref, n_events)
            want = {g: (s["node_count"], s["edge_count"], s["name"]) for g, s in ref.summaries().items()}
            versions = _read_results(url, "early", early, until=n_events)  # goes on where it stopped
            assert early == want
            assert versions == sorted(versions)  # nothing older than what it had
            late = {}
            _read_results(url, "late", late, until=n_events)  # from the stream's start
            assert late == want
            stats = request(url, "query.graph.stats")
            assert stats["results_stream"] == "CIM_GRAPH_RESULTS"
            # as stored: versions never go back (a replay's per-batch updates are held back)
            stored = asyncio.run(_stored_versions(url, "CIM_GRAPH_RESULTS"))
            assert stored == sorted(stored) and stored[-1] == n_events
        finally:
            _stop(proc)
        assert proc.returncode == 0
    finally:
        srv.stop()


def test_results_stream_misses_no_update_across_a_server_restart(tmp_path):
    """The nats-server restarts (same store) while the service ingests: the results stream
    still adds up to the projection (updates published while the server was away wait in
    nats-py's buffer; one lost with a connection would be made good by a full update, as
    the service checks the stream once it is back)."""
    with _results_service_on_external_server(tmp_path, 32, 1600) as (box, payloads, url):
        _publisher(url, payloads[:800], threading.Event(), 0.0)
        old = box.pop("srv")
        old.stop()
        time.sleep(1.0)
        box["srv"] = NatsServer(port=old.port, store_dir=old.store_dir).start()
        time.sleep(1.0)  # the service's connections come back (0.5 s between attempts)
        _publish_rest_and_fold(url, payloads, 800, "reader")


def test_restart_replay_sends_one_full_update_not_repeats(tmp_path):
    """Without a results stream: kill -9 the service, start it again; its replay of the
    stream tail publishes no per-batch updates (they would repeat, older and under the
    same Nats-Msg-Ids, what went out before the kill), but one full update at the version
    it reached, listing every live graph as the reference has it; then per-batch updates
    go on as before."""
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    gen = SyntheticEvents(34, max_graphs=15, nodes_per_graph=100)
    payloads = [gen.next() for _ in range(900)]
    seen = []
    stop = threading.Event()

    def listen():
        async def go():
            nc = await nats.connect(srv.url)
            sub = await nc.subscribe("projection.graph.summary.updated")
            while not stop.is_set():
                try:
                    m = await sub.next_msg(timeout=0.2)
                except nats.errors.TimeoutError:
                    continue
                seen.append(((m.headers or {}).get("Nats-Msg-Id"), json.loads(m.data)))
            await nc.close()

        asyncio.run(go())

    t = threading.Thread(target=listen)
    t.start()
    args = ["serve", "--nats-url", srv.url, "--data-dir", str(tmp_path / "svc"), "--status-interval", "0"]
    try:
        proc = _spawn(args)
        url = _wait_ready(proc)
        _publisher(url, payloads[:600], threading.Event(), 0.0)
        _check(url, _reference(payloads[:600]), 600)
        time.sleep(0.5)
        proc.kill()
        proc.communicate(timeout=60)
        before = len(seen)
        assert before and all(not u.get("full") for _, u in seen)
        proc = _spawn(args)
        _wait_ready(proc)
        _check(url, _reference(payloads[:600]), 600)
        time.sleep(0.5)
        after = seen[before:]
        assert len(after) == 1 and after[0][1].get("full") is True and after[0][1]["version"] == 600, [(i, u.get("full")) for i, u in after]
        assert after[0][0] == "summary-600-full"
        ref = _reference(payloads[:600])
        assert {uuid.UUID(g["graph_id"]).bytes: (g["node_count"], g["edge_count"], g["name"])
                for g in after[0][1]["graphs"]} == \
            {g: (s["node_count"], s["edge_count"], s["name"]) for g, s in ref.summaries().items()}
        _publisher(url, payloads[600:], threading.Event(), 0.0)
        _check(url, _reference(payloads), len(payloads))
        time.sleep(0.5)
        more = seen[before + 1:]
        assert more and all(not u.get("full") and u["version"] > 600 for _, u in more)
        _stop(proc)
        assert proc.returncode == 0
    finally:
        stop.set()
        t.join(10)
        if proc.poll() is None:
            proc.kill()
        srv.stop()


def test_results_stream_lost_with_the_server_is_made_again_with_one_full_update(tmp_path):
    """The server comes back without the results stream (its files gone: a new disk, an
    operator's mistake) while the service stays up: after the reconnect the service makes
    the stream again and, its last update being older than the projection, sends one full
    update first; a reader of the new stream alone then adds up to the reference."""
    import shutil

    with _results_service_on_external_server(tmp_path, 33, 1200) as (box, payloads, url):
        _publisher(url, payloads[:600], threading.Event(), 0.0)
        _check(url, _reference(payloads[:600]), 600)
        old = box.pop("srv")
        old.stop()
        shutil.rmtree(tmp_path / "js" / "jetstream" / "$G" / "streams" / "CIM_GRAPH_RESULTS")
        box["srv"] = NatsServer(port=old.port, store_dir=old.store_dir).start()
        deadline = time.time() + 60
        versions = []
        while time.time() < deadline and not versions:
            try:
                versions = run_async(_stored_versions(url, "CIM_GRAPH_RESULTS"))
            except Exception:  # not made again yet
                time.sleep(0.2)
        assert versions and versions[0] == 600, versions

        async def first():
            nc = await nats.connect(url)
            try:
                js = nc.jetstream()
                return json.loads((await js.get_msg("CIM_GRAPH_RESULTS", 1)).data)
            finally:
                await nc.close()

        assert run_async(first()).get("full") is True
        _publish_rest_and_fold(url, payloads, 600, "after-loss")


def test_results_stream_made_later_gets_one_full_update_in_parts(tmp_path):
    """A results stream configured on a service whose state it never saw: at start the
    service sends one full update of every live graph (in parts, against a server with a
    small max_payload: only the first part says "full", so a reader that drops what it
    holds there keeps every part), then per-batch updates again."""
    from cim_flow import Client
    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService

    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 8192\n")
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js"), args=("-c", str(conf))).start()
    t0 = 1_714_564_800_000
    graphs = [(str(uuid.uuid4()), f"g{i}") for i in range(80)]
    events = [("event.graph.graph", str(uuid.uuid4()),
               json.dumps({"type": "GraphCreated", "graph_id": g, "name": name, "occurred_at": t0 + i}).encode())
              for i, (g, name) in enumerate(graphs)]
    late_node = ("event.graph.node", str(uuid.uuid4()),
                 json.dumps({"type": "NodeAdded", "graph_id": graphs[0][0], "node_id": str(uuid.uuid4()),
                             "position": [1, 2, 3], "occurred_at": t0 + 99}).encode())
    try:
        def service(results: str):
            cfg = Config.from_dict({"event_processing": {"batch_timeout": "2ms"},
                                    "jetstream": {"results_stream": results}})
            return RunningService(Service(cfg, nats_url=srv.url, status_interval=0,
                                          data_dir=str(tmp_path / "svc"))).start()

        rs = service("")  # no results stream yet
        try:
            _publisher(srv.url, events, threading.Event(), 0.0)
            assert request(srv.url, "query.graph.stats", {"min_version": 80, "timeout_ms": 30000})["version"] == 80
        finally:
            rs.stop()
        rs = service("CIM_GRAPH_RESULTS")  # from the shutdown snapshot: nothing to replay
        try:
            assert rs.svc.counters["full_updates"] == 1
            _publisher(srv.url, [late_node], threading.Event(), 0.0)

            async def read():
                got = []
                async with await Client.connect(srv.url) as client:
                    updates = await client.updates(durable="reader")
                    try:
                        while not got or got[-1]["version"] < 81:
                            got.append(await updates.next(timeout=30))
                    finally:
                        await updates.close()
                return got

            got = asyncio.run(read())
        finally:
            rs.stop()
        full = [u for u in got if u["version"] == 80]
        assert len(full) >= 2 and [u.get("part") for u in full] == list(range(len(full)))
        assert full[0]["full"] is True and not any(u.get("full") for u in full[1:])
        state = {}
        for u in got:
            _fold(state, u)
        want = {uuid.UUID(g).bytes: (0, 0, name) for g, name in graphs}
        want[uuid.UUID(graphs[0][0]).bytes] = (1, 0, graphs[0][1])
        assert state == want
    finally:
        srv.stop()


def test_results_stream_that_cannot_be_made_leaves_updates_on_core_nats(tmp_path):
    """Another stream already takes projection.graph.>: the service says so and runs on,
    its updates on core NATS as without a results stream."""
    import io

    from cim_flow._config import Config
    from cim_flow.service import Service
    from conftest import RunningService
    from nats.js.api import StreamConfig

    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    try:
        async def other_stream():
            nc = await nats.connect(srv.url)
            await nc.jetstream().add_stream(StreamConfig(name="THEIRS", subjects=["projection.>"]))
            await nc.close()

        asyncio.run(other_stream())
        out = io.StringIO()
        cfg = Config.from_dict({"jetstream": {"results_stream": "CIM_GRAPH_RESULTS"}})
        rs = RunningService(Service(cfg, nats_url=srv.url, status_interval=0, data_dir=str(tmp_path / "svc"),
                                    out=out)).start()
        try:
            stats = request(srv.url, "query.graph.stats")
            assert stats["results_stream"] is None and stats["connected"] is True
            assert "results stream CIM_GRAPH_RESULTS not created" in out.getvalue()
        finally:
            rs.stop()
    finally:
        srv.stop()
