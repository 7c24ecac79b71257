"""Projection update kernel: one call applies a whole batch of events.

State is a few namedtuples of flat arrays (see ``cim_flow/_state.py`` for how
they are allocated and grown).  Semantics (ARCHITECTURE.md):

* a row whose ``seq`` is at or below the running version is *skipped*;
  a row without ``seq`` gets ``version + 1``;
* adding what exists updates it; removing or updating what is missing is an
  *ignored* no-op (with a reason code), never an error;
* removing a node removes its edges; deleting a graph removes its nodes and
  edges; events for unknown or deleted graphs are ignored;
* ``last_modified`` is the ``occurred_at`` of the last event applied to a graph.

Nodes and edges are keyed by ``(graph index, uuid)``: the same node id in two
graphs is two nodes.

Per-graph node counts are kept in a count-sorted permutation (``order``,
``pos``, ``lo``) updated in O(1) per node added or removed: ``order`` lists the
live graphs by node count, descending; ``lo[c]`` is the number of graphs with
more than ``c`` nodes, so graphs with ``a <= count <= b`` are exactly
``order[lo[b]:lo[a-1]]``.
"""
from collections import namedtuple

import numpy as np

from ._jit import jit, prefetch
from .intern import hash_key, intern, intern_edge_h, intern_h, lookup, lookup_edge_h, lookup_h, probe_hint

# -- event type codes (cim_flow.EventType mirrors these) --------------------
GRAPH_CREATED = 1
GRAPH_UPDATED = 2
GRAPH_ARCHIVED = 3
GRAPH_DELETED = 4
NODE_ADDED = 10
NODE_UPDATED = 11
NODE_MOVED = 12
NODE_REMOVED = 13
EDGE_ADDED = 20
EDGE_UPDATED = 21
EDGE_REMOVED = 23

# -- per-row outcome codes ---------------------------------------------------
APPLIED = 0
SKIPPED = 1
IGNORED_UNKNOWN_TYPE = 2
IGNORED_MISSING_FIELD = 3  # graph_id (the other missing fields have codes of their own, from 9)
IGNORED_UNKNOWN_GRAPH = 4
IGNORED_UNKNOWN_NODE = 5
IGNORED_UNKNOWN_EDGE = 6
IGNORED_MISSING_ENDPOINT = 7
IGNORED_BAD_POSITION = 8
IGNORED_NO_TIME = 9
IGNORED_NO_NODE_ID = 10
IGNORED_NO_EDGE_ID = 11
IGNORED_NO_ENDPOINT_ID = 12
IGNORED_NO_POSITION = 13

Graphs = namedtuple(
    "Graphs",
    "keys owner slots meta alive name created lastmod archived ncount ecount nhead "
    "order pos lo touched tlist",
)
# Graphs.meta: [interned, live, order length, touched count]; owner is all 0.
# tlist is sized per batch (a graph enters it once per batch: touched flag).
Nodes = namedtuple(
    "Nodes",
    "keys graph slots meta alive pos ntype label gnext gprev ihead dlist",
)
# Nodes.meta: [interned, live, dlist count]; pos (cap, 3) is NaN when a node has no position.
# dlist (per batch, may repeat a node) logs nodes whose position or liveness changed.
Edges = namedtuple("Edges", "keys slots meta src dst weight etype hnext hprev")
# Edges.meta: [interned, live].  src < 0 means removed: it holds ~src, so the owning
# graph (N.graph of the source, see intern.edge_owner) is still known.
# Half-edge 2e sits in src's incident list, 2e+1 in dst's.
Events = namedtuple(
    "Events",
    "seq seq_ok kind t t_ok gid gid_ok nid nid_ok eid eid_ok sid sid_ok tid tid_ok "
    "x y z pos_ok name ntype etype w w_ok",
)

_ONE = np.uint64(1)


@jit(nrt=False, llvm_inline=True)
def _touch(G, g):
    if G.touched[g] == 0:
        G.touched[g] = 1
        G.tlist[G.meta[3]] = g
        G.meta[3] += 1


@jit(nrt=False, llvm_inline=True)
def _dirty(N, n):
    N.dlist[N.meta[2]] = n
    N.meta[2] += 1


@jit(nrt=False, llvm_inline=True)
def _swap(G, p, q):
    a = G.order[p]
    b = G.order[q]
    G.order[p] = b
    G.pos[b] = p
    G.order[q] = a
    G.pos[a] = q


