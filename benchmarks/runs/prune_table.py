"""Fine-tuned vs pruned MiniLM: accuracy, latency (ORT CPU, batch 8 x 128), parameters, size.

    python -m benchmarks.runs.prune_table --ft benchmarks/work/ft      (the full run, ~20 min on 2 cores)
    python -m benchmarks.runs.prune_table --ft FT --quick              (tiny version: a smoke test)

The fine-tuned model comes from:
    kiln finetune minilm --data movie-snippets:train --eval movie-snippets:dev -o benchmarks/work/ft
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.accuracy import measure_accuracy
from benchmarks.runs.common import hf_parameters, interleaved_latency, model_size_mb, write_results
from calibration.datasets import load_labelled
from exporter.load import load_checkpoint
from exporter.onnx_export import OnnxConfig, to_onnx
from exporter.prune import PruneConfig, prune
from exporter.stage import quiet
from runtime import Artifact, TextClassifier


def log(msg: str) -> None:
    print(f"[prune_table] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ft", required=True, type=Path, help="fine-tuned hf artifact")
    ap.add_argument("--work", type=Path, default=Path("benchmarks/work/prune"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--heads", type=float, default=0.33)
    ap.add_argument("--ffn", type=float, default=0.4)
    ap.add_argument("--recover-steps", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="a few examples and steps: checks the recipe runs")
    args = ap.parse_args()

    n_eval = 64 if args.quick else None
    train = load_labelled("movie-snippets:train")
    dev = load_labelled("movie-snippets:dev")
    test = load_labelled("movie-snippets:test")
    if args.quick:
        train, dev, test = train.subset(128), dev.subset(n_eval), test.subset(n_eval)
    ft = load_checkpoint(args.ft)
    steps = 4 if args.quick else args.recover_steps
    variants = {
        "fine-tuned": (None, None),
        "structured, no recovery": (PruneConfig(kind="structured", heads=args.heads, ffn=args.ffn, samples=512), False),
        "structured + recovery (distill)": (PruneConfig(kind="structured", heads=args.heads, ffn=args.ffn, samples=512,
                                                        recover_steps=steps, recover_lr=1e-4, distill=True), True),
        "unstructured 50%": (PruneConfig(kind="unstructured", sparsity=0.5), False),
        "2:4": (PruneConfig(kind="2:4"), False),
    }
    hf: dict[str, Artifact] = {}
    for i, (name, (cfg, _)) in enumerate(variants.items()):
        if cfg is None:
            hf[name] = ft
            continue
        log(f"pruning: {name}")
        hf[name] = prune(ft, cfg, args.work / f"hf-{i}", train=train, dev=dev, force=True, progress=log, show_bar=False)
    onnx: dict[str, Artifact] = {}
    for i, (name, art) in enumerate(hf.items()):
        log(f"exporting {name}")
        onnx[name] = to_onnx(load_checkpoint(art.path), OnnxConfig(), args.work / f"onnx-{i}", force=True, progress=quiet)
    log("measuring latency (interleaved rounds)")
    lat = interleaved_latency(onnx, [(8, 128)], rounds=3 if args.quick else 10)
    base = lat["fine-tuned"]["8x128"]["median_ms"]
    rows = []
    acc0 = None
    for name, art in onnx.items():
        log(f"test accuracy: {name}")
        with TextClassifier(art) as clf:
            acc = measure_accuracy(clf, test)["accuracy"]
        acc0 = acc if acc0 is None else acc0
        rows.append({
            "model": name, "test acc": f"{acc:.4f}", "drop (pts)": f"{(acc0 - acc) * 100:+.2f}",
            "b8x128 median ms": lat[name]["8x128"]["median_ms"], "p99 ms": lat[name]["8x128"]["p99_ms"],
            "speed-up": f"{base / lat[name]['8x128']['median_ms']:.2f}x",
            "parameters": f"{hf_parameters(hf[name]):,}",
            "onnx MB": model_size_mb(art),
            "structure": str(hf[name].meta.get("structure", "")) if name.startswith("structured") else "",
        })
    notes = [
        "Latency: onnxruntime CPU, fp32, unfused graphs (plain `kiln export`), median of 10 interleaved rounds x 3 runs.",
        "Unstructured and 2:4 sparsity keep every matrix dense: onnxruntime CPU gets no speed from the zeros; they only",
        "compress better (zip the model) or run faster on sparse kernels (2:4 sparse tensor cores on Ampere+ GPUs).",
    ]
    path = write_results(args.out, "prune-quick" if args.quick else "prune", "Pruning the fine-tuned MiniLM", rows,
                         list(rows[0]), notes)
    log(f"wrote {path}")
    print(path.read_text())


if __name__ == "__main__":
    main()
