"""Start-to-ready of ``python -m cim_flow serve``: from process start to the ready line.

    python asv_benchmarks/tools/ready_time.py [--runs 6]

Each run starts a service with an embedded nats-server on a free port and a fresh data
dir, reads its stdout until ``cim_flow ready``, and stops it with SIGTERM. The numba
cache must be warm (run it once more if the first run compiled). Prints each time and
the median: the figure behind the README's start-up line.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_start() -> float:
    with tempfile.TemporaryDirectory(prefix="cim_flow_ready_") as d:
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "cim_flow", "serve", "--port", "0", "--data-dir", d,
                              "--status-interval", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        took = None
        for line in p.stdout:
            if line.startswith("cim_flow ready"):
                took = time.perf_counter() - t
                break
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        if took is None:
            raise SystemExit(f"no ready line (exit {p.returncode})")
        return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args()
    times = [one_start() for _ in range(args.runs)]
    print("start-to-ready s:", " ".join(f"{t:.2f}" for t in times), f"median {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
