"""Walks over the projection's linked lists (a graph's nodes, a node's incident edges),
and the gather that turns answer node indices into id columns."""
import numpy as np
from numba import prange

from ._jit import jit, pjit, prefetch
from .intern import lookup


@jit(nrt=False)
def graph_nodes(nhead, gnext, g, out):
    """Node indices of graph ``g`` into ``out`` (sized to its node count); returns the count."""
    n = 0
    v = nhead[g]
    while v >= 0 and n < out.shape[0]:
        out[n] = v
        n += 1
        v = gnext[v]
    return n


@jit
def live_page(flags, n, offset, limit, edges):
    """Rows ``offset .. offset + limit`` (``limit`` < 0: all from ``offset``) of the live
    slots among the first ``n``: ``flags`` are the nodes' liveness (live: non-zero), or
    with ``edges`` the edges' sources (live: >= 0).  Stops at the page's last row: an
    unfiltered listing's first pages no longer select every live slot first."""
    out = np.empty(max(0, min(limit, n)) if limit >= 0 else n, np.int64)
    k = 0  # live slots seen
    w = 0
    for i in range(n):
        ok = flags[i] >= 0 if edges else flags[i] != 0
        if ok:
            if k >= offset:
                if limit >= 0 and w >= limit:
                    break
                out[w] = i
                w += 1
            k += 1
    return out[:w]


@jit(nrt=False)
def graph_edges(nhead, gnext, ihead, hnext, g, out):
    """Live edge indices of graph ``g`` into ``out`` (sized to its edge count), found from
    its nodes' incident lists: an edge belongs to its source's graph, so each is taken
    once, at its source's half (even half-edge numbers).  O(the graph's nodes and
    their edges), where scanning every edge slot is O(all edges).  Returns the count."""
    n = 0
    v = nhead[g]
    while v >= 0:
        h = ihead[v]
        while h >= 0:
            if h & 1 == 0 and n < out.shape[0]:
                out[n] = h >> 1
                n += 1
            h = hnext[h]
        v = gnext[v]
    return n


@jit(nrt=False)
def nodes_by_id(galive, ngraphs, slots, keys, ngraph, nalive, w0, w1, out):
    """Live nodes whose id is ``(w0, w1)``, in any live graph, into ``out`` (room for
    ``ngraphs``); returns the count.  Nodes are keyed by (graph, id): one hash lookup
    per graph finds them, where a scan of every node's id reads them all."""
    n = 0
    for g in range(ngraphs):
        if galive[g]:
            v = lookup(slots, keys, ngraph, g, w0, w1)
            if v >= 0 and nalive[v] and n < out.shape[0]:
                out[n] = v
                n += 1
    return n


@jit(nrt=False)
def degree(ihead, hnext, v):
    """Number of half-edges at node ``v`` (a self-loop counts twice)."""
    n = 0
    h = ihead[v]
    while h >= 0:
        n += 1
        h = hnext[h]
    return n


@jit(nrt=False)
def incident(ihead, hnext, src, dst, v, edges, others, outgoing):
    """Edges at node ``v``: edge index, the node at the other end, and whether ``v`` is
    the edge's source; returns the count written."""
    n = 0
    h = ihead[v]
    while h >= 0 and n < edges.shape[0]:
        e = h >> 1
        if h & 1 == 0:
            others[n] = dst[e]
            outgoing[n] = True
        else:
            others[n] = src[e]
            outgoing[n] = False
        edges[n] = e
        n += 1
        h = hnext[h]
    return n


@jit(nrt=False, llvm_inline=True)
def _gather_row(node_keys, node_graph, graph_keys, nodes, out_n, out_g, j):
    """Row j of an answer: node ``nodes[j]``'s id and its graph's.  Callers walk j in
    order, so the row ``_GATHER_AHEAD`` on is prefetched: answers list nodes in no
    memory order (300k random rows: 6.5 -> 2.5 ms, 2 threads)."""
    m = nodes.shape[0]
    if j + _GATHER_AHEAD < m:
        a = nodes[j + _GATHER_AHEAD]
        prefetch(node_keys, a)
        prefetch(node_graph, a)
    v = nodes[j]
    g = node_graph[v]
    out_n[j, 0] = node_keys[v, 0]
    out_n[j, 1] = node_keys[v, 1]
    out_g[j, 0] = graph_keys[g, 0]
    out_g[j, 1] = graph_keys[g, 1]


_GATHER_AHEAD = 16


@jit(nrt=False)
def _query_rows(query_of_row, offsets, q):
    for j in range(offsets[q], offsets[q + 1]):
        query_of_row[j] = q


