"""NATS protocol framing of a socket buffer: every MSG/HMSG frame as spans.

One call walks a received buffer and records, per complete message frame,
the byte spans of subject, reply and payload, the JetStream stream sequence
parsed from the ack reply subject, and a kind (0: an event message, 1: the
Arrow batch subject, 2: a message on the inbox itself, i.e. a pull status).
Other protocol lines (PING, PONG, INFO, +OK, -ERR) are returned as spans for
the caller.  Nothing is copied.
"""
from ._jit import jit
from .jsonscan import _digits


@jit(nrt=False)
def _same(buf, s, e, word):
    if e - s != word.shape[0]:
        return False
    for j in range(e - s):
        if buf[s + j] != word[j]:
            return False
    return True


@jit(nrt=False)
def _int(buf, s, e):
    if s >= e or e - s > 18:
        return -1
    return _digits(buf, s, e - s)


@jit(nrt=False, llvm_inline=True)
def ack_seq(buf, s, e):
    """Stream sequence from a JetStream ack subject ``$JS.ACK...`` (v1: 9 tokens, the
    6th; v2: the 5th from the end); 0 when it is not one.

    One pass keeps the positions of the last five dots: with 8 dots (v1) the
    sequence lies between the 4th and 3rd dot from the end, else between the 5th
    and the 4th."""
    if e - s < 8 or buf[s] != 36:  # '$'
        return 0
    d1 = d2 = d3 = d4 = d5 = -1  # d1: the last dot, d5: the fifth from the end
    ndots = 0
    for j in range(s, e):
        if buf[j] == 46:
            d5, d4, d3, d2, d1 = d4, d3, d2, d1, j
            ndots += 1
    if ndots == 8:
        a, b = d4 + 1, d3
    elif ndots >= 5:
        a, b = d5 + 1, d4
    else:  # fewer than 6 tokens: not an ack subject
        return 0
    v = _int(buf, a, b)
    return v if v > 0 else 0


@jit(nrt=False)
def frames(buf, pos, inbox, batch_subject, ss, se, rs, re, ds, de, seq, kind, cs, ce, counts):
    """Parse buf[pos:] into the output arrays (capacity = their length).

    Returns the position after the last complete frame or line consumed (-1: a
    malformed frame header); ``counts`` = [messages, control lines].  Stops early
    when an output is full.

    A MSG/HMSG header line is read once: its tokens are split while looking for
    its end (a subject, sid, reply or size never holds a space or a CR).
    """
    n = buf.shape[0]
    m = 0
    c = 0
    cap_m = ss.shape[0]
    cap_c = cs.shape[0]
    while pos < n:
        b0 = buf[pos]
        op = 0
        if b0 == 77 and pos + 4 < n and buf[pos + 1] == 83 and buf[pos + 2] == 71 and buf[pos + 3] == 32:
            op = 4  # "MSG "
        elif (b0 == 72 and pos + 5 < n and buf[pos + 1] == 77 and buf[pos + 2] == 83
              and buf[pos + 3] == 71 and buf[pos + 4] == 32):
            op = 5  # "HMSG "
        if op:
            if m >= cap_m:
                break
            # tokens after the op: subject sid [reply] [hdr_len] total_len
            t0s = t0e = t2s = t2e = t3s = t3e = t4s = t4e = 0  # token 1 (the sid) is not needed
            ntok = 0
            j = pos + op
            while j < n:
                ch = buf[j]
                if ch == 32:
                    j += 1
                    continue
                if ch == 13:
                    break
                a = j
                j += 1
                while j < n and buf[j] > 32:  # not a space, a CR or another control byte
                    j += 1
                if ntok == 0:
                    t0s, t0e = a, j
                elif ntok == 2:
                    t2s, t2e = a, j
                elif ntok == 3:
                    t3s, t3e = a, j
                elif ntok == 4:
                    t4s, t4e = a, j
                ntok += 1
            if j + 1 >= n:
                break  # the header line is not complete yet
            if buf[j + 1] != 10:
                return -1  # a CR inside the header line
            eol = j
            has_reply = ntok == op
            if op == 4:
                if ntok == 4:
                    hl, tl = 0, _int(buf, t3s, t3e)
                elif ntok == 3:
                    hl, tl = 0, _int(buf, t2s, t2e)
                else:
                    return -1
            else:
                if ntok == 5:
                    hl, tl = _int(buf, t3s, t3e), _int(buf, t4s, t4e)
                elif ntok == 4:
                    hl, tl = _int(buf, t2s, t2e), _int(buf, t3s, t3e)
                else:
                    return -1
            if hl < 0 or tl < 0 or hl > tl:
                return -1
            start = eol + 2
            end = start + tl
            if end + 2 > n:
                break
            ss[m] = t0s
            se[m] = t0e
            if has_reply:
                rs[m] = t2s
                re[m] = t2e
                seq[m] = ack_seq(buf, t2s, t2e)
            else:
                rs[m] = re[m] = 0
                seq[m] = 0
            ds[m] = start + hl
            de[m] = end
            if _same(buf, t0s, t0e, inbox):
                kind[m] = 2
            elif _same(buf, t0s, t0e, batch_subject):
                kind[m] = 1
            else:
                kind[m] = 0
            m += 1
            pos = end + 2
        else:
            eol = pos
            while eol + 1 < n and not (buf[eol] == 13 and buf[eol + 1] == 10):
                eol += 1
            if eol + 1 >= n:
                break
            if c >= cap_c:
                break
            cs[c] = pos
            ce[c] = eol
            c += 1
            pos = eol + 2
    counts[0] = m
    counts[1] = c
    return pos