@jit(nrt=False, llvm_inline=True)
def _count_inc(G, g):
    c = G.ncount[g]
    _swap(G, G.pos[g], G.lo[c])
    G.lo[c] += 1
    G.ncount[g] = c + 1


@jit(nrt=False, llvm_inline=True)
def _count_dec(G, g):
    c = G.ncount[g]
    _swap(G, G.pos[g], G.lo[c - 1] - 1)
    G.lo[c - 1] -= 1
    G.ncount[g] = c - 1


@jit(nrt=False, llvm_inline=True)
def _link_half(E, N, h, n):
    head = N.ihead[n]
    E.hnext[h] = head
    E.hprev[h] = -1
    if head >= 0:
        E.hprev[head] = h
    N.ihead[n] = h


@jit(nrt=False, llvm_inline=True)
def _unlink_half(E, N, h, n):
    p = E.hprev[h]
    q = E.hnext[h]
    if p >= 0:
        E.hnext[p] = q
    else:
        N.ihead[n] = q
    if q >= 0:
        E.hprev[q] = p


@jit(nrt=False, llvm_inline=True)
def _remove_edge(G, N, E, e):
    s = E.src[e]
    _unlink_half(E, N, 2 * e, s)
    _unlink_half(E, N, 2 * e + 1, E.dst[e])
    E.src[e] = ~s
    G.ecount[N.graph[s]] -= 1
    E.meta[1] -= 1


@jit(nrt=False, llvm_inline=True)
def _remove_node(G, N, E, n):
    while N.ihead[n] >= 0:
        _remove_edge(G, N, E, N.ihead[n] >> 1)
    g = N.graph[n]
    p = N.gprev[n]
    q = N.gnext[n]
    if p >= 0:
        N.gnext[p] = q
    else:
        G.nhead[g] = q
    if q >= 0:
        N.gprev[q] = p
    N.alive[n] = 0
    _count_dec(G, g)
    N.meta[1] -= 1
    _dirty(N, n)


@jit(nrt=False, llvm_inline=True)
def _create_graph(G, g, t):
    G.alive[g] = 1
    G.name[g] = -1
    G.created[g] = t
    G.archived[g] = 0
    G.ncount[g] = 0
    G.ecount[g] = 0
    G.nhead[g] = -1
    L = G.meta[2]
    G.order[L] = g
    G.pos[g] = L
    G.meta[2] = L + 1
    G.meta[1] += 1


@jit(nrt=False, llvm_inline=True)
def _delete_graph(G, N, E, g):
    while G.nhead[g] >= 0:
        _remove_node(G, N, E, np.int64(G.nhead[g]))  # int64 like the other call: one specialisation
    # count is 0 now, so g sits in the tail block with the last element
    L = G.meta[2] - 1
    _swap(G, G.pos[g], L)
    G.meta[2] = L
    G.alive[g] = 0
    G.meta[1] -= 1


@jit(nrt=False, llvm_inline=True)
def _finite3(x, y, z):
    return np.isfinite(x) and np.isfinite(y) and np.isfinite(z)


@jit(nrt=False, inline=True)
def _apply_node(G, N, E, ev, i, g, k, hx, pre):
    if not ev.nid_ok[i]:
        return IGNORED_NO_NODE_ID
    has_pos = ev.pos_ok[i]
    if has_pos and not _finite3(ev.x[i], ev.y[i], ev.z[i]):
        return IGNORED_BAD_POSITION
    h = hx[i, 0] if pre else hash_key(g, ev.nid[i, 0], ev.nid[i, 1])
    if k == NODE_ADDED:
        n, _new = intern_h(N.slots, N.keys, N.graph, N.meta, g, ev.nid[i, 0], ev.nid[i, 1], h)
        if N.alive[n] == 0:
            N.alive[n] = 1
            N.pos[n, 0] = np.nan
            N.pos[n, 1] = np.nan
            N.pos[n, 2] = np.nan
            N.ntype[n] = -1
            N.label[n] = -1
            N.ihead[n] = -1
            head = G.nhead[g]
            N.gprev[n] = -1
            N.gnext[n] = head
            if head >= 0:
                N.gprev[head] = n
            G.nhead[g] = n
            _count_inc(G, g)
            N.meta[1] += 1
    else:
        n = lookup_h(N.slots, N.keys, N.graph, g, ev.nid[i, 0], ev.nid[i, 1], h)
        if n < 0 or N.alive[n] == 0:
            return IGNORED_UNKNOWN_NODE
        if k == NODE_REMOVED:
            _remove_node(G, N, E, n)
            return APPLIED
        if k == NODE_MOVED and not has_pos:
            return IGNORED_NO_POSITION
    if has_pos:
        N.pos[n, 0] = ev.x[i]
        N.pos[n, 1] = ev.y[i]
        N.pos[n, 2] = ev.z[i]
    if k != NODE_MOVED:
        if ev.ntype[i] >= 0:
            N.ntype[n] = ev.ntype[i]
        if ev.name[i] >= 0:
            N.label[n] = ev.name[i]
    _dirty(N, n)
    return APPLIED