@pjit
def gather_ids(node_keys, node_graph, graph_keys, nodes, query_of_row, offsets, out_n, out_g):
    """Answer columns for node indices ``nodes`` in one parallel pass: the node ids and
    their graphs' ids into ``out_n``/``out_g`` (``(m, 2)`` uint64 words each, the
    caller's) and, when ``offsets`` (CSR) is given, the query number of each row."""
    for j in prange(nodes.shape[0]):
        _gather_row(node_keys, node_graph, graph_keys, nodes, out_n, out_g, j)
    for q in prange(offsets.shape[0] - 1):
        _query_rows(query_of_row, offsets, q)


@jit
def gather_ids_serial(node_keys, node_graph, graph_keys, nodes, query_of_row, offsets, out_n, out_g):
    """:func:`gather_ids` on the calling thread, for small answers (no thread hand-off)."""
    for j in range(nodes.shape[0]):
        _gather_row(node_keys, node_graph, graph_keys, nodes, out_n, out_g, j)
    for q in range(offsets.shape[0] - 1):
        _query_rows(query_of_row, offsets, q)


@jit(nrt=False, llvm_inline=True)
def _gather_slot(mkeys, mgrp, dkeys, dgrp, nmain, graph_keys, slots, out_n, out_g, j):
    """Row j of a slot answer (see gather_slot_ids), the row ``_GATHER_AHEAD`` on
    prefetched when it is in the main grid.  Inlined: as a call it passed the seven
    arrays by value for every row."""
    if j + _GATHER_AHEAD < slots.shape[0]:
        a = slots[j + _GATHER_AHEAD]
        if a < nmain:
            prefetch(mkeys, a)
            prefetch(mgrp, a)
    s = slots[j]
    if s < nmain:
        g = mgrp[s]
        out_n[j, 0] = mkeys[s, 0]
        out_n[j, 1] = mkeys[s, 1]
    else:
        s -= nmain
        g = dgrp[s]
        out_n[j, 0] = dkeys[s, 0]
        out_n[j, 1] = dkeys[s, 1]
    out_g[j, 0] = graph_keys[g, 0]
    out_g[j, 1] = graph_keys[g, 1]


@pjit
def gather_slot_ids(mkeys, mgrp, dkeys, dgrp, nmain, graph_keys, slots, query_of_row, offsets, out_n, out_g):
    """:func:`gather_ids` for answers given as grid slots (main grid ``0..nmain-1``, then
    the delta grid), from node ids stored in grid order: a query's hits sit in a few
    runs of cells, so these reads are nearly sequential where node rows are scattered.
    The caller gives the outputs (``(m, 2)`` uint64 each, ``m = len(slots)``)."""
    for j in prange(slots.shape[0]):
        _gather_slot(mkeys, mgrp, dkeys, dgrp, nmain, graph_keys, slots, out_n, out_g, j)
    for q in prange(offsets.shape[0] - 1):
        _query_rows(query_of_row, offsets, q)


# --- JSON rows for replies -----------------------------------------------------
# One fixed-width row per node, ``{"node_id":"<uuid>","graph_id":"<uuid>"},``, so a
# reply's list of nodes is a slice of one buffer.  The ids' 16 bytes are the two
# little-endian uint64 words as stored.

_HEX = np.frombuffer(b"0123456789abcdef", np.uint8).copy()
_ROW_A = np.frombuffer(b'{"node_id":"', np.uint8).copy()
_ROW_B = np.frombuffer(b'","graph_id":"', np.uint8).copy()
_ROW_C = np.frombuffer(b'"},', np.uint8).copy()
ROW_LEN = _ROW_A.shape[0] + _ROW_B.shape[0] + _ROW_C.shape[0] + 72


@jit(nrt=False, llvm_inline=True)
def _put(out, o, piece):
    for k in range(piece.shape[0]):
        out[o + k] = piece[k]
    return o + piece.shape[0]


@jit(nrt=False, llvm_inline=True)
def _put_uuid(out, o, w0, w1):
    """Canonical UUID text (36 chars, lower-case hex) of the 16 bytes of words w0, w1."""
    for b in range(16):
        w = w0 if b < 8 else w1
        v = (w >> np.uint64(8 * (b % 8))) & np.uint64(0xFF)
        if b == 4 or b == 6 or b == 8 or b == 10:
            out[o] = 45  # '-'
            o += 1
        out[o] = _HEX[v >> np.uint64(4)]
        out[o + 1] = _HEX[v & np.uint64(15)]
        o += 2
    return o


@jit
def uuid_text_rows(words):
    """Canonical UUID text (36 bytes) per row of ``(n, 2)`` uint64 words."""
    out = np.empty(words.shape[0] * 36, np.uint8)
    for j in range(words.shape[0]):
        _put_uuid(out, j * 36, words[j, 0], words[j, 1])
    return out


