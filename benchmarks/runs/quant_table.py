"""Quantization in one run on the same inputs: Kiln's variants vs the optimum peer recipe.

    python -m benchmarks.runs.quant_table --ft benchmarks/work/ft \\
        --pruned benchmarks/work/prune/hf-2 benchmarks/work/prune/hf-deep --peer-python benchmarks/work/peer-venv/bin/python

Shapes: batch 1 real test sentences (unpadded, each its own length) and batch 32 x 128.
Columns: median/p99 latency, throughput, size, test accuracy, drop vs fp32, max abs logit diff vs fp32.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.runs.common import interleaved_latency, model_size_mb, write_results
from calibration.datasets import load_labelled
from calibration.readers import from_texts, sample_by_length
from exporter.load import load_checkpoint
from exporter.onnx_export import OnnxConfig, to_onnx
from exporter.optimize import optimize
from exporter.quantize import QuantConfig, quantize
from exporter.stage import quiet
from runtime import Artifact, TextClassifier, ValidationError
from runtime.artifact import hash_files
from runtime.pipeline import load_tokenizer


def log(msg: str) -> None:
    print(f"[quant_table] {msg}", flush=True)


def peer_artifact(peer_python: str, ft: Artifact, work: Path) -> Artifact:
    """Run optimum in its own venv, then describe its int8 model as a Kiln artifact (same tokenizer)."""
    out = work / "peer"
    if out.exists():
        shutil.rmtree(out)
    log("running the optimum peer recipe in its own environment")
    subprocess.run([peer_python, "benchmarks/peer/optimum_peer.py", str(ft.path), str(out)], check=True)
    art_dir = work / "peer-art"
    if art_dir.exists():
        shutil.rmtree(art_dir)
    art_dir.mkdir()
    shutil.copy2(out / "model_optimized_quantized.onnx" if (out / "model_optimized_quantized.onnx").exists()
                 else next(out.glob("*quantized*.onnx")), art_dir / "model.onnx")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (ft.path / f).exists():
            shutil.copy2(ft.path / f, art_dir / f)
    meta = {**ft.meta, "model_file": "model.onnx", "tokenizer": "tokenizer.json", "precision": "int8"}
    art = Artifact(art_dir, "onnx", ft.task, ft.inputs, ft.outputs, (), meta, hash_files(art_dir))
    art.write_manifest()
    return art


def batch1_latency(arts: dict[str, Artifact], texts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """Each real sentence alone, unpadded; rounds interleave the models."""
    import itertools

    from benchmarks.harness.timing import interleave

    sessions = {n: TextClassifier(a, batch_size=1) for n, a in arts.items()}
    feeds = {n: itertools.cycle([c.feed_for(c.encode([t])) for t in texts]) for n, c in sessions.items()}
    # one timed call = the next sentence; a round runs every sentence once per model (per_round = len(texts))
    fns = {n: (lambda c=c, f=feeds[n]: c.session.run(next(f))) for n, c in sessions.items()}
    rounds_ms = interleave(fns, warmup=20, rounds=rounds, per_round=len(texts), pause_s=0)
    times = {n: [t for r in ms for t in r] for n, ms in rounds_ms.items()}
    for c in sessions.values():
        c.close()
    return {n: {"median_ms": round(float(np.median(t)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3)}
            for n, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ft", required=True, type=Path)
    ap.add_argument("--pruned", type=Path, nargs="*", default=[], help="structurally pruned + recovered hf artifacts")
    ap.add_argument("--peer-python", help="python of the optimum environment (benchmarks/peer/requirements.txt)")
    ap.add_argument("--work", type=Path, default=Path("benchmarks/work/quant"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--skip-fp16-accuracy", action="store_true", help="fp16 on CPU is slow; numerics only")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    test = load_labelled("movie-snippets:test")
    dev = load_labelled("movie-snippets:dev")
    train = load_labelled("movie-snippets:train")
    ft = load_checkpoint(args.ft)
    log("exporting fp32")
    fp32 = to_onnx(ft, OnnxConfig(), work / "fp32", force=True, progress=quiet)
    variants: dict[str, Artifact] = {"fp32": fp32}
    variants["fp32 optimized"] = optimize(fp32, work / "fp32-opt", force=True)
    tok = load_tokenizer(fp32)
    names = [s.name for s in fp32.inputs]
    lengths = [len(e.ids) for e in tok.encode_batch(train.texts)]
    calib_texts = sample_by_length(train.texts, lengths, 256)
    fixed = list(from_texts(tok, calib_texts, 64, names, batch_size=8, pad_to=64))
    dyn_len = list(from_texts(tok, calib_texts, 64, names, batch_size=8))
    log("quantizing: Kiln dynamic int8")
    variants["Kiln dynamic int8"] = quantize(fp32, QuantConfig(method="dynamic-int8"), work / "dyn", force=True)
    failed: dict[str, str] = {}
    for cal in ("minmax", "percentile", "entropy"):
        log(f"quantizing: static int8 ({cal})")
        name = f"Kiln static int8 {cal}"
        calib = fixed if cal != "minmax" else dyn_len
        try:
            variants[name] = quantize(fp32, QuantConfig(method="static-int8", calibrator=cal, percentile=99.99),
                                      work / f"static-{cal}", calibration=calib, force=True)
        except ValidationError as e:
            # Kiln would refuse to ship it; measure it anyway so the table shows why
            failed[name] = str(e)
            log(f"{name}: {e}")
            variants[name] = quantize(fp32, QuantConfig(method="static-int8", calibrator=cal, percentile=99.99,
                                                        validate=False), work / f"static-{cal}", calibration=calib, force=True)
    log("quantizing: guarded dynamic int8 (budget 0.5 points on dev)")
    variants["Kiln guarded int8"] = quantize(fp32, QuantConfig(method="dynamic-int8", max_accuracy_drop=0.5),
                                             work / "guarded", eval_data=dev, force=True, progress=log)
    log("converting: fp16")
    variants["Kiln fp16 (numerics only)"] = quantize(fp32, QuantConfig(method="fp16"), work / "fp16", force=True)
    for pruned in args.pruned:
        src = load_checkpoint(pruned)
        s = src.meta.get("structure", {})
        label = f"{len(s.get('heads', []))} layers, {sum(s.get('heads', []))} heads, {sum(s.get('ffn', []))} FFN"
        log(f"pruned model ({label}): export + dynamic int8")
        p32 = to_onnx(src, OnnxConfig(), work / f"{pruned.name}-fp32", force=True)
        variants[f"Kiln pruned fp32 ({label})"] = p32
        variants[f"Kiln pruned + int8 ({label})"] = quantize(p32, QuantConfig(method="dynamic-int8"),
                                                            work / f"{pruned.name}-dyn", force=True)
    if args.peer_python:
        variants["peer: optimum O2 + avx512_vnni dynamic"] = peer_artifact(args.peer_python, ft, work)

    rng = np.random.default_rng(0)
    b1_texts = [test.texts[i] for i in rng.choice(len(test), 100, replace=False)]
    timed = {n: a for n, a in variants.items() if "fp16" not in n}  # fp16 has no fast CPU kernels
    log(f"latency at batch 1 (100 real sentences x {args.rounds} rounds)")
    b1 = batch1_latency(timed, b1_texts, args.rounds)
    log("latency at batch 32 x 128")
    b32 = interleaved_latency(timed, [(32, 128)], rounds=args.rounds, per_round=2)
    rows: list[dict[str, Any]] = []
    with TextClassifier(fp32, batch_size=64) as ref:
        ref_logits = ref.logits(test.texts)
        acc32 = float((ref_logits.argmax(-1) == np.asarray(test.labels)).mean())
    for name, art in variants.items():
        log(f"accuracy: {name}")
        if "fp16" in name and args.skip_fp16_accuracy:
            acc, diff = float("nan"), float("nan")
        else:
            with TextClassifier(art, batch_size=64) as clf:
                logits = clf.logits(test.texts)
            acc = float((logits.argmax(-1) == np.asarray(test.labels)).mean())
            diff = float(np.abs(logits - ref_logits).max())
        row = {"model": name + (" (fails validation)" if name in failed else ""), "test acc": f"{acc:.4f}", "drop (pts)": f"{(acc32 - acc) * 100:+.2f}",
               "max abs logit diff": f"{diff:.4f}", "size MB": model_size_mb(art)}
        if name in b1 and name in b32:
            row.update({"b1 median ms": b1[name]["median_ms"], "b1 p99 ms": b1[name]["p99_ms"],
                        "b32x128 median ms": b32[name]["32x128"]["median_ms"], "b32x128 p99 ms": b32[name]["32x128"]["p99_ms"],
                        "b32x128 seq/s": b32[name]["32x128"]["throughput"]})
        rows.append(row)
    peer = next((r for r in rows if r["model"].startswith("peer")), None)
    notes = ["Batch 1: 100 random test sentences, each alone and unpadded (its own length), interleaved rounds.",
             "Batch 32 x 128: full-length token ids, interleaved rounds. Accuracy: all 1,566 test sentences.",
             "fp16 is numerics only on CPU (onnxruntime has no fast fp16 CPU kernels); it is not timed."]
    if peer:
        for r in rows:
            if "b32x128 seq/s" in r and not r["model"].startswith("peer"):
                r["vs peer (b32)"] = f"{r['b32x128 seq/s'] / peer['b32x128 seq/s']:.2f}x"
    cols = ["model", "b1 median ms", "b1 p99 ms", "b32x128 median ms", "b32x128 p99 ms", "b32x128 seq/s", "vs peer (b32)",
            "size MB", "test acc", "drop (pts)", "max abs logit diff"]
    guard = variants["Kiln guarded int8"].lineage[-1].metrics.get("accuracy_guard")
    notes += [f"{n}: {msg}" for n, msg in failed.items()]
    path = write_results(args.out, "quantize", "Quantizing the fine-tuned MiniLM (onnxruntime CPU)", rows, cols, notes,
                         {"accuracy_guard": guard, "failed_validation": failed})
    log(f"wrote {path}")
    print(path.read_text())
    print(json.dumps(guard, indent=1))


if __name__ == "__main__":
    main()
