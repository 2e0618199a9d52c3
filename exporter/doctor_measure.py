"""`kiln doctor --measure ARTIFACT`: a short interleaved measurement of every backend and precision that can
run the given artifact(s) here, and the fastest one at batch 1 and batched.

Short on purpose (seconds, not minutes): it picks between paths that differ by tens of percent; the
benchmarks (kiln bench, benchmarks/runs) are for numbers worth publishing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.stage import Progress, quiet
from runtime.artifact import Artifact
from runtime.errors import ConfigError, KilnError
from runtime.session import Session, open_session

# (batch, size): one input alone, and a full batch; size is the family's variable extent (tokens for text: a
# short sentence, a long one); families with a fixed input shape (images) ignore it
SHAPES = ((1, 32), (32, 128))


@dataclass(frozen=True)
class Candidate:
    artifact: Artifact
    backend: str
    options: dict[str, Any]

    @property
    def label(self) -> str:
        precision = self.artifact.meta.get("precision", "fp32")
        dtype = self.options.get("dtype")
        return (f"{self.artifact.path}: {self.backend} {precision}"  # the path: two folders may share a name
                + (f" (inference precision {dtype})" if dtype and dtype != "float32" else ""))


def candidates(art: Artifact, capabilities: list[str] | None) -> list[Candidate]:
    """Every backend/precision that can run `art` on this machine (an unreadable one is found on open)."""
    if art.format not in ("onnx", "openvino"):
        raise ConfigError(f"--measure compares CPU backends on an 'onnx' or 'openvino' artifact, got {art.format!r} "
                          f"({art.path})")
    out = [Candidate(art, "onnxruntime", {})] if art.format == "onnx" else []
    if capabilities is not None:
        out.append(Candidate(art, "openvino", {}))
        if "BF16" in capabilities and art.meta.get("precision") != "int8":
            out.append(Candidate(art, "openvino", {"dtype": "bfloat16"}))
    return out


def measure(paths: list[Path], capabilities: list[str] | None, iters: int = 10,
            progress: Progress = quiet) -> dict[str, Any]:
    """Median latency of each candidate at each of SHAPES (interleaved rounds); the fastest per shape."""
    from benchmarks.latency import example_feed, measure_interleaved

    arts = [Artifact.load(p) for p in paths]
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with contextlib.ExitStack() as stack:
        runs: dict[tuple[str, int, int], tuple[Session, Any]] = {}
        shape_text: dict[tuple[str, int, int], str] = {}  # in the artifact's family's words (tokens, images)
        for cand in [c for a in arts for c in candidates(a, capabilities)]:
            try:
                session = stack.enter_context(open_session(cand.artifact, backend=cand.backend, **cand.options))
            except KilnError as e:  # e.g. OpenVINO cannot read onnxruntime's fused int8 ops: say so, go on
                skipped.append(f"{cand.label}: {e}")
                continue
            for batch, size in SHAPES:
                feed = example_feed(session, batch, size)
                runs[(cand.label, batch, size)] = (session, feed)
                shape_text[(cand.label, batch, size)] = cand.artifact.family.batch_text(batch, feed)
        if not runs:
            raise ConfigError("nothing could run the given artifact(s) here: " + "; ".join(skipped))
        progress(f"measuring {len(runs) // len(SHAPES)} backend/precision paths at "
                 f"{', '.join(dict.fromkeys(shape_text.values()))} (a few seconds each)")
        results = measure_interleaved(runs, warmup=2, iters=iters, rounds=2)
    for key, r in results.items():
        rows.append({"path": key[0], "batch": key[1], "shape": shape_text[key], "p50_ms": r.p50_ms})
    fastest = {shape: min((r for r in rows if r["shape"] == shape), key=lambda r: r["p50_ms"])["path"]
               for shape in dict.fromkeys(r["shape"] for r in rows)}
    return {"results": rows, "fastest": fastest, "skipped": skipped,
            "note": "speed only: compare accuracy with kiln eval before switching precision (bf16, int8)"}


def format_measure(report: dict[str, Any]) -> str:
    lines = [f"{r['path']:<60} batch {r['shape']:<18} p50 {r['p50_ms']:9.2f} ms" for r in report["results"]]
    lines += [f"skipped: {s}" for s in report["skipped"]]
    lines += [f"fastest at {shape}: {path}" for shape, path in report["fastest"].items()]
    return "\n".join(lines + [report["note"]])
