"""Publish synthetic CIM graph events to a cim_flow service (through JetStream).

Run:  python examples/publish_events.py --nats-url nats://127.0.0.1:4222 --events 1000
"""
import argparse
import asyncio

import nats
from cim_flow._demo import SyntheticEvents


async def publish(url: str, n: int, seed: int = 0) -> int:
    """Publish ``n`` events with Nats-Msg-Id = event id; returns the last stream sequence."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    gen = SyntheticEvents(seed)
    futures = []
    for _ in range(n):
        subject, event_id, data = gen.next()
        futures.append(await js.publish_async(subject, data, headers={"Nats-Msg-Id": event_id}))
    acks = await asyncio.gather(*futures)
    await nc.close()
    return max(a.seq for a in acks) if acks else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument("--events", type=int, default=1000)
    args = ap.parse_args(argv)
    seq = asyncio.run(publish(args.nats_url, args.events))
    print(f"published {args.events} events; last stream sequence {seq}")
    return seq


if __name__ == "__main__":
    main()
