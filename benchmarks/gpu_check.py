"""One prepared GPU check: run the `gpu` tests (incl. a bf16-autocast fine-tuning step on CUDA), then time
the MiniLM classifier on CUDA vs CPU.

    python benchmarks/gpu_check.py [--artifact ONNX_CLASSIFIER_DIR] [--batch-sizes 1,8,32,128]

Needs torch with CUDA and transformers; uses onnxruntime-gpu's CUDA provider where installed (the
CPU build is reported as such, never silently used for a 'cuda' row).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.environment import capture_environment  # noqa: E402
from benchmarks.latency import measure_latency, token_feed  # noqa: E402
from benchmarks.report import table  # noqa: E402
from runtime import KilnError, open_session  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path, help="an ONNX text-classification artifact (default: export minilm)")
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=Path(__file__).parents[1])
    art = args.artifact
    if art is None:
        try:
            from exporter.load import load_checkpoint
            from exporter.onnx_export import OnnxConfig, to_onnx

            art = Path(tempfile.mkdtemp()) / "minilm-cls"
            to_onnx(load_checkpoint("minilm", "text-classification"), OnnxConfig(), art)
        except (ImportError, KilnError) as e:
            sys.exit(f"cannot export the default model here ({e}); export on a CPU machine and pass --artifact DIR")
    try:
        import torch
    except ImportError:
        sys.exit("gpu_check needs torch with CUDA")

    sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    rows = []
    for label, backend, device, opts in [("torch cuda fp16", "torch", "cuda", {"dtype": "float16"}),
                                         ("torch cuda fp16 + CUDA graphs", "torch", "cuda",
                                          {"dtype": "float16", "cuda_graphs": True}),
                                         ("torch cuda bf16", "torch", "cuda", {"dtype": "bfloat16"}),
                                         ("torch cuda fp32", "torch", "cuda", {}),
                                         ("onnxruntime cuda", "onnxruntime", "cuda", {}),
                                         ("onnxruntime cpu", "onnxruntime", "cpu", {}),
                                         ("torch cpu fp32", "torch", "cpu", {})]:
        try:
            with open_session(art, backend=backend, device=device, **opts) as s:
                for b in [int(x) for x in args.batch_sizes.split(",")]:
                    if device == "cpu" and b > 32:
                        continue
                    r = measure_latency(s, token_feed(s, b, args.seq_len), warmup=5, iters=args.iters,
                                        sync=sync if device == "cuda" else None)
                    rows.append({"config": label} | r.to_dict())
        except KilnError as e:
            rows.append({"config": label, "backend": f"unavailable: {e}"})
    print(table(rows, ["config", "backend", "batch", "seq_len", "p50_ms", "p99_ms", "throughput"]))
    env = capture_environment()
    print(f"\n{env['gpus']} | {env['cpu']} | torch {env['versions'].get('torch')} | gpu tests exit {tests.returncode}")
    sys.exit(tests.returncode)


if __name__ == "__main__":
    main()
