"""Snapshots: every projection array plus the last applied ``seq``, as an Arrow IPC file.

Layout: one row per state array (``part``, ``name``, ``dtype``, ``shape``, ``crc32``,
``data``), the string pools and scalars as JSON in the schema metadata.  Written
atomically (temporary file, fsync, rename, fsync of the folder); loaded through a
memory map, every array checked against its CRC32 before use.  A corrupt or
partial file raises :class:`SnapshotError`; :func:`load_latest` then falls back
to the previous one.
"""
from __future__ import annotations

import json
import os
import re
import zlib

import numpy as np
import pyarrow as pa

from kernels import projection as kp

_NAME = re.compile(r"^snapshot-(\d{20})\.arrow$")
_SCHEMA = pa.schema([
    pa.field("part", pa.utf8()), pa.field("name", pa.utf8()), pa.field("dtype", pa.utf8()),
    pa.field("shape", pa.list_(pa.int64())), pa.field("crc32", pa.uint32()), pa.field("data", pa.large_binary()),
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
    st = engine._p.state()
    meta = {"version": st["version"], "strings": st["strings"], "types": st["types"], "caps": list(st["caps"]),
            "format": 1}
    schema = _SCHEMA.with_metadata({b"cim_flow": json.dumps(meta).encode()})
    batches = []
    for part in ("G", "N", "E"):
        for name, arr in st[part].items():
            a = np.ascontiguousarray(arr)
            buf = a.view(np.uint8).reshape(-1) if a.size else np.zeros(0, np.uint8)
            data = pa.Array.from_buffers(pa.large_binary(), 1, [
                None, pa.py_buffer(np.array([0, buf.size], np.int64)), pa.py_buffer(buf)])
            batches.append(pa.record_batch([
                pa.array([part]), pa.array([name]), pa.array([a.dtype.str]),
                pa.array([list(a.shape)], pa.list_(pa.int64())),
                pa.array([zlib.crc32(buf)], pa.uint32()), data], schema=schema))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with pa.OSFile(tmp, "wb") as sink:
        with pa.ipc.new_file(sink, schema) as w:
            for b in batches:
                w.write_batch(b)
    fd = os.open(tmp, os.O_RDONLY)
    try:
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
    """The state dict stored in ``path`` (arrays are writable copies); SnapshotError if damaged."""
    try:
        with pa.memory_map(path, "r") as src:
            table = pa.ipc.open_file(src).read_all()
            meta = json.loads(table.schema.metadata[b"cim_flow"])
            st = {"version": meta["version"], "strings": meta["strings"], "types": meta["types"],
                  "caps": tuple(meta["caps"]), "G": {}, "N": {}, "E": {}}
            parts = table.column("part").to_pylist()
            names = table.column("name").to_pylist()
            dtypes = table.column("dtype").to_pylist()
            shapes = table.column("shape").to_pylist()
            crcs = table.column("crc32").to_pylist()
            data = table.column("data")
            for i in range(table.num_rows):
                buf = data[i].as_buffer()
                view = np.frombuffer(buf, np.uint8) if buf is not None else np.zeros(0, np.uint8)
                if zlib.crc32(view) != crcs[i]:
                    raise SnapshotError(f"{path}: checksum mismatch in {parts[i]}.{names[i]}")
                arr = view.view(np.dtype(dtypes[i])).reshape(shapes[i]).copy()
                st[parts[i]][names[i]] = arr
    except SnapshotError:
        raise
    except (OSError, pa.ArrowInvalid, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot ({type(exc).__name__}: {exc})") from None
    for part, cls in (("G", kp.Graphs), ("N", kp.Nodes), ("E", kp.Edges)):
        missing = set(cls._fields) - set(st[part])
        if missing:
            raise SnapshotError(f"{path}: missing arrays {sorted(missing)} in {part}")
    return st


def load_engine(path: str):
    from .engine import Engine

    st = read_snapshot(path)
    eng = Engine()
    eng._p.load_state(st)
    eng._rebuild_indices()
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
