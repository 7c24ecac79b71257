"""Compiled JSON scanner for the common shapes of CIM graph events.

The decode fast path.  One call walks every payload of a batch (concatenated
into one byte buffer) and extracts the event's fields straight into columns:
UUID text to 16 bytes, numbers to float64 (exactly as a correct parser rounds
them), RFC 3339 text to µs, strings as byte spans.  It is a *validating*
scanner for a strict subset: the moment a payload leaves that subset (an
escape in a kept string, a non-ASCII byte, an id that is not canonical UUID
text, a number it cannot round exactly, an unknown event name, anything
malformed), the row gets status 1 and the caller decodes it with the general
(msgspec) path, which also names the error.  So the scanner never has to be
right about rejects, only about what it accepts.

Numbers: Clinger's fast path when the digits fit 2^53 and the power of ten is
exact, else the Eisel-Lemire algorithm with a 128-bit table of powers of five
(Lemire, "Number Parsing at a Gigabyte per Second", 2021); the rare cases that
algorithm cannot decide go to the general path.
"""
import numpy as np

from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

from ._jit import jit, load_u64, mul_u128
from .hashing import span_hash

# Field names, in keyword-table order: the index is the field id.
FIELDS = (
    "type", "event_type",                                              # 0-1
    "graph_id", "aggregate_id", "node_id", "edge_id", "source", "source_id",
    "target", "target_id", "event_id", "correlation_id", "causation_id",  # 2-12 ids
    "position", "new_position", "x", "y", "z",                         # 13-17
    "name", "new_name", "label", "node_type", "edge_type", "metadata",  # 18-23 strings
    "weight", "strength", "similarity",                                # 24-26
    "occurred_at", "timestamp", "created_at", "updated_at",            # 27-30
    "seq", "payload", "data", "id",                                    # 31-34
)
ALIAS_BASE = 100  # keyword code for an event-type name: ALIAS_BASE + event code
_TABLE_BITS = 10
_TABLE = 1 << _TABLE_BITS
_M64 = (1 << 64) - 1
_KP1 = 0x9E3779B97F4A7C15
_KP2 = 0xC2B2AE3D27D4EB4F
_EMPTY = np.uint64(0xFFFFFFFF)

_U = np.uint64
_M32 = _U(0xFFFFFFFF)
_S32 = _U(32)
_ONES = _U(0x0101010101010101)  # one in every byte (SWAR)
_HIGH = _U(0x8080808080808080)  # every byte's high bit
_POW10 = np.array([10.0 ** k for k in range(23)])
_TWO53 = _U(1 << 53)
_MAX_MS = (2**63 - 1) // 1000


def _powers_of_five():
    """128-bit mantissas of 5^q, q in [-342, 308] (truncated; reciprocals + 1)."""
    hi, lo = [], []
    for q in range(-342, 309):
        if q >= 0:  # 5^q shifted to exactly 128 bits (one shift, not a bit at a time)
            v = 5**q
            k = 128 - v.bit_length()
            v = v << k if k >= 0 else v >> -k
        else:
            p5 = 5**-q
            z = (p5 - 1).bit_length()
            b = z + 127 if q >= -27 else 2 * z + 128
            v = (1 << b) // p5 + 1
            v >>= max(0, v.bit_length() - 128)
        hi.append(v >> 64)
        lo.append(v & ((1 << 64) - 1))
    return np.array(hi, np.uint64), np.array(lo, np.uint64)


P5_HI, P5_LO = _powers_of_five()


def _kw_slot(w0, w1, n):
    """Home slot of a keyword from its first 16 bytes (two little-endian words) and length."""
    return (((w0 ^ ((w1 * _KP2) & _M64) ^ n) * _KP1) & _M64) >> (64 - _TABLE_BITS)


def keyword_table(aliases):
    """(bytes, offsets, codes, slots) for the field names and the event-type names.

    ``slots[t]`` is ``(first 8 bytes, next 8 bytes, length | code << 32, keyword)``
    as little-endian words, zero-padded (``length`` all ones: empty): a key of up
    to 16 bytes is found by comparing two words, longer ones also compare the rest
    of ``bytes[offsets[k]:offsets[k + 1]]``."""
    words = list(FIELDS) + list(aliases)
    codes = list(range(len(FIELDS))) + [ALIAS_BASE + int(c) for c in aliases.values()]
    enc = [w.encode() for w in words]
    off = np.zeros(len(enc) + 1, np.int64)
    off[1:] = np.cumsum([len(w) for w in enc])
    data = np.frombuffer(b"".join(enc), np.uint8).copy()
    slots = np.zeros((_TABLE, 4), np.uint64)
    slots[:, 2] = _EMPTY
    for k, w in enumerate(enc):
        pad = w[:16].ljust(16, b"\0")
        w0 = int.from_bytes(pad[:8], "little")
        w1 = int.from_bytes(pad[8:], "little")
        t = _kw_slot(w0, w1, len(w))
        while slots[t, 2] != _EMPTY:
            t = (t + 1) & (_TABLE - 1)
        slots[t] = (w0, w1, len(w) | (codes[k] << 32), k)
    return data, off, np.array(codes, np.int16), slots


@jit(nrt=False, llvm_inline=True)
def _word(buf, s, n):
    """Bytes buf[s:s+n] (n clipped to 0..8) as a little-endian uint64, zero-padded."""
    if n <= 0:
        return _U(0)
    if n > 8:
        n = 8
    if s + 8 <= buf.shape[0]:
        w = load_u64(buf, s)
        if n < 8:
            w &= (_U(1) << _U(8 * n)) - _U(1)
        return w
    w = _U(0)
    for k in range(n - 1, -1, -1):
        w = (w << _U(8)) | _U(buf[s + k])
    return w


