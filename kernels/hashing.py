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


@jit(nrt=False, llvm_inline=True)
def _lanes(data, s, e):
    """The two 64-bit lanes of data[s:e]: eight bytes a step (multiply, xor-rotate),
    each finalised with a SplitMix64 mix and the length.  Inlined, a caller that uses
    one lane has the other's work removed by the compiler."""
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
    return _mix((h1 ^ w) * _P1 ^ np.uint64(e - s)), _mix((h2 ^ w ^ np.uint64(0xFF)) * _P2)


@jit(nrt=False)
def span_hash(data, s, e, out, r):
    """Hash data[s:e] into out[r, :16] as a UUID version 8 (RFC 9562 custom).

    Two independent 64-bit lanes (:func:`_lanes`): the same bytes always give the
    same id, and the id does not depend on where the bytes sit.
    """
    h1, h2 = _lanes(data, s, e)
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


@jit
def span_groups(offsets, data, present):
    """Rows of equal bytes grouped: ``(first, rep)``.  ``first``: the row where each
    distinct value ``data[offsets[r]:offsets[r + 1]]`` first appears, in that order;
    ``rep[r]``: the position in ``first`` of row r's value, -1 where not ``present``.
    (A string column of a batch holds a few distinct values in many rows: the caller
    then looks up only those.)"""
    n = present.shape[0]
    cap = 8
    while cap < 2 * n:
        cap *= 2
    mask = cap - 1
    slot_row = np.full(cap, -1, np.int64)
    slot_hash = np.empty(cap, np.uint64)
    slot_pos = np.empty(cap, np.int64)
    first = np.empty(n, np.int64)
    rep = np.full(n, -1, np.int64)
    nf = 0
    for r in range(n):
        if not present[r]:
            continue
        a = offsets[r]
        b = offsets[r + 1]
        h = _lanes(data, a, b)[0]
        i = np.int64(h & np.uint64(mask))
        while True:
            s = slot_row[i]
            if s < 0:
                slot_row[i] = r
                slot_hash[i] = h
                slot_pos[i] = nf
                first[nf] = r
                rep[r] = nf
                nf += 1
                break
            if slot_hash[i] == h and offsets[s + 1] - offsets[s] == b - a:
                sa = offsets[s]
                same = True
                for k in range(b - a):
                    if data[sa + k] != data[a + k]:
                        same = False
                        break
                if same:
                    rep[r] = slot_pos[i]
                    break
            i = (i + 1) & mask
    return first[:nf], rep