@jit
def node_rows_json(node_keys, node_graph, graph_keys, nodes):
    """``ROW_LEN`` bytes per node index in ``nodes``: its JSON object and a comma."""
    m = nodes.shape[0]
    out = np.empty(m * ROW_LEN, np.uint8)
    for j in range(m):
        if j + _GATHER_AHEAD < m:  # nodes in no memory order (see _gather_row)
            a = nodes[j + _GATHER_AHEAD]
            prefetch(node_keys, a)
            prefetch(node_graph, a)
        n = nodes[j]
        g = node_graph[n]
        o = _put(out, j * ROW_LEN, _ROW_A)
        o = _put_uuid(out, o, node_keys[n, 0], node_keys[n, 1])
        o = _put(out, o, _ROW_B)
        o = _put_uuid(out, o, graph_keys[g, 0], graph_keys[g, 1])
        _put(out, o, _ROW_C)
    return out


@jit
def first_hits_json(offsets, limits, idx, node_keys, node_graph, graph_keys, n_nodes):
    """JSON rows (as :func:`node_rows_json`) of the first ``limits[j]`` hits of each query
    ``j`` of a CSR answer (``offsets``, node indices ``idx``): what radius replies carry.
    Returns ``(kept, rows, ok)``: query j's rows are rows ``kept[j]:kept[j + 1]``; ``ok`` is
    False when a node index is out of range (a damaged index: nothing is read for it).
    One call instead of a dozen small numpy ones a reply (~100 us of a one-request reply)."""
    n = offsets.shape[0] - 1
    kept = np.zeros(n + 1, np.int64)
    for j in range(n):
        kept[j + 1] = kept[j] + min(offsets[j + 1] - offsets[j], limits[j])
    nodes = np.empty(kept[n], np.int64)
    for j in range(n):
        a = offsets[j]
        for k in range(kept[j + 1] - kept[j]):
            v = idx[a + k]
            if v < 0 or v >= n_nodes:
                return kept, np.empty(0, np.uint8), False
            nodes[kept[j] + k] = v
    return kept, node_rows_json(node_keys, node_graph, graph_keys, nodes), True


ISO_LEN = 27  # "YYYY-MM-DDTHH:MM:SS.ffffffZ"


@jit(nrt=False, llvm_inline=True)
def _put_digits(out, o, v, width):
    u = np.uint64(v)  # never negative here: unsigned division by 10 is a multiply and a shift
    for k in range(width - 1, -1, -1):
        out[o + k] = np.uint8(48 + u % np.uint64(10))
        u //= np.uint64(10)