@jit(nrt=False, llvm_inline=True)
def _lookup(buf, s, e, kw, kwo, kwc, slots):
    """Code of the keyword buf[s:e], or -1."""
    n = e - s
    w0 = _word(buf, s, n)
    w1 = _word(buf, s + 8, n - 8)
    t = np.int64(((w0 ^ (w1 * _U(_KP2)) ^ _U(n)) * _U(_KP1)) >> _U(64 - _TABLE_BITS))
    m = slots.shape[0] - 1
    while True:
        meta = slots[t, 2]
        if meta == _EMPTY:
            return -1
        if slots[t, 0] == w0 and slots[t, 1] == w1 and np.int64(meta & _M32) == n:
            if n <= 16:
                return np.int64(meta >> _S32)
            a = kwo[slots[t, 3]]
            same = True
            for j in range(16, n):
                if kw[a + j] != buf[s + j]:
                    same = False
                    break
            if same:
                return np.int64(meta >> _S32)
        t = (t + 1) & m


@jit(nrt=False, llvm_inline=True)
def _ws(buf, i, end):
    while i < end:
        c = buf[i]
        if c == 32 or c == 10 or c == 13 or c == 9:
            i += 1
        else:
            break
    return i


_SPECIAL = np.zeros(256, np.uint8)  # bytes that end a plain string scan
_SPECIAL[:32] = 1
_SPECIAL[128:] = 1
_SPECIAL[34] = 1
_SPECIAL[92] = 1


@jit(nrt=False, llvm_inline=True)
def _bytes_equal(w, c):
    """High bit set in each byte of ``w`` equal to ``c`` -- exact at the lowest such
    byte; bytes above it may also be flagged (a borrow), so use the lowest bit only."""
    x = w ^ (_ONES * _U(c))
    return (x - _ONES) & ~x & _HIGH


@jit(nrt=False, llvm_inline=True)
def _plain_str(buf, i, end):
    """buf[i] == '"': (index after the closing quote, first byte, end byte) of a string
    without escapes, control or non-ASCII bytes; index -1 when it is not one."""
    j = i + 1
    while j + 8 <= end:  # eight bytes a step: the first '"', '\\', < 0x20 or >= 0x80
        w = load_u64(buf, j)
        m = _bytes_equal(w, 0x22) | _bytes_equal(w, 0x5C) | (((w - _ONES * _U(0x20)) & ~w) | w) & _HIGH
        if m != _U(0):  # each test is exact at its lowest hit, so the lowest bit is the first
            j += np.int64(trailing_zeros(m)) >> 3
            break
        j += 8
    while j < end and _SPECIAL[buf[j]] == 0:
        j += 1
    if j < end and buf[j] == 34:
        return j + 1, i + 1, j
    return -1, 0, 0


@jit(nrt=False, llvm_inline=True)
def _hexval(c):
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


@jit(nrt=False)
def _skip_str(buf, i, end):
    """Any valid JSON string at buf[i] == '"' (escapes checked); index after it or -1."""
    j = i + 1
    while j < end:
        c = buf[j]
        if c == 34:
            return j + 1
        if c < 32 or c >= 128:
            return -1
        if c == 92:
            if j + 1 >= end:
                return -1
            d = buf[j + 1]
            if d == 117:  # \uXXXX
                if j + 5 >= end:
                    return -1
                for k in range(2, 6):
                    if _hexval(buf[j + k]) < 0:
                        return -1
                j += 6
                continue
            if d == 34 or d == 92 or d == 47 or d == 98 or d == 102 or d == 110 or d == 114 or d == 116:
                j += 2
                continue
            return -1
        j += 1
    return -1


_E8 = _U(100_000_000)


@jit(nrt=False, llvm_inline=True)
def _eight_digits(buf, i, end):
    """(value, True) when buf[i:i+8] are eight ASCII digits, else (0, False): one load,
    a SWAR digit check and three multiplies (Lemire's parse_eight_digits)."""
    if i + 8 > end:
        return _U(0), False
    w = load_u64(buf, i)
    hi = _U(0xF0F0F0F0F0F0F0F0)
    if ((w & hi) | (((w + _ONES * _U(6)) & hi) >> _U(4))) != _ONES * _U(0x33):
        return _U(0), False
    w -= _ONES * _U(0x30)
    w = w * _U(10) + (w >> _U(8))
    lo = _U(0x000000FF000000FF)
    w = ((w & lo) * _U(100 + (1_000_000 << 32)) + ((w >> _U(16)) & lo) * _U(1 + (10_000 << 32))) >> _U(32)
    return w & _M32, True


@jit(nrt=False, llvm_inline=True)
def _number(buf, i, end):
    """JSON number at buf[i]: (next index or -1, negative, digits w, decimal exponent,
    is an integer token, fits: <= 19 significant digits and a sane exponent)."""
    neg = False
    if i < end and buf[i] == 45:
        neg = True
        i += 1
    if i >= end:
        return -1, neg, _U(0), 0, True, False
    w = _U(0)
    nd = 0
    e10 = 0
    fits = True
    c = buf[i]
    if c == 48:
        i += 1
    elif 49 <= c <= 57:
        swar = True
        while i < end:
            if swar and nd <= 11:
                v, ok = _eight_digits(buf, i, end)
                if ok:
                    w = w * _E8 + v
                    nd += 8
                    i += 8
                    continue
                swar = False
            if not 48 <= buf[i] <= 57:
                break
            if nd < 19:
                w = w * _U(10) + _U(buf[i] - 48)
                nd += 1
            else:
                fits = False
            i += 1
    else:
        return -1, neg, _U(0), 0, True, False
    is_int = True
    if i < end and buf[i] == 46:
        is_int = False
        i += 1
        start = i
        swar = True
        while i < end:
            if swar and 0 < nd <= 11:  # after the leading zeros, which do not count
                v, ok = _eight_digits(buf, i, end)
                if ok:
                    w = w * _E8 + v
                    nd += 8
                    e10 -= 8
                    i += 8
                    continue
                swar = False
            d = buf[i] - 48
            if d < 0 or d > 9:
                break
            if nd == 0 and d == 0:
                e10 -= 1
            elif nd < 19:
                w = w * _U(10) + _U(d)
                nd += 1
                e10 -= 1
            else:
                fits = False
            i += 1
        if i == start:
            return -1, neg, w, 0, False, False
    if i < end and (buf[i] == 101 or buf[i] == 69):
        is_int = False
        i += 1
        eneg = False
        if i < end and (buf[i] == 43 or buf[i] == 45):
            eneg = buf[i] == 45
            i += 1
        start = i
        ex = 0
        while i < end and 48 <= buf[i] <= 57:
            if ex < 100000:
                ex = ex * 10 + (buf[i] - 48)
            i += 1
        if i == start:
            return -1, neg, w, 0, False, False
        e10 += -ex if eneg else ex
    if not fits and is_int:
        return i, neg, w, e10, is_int, False
    return i, neg, w, e10, is_int, fits


