"""Run a call with room on CPython's frame stack (for numba's cold compiles).

CPython 3.11 keeps Python frames in a "data stack" of chunks: 16 KB to begin with, a new
chunk mapped (``mmap``) when a call does not fit in the current one, and unmapped again as
soon as the frame that needed it returns. A recursion that keeps crossing a chunk's end
maps and unmaps a chunk on every crossing, and each time the fresh pages fault in again.
numba's inlining deep-copies nested IR (a ``copy.deepcopy`` recursion), so whether a cold
compile thrashes depends on how deep it was called: here the same warm-up of every kernel
took 10-14M page faults and 95-137 s of system time when called from one depth (its 6 min),
and 0.3M faults and 2 s from another.

:func:`call_with_room` calls through a frame with ~33,000 unused local slots (~257 KB).
CPython gives a frame that big a chunk of its own, rounded up to a power of two (512 KB),
and the frames called from it fit in the remaining ~255 KB: no chunk is mapped or unmapped
however the recursion above it goes (up to ~1,000 frames deeper).
"""
from __future__ import annotations

_SLOTS = 33_000  # x 8 bytes: just over 256 KB, so the chunk is 512 KB with ~255 KB free
_roomy = None


def _call(fn, args, kwargs):
    return fn(*args, **kwargs)


def _make_roomy():
    """:func:`_call` with ``_SLOTS`` more (unused) locals: a ~257 KB frame (built once, ~20 ms)."""
    code = _call.__code__
    names = tuple(map("_unused_{}".format, range(_SLOTS)))
    try:
        big = code.replace(co_varnames=code.co_varnames + names, co_nlocals=code.co_nlocals + _SLOTS)
    except (TypeError, ValueError):  # another interpreter's code objects: call directly
        return _call
    return type(_call)(big, _call.__globals__, "call_with_room")


def call_with_room(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, called with ~255 KB of CPython's frame stack free above it
    (see the module docstring): for code that recurses hard, like numba compiling."""
    global _roomy
    if _roomy is None:
        _roomy = _make_roomy()
    return _roomy(fn, args, kwargs)