@jit(nrt=False, inline=True)
def _apply_edge(G, N, E, ev, i, g, k, hx, pre):
    if not ev.eid_ok[i]:
        return IGNORED_NO_EDGE_ID
    he = hx[i, 2] if pre else hash_key(g, ev.eid[i, 0], ev.eid[i, 1])
    if k == EDGE_ADDED:
        if not (ev.sid_ok[i] and ev.tid_ok[i]):
            return IGNORED_NO_ENDPOINT_ID
        hs = hx[i, 0] if pre else hash_key(g, ev.sid[i, 0], ev.sid[i, 1])
        ht = hx[i, 1] if pre else hash_key(g, ev.tid[i, 0], ev.tid[i, 1])
        s = lookup_h(N.slots, N.keys, N.graph, g, ev.sid[i, 0], ev.sid[i, 1], hs)
        d = lookup_h(N.slots, N.keys, N.graph, g, ev.tid[i, 0], ev.tid[i, 1], ht)
        if s < 0 or d < 0 or N.alive[s] == 0 or N.alive[d] == 0:
            return IGNORED_MISSING_ENDPOINT
        e, new = intern_edge_h(E.slots, E.keys, E.src, N.graph, E.meta, g, ev.eid[i, 0], ev.eid[i, 1], s, he)
        if new or E.src[e] < 0:  # a fresh index's fields are not pre-filled (see _grow_fields)
            E.weight[e] = np.float32(np.nan)
            E.etype[e] = -1
            E.src[e] = s
            E.dst[e] = d
            _link_half(E, N, 2 * e, s)
            _link_half(E, N, 2 * e + 1, d)
            G.ecount[g] += 1
            E.meta[1] += 1
        elif E.src[e] != s or E.dst[e] != d:
            _unlink_half(E, N, 2 * e, E.src[e])
            _unlink_half(E, N, 2 * e + 1, E.dst[e])
            E.src[e] = s
            E.dst[e] = d
            _link_half(E, N, 2 * e, s)
            _link_half(E, N, 2 * e + 1, d)
    else:
        e = lookup_edge_h(E.slots, E.keys, E.src, N.graph, g, ev.eid[i, 0], ev.eid[i, 1], he)
        if e < 0 or E.src[e] < 0:
            return IGNORED_UNKNOWN_EDGE
        if k == EDGE_REMOVED:
            _remove_edge(G, N, E, e)
            return APPLIED
    if ev.w_ok[i]:
        E.weight[e] = ev.w[i]
    if ev.etype[i] >= 0:
        E.etype[e] = ev.etype[i]
    return APPLIED


