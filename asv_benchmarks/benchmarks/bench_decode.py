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


class SmallBatches:
    """The service's micro-batches: decode + apply of a batch of 1 / 5 / 25 JSON events,
    the fixed per-batch cost that dominates at 10k events/s (a batch closes every 0.5 ms).

    ``columns`` is the service's path (the scanner's columns straight to the kernel);
    ``arrow`` is the peer in the same run, decode to a record batch then ``Engine.apply``.
    Each timed call applies 200 consecutive batches to an engine already holding 5k events.
    """

    params = ([1, 5, 25], ["columns", "arrow"])
    param_names = ["events", "path"]
    timeout = 300

    def setup(self, size, path):
        from cim_flow import Engine
        from cim_flow._demo import SyntheticEvents

        gen = SyntheticEvents(7, max_graphs=50, nodes_per_graph=500)
        payloads = [gen.next()[2] for _ in range(5000 + 200 * size)]
        self.eng = Engine()
        self.eng.apply(decode_json(payloads[:5000])[0])
        self.parts = []
        for a in range(5000, len(payloads), size):
            part = payloads[a:a + size]
            ends = np.cumsum([len(p) for p in part])
            self.parts.append((b"".join(part), ends - [len(p) for p in part], ends))
        self.run(self.parts[:2], path)  # load the kernels outside the timing

    def run(self, parts, path):
        from cim_flow._decode import decode_spans, decode_spans_columns

        for joined, starts, ends in parts:
            if path == "columns":
                cols, batch, _ = decode_spans_columns(joined, starts, ends)
                if cols is not None:
                    self.eng._apply_columns(cols)
                    continue
            else:
                batch, _ = decode_spans(joined, starts, ends)
            self.eng.apply(batch)

    def time_200_batches(self, size, path):
        self.run(self.parts[2:], path)
