"""Size profiles, chosen by CIM_FLOW_BENCH_PROFILE (small | large); default small.

small: quick enough for `asv run --quick` on a 2-core machine.
large: the sizes the issues' targets are stated for (1M points, 10M nodes + 20M edges).
"""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

PROFILE = os.environ.get("CIM_FLOW_BENCH_PROFILE", "small")

SIZES = {
    "small": dict(apply_events=1_000_000, apply_batch=65_536, ref_events=100_000, decode_events=20_000,
                  mem_nodes=1_000_000, mem_edges=2_000_000, points=1_000_000, queries=10_000),
    "large": dict(apply_events=1_000_000, apply_batch=65_536, ref_events=200_000, decode_events=100_000,
                  mem_nodes=10_000_000, mem_edges=20_000_000, points=1_000_000, queries=10_000),
}[PROFILE]
