"""Interning of ``(owner, uuid)`` keys into dense int32 indices.

Open addressing with linear probing over an int32 slot table (``-1`` =
empty).  The keys live in the entity's own arrays: two uint64 words of the
UUID in ``keys (capacity, 2)`` and the owning graph's index in ``owner``
(all zeros for graphs themselves), so a rehash only moves int32 slots.
An index, once given to a key, is never reused for another key: removal is
the owner's ``alive`` flag, never a hash-table delete (no tombstones).

A slot holds ``tag << IDX_BITS | index``: the index in the low :data:`IDX_BITS` bits and,
above them, 4 bits of the key's hash (bits the slot position does not use).  A probe
compares a key only when the tags agree: with linear probing at load 0.5-0.7 a miss
walks 2.5-6 slots on average, and without tags each of them read a random entry's key
(a cache miss each, most of an insert's cost at 1M nodes); now 1 in 16 of them does.
So at most ``2**IDX_BITS`` (134,217,728) entries a table.

Callers keep the load factor at or below :data:`MAX_LOAD` by calling
:func:`rehash` into a bigger table *before* a batch (the room needed is known
from the batch size), so the insert path never grows anything.
"""
import numpy as np

from ._jit import jit, mul_u128

MAX_LOAD = 0.7
IDX_BITS = 27
MAX_ENTRIES = 1 << IDX_BITS
_IDX_MASK = np.int32(MAX_ENTRIES - 1)
_TAG_SHIFT = np.uint64(60)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_G = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


@jit(nrt=False, llvm_inline=True)
def _mix(h):
    h = (h ^ (h >> _S30)) * _M1
    h = (h ^ (h >> _S27)) * _M2
    return h ^ (h >> _S31)


@jit(nrt=False, llvm_inline=True)
def hash_key(g, k0, k1):
    """Hash of key ``(g, k0, k1)``: two folded 128-bit multiplies (the high and low
    halves of a full product XORed, as wyhash does), the graph spread over the high bits
    of the second word by an odd constant so one node id in many graphs still scatters.
    It replaced three splitmix64 finalisers (six multiplies in one dependent chain):
    the projection kernel hashes every id two or three times an event, and this cut
    the kernel's time an event by 20-30% (``apply_costs.py kinds``, 1M nodes).
    Unkeyed, like the hash it replaced: ids chosen to collide can slow a table down."""
    hi, lo = mul_u128(k0 ^ _M1, k1 ^ (np.uint64(g) * _G) ^ _M2)
    hi, lo = mul_u128(hi ^ lo ^ _G, _M1)
    return hi ^ lo


@jit(nrt=False, inline=True)
def slot_of(slots, g, k0, k1):
    """Home slot of key ``(g, k0, k1)`` in a power-of-two slot table."""
    return hash_key(g, k0, k1) & np.uint64(slots.shape[0] - 1)


@jit(nrt=False, llvm_inline=True)
def _tag_of(h):
    """The tag bits of a slot value for hash ``h`` (its top 4 bits, shifted into place)."""
    return np.int32(h >> _TAG_SHIFT) << np.int32(IDX_BITS)


@jit(nrt=False, llvm_inline=True)
def probe_hint(slots, h):
    """The entry a probe for hash ``h`` most likely ends at: the first slot from its home
    whose tag matches (``-1`` when an empty slot or four probes come first: most likely
    a new key).  Keys are not compared: for prefetching only, never for answers."""
    mask = np.uint64(slots.shape[0] - 1)
    tag = _tag_of(h)
    s = h & mask
    for _ in range(4):
        v = slots[s]
        if v < 0:
            return -1
        if v & ~_IDX_MASK == tag:
            return np.int64(v & _IDX_MASK)
        s = (s + np.uint64(1)) & mask
    return -1


@jit(nrt=False, inline=True)
def _owner_at(owner, ngraph, by_src, i):
    """Graph owning entry i: ``owner[i]``, or for edges (``by_src``; ``owner`` is then the
    edges' ``src``) the graph of the source node, ``ngraph[src]`` (see the edge note below)."""
    if by_src:
        s = owner[i]
        if s < 0:
            s = ~s
        return ngraph[s]
    return owner[i]


@jit(nrt=False, inline=True)
def _probe(slots, keys, owner, ngraph, by_src, g, k0, k1, h):
    """``(slot, index, tag)`` of key ``(g, k0, k1)`` whose :func:`hash_key` is ``h``;
    index -1 and the free slot when absent; ``tag`` is what the key's slot value
    carries above the index."""
    mask = np.uint64(slots.shape[0] - 1)
    s = h & mask
    tag = _tag_of(h)
    while True:
        v = slots[s]
        if v < 0:
            return s, -1, tag
        if v & ~_IDX_MASK == tag:
            i = v & _IDX_MASK
            if keys[i, 0] == k0 and keys[i, 1] == k1 and _owner_at(owner, ngraph, by_src, i) == g:
                return s, i, tag
        s = (s + np.uint64(1)) & mask


