"""Timing helper shared by the tools in this folder (each is run as a script, so this
folder is on ``sys.path``)."""
import time

import numpy as np


def median_seconds(fn, repeat: int, warm: bool = False) -> float:
    """Median wall time of ``repeat`` calls of ``fn`` (after one untimed call with ``warm``)."""
    if warm:
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))