@jit(nrt=False, llvm_inline=True)
def _to_float(neg, w, e10, is_int, bits, fview):
    """(value, ok) for the decimal w * 10^e10, correctly rounded (ok False: undecided
    or out of the normal range; the caller falls back)."""
    if w == _U(0):
        if neg and not is_int:
            return -0.0, True
        return 0.0, True
    if w <= _TWO53 and -22 <= e10 <= 22:
        v = np.float64(w)
        v = v * _POW10[e10] if e10 >= 0 else v / _POW10[-e10]
        return (-v if neg else v), True
    if e10 < -342 or e10 > 308:
        return 0.0, False
    lz = np.int64(leading_zeros(w))
    w = w << _U(lz)
    idx = e10 + 342
    hi, lo = mul_u128(w, P5_HI[idx])
    mask = _U(0x1FF)
    if (hi & mask) == mask:
        hi2, lo2 = mul_u128(w, P5_LO[idx])
        lo_new = lo + hi2
        if lo_new < lo:
            hi += _U(1)
        lo = lo_new
    if lo == _U(0xFFFFFFFFFFFFFFFF) and not (-27 <= e10 <= 55):
        return 0.0, False
    upper = np.int64(hi >> _U(63))
    mant = hi >> _U(upper + 9)
    power2 = (((e10 * (152170 + 65536)) >> 16) + 63) + upper - lz + 1023
    if power2 <= 0:
        return 0.0, False  # subnormal: leave it to the general parser
    if (lo <= _U(1) and -4 <= e10 <= 23 and (mant & _U(3)) == _U(1)
            and (mant << _U(upper + 9)) == hi):
        mant &= ~_U(1)
    mant += mant & _U(1)
    mant >>= _U(1)
    if mant >= (_U(2) << _U(52)):
        mant = _U(1) << _U(52)
        power2 += 1
    mant &= ~(_U(1) << _U(52))
    if power2 >= 0x7FF:
        return 0.0, False
    bits[0] = mant | (_U(power2) << _U(52))
    v = fview[0]
    return (-v if neg else v), True


@jit(nrt=False)
def parse_floats(buf, offs, out, ok, bits, fview):
    """Each span buf[offs[i]:offs[i+1]] as one JSON number (for tests and tools);
    ``bits``/``fview``: one uint64 and its float64 view, scratch."""
    for r in range(offs.shape[0] - 1):
        j, neg, w, e10, is_int, fits = _number(buf, offs[r], offs[r + 1])
        ok[r] = False
        if j == offs[r + 1] and fits:
            v, good = _to_float(neg, w, e10, is_int, bits, fview)
            out[r] = v
            ok[r] = good


@jit(nrt=False, llvm_inline=True)
def _hex8(x):
    """Eight ASCII hex digits packed in a uint64 (the first in the low byte): (their
    value as four bytes, the first digit pair in the low byte; all eight valid).

    SWAR: a byte b < 0x80 is >= k exactly when b + (0x80 - k) has its high bit set,
    with no carry into the next byte."""
    y = x | (_ONES * _U(0x20))  # 'A'-'F' -> 'a'-'f'
    digit = (x + _ONES * _U(0x80 - 0x30)) & ~(x + _ONES * _U(0x80 - 0x3A))
    alpha = (y + _ONES * _U(0x80 - 0x61)) & ~(y + _ONES * _U(0x80 - 0x67))
    ok = (x & _HIGH) == _U(0) and ((digit | alpha) & _HIGH) == _HIGH
    v = (x & (_ONES * _U(0x0F))) + _U(9) * ((x >> _U(6)) & _ONES)  # letters have bit 6 set
    t = ((v << _U(4)) | (v >> _U(8))) & _U(0x00FF00FF00FF00FF)
    t = (t | (t >> _U(8))) & _U(0x0000FFFF0000FFFF)
    t = (t | (t >> _U(16))) & _M32
    return t, ok


@jit(nrt=False, llvm_inline=True)
def _put4(out, lv, k, o, t):
    for b in range(4):
        out[lv, k, o + b] = np.uint8((t >> _U(8 * b)) & _U(0xFF))


@jit(nrt=False, llvm_inline=True)
def _uuid(buf, s, e, out, lv, k):
    """Canonical 36-character UUID text in buf[s:e] into out[lv, k, :]; False if it is not one.
    Eight hex digits at a time (four unaligned loads, all inside the 36 bytes)."""
    if e - s != 36:
        return False
    if buf[s + 8] != 45 or buf[s + 13] != 45 or buf[s + 18] != 45 or buf[s + 23] != 45:
        return False
    a, ok_a = _hex8(load_u64(buf, s))
    b, ok_b = _hex8((load_u64(buf, s + 9) & _M32) | (load_u64(buf, s + 14) << _S32))
    c, ok_c = _hex8((load_u64(buf, s + 19) & _M32) | (load_u64(buf, s + 24) << _S32))
    d, ok_d = _hex8(load_u64(buf, s + 28))
    _put4(out, lv, k, 0, a)
    _put4(out, lv, k, 4, b)
    _put4(out, lv, k, 8, c)
    _put4(out, lv, k, 12, d)
    return ok_a and ok_b and ok_c and ok_d


