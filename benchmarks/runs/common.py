"""Helpers shared by the benchmark recipes: interleaved latency rounds, sizes, result files."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.environment import capture_environment
from benchmarks.latency import measure_interleaved, token_feed
from benchmarks.report import table
from runtime import Artifact, open_session


def interleaved_latency(artifacts: dict[str, Artifact], shapes: Sequence[tuple[int, int]], rounds: int = 10,
                        per_round: int = 3, warmup: int = 3, threads: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Median/p99 ms per (name, shape), measured in interleaved rounds so drift in machine speed hits all alike."""
    sessions = {n: open_session(a, **({"threads": threads} if threads else {})).open() for n, a in artifacts.items()}
    runs = {(n, b, s): (sess, token_feed(sess, b, s)) for n, sess in sessions.items() for b, s in shapes}
    results = measure_interleaved(runs, warmup, iters=rounds * per_round, rounds=rounds)
    for sess in sessions.values():
        sess.close()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (n, b, s), r in results.items():
        out.setdefault(n, {})[f"{b}x{s}"] = {"median_ms": r.p50_ms, "p99_ms": r.p99_ms, "throughput": r.throughput}
    return out


def hf_parameters(art: Artifact) -> int:
    """Parameters stored in an hf artifact's model.safetensors (zeros included)."""
    from safetensors import safe_open

    with safe_open(str(art.path / "model.safetensors"), "np") as f:
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def model_size_mb(art: Artifact) -> float:
    return round(art.model_file.stat().st_size / 1e6, 2)


def write_results(out_dir: Path, name: str, title: str, rows: list[dict[str, Any]], columns: list[str],
                  notes: list[str], extra: dict[str, Any] | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = capture_environment()
    script = Path(sys.argv[0]).resolve()
    module = ".".join(script.relative_to(Path(__file__).resolve().parents[2]).with_suffix("").parts)
    command = " ".join(shlex.quote(a) for a in ["python", "-m", module, *sys.argv[1:]])
    md = [f"# {title}", "", f"Command: `{command}`", "",
          f"Machine: {env['cpu']}, {env['cpu_count']} cores ({' '.join(env['cpu_flags'])}); "
          f"onnxruntime {env['versions'].get('onnxruntime')}, torch {env['versions'].get('torch')}", "",
          table(rows, columns, markdown=True), "", *notes, ""]
    (out_dir / f"{name}.md").write_text("\n".join(md))
    (out_dir / f"{name}.json").write_text(json.dumps({"command": command, "environment": env, "rows": rows,
                                                      **(extra or {})}, indent=2))
    return out_dir / f"{name}.md"
