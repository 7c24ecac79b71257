"""Ask a running cim_flow service a few questions over NATS request/reply.

Run:  python examples/query_client.py --nats-url nats://127.0.0.1:4222 [--min-version N]
"""
import argparse
import asyncio
import json

import nats


async def ask(url: str, min_version: int = 0) -> dict:
    nc = await nats.connect(url)

    async def q(subject, body):
        body = dict(body, min_version=min_version) if min_version else body
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=10)
        return json.loads(msg.data)

    out = {"stats": await q("query.graph.stats", {})}
    out["top"] = await q("query.graph.graphs", {"top_by_node_count": 3})
    if out["top"].get("graphs"):
        g = out["top"]["graphs"][0]["graph_id"]
        out["summary"] = await q("query.graph.summary", {"graph_id": g})
        out["near_origin"] = await q("query.graph.knn", {"center": [0, 0, 0], "k": 5, "graph_id": g})
    await nc.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument("--min-version", type=int, default=0)
    args = ap.parse_args(argv)
    out = asyncio.run(ask(args.nats_url, args.min_version))
    s = out["stats"]
    print(f"version {s['version']}: {s['graphs']} graphs, {s['nodes']} nodes, {s['edges']} edges")
    for g in out["top"].get("graphs", []):
        print(f"  {g['graph_id']}  {g['name']}  nodes={g['node_count']} edges={g['edge_count']}")
    if "near_origin" in out:
        print("  nearest to the origin:", [round(n["distance"], 2) for n in out["near_origin"]["nodes"]])
    return out


if __name__ == "__main__":
    main()
