"""`serve --nats-url` against servers that require a user/password, a token, TLS or a
credentials file (JWT + nkey seed, a server in operator mode):
the options reach every connection the service opens (ingest, queries, the consumer's
own connection), and ingest over them is exact."""
import asyncio
import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import uuid

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
        # the one-request commands take the same credentials flags (and environment)
        e = dict(os.environ, **(env or {}))
        r = subprocess.run([sys.executable, "-m", "cim_flow", "query", "stats", "--nats-url", server_url, *flags],
                           capture_output=True, text=True, timeout=60, env=e)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["version"] == stats["version"]
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
    proc = _spawn(["serve", "--nats-url", srv.url, "--data-dir", str(tmp_path / "svc"), "--status-interval", "0",
                   "--tls-ca", str(certs / "ca.pem")])
    try:
        _wait_ready(proc)
        _publish_and_check(srv.url, _events(73), tls=ctx)
    finally:
        _stop(proc)
        srv.stop()
    assert proc.returncode == 0


def _publish_and_check(url, payloads, **connect_options):
    """Publish over a connection made with ``connect_options`` (TLS, credentials: what the
    plain helpers cannot), then check totals and every graph's counts against the reference."""
    import msgspec

    async def go():
        nc = await nats.connect(url, **connect_options)
        js = nc.jetstream()
        for subject, eid, data in payloads:
            await js.publish(subject, data, headers={"Nats-Msg-Id": eid})
        msg = await nc.request("query.graph.stats", b'{"min_version": %d, "timeout_ms": 30000}' % len(payloads),
                               timeout=40)
        graphs = await nc.request("query.graph.graphs", b'{"limit": 1000}', timeout=10)
        await nc.close()
        return msg.data, graphs.data

    stats, graphs = (msgspec.json.decode(x) for x in asyncio.run(go()))
    ref = _reference(payloads)
    assert stats["version"] == len(payloads) and stats["connected"] is True
    assert (stats["graphs"], stats["nodes"], stats["edges"]) == tuple(ref.totals().values())
    assert {uuid.UUID(g["graph_id"]).bytes: (g["node_count"], g["edge_count"]) for g in graphs["graphs"]} == \
        {g: (s["node_count"], s["edge_count"]) for g, s in ref.summaries().items()}


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _jwt(claims: dict, signer) -> str:
    """A NATS JWT (v2): ``claims`` signed by the nkey ``signer``, who is its issuer."""
    claims = {"iat": int(time.time()), "iss": signer.public_key.decode(), **claims}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
                                     ).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signer.sign(f'{head}.{body}'.encode()))}"


def _operator_setup(d):
    """An operator, an account with JetStream and a user of it: the server's config
    (operator mode, accounts preloaded) and the user's credentials file."""
    import nkeys  # a dependency (nats-py[nkeys]): nats-py cannot read a credentials file without it

    def key(prefix):
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return nkeys.from_seed(seed), seed

    op, _ = key(nkeys.PREFIX_BYTE_OPERATOR)
    acct, _ = key(nkeys.PREFIX_BYTE_ACCOUNT)
    sys_acct, _ = key(nkeys.PREFIX_BYTE_ACCOUNT)
    user, user_seed = key(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
                 "conn": -1, "leaf": -1}
    op_jwt = _jwt({"sub": op.public_key.decode(), "name": "cim_op",
                   "nats": {"type": "operator", "version": 2}}, op)
    acct_jwt = _jwt({"sub": acct.public_key.decode(), "name": "CIM", "nats": {
        "type": "account", "version": 2,
        "limits": {**unlimited, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}}}, op)
    sys_jwt = _jwt({"sub": sys_acct.public_key.decode(), "name": "SYS",
                    "nats": {"type": "account", "version": 2, "limits": unlimited}}, op)
    user_jwt = _jwt({"sub": user.public_key.decode(), "name": "cim_user", "nats": {
        "type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}}, acct)
    conf = d / "operator.conf"
    conf.write_text(f"""operator: {op_jwt}
system_account: {sys_acct.public_key.decode()}
resolver: MEMORY
resolver_preload: {{
  {acct.public_key.decode()}: {acct_jwt}
  {sys_acct.public_key.decode()}: {sys_jwt}
}}
""")
    creds = d / "user.creds"
    creds.write_text(f"""-----BEGIN NATS USER JWT-----
{user_jwt}
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
{user_seed.decode()}
------END USER NKEY SEED------
""")
    return conf, creds


def test_credentials_file(tmp_path):
    """--creds: a user JWT and its nkey seed, against a server that knows only the
    operator's accounts. Nothing connects without them (checked), and with them ingest
    and queries are exact."""
    conf, creds = _operator_setup(tmp_path)
    srv = NatsServer(port=0, store_dir=str(tmp_path / "js"), args=("-c", str(conf))).start()

    async def refused():
        with pytest.raises(Exception):
            nc = await nats.connect(srv.url, allow_reconnect=False, connect_timeout=5)
            await nc.close()

    asyncio.run(refused())
    proc = _spawn(["serve", "--nats-url", srv.url, "--data-dir", str(tmp_path / "svc"), "--status-interval", "0"],
                  env={"CIM_FLOW_CREDS": str(creds)})
    try:
        _wait_ready(proc)
        _publish_and_check(srv.url, _events(74), user_credentials=str(creds))
    finally:
        _stop(proc)
        srv.stop()
    assert proc.returncode == 0
