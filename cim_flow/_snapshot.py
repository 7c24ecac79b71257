"""Snapshots: every projection array plus the last applied ``seq``, as an Arrow IPC file.

Layout: one row per state array (``part``, ``name``, ``dtype``, ``shape``,
``xxh3``, ``data``), the string pools and scalars as JSON in the schema metadata.
Written atomically (temporary file, fsync, rename, fsync of the folder).

Loaded through a private copy-on-write memory map: the engine's arrays *are*
views of the file's pages, nothing is copied up front (a fresh 2 GiB copy costs
~4 s on the 2-core VM, page faults included), and a page is copied only when
the engine first writes to it.  Every array is checked against its XXH3-64
checksum before use (~10 GB/s, where zlib's CRC32 ran ~3 GB/s).  A corrupt or
partial file raises :class:`SnapshotError`; :func:`load_latest` then falls back
to the previous one.  Format 1 files (CRC32, read by copying) still load.
"""
from __future__ import annotations

import json
import mmap
import os
import re
import zlib

import numpy as np
import pyarrow as pa
import xxhash

from kernels import projection as kp

_NAME = re.compile(r"^snapshot-(\d{20})\.arrow$")
_SCHEMA = pa.schema([
    pa.field("part", pa.utf8()), pa.field("name", pa.utf8()), pa.field("dtype", pa.utf8()),
    pa.field("shape", pa.list_(pa.int64())), pa.field("xxh3", pa.uint64()), pa.field("data", pa.large_binary()),
])


class SnapshotError(Exception):
    pass


def snapshot_path(directory: str, version: int) -> str:
    return os.path.join(directory, f"snapshot-{version:020d}.arrow")


def list_snapshots(directory: str) -> list[tuple[int, str]]:
    """``(version, path)`` of the snapshots in ``directory``, newest first."""
    if not os.path.isdir(directory):
        return []
    out = []
    for f in os.listdir(directory):
        m = _NAME.match(f)
        if m:
            out.append((int(m.group(1)), os.path.join(directory, f)))
    return sorted(out, reverse=True)


def write_snapshot(engine, path: str) -> str:
    """Write the engine's state to ``path`` atomically; returns the path."""
    return write_state(engine._snapshot_state(), path)


# Per-batch scratch (the touched-graph and changed-node logs: refilled by every apply,
# 40 MB at 10M nodes) is not state: not written, made fresh on load.
_SCRATCH = {"G": {"tlist": lambda: np.zeros(1, np.int32)}, "N": {"dlist": lambda: np.zeros(1, np.int32)}}

_HOLE = 1 << 20  # trailing zeros are skipped in whole aligned MiB


class _SparseSink:
    """Write-only file object for ``pa.PythonFile`` that does not write a large
    buffer's trailing zeros (whole MiB, found from the end): they stay holes and
    read back as zeros.

    Those are the arrays' growth headroom past their last row (up to a third of an
    array, calloc'ed zeros): ~400 MB of a 2.16 GB 10M-node snapshot, on a disk that
    takes ~270 MB/s with fsync here.  Only tails are looked at, so the check reads a
    MiB or so per array, not the whole state.
    """

    def __init__(self, fd: int):
        self.fd, self.pos, self.end = fd, 0, 0
        self.closed = False

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        n = len(mv)
        cut = n
        if n >= 2 * _HOLE:
            r = (self.pos + n) // _HOLE * _HOLE - self.pos  # last MiB boundary inside
            if not np.frombuffer(mv[r:], np.uint8).any():
                cut = r
                while cut - _HOLE >= 0 and not np.frombuffer(mv[cut - _HOLE:cut], np.uint64).any():
                    cut -= _HOLE
        self._put(mv[:cut], self.pos)
        self.pos += n
        return n

    def _put(self, mv, at: int) -> None:
        while len(mv):
            k = os.pwrite(self.fd, mv, at)
            mv, at = mv[k:], at + k
        self.end = max(self.end, at)

    def finish(self) -> None:
        if self.end < self.pos:  # the file ends in a hole: give it its full size
            os.ftruncate(self.fd, self.pos)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True


#: Format 4: hash slots hold a tag above the index (kernels.intern); older files' slot
#: tables are rebuilt on load.  3: XXH3 checksums, copy-on-write map.  1-2: see below.
FORMAT = 4


