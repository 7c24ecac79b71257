"""The event columns of a small Arrow record batch, read from its buffers in one call.

``Engine.apply`` of a batch of a few rows spent ~230 µs turning a dozen Arrow
columns into the kernel's arrays one pyarrow/NumPy call at a time (buffers,
bitmaps, fills, read-only flags).  Here Python only collects each column's buffer
addresses, offset and null count; one compiled pass reads the bitmaps and values
and fills nulls.  The caller keeps the batch alive during the call; every read is
within what an Arrow array of that length and offset holds.
"""
import numba
import numpy as np

from ._jit import jit, u8_pointer

# column slots, in this order: addr[2k] = validity bitmap (0: none), addr[2k + 1] = values
SEQ, KIND, TIME, GID, NID, EID, SID, TID, X, Y, Z, W = range(12)
N_COLS = 12


@jit(llvm_inline=True)
def _valid(addr, off, nulls, k, n, out):
    if nulls[k] == 0:
        out[:] = True
    elif addr[2 * k] == 0:
        out[:] = False  # all null without a bitmap
    else:
        o = off[k]
        bits = numba.carray(u8_pointer(addr[2 * k]), (o + n + 7) // 8)
        for i in range(n):
            j = o + i
            out[i] = (bits[j >> 3] >> (j & 7)) & 1 == 1


@jit(llvm_inline=True)
def _bytes(addr, off, k, n, width):
    """The values buffer of slot k as bytes (empty when absent)."""
    if addr[2 * k + 1] == 0:
        return np.zeros(0, np.uint8)
    return numba.carray(u8_pointer(addr[2 * k + 1]), (off[k] + n) * width)


@jit(llvm_inline=True)
def _copy(vals, o, ok, out):
    """out[i] = vals[o + i] where ok[i] (the rest keep their fill); nothing without values."""
    if vals.shape[0] < o + out.shape[0]:
        return  # no values buffer (every row null)
    for i in range(out.shape[0]):
        if ok[i]:
            out[i] = vals[o + i]


@jit
def event_columns(n, addr, off, nulls):
    """``(seq, seq_ok, kind, t, t_ok, ids (5, n, 2) uint64, ids_ok (5, n), x, y, z, pos_ok,
    w, w_ok)`` of an EVENT_SCHEMA batch of ``n`` rows: nulls filled with 0 (seq, time,
    kind, ids) or NaN (x, y, z, weight)."""
    seq_ok = np.empty(n, np.bool_)
    kind_ok = np.empty(n, np.bool_)
    t_ok = np.empty(n, np.bool_)
    w_ok = np.empty(n, np.bool_)
    seq = np.zeros(n, np.uint64)
    kind = np.zeros(n, np.int8)
    t = np.zeros(n, np.int64)
    wt = np.full(n, np.nan, np.float32)
    _valid(addr, off, nulls, SEQ, n, seq_ok)
    _valid(addr, off, nulls, KIND, n, kind_ok)
    _valid(addr, off, nulls, TIME, n, t_ok)
    _valid(addr, off, nulls, W, n, w_ok)
    _copy(_bytes(addr, off, SEQ, n, 8).view(np.uint64), off[SEQ], seq_ok, seq)
    _copy(_bytes(addr, off, KIND, n, 1).view(np.int8), off[KIND], kind_ok, kind)
    _copy(_bytes(addr, off, TIME, n, 8).view(np.int64), off[TIME], t_ok, t)
    _copy(_bytes(addr, off, W, n, 4).view(np.float32), off[W], w_ok, wt)
    xyz = np.full((3, n), np.nan)
    pos_ok = np.ones(n, np.bool_)
    ok = np.empty(n, np.bool_)
    for c in range(3):
        _valid(addr, off, nulls, X + c, n, ok)
        _copy(_bytes(addr, off, X + c, n, 8).view(np.float64), off[X + c], ok, xyz[c])
        pos_ok &= ok
    ids = np.zeros((5, n, 2), np.uint64)
    ids_ok = np.empty((5, n), np.bool_)
    for c in range(5):
        _valid(addr, off, nulls, GID + c, n, ids_ok[c])
        _copy(_bytes(addr, off, GID + c, n, 16).view(np.uint64).reshape(-1, 2), off[GID + c], ids_ok[c], ids[c])
    return seq, seq_ok, kind, t, t_ok, ids, ids_ok, xyz[0], xyz[1], xyz[2], pos_ok, wt, w_ok
