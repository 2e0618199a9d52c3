"""One prepared GPU check: run the `gpu` tests (incl. a bf16-autocast fine-tuning step on CUDA), then time
the MiniLM classifier on CUDA vs CPU.

    python benchmarks/gpu_check.py [--artifact ONNX_CLASSIFIER_DIR] [--model minilm|random] [--batch-sizes 1,8,32,128]

Needs torch with CUDA, transformers and onnx (the project's H200 image has them, and pytest); uses
onnxruntime-gpu's CUDA provider where installed (the CPU build is reported as such, never silently used
for a 'cuda' row). Where the packaged MiniLM is not installed (its 90 MB of weights do not fit a 64 MiB
device call), it times a MiniLM-shaped model with random weights instead: latency does not depend on
the weights' values, and the table says which one ran. From this repository's root on such a machine:

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py
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


# all-MiniLM-L6-v2's shape (its config.json): the random stand-in costs what the real model costs
MINILM_SHAPE = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, num_labels=2)


def export_model(which: str) -> tuple[Path, str]:
    """Export the classifier to time: the packaged MiniLM, or a random-weight model of its shape."""
    from exporter.errors import SourceError
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    work = Path(tempfile.mkdtemp())
    if which == "minilm":
        try:
            return to_onnx(load_checkpoint("minilm", "text-classification"), OnnxConfig(), work / "minilm-cls").path, \
                "all-MiniLM-L6-v2 (packaged weights, 2-label head)"
        except SourceError as e:
            print(f"[gpu_check] {e}; timing a random-weight model of MiniLM's shape instead", flush=True)
    import torch
    import transformers

    torch.manual_seed(0)
    src = work / "random-minilm"
    transformers.BertForSequenceClassification(transformers.BertConfig(**MINILM_SHAPE)).eval().save_pretrained(str(src))
    return to_onnx(load_checkpoint(src, "text-classification"), OnnxConfig(), work / "random-minilm-cls").path, \
        "random weights in all-MiniLM-L6-v2's shape (6 x 384, 12 heads, FFN 1536)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path, help="an ONNX text-classification artifact (default: export minilm)")
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--model", choices=["minilm", "random"], default="minilm",
                    help="without --artifact: the packaged MiniLM (random-weight MiniLM shape when not installed)")
    args = ap.parse_args()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=Path(__file__).parents[1])
    art, model = args.artifact, str(args.artifact)
    if art is None:
        try:
            art, model = export_model(args.model)
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
    print(f"\nmodel: {model}\n{env['gpus']} | {env['cpu']} | torch {env['versions'].get('torch')} | "
          f"gpu tests exit {tests.returncode}")
    sys.exit(tests.returncode)


if __name__ == "__main__":
    main()
