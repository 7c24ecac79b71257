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


def _streamed(seed, n):
    """An engine and the reference after the same ``n`` random rows over small id pools
    (collisions, removals and re-adds are frequent); the rng and pool sizes go on."""
    rng = random.Random(seed)
    kw = dict(n_graphs=3, n_nodes=20, n_edges=40)
    rows = random_rows(rng, n, with_seq=True, **kw)
    eng, ref = Engine(), RefProjection()
    eng.apply(rows_to_batch(rows))
    ref.apply(rows)
    return rng, kw, eng, ref


def test_format2_snapshot_with_edge_graphs_upgrades(tmp_path):
    """Format 2 stored each edge's graph and marked a removed edge src = -1; such a file
    still loads, and a removed edge re-added later is found again, not duplicated."""
    from cim_flow._snapshot import write_state

    rng, kw, eng, ref = _streamed(3, 3000)
    st = eng._p.state()
    E, N = dict(st["E"]), st["N"]
    n = int(E["meta"][0])
    src = E["src"].copy()
    removed = src[:n] < 0
    assert removed.any()  # the stream removed some edges
    owner = N["graph"][np.where(src < 0, ~src, src)[:n]]
    graph = np.full(src.shape[0], -1, np.int32)
    graph[:n] = owner
    src[:n][removed] = -1
    E["src"], E["graph"] = src, graph
    path = write_state({**st, "E": E}, str(tmp_path / "old.arrow"), fmt=2)
    back = Engine.from_snapshot(path)
    check_same(back, ref)

    def found_where_they_were(e):  # every edge, removed or not, is still keyed by its graph
        from kernels.intern import lookup_edge
        E = e._p.E
        return all(lookup_edge(E.slots, E.keys, E.src, e._p.N.graph, graph[i], E.keys[i, 0], E.keys[i, 1]) == i
                   for i in range(n))

    assert found_where_they_were(back)
    for _ in range(3):
        more = random_rows(rng, 500, **kw)
        back.apply(rows_to_batch(more))
        ref.apply(more)
        check_same(back, ref)
    assert found_where_they_were(back)  # re-adds reused their index


def test_growth_headroom_is_left_as_holes_and_reads_back(tmp_path):
    """Arrays' zero tails (growth headroom) are not written, yet every array reads back
    byte for byte; per-batch scratch is not stored and comes back fresh."""
    from cim_flow._snapshot import read_snapshot

    rng = random.Random(5)
    rows = random_rows(rng, 2000, n_graphs=12, n_nodes=200, n_edges=300, with_seq=True)
    eng = Engine(node_capacity=400_000, edge_capacity=400_000)  # MiBs of zero headroom per array
    eng.apply(rows_to_batch(rows))
    path = eng.snapshot(snapshot_path(str(tmp_path), eng.version))
    st = os.stat(path)
    assert st.st_blocks * 512 < 0.7 * st.st_size  # the zero tails are holes (slots, filled with -1, are not)
    back = read_snapshot(path)
    want = eng._p.state()
    for part in ("G", "N", "E"):
        for name, arr in want[part].items():
            if (part, name) in (("G", "tlist"), ("N", "dlist")):
                assert back[part][name].size == 1
                continue
            got = back[part][name]
            assert got.dtype == arr.dtype and got.shape == arr.shape, (part, name)
            assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(arr).tobytes(), (part, name)
    assert _answers(Engine.from_snapshot(path)) == _answers(eng)


def test_format3_snapshot_with_untagged_hash_slots_loads(tmp_path):
    """Before format 4 a hash slot held the bare index (no tag of the key's hash); such a
    file's slot tables are rebuilt on load, so every id is found and nothing is added twice."""
    from cim_flow._snapshot import write_state
    from kernels.intern import IDX_BITS

    rng, kw, eng, ref = _streamed(4, 2000)
    st = eng._p.state()
    old = {}
    for part in ("G", "N", "E"):
        d = dict(st[part])
        slots = d["slots"]
        assert (slots[slots >= 0] >> IDX_BITS).any()  # tags are there to strip
        d["slots"] = np.where(slots >= 0, slots & ((1 << IDX_BITS) - 1), -1).astype(np.int32)
        old[part] = d
    back = Engine.from_snapshot(write_state({**st, **old}, str(tmp_path / "v3.arrow"), fmt=3))
    check_same(back, ref)
    for part in ("G", "N", "E"):
        assert np.array_equal(getattr(back._p, part).slots, st[part]["slots"])
    for _ in range(3):
        more = random_rows(rng, 400, **kw)
        back.apply(rows_to_batch(more))
        ref.apply(more)
        check_same(back, ref)


