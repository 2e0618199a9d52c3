"""TensorRT-ready int8 (issue #9 item 4): nncf-int8 vs Kiln's static-int8, accuracy only, onnxruntime CPU.

    python -m benchmarks.runs.int8_table --ft benchmarks/work/ft

(--ft: the classifier from `kiln finetune minilm --data movie-snippets:train --eval movie-snippets:dev -o benchmarks/work/ft`.)

(a) The packaged MiniLM as a feature extractor (`kiln export minilm --task feature-extraction`): mean cosine of
    token embeddings vs fp32 over the non-padding tokens of real test sentences.
(b) The fine-tuned classifier: test accuracy on movie-snippets:test (in domain) and amazon-snippets:test (out of
    domain) for fp32, nncf-int8 and static-int8, each QDQ graph executed by onnxruntime's CPU provider.
Calibration texts are drawn from movie-snippets:dev the way `kiln quantize --calib-data movie-snippets:dev` draws
them (stratified by token length). Where tensorrt_rtx is importable, each int8 file is also parsed and built into
an engine (profile 1x8 / 8x128 / 32x128). No timings are reported (the machine was shared while this ran).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.runs.common import model_size_mb, write_results
from calibration.datasets import load_labelled
from calibration.readers import from_texts, sample_by_length
from exporter.load import load_checkpoint
from exporter.onnx_export import OnnxConfig, to_onnx
from exporter.quantize import QuantConfig, accuracy_of, quantize
from exporter.quantize_nncf import NncfConfig
from exporter.stage import quiet
from runtime import Artifact, ValidationError, open_session
from runtime.pipeline import load_tokenizer

PROFILE = ((1, 8), (8, 128), (32, 128))


def log(msg: str) -> None:
    print(f"[int8_table] {msg}", flush=True)


def calibration(art: Artifact, texts: list[str], n: int, method: str, pad: int = 64) -> list[dict[str, np.ndarray]]:
    """The feeds `kiln quantize --calib-data ... --calib-samples n` makes for this method."""
    tok = load_tokenizer(art)
    max_len = int(art.meta.get("max_length", 128))
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    chosen = sample_by_length(texts, lengths, n)
    names = [s.name for s in art.inputs]
    if method == "nncf-int8":
        return list(from_texts(tok, chosen, max_len, names, batch_size=1, pad_to=min(pad, max_len)))
    return list(from_texts(tok, chosen, max_len, names, batch_size=8))  # static-int8 minmax: no padding


def quantize_both(fp32: Artifact, dev_texts: list[str], n: int, work: Path) -> tuple[dict[str, Artifact], dict[str, Any]]:
    out, info = {}, {}
    out["nncf-int8"] = quantize(fp32, NncfConfig(subset_size=n, calib_data="movie-snippets:dev"), work / "nncf",
                                calibration=calibration(fp32, dev_texts, n, "nncf-int8"), force=True, progress=log)
    info["nncf-int8"] = {"Kiln validation": "passed"}
    calib = calibration(fp32, dev_texts, n, "static-int8")
    try:
        out["static-int8"] = quantize(fp32, QuantConfig(method="static-int8"), work / "static", calibration=calib,
                                      force=True, progress=log)
        info["static-int8"] = {"Kiln validation": "passed"}
    except ValidationError as e:  # Kiln refuses to ship it; measure it anyway so the table shows why
        log(f"static-int8: {e}")
        out["static-int8"] = quantize(fp32, QuantConfig(method="static-int8", validate=False), work / "static",
                                      calibration=calib, force=True)
        info["static-int8"] = {"Kiln validation": "failed: " + str(e).split("failed validation: ", 1)[-1]}
    return out, info


def token_cosine(ref: Artifact, cand: Artifact, texts: list[str]) -> float:
    """Mean over non-padding tokens of cos(fp32 embedding, candidate embedding)."""
    tok = load_tokenizer(ref)
    names = [s.name for s in ref.inputs]
    cos = []
    with open_session(ref) as a, open_session(cand) as b:
        for feed in from_texts(tok, texts, int(ref.meta.get("max_length", 128)), names, batch_size=16):
            x, y = a.run(feed)["last_hidden_state"], b.run(feed)["last_hidden_state"]
            mask = feed["attention_mask"].astype(bool)
            x, y = x[mask].astype(np.float64), y[mask].astype(np.float64)
            cos += list((x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)))
    return float(np.mean(cos))


def tensorrt_build(art: Artifact) -> dict[str, Any]:
    """Parse and build with TensorRT-RTX (ahead of time, no GPU needed); the engine's size, or why not."""
    try:
        import tensorrt_rtx as trt
    except ImportError:
        return {"tensorrt": "not checked: tensorrt_rtx is not importable"}
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(art.model_file.read_bytes(), str(art.model_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        ops = sorted({m.group(1) for e in errors for m in [re.search(r"operator: (\w+)", e)] if m})
        return {"tensorrt": f"rejected by the parser ({', '.join(ops) or (errors[0][:120] if errors else 'no reason')})"}
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for spec in art.inputs:
        profile.set_shape(spec.name, *PROFILE)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)  # not timed: other jobs shared the CPU
    if engine is None:
        return {"tensorrt": "parsed, but the build failed"}
    return {"tensorrt": f"builds: {memoryview(engine).nbytes / 1e6:.0f} MB engine (TensorRT-RTX {trt.__version__})",
            "engine_mb": round(memoryview(engine).nbytes / 1e6, 1)}


def classifier_rows(ft: Path, work: Path, dev_texts: list[str], test: Any, amazon: Any,
                    rows: list[dict[str, Any]]) -> dict[str, Any]:
    log("(b) fine-tuned classifier: export, quantize (300 calibration texts), test accuracy")
    fp32 = to_onnx(load_checkpoint(ft), OnnxConfig(), work / "ft-fp32", force=True, progress=quiet)
    cls_q, cls_info = quantize_both(fp32, dev_texts, 300, work / "ft")
    base = {"movie": accuracy_of(fp32, test), "amazon": accuracy_of(fp32, amazon)}
    rows.append({"model": "classifier", "method": "fp32", "movie test acc": round(base["movie"], 4),
                 "amazon test acc": round(base["amazon"], 4), "size MB": model_size_mb(fp32)})
    for name, art in cls_q.items():
        acc = {"movie": accuracy_of(art, test), "amazon": accuracy_of(art, amazon)}
        log(f"classifier {name}: movie {acc['movie']:.4f}, amazon {acc['amazon']:.4f}")
        rows.append({"model": "classifier", "method": name, "movie test acc": round(acc["movie"], 4),
                     "movie drop (points)": round((base["movie"] - acc["movie"]) * 100, 2),
                     "amazon test acc": round(acc["amazon"], 4),
                     "amazon drop (points)": round((base["amazon"] - acc["amazon"]) * 100, 2),
                     "size MB": model_size_mb(art), **cls_info[name], **tensorrt_build(art)})
    return cls_info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ft", type=Path, help="the fine-tuned classifier (hf artifact); without it only (a) runs")
    ap.add_argument("--work", type=Path, default=Path("benchmarks/work/int8"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--cosine-sentences", type=int, default=128)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    dev, test, amazon = (load_labelled(s) for s in ("movie-snippets:dev", "movie-snippets:test", "amazon-snippets:test"))
    rows: list[dict[str, Any]] = []

    log("(a) MiniLM feature extraction: export, quantize (256 calibration texts), token cosine")
    fe = to_onnx(load_checkpoint("minilm", "feature-extraction"), OnnxConfig(), work / "minilm-fe", force=True, progress=quiet)
    fe_q, fe_info = quantize_both(fe, dev.texts, 256, work / "minilm")
    sentences = test.texts[:args.cosine_sentences]
    for name, art in fe_q.items():
        cos = token_cosine(fe, art, sentences)
        log(f"MiniLM {name}: token cosine {cos:.4f}")
        rows.append({"model": "MiniLM features", "method": name, "token cosine vs fp32": round(cos, 4),
                     "size MB": model_size_mb(art), **fe_info[name], **tensorrt_build(art)})

    cls_info: dict[str, Any] = {}
    if args.ft:
        cls_info = classifier_rows(args.ft, work, dev.texts, test, amazon, rows)
    columns = ["model", "method", "token cosine vs fp32", "movie test acc", "movie drop (points)", "amazon test acc",
               "amazon drop (points)", "size MB", "Kiln validation", "tensorrt"]
    notes = [
        f"Data: movie-snippets test ({len(test)} sentences; the first {len(sentences)} for the cosine), amazon-snippets "
        f"test ({len(amazon)} Amazon review sentences, out of domain). Calibration: movie-snippets dev, stratified by "
        "token length (256 texts for MiniLM, 300 for the classifier); nncf-int8 pads each to 64 tokens.",
        "nncf-int8: NNCF ONNX backend, transformer model type (SmoothQuant alpha 0.95), PERFORMANCE preset (symmetric "
        "activations). static-int8: Kiln's onnxruntime QDQ (fused graph, minmax, uint8 activations), unchanged.",
        "Bars (issue #9): token cosine >= 0.99; classifier drop <= 0.5 points in domain, <= 1 point out of domain.",
        "TensorRT: TensorRT-RTX parse + ahead-of-time build on a CPU-only machine, profile 1x8 / 8x128 / 32x128; the "
        "engine was not run (no GPU). Accuracy is onnxruntime CPU executing the same QDQ file.",
    ]
    path = write_results(args.out, "int8-tensorrt", "TensorRT-ready int8: nncf-int8 vs static-int8", rows, columns,
                         notes, {"quantize": {"minilm": fe_info, "classifier": cls_info}})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
