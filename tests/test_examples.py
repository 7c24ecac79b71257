"""The examples run, and their answers agree with the reference projection."""
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
