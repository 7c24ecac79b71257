"""The event columns of a small Arrow record batch, read from its buffers in one call.

``Engine.apply`` of a batch of a few rows spent ~230 µs turning a dozen Arrow
columns into the kernel's arrays one pyarrow/NumPy call at a time (buffers,
bitmaps, fills, read-only flags), and later ~70 µs collecting buffer addresses
through pyarrow's wrappers.  Now Python exports the batch through the Arrow C data
interface (one call) and :func:`event_columns_c` reads every column from that struct:
null counts, offsets, bitmaps and values (nulls filled), the string columns' bytes,
then releases the export.  The caller keeps the batch alive during the call; every
read is within what an Arrow array of that length and offset holds (dictionary
indices are checked against the dictionary's length; offsets are trusted, as
pyarrow trusts them).
"""
import numba
import numpy as np
from ._jit import c_release as _release
from ._jit import jit, peek_i64 as _peek, u8_pointer

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
def _copy(addr, off, k, n, width, ok, out):
    """Row i's ``width`` value bytes of slot k to ``out[i * width:]`` where ok[i] (the rest
    keep their fill); nothing without a values buffer (every row null).  Bytes, not
    typed values: one compiled copy for every column type (six typed ones cost ~10 s of
    cold compile)."""
    a = addr[2 * k + 1]
    if a == 0:
        return
    src = numba.carray(u8_pointer(a), (off[k] + n) * width)
    base = off[k] * width
    for i in range(n):
        if ok[i]:
            for b in range(width):
                out[i * width + b] = src[base + i * width + b]


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
    _valid(addr, off, nulls, np.int64(SEQ), n, seq_ok)
    _valid(addr, off, nulls, np.int64(KIND), n, kind_ok)
    _valid(addr, off, nulls, np.int64(TIME), n, t_ok)
    _valid(addr, off, nulls, np.int64(W), n, w_ok)
    # int64 values, not literals (slots, widths): one specialisation of each helper
    eight = np.int64(8)
    _copy(addr, off, np.int64(SEQ), n, eight, seq_ok, seq.view(np.uint8))
    _copy(addr, off, np.int64(KIND), n, np.int64(1), kind_ok, kind.view(np.uint8))
    _copy(addr, off, np.int64(TIME), n, eight, t_ok, t.view(np.uint8))
    _copy(addr, off, np.int64(W), n, np.int64(4), w_ok, wt.view(np.uint8))
    xyz = np.full(3 * n, np.nan)
    xyz_b = xyz.view(np.uint8)
    pos_ok = np.ones(n, np.bool_)
    ok = np.empty(n, np.bool_)
    for c in range(3):
        _valid(addr, off, nulls, X + c, n, ok)
        _copy(addr, off, X + c, n, eight, ok, xyz_b[c * n * 8:(c + 1) * n * 8])
        pos_ok &= ok
    ids = np.zeros(5 * n * 2, np.uint64)
    ids_b = ids.view(np.uint8)
    ids_ok = np.empty((5, n), np.bool_)
    for c in range(5):
        _valid(addr, off, nulls, GID + c, n, ids_ok[c])
        _copy(addr, off, GID + c, n, np.int64(16), ids_ok[c], ids_b[c * n * 16:(c + 1) * n * 16])
    return (seq, seq_ok, kind, t, t_ok, ids.reshape((5, n, 2)), ids_ok, xyz[:n], xyz[n:2 * n], xyz[2 * n:],
            pos_ok, wt, w_ok)


# --- straight from the Arrow C data interface ------------------------------------
# ``RecordBatch._export_to_c(addr)`` fills a ``struct ArrowArray`` (the batch as a struct
# array: one child per column) in one call; reading its fields here replaces ~25 pyarrow
# wrapper objects (``batch.columns`` alone cost ~18 µs for a 15-row batch, every column
# ~1.5-2.5 µs).  Field offsets of ``struct ArrowArray`` (all 8 bytes wide):
_LENGTH, _NULLS, _OFFSET, _NBUF, _NCHILD, _BUFS, _CHILDREN, _DICT, _RELEASE = range(0, 72, 8)
C_ARRAY_BYTES = 80


@jit(llvm_inline=True)
def _buf(arr, j):
    """Address of buffer ``j`` of the ArrowArray at ``arr`` (0 when absent)."""
    if j >= _peek(arr + _NBUF):
        return 0
    return _peek(_peek(arr + _BUFS) + 8 * j)


