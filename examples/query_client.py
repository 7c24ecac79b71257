"""Ask a running cim_flow service a few questions over NATS, with cim_flow.Client.

Run:  python examples/query_client.py --nats-url nats://127.0.0.1:4222 [--min-version N]

Answers come back as pyarrow Tables (the service's Arrow replies, the Engine's columns);
summaries and stats as dicts. ``--min-version`` makes each reply wait until the service
has applied that stream sequence (what a publish returns): read-your-writes.
"""
import argparse
import asyncio
import uuid

from cim_flow import Client


async def ask(url: str, min_version: int | None = None) -> dict:
    async with await Client.connect(url) as client:
        out = {"stats": await client.stats(min_version=min_version)}
        out["top"] = await client.graphs(top_by_node_count=3, min_version=min_version)
        if out["top"].num_rows:
            g = out["top"].column("graph_id")[0].as_py()
            out["summary"] = await client.graph_summary(g, min_version=min_version)
            out["near_origin"] = await client.nearest([0, 0, 0], 5, graph_id=g, min_version=min_version)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument("--min-version", type=int, default=None)
    args = ap.parse_args(argv)
    out = asyncio.run(ask(args.nats_url, args.min_version))
    s = out["stats"]
    print(f"version {s['version']}: {s['graphs']} graphs, {s['nodes']} nodes, {s['edges']} edges")
    for g in out["top"].to_pylist():
        print(f"  {uuid.UUID(bytes=g['graph_id'])}  {g['name']}  nodes={g['node_count']} edges={g['edge_count']}")
    if "near_origin" in out:
        print("  nearest to the origin:", [round(d, 2) for d in out["near_origin"].column("distance").to_pylist()])
    return out


if __name__ == "__main__":
    main()