@jit(nrt=False, inline=True)
def _apply_one(G, N, E, ev, i, gx, hx):
    k = ev.kind[i]
    if not (ev.gid_ok[i] and ev.t_ok[i]):
        return IGNORED_MISSING_FIELD if not ev.gid_ok[i] else IGNORED_NO_TIME
    t = ev.t[i]
    if k == GRAPH_CREATED:
        g, _new = intern(G.slots, G.keys, G.owner, G.meta, 0, ev.gid[i, 0], ev.gid[i, 1])
        if G.alive[g] == 0:
            _create_graph(G, g, t)
        if ev.name[i] >= 0:
            G.name[g] = ev.name[i]
        G.lastmod[g] = t
        _touch(G, g)
        return APPLIED
    if not (k == GRAPH_UPDATED or k == GRAPH_ARCHIVED or k == GRAPH_DELETED
            or (k >= NODE_ADDED and k <= NODE_REMOVED)
            or k == EDGE_ADDED or k == EDGE_UPDATED or k == EDGE_REMOVED):
        return IGNORED_UNKNOWN_TYPE
    # the pre-pass looked the graph up and hashed the row's ids under it; a graph it
    # did not find may have been created since, earlier in this batch: look again
    g = gx[i]
    pre = g >= 0
    if not pre:
        g = lookup(G.slots, G.keys, G.owner, 0, ev.gid[i, 0], ev.gid[i, 1])
    if g < 0 or G.alive[g] == 0:
        return IGNORED_UNKNOWN_GRAPH
    if k == GRAPH_UPDATED:
        if ev.name[i] >= 0:
            G.name[g] = ev.name[i]
        r = APPLIED
    elif k == GRAPH_ARCHIVED:
        G.archived[g] = 1
        r = APPLIED
    elif k == GRAPH_DELETED:
        _delete_graph(G, N, E, g)
        _touch(G, g)
        return APPLIED
    elif k < EDGE_ADDED:
        r = _apply_node(G, N, E, ev, i, g, k, hx, pre)
    else:
        r = _apply_edge(G, N, E, ev, i, g, k, hx, pre)
    if r == APPLIED:
        G.lastmod[g] = t
        _touch(G, g)
    return r


# Prefetch distances, in rows.  State is far bigger than the caches, so an event costs
# a few cache misses, each depending on the one before (hash slot -> entry -> the head
# of its edge list); issued ahead in three passes, they overlap instead of queueing:
# the slots a row will probe this far ahead, the entries they point at half as far
# (by then the slot's line has arrived), and, for an edge, the half-edges at the heads
# of its ends' incident lists (which linking it writes) a quarter as far.
_AHEAD_SLOTS = 16
_AHEAD_ENTRIES = 8
_AHEAD_HEADS = 4


@jit(nrt=False, llvm_inline=True)
def _hash_rows(G, ev, gx, hx):
    """The pre-pass: each row's graph index ``gx[j]`` (-1: not a node or edge event, or
    a graph not interned yet) and, under that graph, the :func:`hash_key` of its ids:
    ``hx[j] = (node or source, target, edge)``.  A graph's index never changes once
    given, nor does a table's size within a batch, so the prefetch passes and the apply
    reuse these instead of hashing every id three times (the rows are independent here,
    so the CPU overlaps their arithmetic, which a row's apply cannot)."""
    for j in range(ev.kind.shape[0]):
        k = ev.kind[j]
        gx[j] = -1
        if k < NODE_ADDED or not ev.gid_ok[j]:
            continue
        g = lookup(G.slots, G.keys, G.owner, 0, ev.gid[j, 0], ev.gid[j, 1])
        gx[j] = g
        if g < 0:
            continue
        if k < EDGE_ADDED:
            if ev.nid_ok[j]:
                hx[j, 0] = hash_key(g, ev.nid[j, 0], ev.nid[j, 1])
            continue
        if ev.sid_ok[j]:
            hx[j, 0] = hash_key(g, ev.sid[j, 0], ev.sid[j, 1])
        if ev.tid_ok[j]:
            hx[j, 1] = hash_key(g, ev.tid[j, 0], ev.tid[j, 1])
        if ev.eid_ok[j]:
            hx[j, 2] = hash_key(g, ev.eid[j, 0], ev.eid[j, 1])


@jit(nrt=False, llvm_inline=True)
def _warm_node(N, E, h, stage, moves):
    """Prefetch for a node probe of hash ``h``: its slot (stage 0); the entry it most
    likely finds (1), with the position when the event ``moves`` it; the half-edge at
    the head of that node's incident list (2, for an edge about to be linked)."""
    if stage == 0:
        prefetch(N.slots, h & np.uint64(N.slots.shape[0] - 1))
        return
    n = probe_hint(N.slots, h)
    if n < 0:
        return
    if stage == 1:
        prefetch(N.keys, n)
        prefetch(N.graph, n)  # the probe compares the owner too
        prefetch(N.alive, n)
        prefetch(N.ihead, n)
        if moves:
            prefetch(N.pos, n)
        return
    head = N.ihead[n]
    if head >= 0:
        prefetch(E.hprev, head)