def _write_pattern(sink, rng, total):
    """Writes of random sizes, some ending in long zero runs (the sparse sink's holes)."""
    out = bytearray()
    while len(out) < total:
        n = int(rng.integers(1, 300_000))
        chunk = rng.integers(0, 256, n, dtype=np.uint8)
        if rng.random() < 0.4:  # a zero tail long enough to leave whole blocks out
            chunk[int(rng.integers(0, n)):] = 0
        if rng.random() < 0.1:
            chunk[:] = 0
        sink.write(chunk)
        out += chunk.tobytes()
    sink.finish()
    return bytes(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_direct_sink_writes_what_the_buffered_one_does(tmp_path, monkeypatch, seed):
    """The O_DIRECT sink (staged, block-aligned writes on a helper thread) gives the same
    bytes as plain writes, for any sizes and gaps; zero tails still become holes."""
    import cim_flow._snapshot as sn

    monkeypatch.setattr(sn, "_STAGE", 64 << 10)  # many stage switches in a small file
    monkeypatch.setattr(sn, "_HOLE", 16 << 10)
    rng = np.random.default_rng(seed)
    direct = sn._DirectSink.open(str(tmp_path / "d"))
    if direct is None:
        pytest.skip("this file system refuses O_DIRECT")
    try:
        want = _write_pattern(direct, rng, 3 << 20)
    finally:
        direct.abort()
        os.close(direct.fd)
    plain = sn._SparseSink(os.open(str(tmp_path / "p"), os.O_WRONLY | os.O_CREAT, 0o644))
    _write_pattern(plain, np.random.default_rng(seed), 3 << 20)
    os.close(plain.fd)
    assert open(tmp_path / "d", "rb").read() == want == open(tmp_path / "p", "rb").read()
    blocks_d, blocks_p = os.stat(tmp_path / "d").st_blocks, os.stat(tmp_path / "p").st_blocks
    assert blocks_d * 512 < len(want)  # holes
    assert blocks_d <= 1.25 * blocks_p + 64  # about the plain sink's holes (a gap's partial blocks are written)


def test_snapshot_written_direct_and_buffered_are_identical(tmp_path):
    from cim_flow._snapshot import write_state

    eng, _ref, _rng = _engine(7, n=1500)
    st = eng._snapshot_state()
    a = write_state(st, str(tmp_path / "a.arrow"), direct=True)
    b = write_state(st, str(tmp_path / "b.arrow"), direct=False)
    assert open(a, "rb").read() == open(b, "rb").read()
    assert _answers(Engine.from_snapshot(a)) == _answers(eng)


def test_a_failed_write_raises_and_leaves_no_file(tmp_path):
    """A write the system refuses (here: past the process's file-size limit, a real
    EFBIG) raises, leaves neither the snapshot nor its temporary file, and the previous
    snapshot stays the newest."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import os, resource, signal, sys
        sys.path[:0] = {[os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]!r}
        import random
        from cim_flow import Engine
        from cim_flow._snapshot import snapshot_path
        from streams import random_rows, rows_to_batch
        eng = Engine(node_capacity=300_000)  # a few MB of arrays
        eng.apply(rows_to_batch(random_rows(random.Random(3), 500, n_graphs=4, n_nodes=50, n_edges=50, with_seq=True)))
        first = eng.snapshot(snapshot_path({str(tmp_path)!r}, 1))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(first) // 2, resource.RLIM_INFINITY))
        for direct in ("1", "0"):
            os.environ["CIM_FLOW_SNAPSHOT_DIRECT"] = direct
            try:
                eng.snapshot(snapshot_path({str(tmp_path)!r}, 2))
            except OSError as exc:
                print("refused", exc.errno)
            else:
                print("written")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import errno

    assert out.stdout.split("\n")[:2] == [f"refused {errno.EFBIG}"] * 2, out.stdout
    assert [os.path.basename(p) for _, p in list_snapshots(str(tmp_path))] == [os.path.basename(snapshot_path(str(tmp_path), 1))]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(snapshot_path(str(tmp_path), 1))]
