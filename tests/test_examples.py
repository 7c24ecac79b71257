"""The examples run, and their answers agree with the reference projection."""
import json
import pathlib
import runpy
import subprocess
import sys

import pyarrow.parquet as pq

from reference import RefProjection, reference_rows

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_parquet_pipeline(tmp_path):
    mod = runpy.run_path(str(ROOT / "examples" / "parquet_pipeline.py"))
    engine = mod["main"](["--events", "3000", "--out", str(tmp_path)])
    table = pq.read_table(tmp_path / "events.parquet")
    ref = RefProjection()
    ref.apply(reference_rows(table))
    assert engine.totals() == ref.totals()
    assert engine.totals()["nodes"] > 100


def test_parquet_pipeline_as_script(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "parquet_pipeline.py"), "--events", "500",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "applied" in out.stdout


def test_follow_results_example_keeps_the_view_across_sittings(tmp_path):
    """examples/follow_results.py against a service keeping a results stream: a reader
    that takes one update and stops leaves the rest to the next reader of its name at
    once (not after the ack wait); a sitting that follows part of the events and a later
    one (same durable name, the view passed on) end with the service's own answer for
    every graph."""
    import asyncio

    import nats
    from cim_flow import Client
    from cim_flow._config import Config
    from cim_flow._natsserver import NatsServer
    from cim_flow.service import Service
    from conftest import RunningService
    from natsutil import request

    srv = NatsServer(port=0, store_dir=str(tmp_path / "js")).start()
    try:
        cfg = Config.from_dict({"event_processing": {"batch_timeout": "2ms"},
                                "jetstream": {"results_stream": "CIM_GRAPH_RESULTS"}})
        rs = RunningService(Service(cfg, nats_url=srv.url, status_interval=0,
                                    data_dir=str(tmp_path / "svc"))).start()
        try:
            pub = runpy.run_path(str(ROOT / "examples" / "publish_events.py"))
            follow = runpy.run_path(str(ROOT / "examples" / "follow_results.py"))
            # three rounds, each applied before the next goes out: at least three updates
            # (the generator repeats its first events, which JetStream drops as repeats)
            for n in (200, 400, 600):
                seq1 = pub["main"](["--nats-url", srv.url, "--events", str(n)])
                request(srv.url, "query.graph.stats", {"min_version": seq1, "timeout_ms": 30000})

            async def one_then_next():
                got = []
                for _ in range(2):  # two readers of one name, one update each
                    async with await Client.connect(srv.url) as client:
                        async with await client.updates(durable="view") as updates:
                            got.append((await updates.next(timeout=10))["version"])
                nc = await nats.connect(srv.url)
                js = nc.jetstream()
                stored = [json.loads((await js.get_msg("CIM_GRAPH_RESULTS", s)).data)["version"] for s in (1, 2)]
                await nc.close()
                return got, stored

            got, stored = asyncio.run(one_then_next())
            assert got == stored and stored[0] < stored[1]
            first = follow["main"](["--nats-url", srv.url, "--durable", "view", "--until-version", str(seq1),
                                    "--idle-timeout", "30"])
            assert first  # some graphs by then
            # the same generator again: 400 new events after the 600 above
            seq2 = pub["main"](["--nats-url", srv.url, "--events", "1000"])
            assert seq2 == 1000
            view = asyncio.run(follow["follow"](srv.url, "view", seq2, timeout=30, view=first))
            got = request(srv.url, "query.graph.graphs", {"limit": 100000, "min_version": seq2})["graphs"]
            assert {g["graph_id"]: (g["node_count"], g["edge_count"], g["name"]) for g in got} == \
                {g: (s["node_count"], s["edge_count"], s["name"]) for g, s in view.items()}
        finally:
            rs.stop()
    finally:
        srv.stop()
