"""`serve --nats-url` against servers that require a user/password, a token or TLS:
the options reach every connection the service opens (ingest, queries, the consumer's
own connection), and ingest over them is exact."""
import asyncio
import shutil
import ssl
import subprocess
import threading

import pytest

import nats
from cim_flow._demo import SyntheticEvents
from cim_flow._natsserver import NatsServer
from natsutil import request
from test_cli import _spawn, _wait_ready
from test_durability import _check, _publisher, _reference, _stop

N_EVENTS = 300


def _events(seed):
    gen = SyntheticEvents(seed, max_graphs=5, nodes_per_graph=100)
    return [gen.next() for _ in range(N_EVENTS)]


def _serve_and_check(tmp_path, server_url, client_url, flags, seed, env=None):
    payloads = _events(seed)
    proc = _spawn(["serve", "--nats-url", server_url, "--data-dir", str(tmp_path / "svc"),
                   "--status-interval", "0", *flags], env=env)
    _wait_ready(proc)
    try:
        _publisher(client_url, payloads, threading.Event(), 0.0)
        _check(client_url, _reference(payloads), N_EVENTS)
        stats = request(client_url, "query.graph.stats")
        assert stats["connected"] is True and stats["events_dead_lettered"] == 0
    finally:
        _stop(proc)
    assert proc.returncode == 0


def test_user_and_password(tmp_path):
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js"), args=("--user", "cim", "--pass", "s3cret")).start()
    try:
        _serve_and_check(tmp_path, srv.url, f"nats://cim:s3cret@127.0.0.1:{srv.port}",
                         ["--user", "cim", "--password", "s3cret"], 71)
    finally:
        srv.stop()


def test_token_from_the_environment(tmp_path):
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js"), args=("--auth", "t0ken")).start()
    try:
        _serve_and_check(tmp_path, srv.url, f"nats://t0ken@127.0.0.1:{srv.port}", [], 72,
                         env={"CIM_FLOW_TOKEN": "t0ken"})
    finally:
        srv.stop()


def test_wrong_password_is_reported(tmp_path):
    """Retrying cannot fix credentials: the start fails at once, saying why."""
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js"), args=("--user", "cim", "--pass", "s3cret")).start()
    try:
        proc = _spawn(["serve", "--nats-url", srv.url, "--data-dir", str(tmp_path / "svc"),
                       "--user", "cim", "--password", "wrong"])
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        assert proc.returncode == 1 and "cim_flow ready" not in out
        assert "rejected our credentials" in err and "authorization violation" in err.lower()
        assert "Traceback" not in err
    finally:
        srv.stop()


@pytest.fixture
def certs(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    d = tmp_path / "certs"
    d.mkdir()

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=cim_flow test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return d


def test_tls(tmp_path, certs):
    """TLS: the consumer's own lean connection speaks no TLS, so the service consumes
    through nats-py instead; ingest and queries are exact all the same."""
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js"), scheme="tls",
                     args=("--tls", "--tlscert", str(certs / "server.pem"), "--tlskey", str(certs / "server.key"))).start()
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    payloads = _events(73)
    proc = _spawn(["serve", "--nats-url", srv.url, "--data-dir", str(tmp_path / "svc"), "--status-interval", "0",
                   "--tls-ca", str(certs / "ca.pem")])
    try:
        _wait_ready(proc)

        async def go():
            nc = await nats.connect(srv.url, tls=ctx)
            js = nc.jetstream()
            for subject, eid, data in payloads:
                await js.publish(subject, data, headers={"Nats-Msg-Id": eid})
            msg = await nc.request("query.graph.stats", b'{"min_version": %d, "timeout_ms": 30000}' % N_EVENTS,
                                   timeout=40)
            graphs = await nc.request("query.graph.graphs", b'{"limit": 1000}', timeout=10)
            await nc.close()
            return msg.data, graphs.data

        import msgspec

        stats, graphs = (msgspec.json.decode(x) for x in asyncio.run(go()))
        ref = _reference(payloads)
        assert stats["version"] == N_EVENTS
        assert (stats["graphs"], stats["nodes"], stats["edges"]) == tuple(ref.totals().values())
        import uuid

        assert {uuid.UUID(g["graph_id"]).bytes: (g["node_count"], g["edge_count"]) for g in graphs["graphs"]} == \
            {g: (s["node_count"], s["edge_count"]) for g, s in ref.summaries().items()}
    finally:
        _stop(proc)
        srv.stop()
    assert proc.returncode == 0