@jit(nrt=False, llvm_inline=True)
def _digits(buf, s, n):
    """The decimal number in buf[s:s+n] (ASCII digits only), or -1."""
    v = 0
    for j in range(s, s + n):
        d = buf[j] - 48
        if d < 0 or d > 9:
            return -1
        v = v * 10 + d
    return v


@jit(nrt=False)
def _days_from_civil(y, m, d):
    y -= 1 if m <= 2 else 0
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@jit(nrt=False)
def _rfc3339(buf, s, e):
    """µs since the epoch of strict RFC 3339 text (fraction <= 6 digits, explicit zone);
    (0, False) when it is not in that form."""
    if e - s < 20:
        return 0, False
    y = _digits(buf, s, 4)
    mo = _digits(buf, s + 5, 2)
    d = _digits(buf, s + 8, 2)
    hh = _digits(buf, s + 11, 2)
    mi = _digits(buf, s + 14, 2)
    ss = _digits(buf, s + 17, 2)
    if (y < 2 or y > 9998 or mo < 1 or mo > 12 or d < 1 or hh < 0 or hh > 23 or mi < 0 or mi > 59
            or ss < 0 or ss > 59):
        return 0, False
    if buf[s + 4] != 45 or buf[s + 7] != 45 or buf[s + 13] != 58 or buf[s + 16] != 58:
        return 0, False
    t = buf[s + 10]
    if t != 84 and t != 116 and t != 32:
        return 0, False
    leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
    mdays = 31
    if mo == 2:
        mdays = 29 if leap else 28
    elif mo == 4 or mo == 6 or mo == 9 or mo == 11:
        mdays = 30
    if d > mdays:
        return 0, False
    p = s + 19
    frac = 0
    if p < e and buf[p] == 46:
        p += 1
        nf = 0
        while p < e and 48 <= buf[p] <= 57:
            if nf >= 6:
                return 0, False
            frac = frac * 10 + (buf[p] - 48)
            nf += 1
            p += 1
        if nf == 0:
            return 0, False
        for _ in range(6 - nf):
            frac *= 10
    if p >= e:
        return 0, False
    off = 0
    z = buf[p]
    if z == 90 or z == 122:
        p += 1
    elif z == 43 or z == 45:
        if e - p != 6 or buf[p + 3] != 58:
            return 0, False
        oh = _digits(buf, p + 1, 2)
        om = _digits(buf, p + 4, 2)
        if oh < 0 or oh > 23 or om < 0 or om > 59:
            return 0, False
        off = (oh * 60 + om) * 60
        if z == 45:
            off = -off
        p += 6
    else:
        return 0, False
    if p != e:
        return 0, False
    secs = _days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - off
    return secs * 1_000_000 + frac, True


@jit(nrt=False, llvm_inline=True)
def _num_value(buf, i, end, bits, fview):
    """A number token as float64: (next index or -1 when not usable, value)."""
    j, neg, w, e10, is_int, fits = _number(buf, i, end)
    if j < 0 or not fits:
        return -1, 0.0
    v, ok = _to_float(neg, w, e10, is_int, bits, fview)
    if not ok:
        return -1, 0.0
    return j, v


@jit(nrt=False, llvm_inline=True)
def _is_null(buf, i, end):
    return i + 4 <= end and buf[i] == 110 and buf[i + 1] == 117 and buf[i + 2] == 108 and buf[i + 3] == 108


@jit(nrt=False)
def _skip_key(buf, i, end):
    """An object member's key and colon at i: the index after the colon, or -1."""
    if i >= end or buf[i] != 34:
        return -1
    i = _skip_str(buf, i, end)
    if i < 0:
        return -1
    i = _ws(buf, i, end)
    if i >= end or buf[i] != 58:
        return -1
    return i + 1


@jit(nrt=False)
def _skip_value(buf, i, end, stack):
    """Any valid JSON value at i (after whitespace); index after it or -1."""
    depth = 0
    while True:
        i = _ws(buf, i, end)
        if i >= end:
            return -1
        c = buf[i]
        opened = False
        if c == 123 or c == 91:
            j = _ws(buf, i + 1, end)
            if j < end and buf[j] == c + 2:  # {} or []
                i = j + 1
            else:
                if depth >= stack.shape[0]:
                    return -1
                stack[depth] = 0 if c == 123 else 1
                depth += 1
                i = j
                opened = True
                if c == 123:
                    i = _skip_key(buf, i, end)
                    if i < 0:
                        return -1
        elif c == 34:
            i = _skip_str(buf, i, end)
            if i < 0:
                return -1
        elif c == 45 or 48 <= c <= 57:
            j, neg, w, e10, is_int, fits = _number(buf, i, end)
            if j < 0:
                return -1
            i = j
        elif c == 116:
            if not (i + 4 <= end and buf[i + 1] == 114 and buf[i + 2] == 117 and buf[i + 3] == 101):
                return -1
            i += 4
        elif c == 102:
            if not (i + 5 <= end and buf[i + 1] == 97 and buf[i + 2] == 108 and buf[i + 3] == 115
                    and buf[i + 4] == 101):
                return -1
            i += 5
        elif c == 110:
            if not _is_null(buf, i, end):
                return -1
            i += 4
        else:
            return -1
        if opened:
            continue
        # a value is complete: close containers / move to the next element
        while True:
            if depth == 0:
                return i
            i = _ws(buf, i, end)
            if i >= end:
                return -1
            c = buf[i]
            top = stack[depth - 1]
            if c == 44:
                i += 1
                if top == 0:
                    i = _skip_key(buf, _ws(buf, i, end), end)
                    if i < 0:
                        return -1
                break
            if (c == 125 and top == 0) or (c == 93 and top == 1):
                i += 1
                depth -= 1
                continue
            return -1


