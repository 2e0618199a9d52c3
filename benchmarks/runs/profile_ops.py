"""Where the time goes: onnxruntime's profiler, aggregated by op type, for one or more ONNX models.

    python -m benchmarks.runs.profile_ops MODEL.onnx [MODEL.onnx ...] [--batch 32 --seq 128 --runs 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def example_feed(sess: Any, batch: int, seq: int) -> dict[str, np.ndarray]:
    """The family's seeded example feed for a bare ONNX model's inputs (ids below 30000 for text)."""
    from runtime.artifact import TensorSpec
    from runtime.tasks import family_for_inputs
    from runtime.tasks.meta import ModelMeta

    specs = [TensorSpec(i.name, i.type.removeprefix("tensor(").removesuffix(")"), tuple(i.shape)) for i in sess.get_inputs()]
    family = family_for_inputs([s.name for s in specs])
    if family is None:
        raise SystemExit(f"no task family takes inputs {[s.name for s in specs]}")
    return family.example_feed(specs, ModelMeta(vocab_size=30000), batch, seq, seed=0)


def profile(model: Path, batch: int, seq: int, runs: int) -> dict[str, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "prof")
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    feed = example_feed(sess, batch, seq)
    for _ in range(runs):
        sess.run(None, feed)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"] / 1000 / runs  # ms per run
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    for m in args.models:
        ops = profile(m, args.batch, args.seq, args.runs)
        total = sum(ops.values())
        print(f"\n{m}  ({args.batch}x{args.seq}: {total:.1f} ms of kernel time per run)")
        for op, ms in list(ops.items())[:12]:
            print(f"  {op:<32} {ms:8.1f} ms  {100 * ms / total:5.1f}%")


if __name__ == "__main__":
    main()