@jit(nrt=False, inline=True)
def _intern(slots, keys, owner, ngraph, by_src, meta, g, k0, k1, own, h):
    s, i, tag = _probe(slots, keys, owner, ngraph, by_src, g, k0, k1, h)
    if i >= 0:
        return i, False
    i = meta[0]
    meta[0] = i + 1
    keys[i, 0] = k0
    keys[i, 1] = k1
    owner[i] = own
    slots[s] = tag | np.int32(i)
    return i, True


@jit(nrt=False, inline=True)
def _rehash(keys, owner, ngraph, by_src, n, new_slots):
    mask = np.uint64(new_slots.shape[0] - 1)
    for i in range(n):
        h = hash_key(_owner_at(owner, ngraph, by_src, i), keys[i, 0], keys[i, 1])
        s = h & mask
        while new_slots[s] >= 0:
            s = (s + np.uint64(1)) & mask
        new_slots[s] = _tag_of(h) | np.int32(i)


@jit(nrt=False, llvm_inline=True)
def lookup(slots, keys, owner, g, k0, k1):
    """Index of key ``(g, k0, k1)`` or ``-1``."""
    return np.int64(_probe(slots, keys, owner, owner, False, g, k0, k1, hash_key(g, k0, k1))[1])


@jit(nrt=False, llvm_inline=True)
def lookup_h(slots, keys, owner, g, k0, k1, h):
    """:func:`lookup` with the key's :func:`hash_key` ``h`` already computed."""
    return np.int64(_probe(slots, keys, owner, owner, False, g, k0, k1, h)[1])


@jit(nrt=False, llvm_inline=True)
def intern(slots, keys, owner, meta, g, k0, k1):
    """Index of the key, adding it with index ``meta[0]`` when new.

    ``meta[0]`` is the number of interned keys.  The table must have room
    (see module doc).  Returns ``(index, is_new)``.
    """
    return _intern(slots, keys, owner, owner, False, meta, g, k0, k1, g, hash_key(g, k0, k1))


@jit(nrt=False, llvm_inline=True)
def intern_h(slots, keys, owner, meta, g, k0, k1, h):
    """:func:`intern` with the key's :func:`hash_key` ``h`` already computed."""
    return _intern(slots, keys, owner, owner, False, meta, g, k0, k1, g, h)


@jit(nrt=False)
def rehash(keys, owner, n, new_slots):
    """Fill ``new_slots`` (all ``-1``, power-of-two size) with keys ``0..n-1``."""
    _rehash(keys, owner, owner, False, n, new_slots)
    return new_slots


# -- edges: the owner is the source node's graph --------------------------------
# An edge is keyed by (graph, uuid) like everything else, but storing the graph per
# edge would cost 4 bytes an edge (80 MB at 20M edges).  An edge is only interned
# once its endpoints are known live nodes of its graph, and a node's graph never
# changes, so the owner is ``ngraph[src]``.  A removed edge keeps its source as
# ``~src`` (negative: "removed"), so its owner stays known for a later re-add.

@jit(nrt=False, llvm_inline=True)
def lookup_edge(slots, keys, src, ngraph, g, k0, k1):
    """Index of edge key ``(g, k0, k1)`` or ``-1`` (see :func:`lookup`)."""
    return np.int64(_probe(slots, keys, src, ngraph, True, g, k0, k1, hash_key(g, k0, k1))[1])


@jit(nrt=False, llvm_inline=True)
def lookup_edge_h(slots, keys, src, ngraph, g, k0, k1, h):
    """:func:`lookup_edge` with the key's :func:`hash_key` ``h`` already computed."""
    return np.int64(_probe(slots, keys, src, ngraph, True, g, k0, k1, h)[1])


@jit(nrt=False, llvm_inline=True)
def intern_edge_h(slots, keys, src, ngraph, meta, g, k0, k1, s_new, h):
    """:func:`intern` for edges, with the key's :func:`hash_key` ``h`` already computed
    (the apply kernel's pre-pass hashes every id once): a new edge gets ``src = s_new``
    at once, so its owner is known before anything else probes the table.  Returns
    ``(index, is_new)``."""
    return _intern(slots, keys, src, ngraph, True, meta, g, k0, k1, s_new, h)


@jit(nrt=False)
def rehash_edges(keys, src, ngraph, n, new_slots):
    """:func:`rehash` for edges (owner from the source node's graph)."""
    _rehash(keys, src, ngraph, True, n, new_slots)
    return new_slots
