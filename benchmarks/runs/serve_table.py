"""kiln serve under load: batching on vs off (closed loop), and an open loop above capacity.

    python -m benchmarks.runs.serve_table --artifact benchmarks/work/quant/dyn

Starts `kiln serve` as a subprocess on a loopback port for each configuration.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.load import closed_loop, http_target, open_loop
from benchmarks.runs.common import write_results
from calibration.datasets import load_labelled


def log(msg: str) -> None:
    print(f"[serve_table] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, artifact: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "exporter.cli", "serve", str(artifact), "--port", str(self.port), *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Server":
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server did not get ready")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True, type=Path)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="serve", help="results file name")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = load_labelled("movie-snippets:test").texts
    rows = []
    results = {}
    for label, flags in [("batching on (max batch 32, 5 ms)", ["--max-batch-size", "32", "--max-delay-ms", "5"]),
                         ("batching off (--max-batch-size 1)", ["--max-batch-size", "1"])]:
        with Server(args.artifact, *flags) as srv:
            log(f"{label}: {args.concurrency} closed-loop clients for {args.duration}s")
            closed_loop(http_target(srv.url), texts, 4, 2)  # warm-up
            r = closed_loop(http_target(srv.url), texts, args.concurrency, args.duration).summary()
        results[label] = r
        rows.append({"run": label} | {k: v for k, v in r.items() if k != "mode"})
    capacity = results["batching on (max batch 32, 5 ms)"]["throughput_rps"]
    rate = round(capacity * 2, 1)
    with Server(args.artifact, "--max-batch-size", "32", "--max-delay-ms", "5", "--max-queue", "64") as srv:
        log(f"open loop at {rate}/s (2x the closed-loop capacity) for {args.duration}s, queue limit 64")
        r = open_loop(http_target(srv.url, timeout_s=30), texts, rate, args.duration).summary()
    rows.append({"run": f"open loop {rate}/s, batching on, --max-queue 64"} | {k: v for k, v in r.items() if k != "mode"})
    speedup = capacity / results["batching off (--max-batch-size 1)"]["throughput_rps"]
    notes = [f"Throughput with batching / without: {speedup:.2f}x.",
             "Closed loop: each client sends one real test sentence per request and waits for the answer.",
             "Open loop: Poisson arrivals; latency counted from the scheduled send time. 'lost' = sent - answered;",
             "errors are answered requests with a non-200 status (503 = overload, with Retry-After); error_p99_ms is",
             "how fast those 503s came back. The load generator runs on the same 2 cores as the server."]
    cols = ["run", "duration_s", "sent", "answered", "lost", "ok", "errors", "throughput_rps", "p50_ms", "p90_ms",
            "p99_ms", "max_ms", "error_p99_ms"]
    path = write_results(args.out, args.name, f"kiln serve under load ({args.artifact.name})", rows, cols, notes,
                         {"batching_speedup": speedup})
    print(path.read_text())


if __name__ == "__main__":
    main()
