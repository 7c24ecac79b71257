"""Stable 128-bit content hashes of byte spans (derived event ids)."""
import numpy as np

from ._jit import jit, load_u64
from .intern import _mix

_P1 = np.uint64(0x9E3779B97F4A7C15)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_S1 = np.uint64(0xCBF29CE484222325)
_S2 = np.uint64(0x84222325CBF29CE4)
_R = np.uint64(29)
_L = np.uint64(35)
_B = np.uint64(8)


@jit(nrt=False)
def span_hash(data, s, e, out, r):
    """Hash data[s:e] into out[r, :16] as a UUID version 8 (RFC 9562 custom).

    Two independent 64-bit lanes, eight bytes a step (multiply, xor-rotate),
    each finalised with a SplitMix64 mix and the length: the same bytes always
    give the same id, and the id does not depend on where the bytes sit.
    """
    h1 = _S1
    h2 = _S2
    j = s
    while j + 8 <= e:
        w = load_u64(data, j)
        h1 = (h1 ^ w) * _P1
        h1 ^= h1 >> _R
        h2 = (h2 ^ ((w << _L) | (w >> _R))) * _P2
        h2 ^= h2 >> _L
        j += 8
    w = np.uint64(0)
    for k in range(e - 1, j - 1, -1):
        w = (w << _B) | np.uint64(data[k])
    h1 = _mix((h1 ^ w) * _P1 ^ np.uint64(e - s))
    h2 = _mix((h2 ^ w ^ np.uint64(0xFF)) * _P2)
    for b in range(8):
        out[r, b] = np.uint8((h1 >> np.uint64(8 * b)) & np.uint64(0xFF))
        out[r, 8 + b] = np.uint8((h2 >> np.uint64(8 * b)) & np.uint64(0xFF))
    out[r, 6] = (out[r, 6] & np.uint8(0x0F)) | np.uint8(0x80)
    out[r, 8] = (out[r, 8] & np.uint8(0x3F)) | np.uint8(0x80)


@jit
def hash_spans(data, offsets):
    """``(n, 16)`` uint8: :func:`span_hash` of ``data[offsets[i]:offsets[i+1]]`` for each i."""
    n = offsets.shape[0] - 1
    out = np.empty((n, 16), np.uint8)
    for i in range(n):
        span_hash(data, offsets[i], offsets[i + 1], out, i)
    return out
