"""decode_json throughput per wire form, with json.loads-per-event as a peer."""
import json
import time

import numpy as np

from cim_flow import decode_json

from .common import SIZES
from .datasets import json_payloads

FORMS = ["internal", "external", "envelope", "mixed"]


class Decode:
    params = FORMS
    param_names = ["form"]
    timeout = 300

    def setup(self, form):
        self.payloads = json_payloads(form, SIZES["decode_events"])
        decode_json(self.payloads[:10])

    def time_decode_json(self, form):
        decode_json(self.payloads, received_at=0)

    def time_peer_json_loads_only(self, form):
        # the floor a per-event Python decoder starts from (parsing alone, no normalising)
        [json.loads(p) for p in self.payloads]

    def track_decode_events_per_s(self, form):
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            decode_json(self.payloads, received_at=0)
            ts.append(time.perf_counter() - t)
        return len(self.payloads) / float(np.median(ts))

    track_decode_events_per_s.unit = "events/s"
