"""cim_flow._stack.call_with_room: a call through it behaves as the call itself, and a
recursion that keeps crossing a frame-chunk boundary no longer maps and unmaps a chunk
on every crossing (CPython 3.11's data stack; the cold compile of every kernel did)."""
import sys

import pytest

from cim_flow._stack import call_with_room


def test_calls_through_with_arguments_results_and_exceptions():
    assert call_with_room(lambda a, b=1, *rest, c=0: (a, b, rest, c), 1, 2, 3, c=4) == (1, 2, (3,), 4)

    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        call_with_room(boom)


def _faults() -> int:
    with open("/proc/self/stat") as f:
        return int(f.read().split()[9])  # minor page faults of this process


def _rec(n):
    return 0 if n == 0 else _rec(n - 1) + 1


def _oscillate():
    for _ in range(3000):
        _rec(40)


def _at_depth(k, fn):
    return fn() if k == 0 else _at_depth(k - 1, fn)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/stat")
def test_no_depth_thrashes_frame_chunks_with_room():
    worst_plain = worst_room = 0
    for k in range(0, 130, 6):  # over a 16 KB chunk's worth of depths: some cross its end
        f0 = _faults()
        _at_depth(k, _oscillate)
        worst_plain = max(worst_plain, _faults() - f0)
        f0 = _faults()
        call_with_room(_at_depth, k, _oscillate)
        worst_room = max(worst_room, _faults() - f0)
    # a thrashing depth faults at least once an oscillation (3,000); with room, only the
    # big chunk's pages, once (~130)
    assert worst_room < 1000, (worst_plain, worst_room)