@jit(nrt=False, llvm_inline=True)
def _member(buf, i, end, kw, kwo, kwc, slots):
    """An object member's key at buf[i]: (keyword code, or -1 for a key that is not
    one; start of its value after the colon and whitespace).  (-1, -1) when the key
    is not a plain string followed by a colon and a value."""
    if i >= end or buf[i] != 34:
        return -1, -1
    j, s, e = _plain_str(buf, i, end)
    if j < 0:
        return -1, -1
    code = _lookup(buf, s, e, kw, kwo, kwc, slots)
    j = _ws(buf, j, end)
    if j >= end or buf[j] != 58:
        return -1, -1
    j = _ws(buf, j + 1, end)
    if j >= end:
        return -1, -1
    return code, j


@jit(nrt=False, llvm_inline=True)
def _id_value(buf, i, end, idb, lv, kslot, kw, kwo, kwc, slots):
    """UUID text or {"id": "<uuid>"} at i into idb[kslot]: (next index or -1)."""
    if buf[i] == 34:
        if i + 37 >= end or buf[i + 37] != 34 or not _uuid(buf, i + 1, i + 37, idb, lv, kslot):
            return -1
        return i + 38
    if buf[i] != 123:
        return -1
    code, i = _member(buf, _ws(buf, i + 1, end), end, kw, kwo, kwc, slots)
    if code != 34 or buf[i] != 34:  # {"id": "<uuid>"}
        return -1
    j, s, e = _plain_str(buf, i, end)
    if j < 0 or not _uuid(buf, s, e, idb, lv, kslot):
        return -1
    i = _ws(buf, j, end)
    if i >= end or buf[i] != 125:
        return -1
    return i + 1


@jit(nrt=False, llvm_inline=True)
def _position(buf, i, end, fv, fp, lv, base, bits, fview, kw, kwo, kwc, slots):
    """{"x","y","z"} or [x, y, z] at i into fv[base:base+3]: next index or -1."""
    if buf[i] == 91:
        for a in range(3):
            i = _ws(buf, i + 1, end)
            if i >= end:
                return -1
            j, v = _num_value(buf, i, end, bits, fview)
            if j < 0:
                return -1
            fv[lv, base + a] = v
            i = _ws(buf, j, end)
            if i >= end or buf[i] != (44 if a < 2 else 93):
                return -1
        fp[lv, base] = fp[lv, base + 1] = fp[lv, base + 2] = True
        return i + 1
    if buf[i] != 123:
        return -1
    seen = 0
    while True:
        code, i = _member(buf, _ws(buf, i + 1, end), end, kw, kwo, kwc, slots)
        if code < 15 or code > 17:  # x, y, z
            return -1
        j, v = _num_value(buf, i, end, bits, fview)
        if j < 0:
            return -1
        fv[lv, base + code - 15] = v
        seen |= 1 << (code - 15)
        i = _ws(buf, j, end)
        if i >= end:
            return -1
        if buf[i] == 125:
            break
        if buf[i] != 44:
            return -1
    if seen != 7:
        return -1
    fp[lv, base] = fp[lv, base + 1] = fp[lv, base + 2] = True
    return i + 1


@jit(nrt=False, llvm_inline=True)
def _quote_or_backslash(buf, j, end):
    """Index of the first '"' or '\\' at or after j (end if none), eight bytes a step."""
    while j + 8 <= end:
        w = load_u64(buf, j)
        m = _bytes_equal(w, 0x22) | _bytes_equal(w, 0x5C)
        if m != _U(0):
            return j + (np.int64(trailing_zeros(m)) >> 3)
        j += 8
    while j < end and buf[j] != 34 and buf[j] != 92:
        j += 1
    return j


@jit(nrt=False, llvm_inline=True)
def _match_close(buf, i, end):
    """buf[i] == '{': the index after its matching '}' (brackets inside strings do not
    count), or -1.  Not a validator: the caller parses the span and checks it ends there."""
    depth = 0
    while i < end:
        c = buf[i]
        if c == 34:
            i = _quote_or_backslash(buf, i + 1, end)
            while i < end and buf[i] == 92:
                i = _quote_or_backslash(buf, i + 2, end)
        elif c == 123 or c == 91:
            depth += 1
        elif c == 125 or c == 93:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


