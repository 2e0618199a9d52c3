"""kiln serve under load: batching on vs off (closed loop), and an open loop above capacity.

    python -m benchmarks.runs.serve_table --artifact benchmarks/work/ft-int8

Starts `kiln serve` as a subprocess on a loopback port for each configuration.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from benchmarks.load import closed_loop, http_target, open_loop
from benchmarks.runs.common import write_results
from calibration.datasets import load_texts


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


def batch_counts(url: str) -> tuple[float, float]:
    """(inputs, model calls) so far, from the server's /metrics."""
    conn = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    found = {m.group(1): float(m.group(2)) for m in re.finditer(r"^kiln_batch_size_(sum|count) (\S+)$", text, re.M)}
    return found.get("sum", 0.0), found.get("count", 0.0)


def measured(url: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """run() -> its summary, plus mean_batch: inputs per model call during that run only."""
    s0, c0 = batch_counts(url)
    summary = run()
    s1, c1 = batch_counts(url)
    return summary | {"mean_batch": round((s1 - s0) / (c1 - c0), 1) if c1 > c0 else None}


ON, OFF = [], ["--max-batch-size", "1"]
CLOSED = [  # (label, flags); run in this order, `--repeats` times, so drift hits every configuration alike
    ("batching on (defaults: max batch 32, delay 0, spinning)", ON),
    ("batching off (--max-batch-size 1)", OFF),
    ("batching on, --no-spinning", ["--no-spinning"]),
    ("batching off, --no-spinning", OFF + ["--no-spinning"]),
    ("batching on, --max-delay-ms 5", ["--max-delay-ms", "5"]),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True, type=Path)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", default="movie-snippets:test", help="texts to send, one per request")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="serve", help="results file name")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = load_texts(args.data)
    warmup = min(2.0, args.duration)
    rows, rps = [], {}
    for rep in range(args.repeats):
        for label, flags in CLOSED:
            with Server(args.artifact, *flags) as srv:
                log(f"{label}: {args.concurrency} closed-loop clients for {args.duration}s (repeat {rep + 1})")
                closed_loop(http_target(srv.url), texts, 4, warmup)
                r = measured(srv.url, lambda: closed_loop(http_target(srv.url), texts, args.concurrency,
                                                          args.duration).summary())
            rps.setdefault(label, []).append(r["throughput_rps"])
            rows.append({"run": label, "load": f"{args.concurrency} clients"} | r)
    for label, flags in CLOSED[0:1] + CLOSED[4:5]:  # what the delay costs one client alone
        with Server(args.artifact, *flags) as srv:
            closed_loop(http_target(srv.url), texts, 1, warmup / 2)
            r = measured(srv.url, lambda: closed_loop(http_target(srv.url), texts, 1, args.duration / 2).summary())
            rows.append({"run": label, "load": "1 client"} | r)
    capacity = max(rps[CLOSED[0][0]])
    rate = round(capacity * 2, 1)
    with Server(args.artifact, "--max-queue", "64") as srv:
        log(f"open loop at {rate}/s (2x the closed-loop capacity) for {args.duration}s, queue limit 64")
        r = measured(srv.url, lambda: open_loop(http_target(srv.url, timeout_s=30), texts, rate, args.duration).summary())
        rows.append({"run": "batching on (defaults), --max-queue 64", "load": f"open loop {rate}/s"} | r)
    best = {k: max(v) for k, v in rps.items()}
    speedups = {
        "defaults (spinning)": best[CLOSED[0][0]] / best[CLOSED[1][0]],
        "--no-spinning": best[CLOSED[2][0]] / best[CLOSED[3][0]],
        "best on / best off": max(best[CLOSED[0][0]], best[CLOSED[2][0]], best[CLOSED[4][0]])
        / max(best[CLOSED[1][0]], best[CLOSED[3][0]]),
    }
    notes = ["Throughput with batching / without (best of the repeats each): "
             + "; ".join(f"{k}: {v:.2f}x" for k, v in speedups.items()) + ".",
             "Closed loop: each client sends one real test sentence per request and waits for the answer.",
             "Open loop: Poisson arrivals; latency counted from the scheduled send time. 'lost' = sent - answered;",
             "errors are answered requests with a non-200 status (503 = overload, with Retry-After); error_p99_ms is",
             "how fast those 503s came back. mean_batch: inputs per model call (server /metrics).",
             "The load generator (one asyncio loop) runs on the same 2 cores as the server; client_cpu_pct is its",
             "share of one core."]
    cols = ["run", "load", "throughput_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_batch", "sent", "lost",
            "ok", "errors", "error_p99_ms", "client_cpu_pct"]
    path = write_results(args.out, args.name, f"kiln serve under load ({args.artifact.name})", rows, cols, notes,
                         {"batching_speedup": speedups})
    print(path.read_text())


if __name__ == "__main__":
    main()
