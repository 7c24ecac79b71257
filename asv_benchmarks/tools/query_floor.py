"""Request/reply latency on this machine without the service's work: the floor under the
service's query figures.

    python asv_benchmarks/tools/query_floor.py --nats-url URL [--rate 5000] [--duration 5]
        [--subject query.graph.nodes_in_radius] [--echo]

Radius requests go out at ``--rate`` from the load generator's paced sender thread
(``cim_flow._loadgen._QueryPacer``: each at its scheduled time) and replies come back on a
lean connection, as in ``python -m cim_flow loadgen --query-rate``.  With ``--echo`` this
process also answers them itself at once, on a subject nobody else serves
(``cim_flow.floor.echo`` unless ``--subject`` says otherwise): the latency left is NATS,
the event loops and the two cores.  Without it the requests go to a running service.
Prints p50/p99 from the scheduled time and from the send.
"""
import argparse
import asyncio
import pathlib
import sys
import time

import msgspec
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from cim_flow import _wire  # noqa: E402
from cim_flow._loadgen import _QueryPacer  # noqa: E402


async def run(url: str, subject: str, rate: float, duration: float, echo: bool) -> None:
    if echo:
        responder = None

        def answer(block):
            for i in range(len(block)):
                responder.publish_soon(block.reply(i), b'{"results":[],"version":0}')

        responder = await _wire.RawConnection(answer, name="query-floor-echo").connect(url)
        responder.subscribe(subject, sid=1)
        await responder.flush()
    sched, lat, rtt = {}, [], []

    def on_reply(block):
        now = time.perf_counter()
        for i in range(len(block)):
            t = sched.pop(block.subject(i).rsplit(".", 1)[-1], None)
            if t is not None:
                lat.append(now - t[0])
                rtt.append(now - t[1])

    inbox = "_INBOX.queryfloor"
    conn = await _wire.RawConnection(on_reply, name="query-floor").connect(url)
    conn.subscribe(inbox + ".*", sid=1)
    await conn.flush()
    rng = np.random.default_rng(1)
    bodies = [msgspec.json.encode({"center": c.tolist(), "radius": 25.0, "limit": 100})
              for c in rng.uniform(0, 1000, (1024, 3))]
    n = int(rate * duration)
    pacer = _QueryPacer(url, bodies, inbox, sched, n, rate, time.perf_counter() + 0.05, subject)
    pacer.start()
    while pacer.is_alive():
        await asyncio.sleep(0.01)
    deadline = time.perf_counter() + 5.0
    while sched and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    a, b = np.array(lat) * 1e3, np.array(rtt) * 1e3
    if not a.size:
        sys.exit(f"no replies on {subject} (is anything serving it?)")
    print(f"{subject}{' (echo)' if echo else ''}: {a.size:,} of {n:,} answered; from the schedule "
          f"p50 {np.percentile(a, 50):.2f} ms p99 {np.percentile(a, 99):.2f} ms; from the send "
          f"p50 {np.percentile(b, 50):.2f} ms p99 {np.percentile(b, 99):.2f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nats-url", required=True)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--subject", default=None)
    ap.add_argument("--echo", action="store_true", help="answer the requests here, at once")
    a = ap.parse_args()
    subject = a.subject or ("cim_flow.floor.echo" if a.echo else "query.graph.nodes_in_radius")
    try:
        import uvloop
        uvloop.run(run(a.nats_url, subject, a.rate, a.duration, a.echo))
    except ImportError:
        asyncio.run(run(a.nats_url, subject, a.rate, a.duration, a.echo))


if __name__ == "__main__":
    main()