@jit(nrt=False, llvm_inline=True)
def _warm(N, E, ev, j, gx, hx, stage):
    """Prefetch what row ``j`` will touch, one ``stage`` of :func:`_warm_node` (and for
    the edge's own key, its slot then its entry).  A hint only: results never depend on it."""
    if gx[j] < 0:
        return
    k = ev.kind[j]
    if k < EDGE_ADDED:
        if ev.nid_ok[j] and stage < 2:
            _warm_node(N, E, hx[j, 0], stage, ev.pos_ok[j])
        return
    if ev.eid_ok[j] and stage < 2:
        if stage == 0:
            prefetch(E.slots, hx[j, 2] & np.uint64(E.slots.shape[0] - 1))
        else:
            e = probe_hint(E.slots, hx[j, 2])
            if e >= 0:
                prefetch(E.keys, e)
                prefetch(E.src, e)
    if k == EDGE_ADDED and ev.sid_ok[j] and ev.tid_ok[j]:
        _warm_node(N, E, hx[j, 0], stage, np.bool_(False))
        _warm_node(N, E, hx[j, 1], stage, np.bool_(False))


@jit(nrt=False)
def apply_events(G, N, E, ev, version, status, seq_out, gx, hx):
    """Apply every row of ``ev`` in order; return the new version.

    ``status[i]`` gets the row's outcome code and ``seq_out[i]`` its sequence
    (assigned as ``version + 1`` when the row has none).  ``gx`` (int64, a row) and
    ``hx`` (uint64, three a row) are scratch for :func:`_hash_rows`.
    """
    v = np.uint64(version)
    m = ev.kind.shape[0]
    _hash_rows(G, ev, gx, hx)
    for i in range(m):
        # int64 stages, not literals: one specialisation of _warm, not three
        if i + _AHEAD_SLOTS < m:
            _warm(N, E, ev, i + _AHEAD_SLOTS, gx, hx, np.int64(0))
        if i + _AHEAD_ENTRIES < m:
            _warm(N, E, ev, i + _AHEAD_ENTRIES, gx, hx, np.int64(1))
        if i + _AHEAD_HEADS < m:
            _warm(N, E, ev, i + _AHEAD_HEADS, gx, hx, np.int64(2))
        if ev.seq_ok[i]:
            s = ev.seq[i]
            if s <= v:
                status[i] = SKIPPED
                seq_out[i] = s
                continue
        else:
            s = v + _ONE
        v = s
        seq_out[i] = s
        status[i] = _apply_one(G, N, E, ev, i, gx, hx)
    return v


@jit(nrt=False)
def apply_events_tuples(g, n, e, ev, version, status, seq_out, gx, hx):
    """:func:`apply_events` with the state as plain tuples (in the namedtuples' field
    order): numba types a plain tuple of arrays in its C fast path, a namedtuple in
    Python, ~0.15 µs an array; with ~60 arrays that was ~8 of a small batch's ~11 µs
    of call overhead.  The namedtuples are rebuilt here, at no cost."""
    return apply_events(Graphs(*g), Nodes(*n), Edges(*e), Events(*ev), version, status, seq_out, gx, hx)


@jit
def index_changes(alive, name, created, name_of, created_of, touched, not_indexed, no_time):
    """For the secondary indices after a batch: positions ``j`` in ``touched`` whose graph's
    indexed name (``name``, or ``not_indexed`` once deleted) differs from ``name_of``, and
    those whose creation time (``no_time`` once deleted) differs from ``created_of``.
    One call instead of a dozen NumPy ones on a handful of graphs."""
    m = touched.shape[0]
    names = np.empty(m, np.int64)
    times = np.empty(m, np.int64)
    a = 0
    b = 0
    for j in range(m):
        g = touched[j]
        live = alive[g] != 0
        nm = name[g] if live else not_indexed
        if nm != name_of[g]:
            names[a] = j
            a += 1
        t = created[g] if live else no_time
        if t != created_of[g]:
            times[b] = j
            b += 1
    return names[:a], times[:b]


@jit(nrt=False)
def count_range(lo, order_len, a, b):
    """``(start, stop)`` into ``order`` of graphs with ``a <= node_count <= b``."""
    start = lo[b] if b < lo.shape[0] else 0
    stop = order_len if a <= 0 else (lo[a - 1] if a - 1 < lo.shape[0] else 0)
    if stop < start:
        stop = start
    return start, stop
