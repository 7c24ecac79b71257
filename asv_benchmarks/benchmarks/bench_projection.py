"""Apply throughput: compiled kernels vs the plain-Python reference, in one run."""
import time

import numpy as np

from cim_flow import Engine

from .common import SIZES  # noqa: F401  (puts tests/ on sys.path)
from reference import RefProjection  # noqa: E402  tests/reference.py
from .datasets import mixed_stream, ref_rows


def _apply_all(batches):
    eng = Engine()
    for b in batches:
        eng.apply(b)
    return eng


class ApplyMixed:
    """1M mixed events (node adds, moves, removes, edge adds/removes) in 64k batches."""

    timeout = 600
    number = 1
    repeat = (3, 7, 120)

    def setup(self):
        self.batches = mixed_stream(SIZES["apply_events"], SIZES["apply_batch"])
        self.rows = ref_rows(self.batches, SIZES["ref_events"])
        _apply_all(self.batches[:2])  # compile / load kernels outside the timing

    def time_engine_apply_1m(self):
        _apply_all(self.batches)

    def time_reference_apply(self):
        RefProjection().apply(self.rows)

    def track_engine_events_per_s(self):
        n = sum(b.num_rows for b in self.batches)
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            _apply_all(self.batches)
            ts.append(time.perf_counter() - t)
        return n / float(np.median(ts))

    track_engine_events_per_s.unit = "events/s"

    def track_reference_events_per_s(self):
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            RefProjection().apply(self.rows)
            ts.append(time.perf_counter() - t)
        return len(self.rows) / float(np.median(ts))

    track_reference_events_per_s.unit = "events/s"

    def track_speedup_vs_reference(self):
        return self.track_engine_events_per_s() / self.track_reference_events_per_s()

    track_speedup_vs_reference.unit = "x"
