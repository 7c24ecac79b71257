"""Snapshots: round trip preserves every answer; damaged files are detected and skipped."""
import os
import random

import numpy as np
import pytest

from cim_flow import Engine
from cim_flow._snapshot import SnapshotError, list_snapshots, load_latest, prune, snapshot_path
from reference import RefProjection
from streams import random_rows, rows_to_batch
from test_projection import check_same


def _engine(seed=1, n=3000):
    rng = random.Random(seed)
    rows = random_rows(rng, n, n_graphs=12, n_nodes=200, n_edges=300, with_seq=True)
    eng, ref = Engine(), RefProjection()
    eng.apply(rows_to_batch(rows))
    ref.apply(rows)
    return eng, ref, rng


def _answers(eng):
    c = np.random.default_rng(0).uniform(-5, 5, (20, 3))
    return (eng.graph_summaries().to_pylist(), eng.totals(), eng.version,
            eng.nodes_within(c, 2.0, return_distance=True, sort=True).to_pylist(),
            eng.nearest(c, 5).to_pylist(), eng.nodes_in_box([-2, -2, -2], [2, 2, 2]).to_pylist(),
            eng.top_graphs_by_node_count(5).to_pylist(), eng.graphs_by_name("alpha").to_pylist())


def test_round_trip_preserves_every_answer(tmp_path):
    eng, ref, rng = _engine()
    before = _answers(eng)
    path = eng.snapshot(snapshot_path(str(tmp_path), eng.version))
    back = Engine.from_snapshot(path)
    assert _answers(back) == before
    check_same(back, ref)
    # and it keeps applying exactly like the original
    more = random_rows(rng, 800, n_graphs=12, n_nodes=200, n_edges=300)
    eng.apply(rows_to_batch(more))
    back.apply(rows_to_batch(more))
    ref.apply(more)
    check_same(back, ref)
    assert _answers(back) == _answers(eng)


def test_corrupt_and_truncated_snapshots_fall_back(tmp_path):
    eng, ref, rng = _engine(2)
    old = eng.snapshot(snapshot_path(str(tmp_path), eng.version))
    old_answers = _answers(eng)
    eng.apply(rows_to_batch(random_rows(rng, 500, n_graphs=12, n_nodes=200, n_edges=300)))
    new = eng.snapshot(snapshot_path(str(tmp_path), eng.version + 1000))
    assert [p for _, p in list_snapshots(str(tmp_path))] == [new, old]
    # flip a byte in the middle of the newest file: checksum catches it
    data = bytearray(open(new, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(new, "wb").write(data)
    logs = []
    got, path = load_latest(str(tmp_path), log=logs.append)
    assert path == old and len(logs) == 1
    assert _answers(got) == old_answers
    with pytest.raises(SnapshotError):
        Engine.from_snapshot(new)
    # a truncated file too
    open(new, "wb").write(bytes(data[:1000]))
    got, path = load_latest(str(tmp_path), log=logs.append)
    assert path == old
    # nothing valid at all: (None, None) -> full replay
    open(old, "wb").write(b"garbage")
    assert load_latest(str(tmp_path), log=logs.append) == (None, None)


def test_prune_keeps_newest(tmp_path):
    eng, _, _ = _engine(3, 200)
    for v in (10, 20, 30, 40):
        eng.snapshot(snapshot_path(str(tmp_path), v))
    open(os.path.join(tmp_path, "snapshot-x.arrow.tmp-1"), "w").write("half")
    prune(str(tmp_path), 2)
    assert [v for v, _ in list_snapshots(str(tmp_path))] == [40, 30]
    assert not any(".tmp-" in f for f in os.listdir(tmp_path))