def write_state(st: dict, path: str, fmt: int = FORMAT) -> str:
    """Write a projection state dict (``Projection.state()``) to ``path`` atomically."""
    meta = {"version": st["version"], "strings": st["strings"], "types": st["types"], "caps": list(st["caps"]),
            "format": fmt, "spatial": bool(st.get("spatial", False))}
    schema = _SCHEMA.with_metadata({b"cim_flow": json.dumps(meta).encode()})
    batches = []
    for part in ("G", "N", "E"):
        for name, arr in st[part].items():
            if name in _SCRATCH.get(part, {}):
                continue
            a = np.ascontiguousarray(arr)
            buf = a.view(np.uint8).reshape(-1) if a.size else np.zeros(0, np.uint8)
            data = pa.Array.from_buffers(pa.large_binary(), 1, [
                None, pa.py_buffer(np.array([0, buf.size], np.int64)), pa.py_buffer(buf)])
            batches.append(pa.record_batch([
                pa.array([part]), pa.array([name]), pa.array([a.dtype.str]),
                pa.array([list(a.shape)], pa.list_(pa.int64())),
                pa.array([xxhash.xxh3_64_intdigest(buf)], pa.uint64()), data], schema=schema))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        sink = _SparseSink(fd)
        with pa.PythonFile(sink, mode="w") as out:
            with pa.ipc.new_file(out, schema) as w:
                for b in batches:
                    w.write_batch(b)
        sink.finish()
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def read_snapshot(path: str) -> dict:
    """The state dict stored in ``path``: writable arrays over a copy-on-write map of the
    file (the file itself is never changed); SnapshotError if damaged."""
    try:
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        whole = np.frombuffer(mm, np.uint8)
        base = pa.py_buffer(whole).address
        table = pa.ipc.open_file(pa.py_buffer(whole)).read_all()
        meta = json.loads(table.schema.metadata[b"cim_flow"])
        st = {"version": meta["version"], "strings": meta["strings"], "types": meta["types"],
              "caps": tuple(meta["caps"]), "G": {}, "N": {}, "E": {}, "spatial": bool(meta.get("spatial", False)),
              "format": int(meta.get("format", 1))}
        parts = table.column("part").to_pylist()
        names = table.column("name").to_pylist()
        dtypes = table.column("dtype").to_pylist()
        shapes = table.column("shape").to_pylist()
        v2 = "xxh3" in table.column_names
        sums = table.column("xxh3" if v2 else "crc32").to_pylist()
        spans = []  # (file offset, size) of each row's bytes, straight from the Arrow buffers
        for chunk in table.column("data").chunks:
            offs = np.frombuffer(chunk.buffers()[1], np.int64, count=chunk.offset + len(chunk) + 1)
            values = chunk.buffers()[2]
            for j in range(chunk.offset, chunk.offset + len(chunk)):
                a, b = int(offs[j]), int(offs[j + 1])
                spans.append((values.address - base + a if values is not None else 0, b - a))
        if len(spans) != table.num_rows:
            raise SnapshotError(f"{path}: inconsistent data column")
        for i in range(table.num_rows):
            off, size = spans[i]
            if off < 0 or off + size > whole.size:
                raise SnapshotError(f"{path}: array {parts[i]}.{names[i]} lies outside the file")
            view = whole[off:off + size]
            got = xxhash.xxh3_64_intdigest(view) if v2 else zlib.crc32(view)
            if got != sums[i]:
                raise SnapshotError(f"{path}: checksum mismatch in {parts[i]}.{names[i]}")
            arr = view.view(np.dtype(dtypes[i])).reshape(shapes[i])
            st[parts[i]][names[i]] = arr if v2 else arr.copy()
    except SnapshotError:
        raise
    except (OSError, pa.ArrowInvalid, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot ({type(exc).__name__}: {exc})") from None
    _upgrade_edges(st)
    for part, scratch in _SCRATCH.items():
        for name, make in scratch.items():
            st[part].setdefault(name, make())
    for part, cls in (("G", kp.Graphs), ("N", kp.Nodes), ("E", kp.Edges)):
        missing = set(cls._fields) - set(st[part])
        if missing:
            raise SnapshotError(f"{path}: missing arrays {sorted(missing)} in {part}")
    if st["format"] < 4:
        _upgrade_slots(st)
    return st


def _upgrade_slots(st: dict) -> None:
    """Before format 4 a hash slot held the bare index; now it also carries a tag of the
    key's hash.  The same keys go back into slot tables of the same sizes."""
    from kernels import intern as ki

    G, N, E = st["G"], st["N"], st["E"]
    G["slots"] = ki.rehash(G["keys"], G["owner"], int(G["meta"][0]), np.full(G["slots"].shape[0], -1, np.int32))
    N["slots"] = ki.rehash(N["keys"], N["graph"], int(N["meta"][0]), np.full(N["slots"].shape[0], -1, np.int32))
    E["slots"] = ki.rehash_edges(E["keys"], E["src"], N["graph"], int(E["meta"][0]),
                                 np.full(E["slots"].shape[0], -1, np.int32))


def _upgrade_edges(st: dict) -> None:
    """Formats 1-2 kept each edge's graph and marked a removed edge ``src = -1``; now the
    owner is the source node's graph and a removed edge keeps ``~src``.  A removed edge's
    old source is gone, but any node of its graph gives the same owner."""
    E = st["E"]
    if "graph" not in E:
        return
    graph = E.pop("graph")
    if "src" not in E or "meta" not in E or "graph" not in st["N"] or "meta" not in st["N"]:
        return  # reported as missing arrays by the caller
    src = E["src"]
    gone = np.flatnonzero(src[: int(E["meta"][0])] < 0)
    if gone.size:
        ngraph = st["N"]["graph"][: int(st["N"]["meta"][0])].astype(np.int64)
        some_node = np.full(int(graph.max(initial=0)) + 1 + int(ngraph.max(initial=0)) + 1, -1, np.int64)
        some_node[ngraph] = np.arange(ngraph.size)
        src[gone] = ~some_node[graph[gone]]


def load_engine(path: str):
    from .engine import Engine

    st = read_snapshot(path)
    eng = Engine()
    eng._p.load_state(st)
    eng._rebuild_indices()
    eng._spatial_hint = st["spatial"]
    return eng


def load_latest(directory: str, log=print):
    """Newest valid snapshot as ``(engine, path)``; corrupt ones are reported and skipped.

    ``(None, None)`` when there is none valid (the caller replays everything).
    """
    for version, path in list_snapshots(directory):
        try:
            return load_engine(path), path
        except SnapshotError as exc:
            log(f"cim_flow: skipping snapshot: {exc}")
    return None, None


def prune(directory: str, keep: int) -> None:
    for _, path in list_snapshots(directory)[max(1, keep):]:
        try:
            os.remove(path)
        except OSError:
            pass
    for f in os.listdir(directory) if os.path.isdir(directory) else []:
        if ".tmp-" in f:  # a write that crashed half-way
            try:
                os.remove(os.path.join(directory, f))
            except OSError:
                pass