@jit(llvm_inline=True)
def _nulls(arr):
    """The null count, with the C interface's "unknown" (-1) resolved: 0 without a
    validity bitmap (no nulls), else 1 (some may be null: read the bitmap)."""
    k = _peek(arr + _NULLS)
    if k < 0:
        k = 1 if _buf(arr, 0) != 0 else 0
    return k


@jit(llvm_inline=True)
def _offsets32(arr, off, n):
    """The int32 offsets of a string array's rows off..off+n (n + 1 values)."""
    return numba.carray(u8_pointer(_buf(arr, 1)), 4 * (off + n + 1)).view(np.int32)[off:]


@jit(llvm_inline=True)
def _string_spans(arr, base, n):
    """``(offsets, bytes, present)`` of a ``string`` column of ``n`` rows (the triple
    :meth:`StringPool.encode` takes), or of a dictionary column of strings, its rows'
    values resolved through the dictionary: the bytes copied out of the Arrow buffers."""
    off = _peek(arr + _OFFSET) + base
    zero = np.int64(0)  # not the literal: the _valid of event_columns serves
    present = np.empty(n, np.bool_)
    addr = np.zeros(2, np.int64)
    offa = np.array([off], np.int64)
    nulls = np.array([_nulls(arr)], np.int64)
    addr[0] = _buf(arr, 0)
    _valid(addr, offa, nulls, zero, n, present)
    spans = np.zeros(n + 1, np.int64)
    d = _peek(arr + _DICT)
    if d == 0:
        if _buf(arr, 1) == 0:  # no offsets: no values (every row null)
            present[:] = False
            return spans, np.zeros(0, np.uint8), present
        o = _offsets32(arr, off, n)
        a = np.int64(o[0])
        for i in range(n):
            spans[i + 1] = np.int64(o[i + 1]) - a
        if _buf(arr, 2) == 0:  # no data: every value empty
            return spans, np.zeros(0, np.uint8), present
        data = numba.carray(u8_pointer(_buf(arr, 2)), np.int64(o[n]))
        return spans, data[a:].copy(), present
    # dictionary: int32 indices into a string array
    if _buf(arr, 1) == 0 or _buf(d, 1) == 0:
        present[:] = False
        return spans, np.zeros(0, np.uint8), present
    idx = numba.carray(u8_pointer(_buf(arr, 1)), 4 * (off + n)).view(np.int32)
    dn = _peek(d + _LENGTH)
    doff = _peek(d + _OFFSET)
    do = _offsets32(d, doff, dn)
    dvalid = np.empty(dn, np.bool_)
    addr[0] = _buf(d, 0)
    offa[0] = doff
    nulls[0] = _nulls(d)
    _valid(addr, offa, nulls, zero, dn, dvalid)
    for i in range(n):
        k = idx[off + i]
        if present[i] and 0 <= k < dn and dvalid[k]:
            spans[i + 1] = spans[i] + (do[k + 1] - do[k])
        else:
            present[i] = False
            spans[i + 1] = spans[i]
    data = np.empty(spans[n], np.uint8)
    if spans[n] == 0:
        return spans, data, present
    src = numba.carray(u8_pointer(_buf(d, 2)), np.int64(do[dn]))
    for i in range(n):
        if present[i]:
            k = idx[off + i]
            s = np.int64(do[k])
            for b in range(spans[i + 1] - spans[i]):
                data[spans[i] + b] = src[s + b]
    return spans, data, present


@jit
def event_columns_c(array_addr, cols, name_col, ntype_col, etype_col):
    """:func:`event_columns` of a record batch exported to the C data interface struct at
    ``array_addr`` (``cols``: the schema positions of the 12 column slots), plus the
    ``name``, ``node_type`` and ``edge_type`` columns as ``(offsets, bytes, present)``
    triples.  Everything is copied out, then the struct is released."""
    n = _peek(array_addr + _LENGTH)
    base = _peek(array_addr + _OFFSET)
    children = _peek(array_addr + _CHILDREN)
    addr = np.zeros(2 * N_COLS, np.int64)
    off = np.zeros(N_COLS, np.int64)
    nulls = np.zeros(N_COLS, np.int64)
    for k in range(N_COLS):
        c = _peek(children + 8 * cols[k])
        addr[2 * k] = _buf(c, 0)
        addr[2 * k + 1] = _buf(c, 1)
        off[k] = _peek(c + _OFFSET) + base
        nulls[k] = _nulls(c)
    out = event_columns(n, addr, off, nulls)
    name = _string_spans(_peek(children + 8 * name_col), base, n)
    ntype = _string_spans(_peek(children + 8 * ntype_col), base, n)
    etype = _string_spans(_peek(children + 8 * etype_col), base, n)
    _release(array_addr)
    return out, name, ntype, etype
