"""kiln serve vs Triton on the same artifact, the same machine, the same closed-loop load (32 clients).

    python -m benchmarks.runs.triton_table --artifact benchmarks/work/ft-int8

Triton here is the real Triton core that nvidia-pytriton bundles, serving the repository `kiln
export-triton` writes, with the TEST STAND-IN for the onnxruntime backend (tests/triton_fixtures: the model
runs in a Triton Python-backend process through the onnxruntime package, so every batch also crosses
Triton's shared-memory IPC, which the real C++ onnxruntime backend does not). The numbers compare the
serving stacks as Kiln can run them here, not the official Triton container. Run on a quiet machine:
server and load generator share the cores.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from benchmarks.load import closed_loop, http_target, triton_target
from benchmarks.runs.common import write_results
from benchmarks.runs.serve_table import Server, measured
from calibration.datasets import load_texts

MODEL = "kiln"  # the ensemble's name in the repository this recipe writes


def log(msg: str) -> None:
    print(f"[triton_table] {msg}", flush=True)


def triton_batch_counts(metrics_url: str) -> tuple[float, float]:
    """(requests, model executions) of the model itself so far, from Triton's Prometheus metrics."""
    u = urlparse(metrics_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    conn.request("GET", u.path)
    text = conn.getresponse().read().decode()

    def value(metric: str) -> float:
        m = re.search(rf'^{metric}{{model="{MODEL}_model",version="1"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0
    return value("nv_inference_request_success"), value("nv_inference_exec_count")


def triton_measured(metrics_url: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    r0, e0 = triton_batch_counts(metrics_url)
    summary = run()
    r1, e1 = triton_batch_counts(metrics_url)
    return summary | {"mean_batch": round((r1 - r0) / (e1 - e0), 1) if e1 > e0 else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True, type=Path)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sequence-lengths", default="0,64",
                    help="Triton repositories to compare: export-triton --sequence-length values (0: pad to x8)")
    ap.add_argument("--data", default="movie-snippets:test", help="texts to send, one per request")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="triton", help="results file name")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from exporter.triton import TritonConfig, to_triton
    from tests.triton_fixtures import core  # the stand-in backend lives with the tests, never in user repositories

    reason = core.why_not()
    if reason:
        raise SystemExit(f"the Triton core cannot start here: {reason}")
    texts = load_texts(args.data)
    warmup = min(2.0, args.duration)
    work = Path(tempfile.mkdtemp(prefix="triton-table-"))
    repos = {}
    for length in (int(v) for v in args.sequence_lengths.split(",")):
        repos[length] = work / f"repo-{length}"
        to_triton([args.artifact], TritonConfig(names=(MODEL,), sequence_length=length), repos[length])
    rows, rps = [], {}
    for rep in range(args.repeats):  # interleaved, so drift in machine speed hits every server alike
        with Server(args.artifact) as srv:
            label = "kiln serve (defaults: max batch 32, delay 0)"
            log(f"{label}: {args.concurrency} clients for {args.duration}s (repeat {rep + 1})")
            closed_loop(http_target(srv.url), texts, 4, warmup)
            r = measured(srv.url, lambda: closed_loop(http_target(srv.url), texts, args.concurrency,
                                                      args.duration).summary())
        rows.append({"server": "kiln serve", "run": label, "load": f"{args.concurrency} clients"} | r)
        rps.setdefault(label, []).append(r["throughput_rps"])
        for length, repo in repos.items():
            label = ("triton, export-triton defaults (each request padded to x8 tokens)" if length == 0
                     else f"triton, --sequence-length {length}")
            with core.triton_core(repo, timeout_s=120, log=work / f"triton-{length}-{rep}.log") as c:
                log(f"{label}: {args.concurrency} clients for {args.duration}s (repeat {rep + 1})")
                closed_loop(triton_target(c.url, MODEL), texts, 4, warmup)
                r = triton_measured(c.metrics, lambda: closed_loop(triton_target(c.url, MODEL), texts,
                                                                   args.concurrency, args.duration).summary())
            rows.append({"server": "triton (stand-in onnxruntime backend)", "run": label,
                         "load": f"{args.concurrency} clients"} | r)
            rps.setdefault(label, []).append(r["throughput_rps"])
    best = {k: max(v) for k, v in rps.items()}
    notes = ["Best throughput of the repeats: " + "; ".join(f"{k}: {v:g} rps" for k, v in best.items()) + ".",
             "Triton: the real Triton core from nvidia-pytriton with Kiln's TEST STAND-IN for the onnxruntime",
             "backend (a Python-backend model running the ONNX file with the onnxruntime package; each batch crosses",
             "Triton's shared-memory IPC, which the real C++ backend does not). Tokenizing and softmax run in",
             "Triton Python-backend models joined by an ensemble, as `kiln export-triton` writes them.",
             "Closed loop: each client sends one real test sentence per request and waits for the answer.",
             "mean_batch: inputs per model call (kiln serve: /metrics kiln_batch_size; Triton:",
             "nv_inference_request_success / nv_inference_exec_count of the model). Server and load generator share the machine's cores;",
             "client_cpu_pct is the generator's share of one core."]
    cols = ["server", "run", "load", "throughput_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_batch", "sent",
            "lost", "ok", "errors", "client_cpu_pct"]
    path = write_results(args.out, args.name, f"kiln serve vs Triton under load ({args.artifact.name})", rows, cols,
                         notes, {"best_rps": best})
    print(path.read_text())


if __name__ == "__main__":
    main()