@jit(nrt=False, llvm_inline=True)
def _level(buf, i, end, lv, tcode, idb, idp, ss, sp, fv, fp, tv, tp, sq, sqp,
           stack, bits, fview, kw, kwo, kwc, slots):
    """The members of one event object at buf[i] == '{' into the scratch of level ``lv``.

    Returns (next index or -1, members, alias-key code or -1, alias value start,
    payload start, data start, payload end, data end)."""
    nkeys = 0
    ext = -1
    ext_at = -1
    pay_at = -1
    data_at = -1
    pay_end = -1
    data_end = -1
    i = _ws(buf, i + 1, end)
    if i < end and buf[i] == 125:
        return i + 1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
    while True:
        code, i = _member(buf, i, end, kw, kwo, kwc, slots)
        if i < 0:
            return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
        nkeys += 1
        null = _is_null(buf, i, end)
        c = buf[i]
        if code == 0 or code == 1:  # type / event_type
            if null:
                tcode[lv, code] = -1
                i += 4
            elif c == 34:
                j, s, e = _plain_str(buf, i, end)
                if j < 0:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                k = _lookup(buf, s, e, kw, kwo, kwc, slots)
                tcode[lv, code] = k - 100 if k >= 100 else -2
                i = j
            else:
                return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
        elif 2 <= code <= 12:  # ids
            if null:
                idp[lv, code - 2] = False
                i += 4
            else:
                i = _id_value(buf, i, end, idb, lv, code - 2, kw, kwo, kwc, slots)
                if i < 0:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                idp[lv, code - 2] = True
        elif code == 13 or code == 14:  # position / new_position
            base = 3 if code == 13 else 6
            if null:
                fp[lv, base] = fp[lv, base + 1] = fp[lv, base + 2] = False
                i += 4
            else:
                i = _position(buf, i, end, fv, fp, lv, base, bits, fview, kw, kwo, kwc, slots)
                if i < 0:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
        elif 15 <= code <= 17 or 24 <= code <= 26:  # flat x, y, z; weight and its aliases
            slot = code - 6 if code <= 17 else code - 24
            if null:
                fp[lv, slot] = False
                i += 4
            else:
                j, v = _num_value(buf, i, end, bits, fview)
                if j < 0:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                fv[lv, slot] = v
                fp[lv, slot] = True
                i = j
        elif 18 <= code <= 22:  # plain strings
            if null:
                sp[lv, code - 18] = False
                i += 4
            elif c == 34:
                j, s, e = _plain_str(buf, i, end)
                if j < 0:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                ss[lv, code - 18, 0] = s
                ss[lv, code - 18, 1] = e
                sp[lv, code - 18] = True
                i = j
            else:
                return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
        elif code == 23:  # metadata: the raw JSON text of any value; null is none
            if null:
                sp[lv, 5] = False
                i += 4
            else:
                j = _skip_value(buf, i, end, stack)
                if j < 0:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                ss[lv, 5, 0] = i
                ss[lv, 5, 1] = j
                sp[lv, 5] = True
                i = j
        elif 27 <= code <= 30:  # times
            k = code - 27
            if null:
                tp[lv, k] = False
                i += 4
            elif c == 34:
                j, s, e = _plain_str(buf, i, end)
                if j < 0:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                us, ok = _rfc3339(buf, s, e)
                if not ok:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                tv[lv, k] = us
                tp[lv, k] = True
                i = j
            else:
                j, neg, w, e10, is_int, fits = _number(buf, i, end)
                if j < 0 or not is_int or not fits or w > _U(_MAX_MS):
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                ms = np.int64(w)
                tv[lv, k] = (-ms if neg else ms) * 1000
                tp[lv, k] = True
                i = j
        elif code == 31:  # seq
            if null:
                sqp[lv] = False
                i += 4
            else:
                j, neg, w, e10, is_int, fits = _number(buf, i, end)
                if j < 0 or not is_int or not fits or w > _U(0x7FFFFFFFFFFFFFFF) or (neg and w != _U(0)):
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                sq[lv] = np.int64(w)
                sqp[lv] = True
                i = j
        elif code == 32 or code == 33:  # payload / data (the envelope)
            if null:
                if code == 32:
                    pay_at = -1
                else:
                    data_at = -1
                i += 4
            elif c == 123 and lv == 0:
                # not validated here: level 1 parses it and must end exactly at the match
                j = _match_close(buf, i, end)
                if code == 32:
                    pay_at = i
                    pay_end = j
                else:
                    data_at = i
                    data_end = j
                i = j
                if i < 0:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
            else:
                return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
        else:
            if code >= 100 and lv == 0:  # {"NodeAdded": {...}}
                if c != 123:
                    return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
                ext = code - 100
                ext_at = i
            i = _skip_value(buf, i, end, stack)
            if i < 0:
                return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
        i = _ws(buf, i, end)
        if i >= end:
            return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
        if buf[i] == 125:
            return i + 1, nkeys, ext, ext_at, pay_at, data_at, pay_end, data_end
        if buf[i] != 44:
            return -1, 0, ext, ext_at, pay_at, data_at, pay_end, data_end
        i = _ws(buf, i + 1, end)


@jit(nrt=False)
def _first_type(tcode, l1, k1, l2, k2, l3, k3, l4, k4):
    if tcode[l1, k1] != -1:
        return tcode[l1, k1]
    if tcode[l2, k2] != -1:
        return tcode[l2, k2]
    if tcode[l3, k3] != -1:
        return tcode[l3, k3]
    return tcode[l4, k4]


@jit(nrt=False)
def _put_id(idb, idp, out_b, out_p, r, o, lv, k):
    out_p[o, r] = True
    for b in range(16):
        out_b[o, r, b] = idb[lv, k, b]


@jit(nrt=False, llvm_inline=True)
def _ext_tag(buf, i, end, kw, kwo, kwc, slots):
    """At buf[i] == '{': (event code, start of the inner object) when the object opens
    with ``"<event name>": {`` (the externally tagged form), else (-1, -1)."""
    code, j = _member(buf, _ws(buf, i + 1, end), end, kw, kwo, kwc, slots)
    if code < ALIAS_BASE or buf[j] != 123:
        return -1, -1
    return code - ALIAS_BASE, j


