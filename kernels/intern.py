"""Interning of fixed-width keys (three uint64 words) into dense indices.

Open addressing with linear probing.  The table holds entity indices
(``-1`` = empty slot); the keys themselves live in the entity's ``keys``
array ``(capacity, 3)``, so a rehash only moves ``int64`` slot values.
An index, once given to a key, is never reused for another key: removal is
an ``alive`` flag of the owner, never a hash-table delete (no tombstones).

Callers keep the load factor at or below 1/2 by calling :func:`rehash` into a
bigger table *before* a batch (the capacity needed is known from the batch
size), so the insert path never grows anything.
"""
import numpy as np

from ._jit import jit

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_G = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


@jit
def _mix(h):
    h = (h ^ (h >> _S30)) * _M1
    h = (h ^ (h >> _S27)) * _M2
    return h ^ (h >> _S31)


@jit
def hash3(k0, k1, k2):
    h = _mix(k0 + _G)
    h = _mix(h ^ (k1 + _G))
    return _mix(h ^ (k2 + _G))


@jit
def lookup(slots, keys, k0, k1, k2):
    """Index of key ``(k0, k1, k2)`` or ``-1``."""
    mask = np.uint64(slots.shape[0] - 1)
    s = hash3(k0, k1, k2) & mask
    while True:
        i = slots[s]
        if i < 0:
            return -1
        if keys[i, 0] == k0 and keys[i, 1] == k1 and keys[i, 2] == k2:
            return i
        s = (s + np.uint64(1)) & mask


@jit
def intern(slots, keys, meta, k0, k1, k2):
    """Index of the key, adding it with index ``meta[0]`` when new.

    ``meta[0]`` is the number of interned keys.  The table must have room
    (see module doc).  Returns ``(index, is_new)``.
    """
    mask = np.uint64(slots.shape[0] - 1)
    s = hash3(k0, k1, k2) & mask
    while True:
        i = slots[s]
        if i < 0:
            i = meta[0]
            meta[0] = i + 1
            keys[i, 0] = k0
            keys[i, 1] = k1
            keys[i, 2] = k2
            slots[s] = i
            return i, True
        if keys[i, 0] == k0 and keys[i, 1] == k1 and keys[i, 2] == k2:
            return i, False
        s = (s + np.uint64(1)) & mask


@jit
def rehash(keys, n, new_slots):
    """Fill ``new_slots`` (all ``-1``, power-of-two size) with keys ``0..n-1``."""
    mask = np.uint64(new_slots.shape[0] - 1)
    for i in range(n):
        s = hash3(keys[i, 0], keys[i, 1], keys[i, 2]) & mask
        while new_slots[s] >= 0:
            s = (s + np.uint64(1)) & mask
        new_slots[s] = i
    return new_slots


@jit
def lookup_many(slots, keys, q):
    """Vectorised :func:`lookup` over ``q`` ``(m, 3)``."""
    out = np.empty(q.shape[0], np.int64)
    for j in range(q.shape[0]):
        out[j] = lookup(slots, keys, q[j, 0], q[j, 1], q[j, 2])
    return out
