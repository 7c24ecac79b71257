"""Snapshots: every projection array plus the last applied ``seq``, as an Arrow IPC file.

Layout: one row per state array (``part``, ``name``, ``dtype``, ``shape``,
``xxh3``, ``data``), the string pools and scalars as JSON in the schema metadata.
Written atomically (temporary file, fsync, rename, fsync of the folder), through
``O_DIRECT`` where the file system allows it (:class:`_DirectSink`: 3-4x the page
cache's speed on the VM's disk).

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
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

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


_ALIGN = 4096  # O_DIRECT: file offsets, lengths and buffer addresses in whole blocks
_STAGE = 8 << 20  # bytes a staging buffer holds (two: one filled while the other is written)


class _DirectSink(_SparseSink):
    """:class:`_SparseSink` writing through ``O_DIRECT``: the data is copied into two
    page-aligned staging buffers and written in whole blocks by a helper thread while
    the caller fills the other buffer (``pwrite`` releases the GIL).

    Measured on the 2-core VM's disk with ``dd`` (1 GiB, then fsync): buffered
    194-263 MB/s, ``O_DIRECT`` 752-875 MB/s: through the page cache the kernel spent
    most of the time on the cache itself (dirty-page throttling, writeback), not the
    device.  It also leaves the page cache alone: a 2 GB snapshot no longer evicts the
    event store's pages.  The copy into the stage costs ~0.2 s for 2 GB.

    Gaps (the sparse sink's skipped zero tails) become holes when they cover whole
    blocks; a gap's bytes inside a block are written as zeros.  The last block is
    padded with zeros and the file cut to its true size by :meth:`finish`."""

    def __init__(self, fd: int):
        super().__init__(fd)
        self._bufs = [mmap.mmap(-1, _STAGE) for _ in range(2)]  # page-aligned memory
        self._cur = 0
        self._base = 0  # file offset of the current buffer's first byte (block-aligned)
        self._fill = 0  # bytes staged in it
        self._zeros = bytes(_ALIGN)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cim-flow-snapshot")
        self._pending = None

    @staticmethod
    def open(path: str):
        """An ``O_DIRECT`` sink on a new file at ``path``, or ``None`` where the file
        system refuses direct I/O (tmpfs, some network mounts)."""
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
        except OSError:
            return None
        sink = _DirectSink(fd)
        try:  # some file systems accept the flag at open and refuse the writes
            os.pwrite(fd, memoryview(sink._bufs[0])[:_ALIGN], 0)
        except OSError:
            sink.abort()
            os.close(fd)
            return None
        return sink

    def _submit(self, length: int) -> None:
        """Write the current buffer's first ``length`` bytes (a block multiple) at its
        base, on the helper thread; continue in the other buffer."""
        self._wait()
        view = memoryview(self._bufs[self._cur])[:length]
        self._pending = self._pool.submit(self._write_all, self.fd, view, self._base)
        self._cur ^= 1

    @staticmethod
    def _write_all(fd, view, at) -> None:
        while len(view):
            k = os.pwrite(fd, view, at)
            view, at = view[k:], at + k

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # a write's error (ENOSPC, EIO) surfaces here

    def _flush_stage(self) -> None:
        """Write what is staged, its last block padded with zeros (a later write or
        :meth:`finish`'s cut makes the padding right)."""
        if self._fill:
            pad = -self._fill % _ALIGN
            buf = self._bufs[self._cur]
            buf[self._fill:self._fill + pad] = self._zeros[:pad]
            length = self._fill + pad
            base = self._base
            self._submit(length)
            self._base, self._fill = base + length, 0

    def _stage(self, mv) -> None:
        while len(mv):
            k = min(len(mv), _STAGE - self._fill)
            self._bufs[self._cur][self._fill:self._fill + k] = mv[:k]
            self._fill += k
            mv = mv[k:]
            if self._fill == _STAGE:
                base = self._base
                self._submit(_STAGE)
                self._base, self._fill = base + _STAGE, 0

    def _put(self, mv, at: int) -> None:
        end = self._base + self._fill
        if at > end:  # a gap of zeros: a hole where it spans whole blocks, else staged zeros
            if at // _ALIGN * _ALIGN <= end + (-end % _ALIGN):
                self._stage(memoryview(bytes(at - end)))
            else:
                self._flush_stage()
                self._base = at // _ALIGN * _ALIGN
                self._fill = at - self._base
                self._bufs[self._cur][:self._fill] = bytes(self._fill)
        self._stage(mv)
        self.end = max(self.end, at + len(mv))

    def finish(self) -> None:
        self._flush_stage()
        self._wait()
        os.ftruncate(self.fd, self.pos)  # drop the last block's padding, or end in a hole

    def abort(self) -> None:
        """Stop the helper thread (after an error: a pending write's outcome is moot)."""
        try:
            self._wait()
        except OSError:
            pass
        self._pool.shutdown(wait=True)
        self._bufs = []  # unmapped when the last view of them goes (an error's traceback may hold one)

    def close(self) -> None:
        self.closed = True


#: Format 4: hash slots hold a tag above the index (kernels.intern); older files' slot
#: tables are rebuilt on load.  3: XXH3 checksums, copy-on-write map.  1-2: see below.
FORMAT = 4


def _direct_ok() -> bool:
    """Whether snapshots may bypass the page cache: ``CIM_FLOW_SNAPSHOT_DIRECT=0`` says no."""
    return os.environ.get("CIM_FLOW_SNAPSHOT_DIRECT", "1").strip().lower() not in ("0", "false", "no", "off")


def write_state(st: dict, path: str, fmt: int = FORMAT, *, direct: bool = True) -> str:
    """Write a projection state dict (``Projection.state()``) to ``path`` atomically.

    ``direct``: write through ``O_DIRECT`` where the file system allows it (see
    :class:`_DirectSink`; ``CIM_FLOW_SNAPSHOT_DIRECT=0`` turns it off), else through
    the page cache.  A failed write leaves no temporary file behind."""
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
    sink = _DirectSink.open(tmp) if direct and _direct_ok() else None
    if sink is None:
        sink = _SparseSink(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    fd = sink.fd
    try:
        try:
            with pa.PythonFile(sink, mode="w") as out:
                with pa.ipc.new_file(out, schema) as w:
                    for b in batches:
                        w.write_batch(b)
            sink.finish()
            os.fsync(fd)
        finally:
            if isinstance(sink, _DirectSink):
                sink.abort()
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
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
            ahead = _ReadAhead(fh.fileno(), mm.size())
        with ahead:
            return _read_mapped(path, mm)
    except SnapshotError:
        raise
    except (OSError, pa.ArrowInvalid, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot ({type(exc).__name__}: {exc})") from None


class _ReadAhead:
    """Pages a snapshot into the page cache ahead of the checksums, from a helper thread.

    Checked through the map, a file not in the page cache was read a fault at a time
    (the kernel's read-ahead window, a few hundred KiB): a 2.1 GB snapshot checked in
    2.7-4.4 s from a cold cache here.  The helper asks for the file in 8 MiB chunks
    (``POSIX_FADV_WILLNEED``, which blocks while it queues each chunk's reads, hence
    the thread), so the device streams while the caller checks what has arrived:
    1.1-1.2 s; a file already cached costs nothing more.  A hint only: answers never
    depend on it."""

    CHUNK = 8 << 20

    def __init__(self, fd: int, size: int):
        self._stop = threading.Event()
        self._thread = None
        if size > 4 * self.CHUNK and hasattr(os, "posix_fadvise"):
            fd = os.dup(fd)  # the caller's file closes before the helper is done
            self._thread = threading.Thread(target=self._run, args=(fd, size), daemon=True,
                                            name="cim-flow-readahead")
            self._thread.start()

    def _run(self, fd: int, size: int) -> None:
        try:
            for at in range(0, size, self.CHUNK):
                if self._stop.is_set():
                    break
                os.posix_fadvise(fd, at, self.CHUNK, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _read_mapped(path: str, mm) -> dict:
    """:func:`read_snapshot` of the copy-on-write map ``mm`` of ``path``."""
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
