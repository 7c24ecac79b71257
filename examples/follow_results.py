"""Keep a local view of every graph's summary from a cim_flow service's results stream.

Run:  python examples/follow_results.py --nats-url nats://127.0.0.1:4222 [--durable my-view]
      [--until-version N] [--idle-timeout S]

The service must keep its results in a stream (config ``[jetstream] results_stream =
"CIM_GRAPH_RESULTS"``; see examples/production.toml).  A durable consumer (``--durable``)
remembers how far this reader got: run it again with the same name and it goes on from
there, missing nothing the service published meanwhile, even across the service's restarts.

Folding the updates: a ``"full": true`` update lists every live graph (the service sends one
when the stream's updates no longer add up to its state, e.g. after it restarted): drop the
view there; every other update changes the graphs it lists and removes those in ``deleted``.
"""
import argparse
import asyncio

from cim_flow import Client


def fold(view: dict, update: dict) -> None:
    """Apply one update to ``view`` (graph id text -> summary dict)."""
    if update.get("full"):
        view.clear()
    for g in update["graphs"]:
        view[g["graph_id"]] = g
    for gid in update["deleted"]:
        view.pop(gid, None)


async def follow(url: str, durable: str, until_version: int | None = None, timeout: float | None = None,
                 view: dict | None = None) -> dict:
    """``view`` (a new one when None) after every update up to ``until_version`` (all its
    parts), or, without it, until none comes for ``timeout`` seconds (forever when None).
    Keep the view between sittings (here: pass it back in; in an application: save it)
    and the durable consumer hands each sitting what the last one had not read."""
    view = {} if view is None else view
    async with await Client.connect(url) as client:
        async with await client.updates(durable=durable) as updates:
            while True:
                try:
                    u = await updates.next(timeout=timeout)
                except asyncio.TimeoutError:
                    return view
                fold(view, u)
                print(f"version {u['version']}: {len(u['graphs'])} graphs changed"
                      f"{' (full)' if u.get('full') else ''}, {len(view)} in view")
                last_part = u.get("part", 0) + 1 >= u.get("parts", 1)
                if until_version is not None and u["version"] >= until_version and last_part:
                    return view


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument("--durable", default="follow-results", help="the durable consumer's name [follow-results]")
    ap.add_argument("--until-version", type=int, default=None,
                    help="stop once the view is at this version (default: follow until stopped)")
    ap.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                    help="stop after S seconds without an update (default: wait on)")
    args = ap.parse_args(argv)
    return asyncio.run(follow(args.nats_url, args.durable, args.until_version, args.idle_timeout))


if __name__ == "__main__":
    main()