@jit(nrt=False, llvm_inline=True)
def _put_iso(out, o, t, memo):
    """RFC 3339 UTC text of ``t`` µs since the epoch at ``out[o:]``:
    ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (fractional part only when not zero).  Returns the
    position after it, or -1 (nothing written) when the year falls outside 0..9999.
    ``memo`` (int64[4]: day, year, month, day of month; day = INT64_MIN at first) keeps
    the last civil date: the times of one reply mostly fall on one day."""
    days = t // 86_400_000_000  # floor division: correct before 1970 too
    rem = t - days * 86_400_000_000
    if days == memo[0]:
        y, m, d = memo[1], memo[2], memo[3]
    else:
        # civil date from days since 1970-01-01 (H. Hinnant's algorithm)
        z = days + 719468
        era = z // 146097  # floor division (the C original truncates, hence its z - 146096)
        doe = z - era * 146097
        yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
        y = yoe + era * 400
        doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
        mp = (5 * doy + 2) // 153
        d = doy - (153 * mp + 2) // 5 + 1
        m = mp + 3 if mp < 10 else mp - 9
        if m <= 2:
            y += 1
        memo[0], memo[1], memo[2], memo[3] = days, y, m, d
    if y < 0 or y > 9999:
        return -1
    _put_digits(out, o, y, 4)
    out[o + 4] = 45
    _put_digits(out, o + 5, m, 2)
    out[o + 7] = 45
    _put_digits(out, o + 8, d, 2)
    out[o + 10] = 84
    secs = rem // 1_000_000  # rem >= 0
    frac = rem - secs * 1_000_000
    _put_digits(out, o + 11, secs // 3600, 2)
    out[o + 13] = 58
    _put_digits(out, o + 14, (secs // 60) % 60, 2)
    out[o + 16] = 58
    _put_digits(out, o + 17, secs % 60, 2)
    if frac:
        out[o + 19] = 46
        _put_digits(out, o + 20, frac, 6)
        out[o + 26] = 90
        return o + 27
    out[o + 19] = 90
    return o + 20


_NO_DAY = np.iinfo(np.int64).min


@jit
def iso_text_rows(us):
    """RFC 3339 UTC text per int64 µs since the epoch, ``ISO_LEN`` bytes a row:
    ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` NUL-padded (fractional part only when not zero).
    Returns ``(rows, ok)``; ``ok`` is False when a year falls outside 0..9999."""
    n = us.shape[0]
    out = np.zeros(n * ISO_LEN, np.uint8)
    memo = np.full(4, _NO_DAY, np.int64)
    ok = True
    for j in range(n):
        if _put_iso(out, j * ISO_LEN, us[j], memo) < 0:
            ok = False
    return out, ok


@jit(nrt=False, llvm_inline=True)
def _put_int(out, o, v):
    """Decimal text of int64 ``v`` at ``out[o:]``; the position after it."""
    if v < 0:
        out[o] = 45
        o += 1
        if v == -9223372036854775808:
            return _put(out, o, _INT64_MIN_DIGITS)
        v = -v
    n = 1
    x = v
    while x >= 10:
        x //= 10
        n += 1
    _put_digits(out, o, v, n)
    return o + n


_INT64_MIN_DIGITS = np.frombuffer(b"9223372036854775808", np.uint8).copy()
_SUM_GID = np.frombuffer(b'{"graph_id":"', np.uint8).copy()
_SUM_NAME = np.frombuffer(b'","name":', np.uint8).copy()
_SUM_NC = np.frombuffer(b',"node_count":', np.uint8).copy()
_SUM_EC = np.frombuffer(b',"edge_count":', np.uint8).copy()
_SUM_CR = np.frombuffer(b',"created_at":"', np.uint8).copy()
_SUM_LM = np.frombuffer(b'","last_modified":"', np.uint8).copy()
_SUM_AR = np.frombuffer(b'","archived":', np.uint8).copy()
_NULL = np.frombuffer(b"null", np.uint8).copy()
_TRUE = np.frombuffer(b"true", np.uint8).copy()
_FALSE = np.frombuffer(b"false", np.uint8).copy()
_SUM_FIXED = (_SUM_GID.shape[0] + 36 + _SUM_NAME.shape[0] + _SUM_NC.shape[0] + 20 + _SUM_EC.shape[0] + 20
              + _SUM_CR.shape[0] + ISO_LEN + _SUM_LM.shape[0] + ISO_LEN + _SUM_AR.shape[0] + 5 + 2)


@jit
def summary_rows_json(gidx, key_words, name, ncount, ecount, created, lastmod, archived, name_offs, name_json):
    """The graph summaries of rows ``gidx`` as JSON objects, each followed by a comma:
    ``{"graph_id","name","node_count","edge_count","created_at","last_modified","archived"}``
    (the keys and values of ``Engine._summary_rows``).  ``name_json[name_offs[c]:name_offs[c + 1]]``
    is the JSON text of name code ``c`` (-1: null).  Returns ``(out, ends, ok)``: row j
    is ``out[ends[j - 1]:ends[j]]`` (comma included); ``ok`` is False when a time's year
    falls outside 0..9999 (RFC 3339 cannot say it; the caller takes the general path)."""
    m = gidx.shape[0]
    size = 0
    for j in range(m):
        c = name[gidx[j]]
        size += _SUM_FIXED + (name_offs[c + 1] - name_offs[c] if c >= 0 else 4)
    out = np.empty(size, np.uint8)
    ends = np.empty(m, np.int64)
    memo = np.full(4, _NO_DAY, np.int64)
    o = 0
    for j in range(m):
        g = gidx[j]
        o = _put(out, o, _SUM_GID)
        o = _put_uuid(out, o, key_words[g, 0], key_words[g, 1])
        o = _put(out, o, _SUM_NAME)
        c = name[g]
        if c >= 0:
            for k in range(name_offs[c], name_offs[c + 1]):
                out[o] = name_json[k]
                o += 1
        else:
            o = _put(out, o, _NULL)
        o = _put(out, o, _SUM_NC)
        o = _put_int(out, o, ncount[g])
        o = _put(out, o, _SUM_EC)
        o = _put_int(out, o, ecount[g])
        o = _put(out, o, _SUM_CR)
        o = _put_iso(out, o, created[g], memo)
        if o < 0:
            return out[:0], ends, False
        o = _put(out, o, _SUM_LM)
        o = _put_iso(out, o, lastmod[g], memo)
        if o < 0:
            return out[:0], ends, False
        o = _put(out, o, _SUM_AR)
        o = _put(out, o, _TRUE if archived[g] else _FALSE)
        out[o] = 125  # '}'
        out[o + 1] = 44  # ','
        o += 2
        ends[j] = o
    return out[:o], ends, True
