"""Vectorised UUID text -> 16 bytes, for whole Arrow string columns.

The canonical 36-character form is parsed with numpy table look-ups (no
Python per id); anything else (32 hex digits, braces, ``urn:uuid:``) goes
through :class:`uuid.UUID` one by one.
"""
from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa

from ._ids import string_buffers

_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DASHES = np.array([8, 13, 18, 23])
_HEXPOS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def parse_uuid_strings(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bytes (n, 16) uint8, valid, bad)`` for a utf8 array of UUID text.

    ``valid`` is False for nulls; ``bad`` is True for non-null text that is not
    a UUID.
    """
    n = len(arr)
    out = np.zeros((n, 16), np.uint8)
    if n == 0:
        return out, np.zeros(0, bool), np.zeros(0, bool)
    if arr.type != pa.utf8():
        arr = arr.cast(pa.utf8())
    valid = np.ones(n, bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    bad = np.zeros(n, bool)
    offs, data = string_buffers(arr)
    lens = np.diff(offs)
    canon = valid & (lens == 36)
    idx = np.flatnonzero(canon)
    if idx.size:
        chars = data[offs[idx, None] + np.arange(36)]
        ok = (chars[:, _DASHES] == ord("-")).all(axis=1)
        nib = _HEX[chars[:, _HEXPOS]]
        ok &= (nib != 255).all(axis=1)
        out[idx] = (nib[:, 0::2] << 4) | nib[:, 1::2]
        bad[idx[~ok]] = True
        out[idx[~ok]] = 0
    slow = np.flatnonzero(valid & ~canon)
    if slow.size:
        texts = arr.take(pa.array(slow)).to_pylist()
        for j, t in zip(slow, texts):
            try:
                out[j] = np.frombuffer(uuid.UUID(t).bytes, np.uint8)
            except ValueError:
                bad[j] = True
    return out, valid, bad
