"""The embedded nats-server wrapper: its log is drained, it can be restarted in place."""
import socket

import nats
from cim_flow._natsserver import NatsServer
from natsutil import run


def _garbage_client(port):
    """A client that speaks nonsense: the server logs a parser error and drops it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.recv(4096)  # INFO
        s.sendall(b"GARBAGE\r\n")
        while s.recv(4096):  # until the server closes (after it has logged the error)
            pass


def test_server_log_is_drained_so_the_server_never_blocks_on_it():
    """~900 protocol errors make ~120 KB of log, twice a pipe's 64 KB: unread, the
    server would block writing its log and stop closing connections."""
    srv = NatsServer(port=0, jetstream=False).start()
    try:
        for _ in range(900):
            _garbage_client(srv.port)
        assert sum(1 for line in srv.log if "parser ERROR" in line) >= 150  # the last 200 lines kept

        async def roundtrip():
            nc = await nats.connect(srv.url)
            sub = await nc.subscribe("ping")
            await nc.publish("ping", b"x")
            msg = await sub.next_msg(timeout=5)
            await nc.close()
            return msg.data

        assert run(roundtrip()) == b"x"
    finally:
        srv.stop()


def test_restart_keeps_port_and_store(tmp_path):
    async def publish(url):
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="S", subjects=["s.>"])
        await js.publish("s.a", b"1")
        await nc.close()

    async def last_seq(url):
        nc = await nats.connect(url)
        info = await nc.jetstream().stream_info("S")
        await nc.close()
        return info.state.last_seq

    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    try:
        port = srv.port
        run(publish(srv.url))
        srv.proc.kill()
        srv.proc.wait()
        assert not srv.alive and srv.returncode == -9
        srv.restart()
        assert srv.alive and srv.port == port
        assert run(last_seq(srv.url)) == 1
    finally:
        srv.stop()
