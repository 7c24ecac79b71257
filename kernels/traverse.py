"""Walks over the projection's linked lists (a graph's nodes, a node's incident edges),
and the gather that turns answer node indices into id columns."""
import numpy as np
from numba import prange

from ._jit import jit, pjit


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


@jit(nrt=False)
def _gather_row(node_keys, node_graph, graph_keys, nodes, out_n, out_g, j):
    v = nodes[j]
    g = node_graph[v]
    out_n[j, 0] = node_keys[v, 0]
    out_n[j, 1] = node_keys[v, 1]
    out_g[j, 0] = graph_keys[g, 0]
    out_g[j, 1] = graph_keys[g, 1]


@jit(nrt=False)
def _query_rows(query_of_row, offsets, q):
    for j in range(offsets[q], offsets[q + 1]):
        query_of_row[j] = q


@pjit
def gather_ids(node_keys, node_graph, graph_keys, nodes, query_of_row, offsets):
    """Answer columns for node indices ``nodes`` in one parallel pass: the node ids,
    their graphs' ids (``(m, 2)`` uint64 words each) and, when ``offsets`` (CSR) is
    given, the query number of each row."""
    m = nodes.shape[0]
    out_n = np.empty((m, 2), np.uint64)
    out_g = np.empty((m, 2), np.uint64)
    for j in prange(m):
        _gather_row(node_keys, node_graph, graph_keys, nodes, out_n, out_g, j)
    for q in prange(offsets.shape[0] - 1):
        _query_rows(query_of_row, offsets, q)
    return out_n, out_g


@jit
def gather_ids_serial(node_keys, node_graph, graph_keys, nodes, query_of_row, offsets):
    """:func:`gather_ids` on the calling thread, for small answers (no thread hand-off)."""
    m = nodes.shape[0]
    out_n = np.empty((m, 2), np.uint64)
    out_g = np.empty((m, 2), np.uint64)
    for j in range(m):
        _gather_row(node_keys, node_graph, graph_keys, nodes, out_n, out_g, j)
    for q in range(offsets.shape[0] - 1):
        _query_rows(query_of_row, offsets, q)
    return out_n, out_g