@jit(nrt=False)
def scan(buf, starts, ends, kw, kwo, kwc, slots, status, kind, oid, oidp, tus, tusp, seq, seqp,
         spans, spp, xyz, xyzp, wgt, wgtp, scratch):
    """Scan payload r = buf[starts[r]:ends[r]] for every r; status[r] = 0 when the row was
    extracted completely, 1 when it must go through the general decoder.

    Outputs per row: ``kind`` (event code), ``oid[k, r]``/``oidp[k, r]`` the ids (k:
    graph, node, edge, source, target, event, correlation, causation), ``tus``/``tusp`` time µs,
    ``seq``/``seqp``, ``spans``/``spp`` (name, node_type, edge_type, metadata
    byte spans), ``xyz``/``xyzp`` position, ``wgt``/``wgtp`` weight.  ``scratch``
    is :func:`new_scratch` (allocated by the caller: this kernel runs without
    reference counting, ~10x faster per helper call).
    """
    tcode, idb, idp, ss, sp, fv, fp, tv, tp, sq, sqp, stack, bits, fview = scratch
    n = starts.shape[0]
    for r in range(n):
        status[r] = 1
        start = starts[r]
        end = ends[r]
        for lv_ in range(2):  # plain loops: slice fills of tiny 2-D arrays cost more here
            tcode[lv_, 0] = -1
            tcode[lv_, 1] = -1
            for k_ in range(11):
                idp[lv_, k_] = False
            for k_ in range(6):
                sp[lv_, k_] = False
            for k_ in range(12):
                fp[lv_, k_] = False
            for k_ in range(4):
                tp[lv_, k_] = False
            sqp[lv_] = False
        i = _ws(buf, start, end)
        if i >= end or buf[i] != 123:
            continue
        ext, inner = _ext_tag(buf, i, end, kw, kwo, kwc, slots)
        envelope = False
        inner_end = -1
        if ext < 0:  # externally tagged events go straight to their inner object
            # the level as an int64, not Literal[int](0) / (1): literals compile _level twice
            j, nk, ext, ext_at, pay_at, data_at, pay_end, data_end = _level(
                buf, i, end, np.int64(0), tcode, idb, idp, ss, sp, fv, fp, tv, tp, sq, sqp,
                stack, bits, fview, kw, kwo, kwc, slots)
            if j < 0 or _ws(buf, j, end) != end or (pay_at >= 0 and data_at >= 0):
                continue  # (with both, the unused one would go unchecked: general path)
            inner = pay_at if pay_at >= 0 else data_at
            inner_end = pay_end if pay_at >= 0 else data_end
            envelope = inner >= 0
            if ext >= 0:
                if nk != 1:
                    continue
                inner = ext_at
        lv = 0
        if inner >= 0:
            lv = 1
            j, nk1, ext1, a1, p1, d1, pe1, de1 = _level(
                buf, inner, end, np.int64(1), tcode, idb, idp, ss, sp, fv, fp, tv, tp, sq, sqp,
                stack, bits, fview, kw, kwo, kwc, slots)
            if j < 0 or p1 >= 0 or d1 >= 0 or (envelope and j != inner_end):
                continue
            if ext >= 0 and not envelope:  # {"Tag": {...}} ends right after the inner object
                j = _ws(buf, j, end)
                if j >= end or buf[j] != 125 or _ws(buf, j + 1, end) != end:
                    continue
        # event type
        if ext >= 0:
            code = ext
        elif envelope:
            code = _first_type(tcode, 1, 0, 0, 1, 0, 0, 1, 1)
        else:
            code = _first_type(tcode, 0, 0, 0, 1, 0, 0, 0, 1)
        if code < 0:
            continue
        # graph id: graph_id, else the envelope's aggregate_id, else aggregate_id
        for o in range(8):
            oidp[o, r] = False
        if idp[lv, 0]:
            _put_id(idb, idp, oid, oidp, r, 0, lv, 0)
        elif envelope and idp[0, 1]:
            _put_id(idb, idp, oid, oidp, r, 0, 0, 1)
        elif idp[lv, 1]:
            _put_id(idb, idp, oid, oidp, r, 0, lv, 1)
        else:
            continue
        if idp[lv, 2]:
            _put_id(idb, idp, oid, oidp, r, 1, lv, 2)
        if idp[lv, 3]:
            _put_id(idb, idp, oid, oidp, r, 2, lv, 3)
        if idp[lv, 5]:  # source_id, else source
            _put_id(idb, idp, oid, oidp, r, 3, lv, 5)
        elif idp[lv, 4]:
            _put_id(idb, idp, oid, oidp, r, 3, lv, 4)
        if idp[lv, 7]:  # target_id, else target
            _put_id(idb, idp, oid, oidp, r, 4, lv, 7)
        elif idp[lv, 6]:
            _put_id(idb, idp, oid, oidp, r, 4, lv, 6)
        for o, k in ((5, 8), (6, 9), (7, 10)):  # event, correlation, causation
            if idp[lv, k]:
                _put_id(idb, idp, oid, oidp, r, o, lv, k)
            elif envelope and idp[0, k]:
                _put_id(idb, idp, oid, oidp, r, o, 0, k)
        if not oidp[5, r]:  # no event id: derive a stable one from the payload bytes
            span_hash(buf, start, end, oid[5], r)
            oidp[5, r] = True
        # time: the event's first time field; for an envelope, else its timestamp
        tusp[r] = False
        for k in range(4):
            if tp[lv, k]:
                tus[r] = tv[lv, k]
                tusp[r] = True
                break
        if not tusp[r] and envelope:
            if tp[0, 1]:
                tus[r] = tv[0, 1]
                tusp[r] = True
            elif tp[0, 0]:
                tus[r] = tv[0, 0]
                tusp[r] = True
        seqp[r] = sqp[lv] or (envelope and sqp[0])
        seq[r] = sq[lv] if sqp[lv] else sq[0]
        # name (name, new_name, label), node_type, edge_type, metadata
        spp[r, :] = False
        for k in range(3):
            if sp[lv, k]:
                spans[r, 0, 0] = ss[lv, k, 0]
                spans[r, 0, 1] = ss[lv, k, 1]
                spp[r, 0] = True
                break
        for o, k in ((1, 3), (2, 4)):
            if sp[lv, k]:
                spans[r, o, 0] = ss[lv, k, 0]
                spans[r, o, 1] = ss[lv, k, 1]
                spp[r, o] = True
        ml = 0 if envelope and not sp[lv, 5] else lv
        if sp[ml, 5]:
            spans[r, 3, 0] = ss[ml, 5, 0]
            spans[r, 3, 1] = ss[ml, 5, 1]
            spp[r, 3] = True
        # position: position, new_position, else flat x, y, z (all three)
        xyzp[r] = False
        for base in (3, 6, 9):
            if fp[lv, base] and fp[lv, base + 1] and fp[lv, base + 2]:
                xyz[r, 0] = fv[lv, base]
                xyz[r, 1] = fv[lv, base + 1]
                xyz[r, 2] = fv[lv, base + 2]
                xyzp[r] = True
                break
        wgtp[r] = False
        for k in range(3):
            if fp[lv, k]:
                wgt[r] = fv[lv, k]
                wgtp[r] = True
                break
        kind[r] = code
        status[r] = 0


