"""Walks over the projection's linked lists: a graph's nodes, a node's incident edges."""
from ._jit import jit


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
