"""Small synchronous helpers for tests that talk to a real NATS server."""
import asyncio

import msgspec

import nats

_dec = msgspec.json.Decoder()


def run(coro):
    return asyncio.run(coro)


async def _request(url, subject, body, headers=None, timeout=10.0):
    nc = await nats.connect(url)
    try:
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        return await nc.request(subject, data, timeout=timeout, headers=headers)
    finally:
        await nc.close()


def request(url, subject, body=b"{}", headers=None, timeout=10.0):
    """Request/reply; returns the decoded JSON reply."""
    msg = run(_request(url, subject, body, headers, timeout))
    return _dec.decode(msg.data)


def request_raw(url, subject, body=b"{}", headers=None, timeout=10.0):
    return run(_request(url, subject, body, headers, timeout))


async def _js_publish(url, items):
    nc = await nats.connect(url)
    js = nc.jetstream()
    last = 0
    try:
        for subject, data, headers in items:
            ack = await js.publish(subject, data, headers=headers)
            last = ack.seq
    finally:
        await nc.close()
    return last


def js_publish(url, items):
    """Publish (subject, data, headers) through JetStream; returns the last stream sequence."""
    return run(_js_publish(url, items))


def wait_until_restarted(url, timeout=60.0):
    """Poll ``query.graph.stats`` until the service says its embedded server was restarted
    and it is connected again; returns those stats."""
    import time

    deadline = time.time() + timeout
    while True:
        try:
            stats = request(url, "query.graph.stats", timeout=1.0)
            if stats["server_restarts"] >= 1 and stats["connected"]:
                return stats
        except Exception:  # refused, no responders, a timeout: not back yet
            pass
        assert time.time() < deadline, "the service did not bring its nats-server back"
        time.sleep(0.1)
