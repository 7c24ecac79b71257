"""UUID conversions between Python values, Arrow and the kernels' uint64 words.

A ``fixed_size_binary(16)`` array's data buffer viewed as ``uint64`` gives two
words per id without a copy; the kernels key on those words.
"""
from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa

from ._schema import UUID_TYPE


def to_uuid_bytes(value) -> bytes:
    """16 bytes from a ``uuid.UUID``, 16 raw bytes or UUID text, also as a pyarrow
    scalar (an id read back from a result table) or CIM's ``{"id": <uuid>}``;
    ``ValueError`` otherwise."""
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, pa.Scalar):
        if not value.is_valid:
            raise ValueError("id must not be null")
        value = value.as_py()
    elif isinstance(value, dict) and set(value) == {"id"}:
        value = value["id"]
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        if len(b) == 16:
            return b
        try:
            return uuid.UUID(b.decode("ascii")).bytes
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"id must be 16 bytes or UUID text, got {len(b)} bytes") from None
    if isinstance(value, str):
        try:
            return uuid.UUID(value).bytes
        except ValueError:
            raise ValueError(f"bad UUID {value!r}") from None
    raise ValueError(f"id must be uuid.UUID, 16 bytes or UUID text, got {type(value).__name__}")


def words_of(value) -> tuple[np.uint64, np.uint64]:
    """The two uint64 words the kernels use for one id."""
    w = np.frombuffer(to_uuid_bytes(value), dtype=np.uint64)
    return w[0], w[1]


def fsb_words(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(words (n, 2) uint64, valid bool)`` of a fixed_size_binary(16) array (no copy of the data)."""
    n = len(arr)
    valid = _valid_mask(arr)
    buf = arr.buffers()[1]
    if buf is None or n == 0:
        return np.zeros((n, 2), np.uint64), valid
    words = np.frombuffer(buf, dtype=np.uint64, count=2 * (arr.offset + n)).reshape(-1, 2)
    return words[arr.offset:], valid


def validity(arr: pa.Array) -> np.ndarray | None:
    """Validity of a fixed-width array as bools, read from its bitmap (None: no nulls).

    No pyarrow compute call: those cost ~20 µs each on the 2-core machine, and a
    small batch needs a dozen of them.
    """
    if arr.null_count == 0:
        return None
    n = len(arr)
    if arr.buffers()[0] is None:  # all null without a bitmap
        return np.zeros(n, np.bool_)
    bits = np.frombuffer(arr.buffers()[0], np.uint8)
    return np.unpackbits(bits, bitorder="little", count=arr.offset + n)[arr.offset:].astype(np.bool_)


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a utf8 or large_utf8 array read from its buffers (no copy):
    row i is ``data[offsets[i]:offsets[i + 1]]``; offsets int32 or int64 as the type's."""
    n = len(arr)
    _, offs_buf, data_buf = arr.buffers()
    odt = np.dtype(np.int64 if pa.types.is_large_string(arr.type) else np.int32)
    offs = np.frombuffer(offs_buf, odt, count=n + 1, offset=arr.offset * odt.itemsize)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offs, data


def filled_values(arr: pa.Array, fill) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values, validity)`` of a fixed-width numeric array read from its buffers: the
    values in the array's own dtype (timestamps as int64) with ``fill`` at nulls, and
    :func:`validity` (None: no nulls).  Compute calls (``fill_null``) cost ~20-40 µs each
    on the 2-core machine; a small batch has a dozen such columns."""
    n = len(arr)
    t = pa.int64() if pa.types.is_timestamp(arr.type) else arr.type
    dt = np.dtype(t.to_pandas_dtype())
    data = arr.buffers()[1]
    if n == 0 or arr.null_count == n or data is None:
        return np.full(n, fill, dt), (np.zeros(n, np.bool_) if n else None)
    vals = np.frombuffer(data, dt, count=n, offset=arr.offset * dt.itemsize)
    ok = validity(arr)
    if ok is not None:
        vals = np.where(ok, vals, np.array(fill).astype(dt))
    return vals, ok


def _valid_mask(arr: pa.Array) -> np.ndarray:
    ok = validity(arr)
    return np.ones(len(arr), np.bool_) if ok is None else ok


def words_to_fsb(words: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """fixed_size_binary(16) array from ``(n, 2)`` uint64 words."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    n = words.shape[0]
    mask_buf = None
    if valid is not None and not valid.all():
        mask_buf = pa.py_buffer(np.packbits(valid, bitorder="little"))
    # zero-copy: the Arrow buffer keeps a reference to the numpy array
    return pa.Array.from_buffers(UUID_TYPE, n, [mask_buf, pa.py_buffer(words)],
                                 null_count=-1 if mask_buf is not None else 0)