@jit
def new_scratch():
    """Per-level working arrays for :func:`scan` (compiled: :func:`scan_columns` makes
    them too)."""
    bits = np.zeros(1, np.uint64)
    return (np.empty((2, 2), np.int64), np.zeros((2, 11, 16), np.uint8), np.zeros((2, 11), np.bool_),
            np.zeros((2, 6, 2), np.int64), np.zeros((2, 6), np.bool_), np.zeros((2, 12), np.float64),
            np.zeros((2, 12), np.bool_), np.zeros((2, 4), np.int64), np.zeros((2, 4), np.bool_),
            np.zeros(2, np.int64), np.zeros(2, np.bool_), np.zeros(64, np.int8), bits,
            bits.view(np.float64))


@jit
def scan_columns(buf, starts, ends, kw, kwo, kwc, slots, received):
    """:func:`scan` and the engine's columns from it, in one call: ``(ok, *columns)``.

    ``ok``: every payload was extracted completely (else the caller takes the general
    path, and ``columns`` is not to be used).  ``columns``, packed into few arrays
    (boxing each returned array costs ~0.7 µs, and a 1-event batch's whole scan ~2 µs):
    seq (uint64, 0 where absent), kind, t (µs; ``received`` where absent), ``present``
    (9, n) bool rows: seq_ok, t_ok, then the graph, node, edge, source and target ids'
    presence, pos_ok, w_ok; ``ids`` (5, n, 2) uint64 words of those ids; ``xyz`` (3, n)
    (NaN where absent); weight (float32, NaN where absent); ``spresent`` (3, n) bool and
    ``offs`` (3, n + 1) int64 for name, node_type and edge_type, then their bytes.
    A one-event batch cost ~50 numpy calls from Python before this kernel existed.
    """
    n = starts.shape[0]
    status = np.empty(n, np.uint8)
    kind = np.empty(n, np.int8)
    oid = np.zeros((8, n, 16), np.uint8)
    oidp = np.zeros((8, n), np.bool_)
    tus = np.empty(n, np.int64)
    tusp = np.zeros(n, np.bool_)
    seq = np.zeros(n, np.int64)
    seqp = np.zeros(n, np.bool_)
    spans = np.zeros((n, 4, 2), np.int64)
    spp = np.zeros((n, 4), np.bool_)
    xyz = np.zeros((n, 3))
    xyzp = np.zeros(n, np.bool_)
    wgt = np.zeros(n)
    wgtp = np.zeros(n, np.bool_)
    scan(buf, starts, ends, kw, kwo, kwc, slots, status, kind, oid, oidp, tus, tusp, seq, seqp,
         spans, spp, xyz, xyzp, wgt, wgtp, new_scratch())
    ok = True
    seq_u = np.zeros(n, np.uint64)
    t = np.empty(n, np.int64)
    pos = np.empty((3, n))
    w = np.empty(n, np.float32)
    present = np.zeros((9, n), np.bool_)
    ids = np.empty((5, n, 2), np.uint64)
    for k in range(5):
        ids[k] = oid[k].view(np.uint64)
    for r in range(n):
        if status[r] != 0:
            ok = False
        if seqp[r]:
            seq_u[r] = np.uint64(seq[r])
        t[r] = tus[r] if tusp[r] else received[r]
        for a in range(3):
            pos[a, r] = xyz[r, a] if xyzp[r] else np.nan
        w[r] = np.float32(wgt[r]) if wgtp[r] else np.float32(np.nan)
        present[0, r] = seqp[r]
        present[1, r] = True
        for k in range(5):
            present[2 + k, r] = oidp[k, r]
        present[7, r] = xyzp[r]
        present[8, r] = wgtp[r]
    spresent = np.empty((3, n), np.bool_)
    offs = np.empty((3, n + 1), np.int64)
    name_off, name_b = gather_spans(buf, spans, spp, 0)
    ntype_off, ntype_b = gather_spans(buf, spans, spp, 1)
    etype_off, etype_b = gather_spans(buf, spans, spp, 2)
    offs[0] = name_off
    offs[1] = ntype_off
    offs[2] = etype_off
    for k in range(3):
        for r in range(n):
            spresent[k, r] = spp[r, k]
    return ok, seq_u, kind, t, present, ids, pos, w, spresent, offs, name_b, ntype_b, etype_b


@jit
def gather_spans(buf, spans, present, col):
    """Concatenate buf[spans[r, col, 0]:spans[r, col, 1]] over present rows:
    (offsets int64 (n + 1), bytes)."""
    n = spans.shape[0]
    offs = np.zeros(n + 1, np.int64)
    for r in range(n):
        ln = spans[r, col, 1] - spans[r, col, 0] if present[r, col] else 0
        offs[r + 1] = offs[r] + ln
    out = np.empty(offs[n], np.uint8)
    for r in range(n):
        if present[r, col]:
            s = spans[r, col, 0]
            o = offs[r]
            for j in range(spans[r, col, 1] - s):
                out[o + j] = buf[s + j]
    return offs, out
