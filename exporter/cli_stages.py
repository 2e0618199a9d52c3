"""`kiln finetune | prune | quantize | optimize | eval`: the stages that change a model, and scoring it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from exporter.cli_common import (
    backend_option, data_options, describe, device_option, emit, force_option, json_option, progress, with_options,
)
from runtime.artifact import Artifact
from runtime.errors import ConfigError


@click.command()
@click.argument("source")
@click.option("--data", required=True, help="Training data: CSV/TSV/JSONL or movie-snippets:train; images: a "
              "folder with one subfolder per label, or mnist-5k:train.")
@click.option("--eval", "eval_data", help="Evaluation data for model selection and early stopping.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path))
@click.option("--epochs", type=int, help="Passes over the data (default: text 3, images 10).")
@click.option("--max-steps", type=int, help="Stop after this many steps (overrides --epochs).")
@click.option("--lr", type=float, help="Peak learning rate (default: text 1e-4, images 2e-3).")
@click.option("--batch-size", type=int, help="Examples per step (default: text 32, images 64).")
@click.option("--max-length", default=64, show_default=True, type=int)
@click.option("--warmup-ratio", default=0.06, show_default=True, type=float)
@click.option("--patience", type=int, help="Evaluations without improvement before stopping (default: text 2, images 3).")
@click.option("--eval-every", type=int, help="Steps between evaluations (default: each epoch).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--lora", is_flag=True, help="Train LoRA adapters (merged into the weights on save).")
@click.option("--lora-r", default=8, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast for the forward passes.")
@with_options(data_options)
@force_option
@json_option
def finetune(source: str, data: str, eval_data: str | None, out: Path, epochs: int | None, max_steps: int | None,
             lr: float | None, batch_size: int | None, max_length: int, warmup_ratio: float, patience: int | None, eval_every: int | None, seed: int,
             lora: bool, lora_r: int, device: str, bf16: bool, text_column: str, label_column: str, force: bool,
             as_json: bool) -> None:
    """Fine-tune SOURCE as a classifier: text (`minilm`, an HF checkpoint; CSV/TSV/JSONL data) or images
    (`vit-tiny-mnist`, `resnet-tiny-mnist`, an HF config.json or checkpoint; an image folder or mnist-5k)."""
    from calibration.datasets import load_labelled
    from exporter.cli_vision import finetune_images_cli, is_image_finetune

    if is_image_finetune(source, data):
        given = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "warmup_ratio": warmup_ratio,
                 "patience": patience, "seed": seed, "device": device, "max_steps": max_steps,
                 "eval_every": eval_every, "lora": lora, "bf16": bf16}
        art = finetune_images_cli(source, data, eval_data, out, force, given, progress)
        emit(art.to_manifest() | {"path": str(art.path)}, as_json, lambda: describe(art) +
             f"\nbest eval accuracy {art.lineage[-1].metrics['eval'].get('accuracy', float('nan')):.4f}")
        return
    epochs, lr, batch_size, patience = epochs or 3, lr or 1e-4, batch_size or 32, patience or 2
    from exporter.finetune import FinetuneConfig
    from exporter.finetune import finetune as run_finetune
    from exporter.load import load_checkpoint
    from exporter.stage import check_output

    config = FinetuneConfig(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, max_length=max_length,
                            warmup_ratio=warmup_ratio, patience=patience, eval_every=eval_every, seed=seed,
                            lora=lora, lora_r=lora_r, device=device, bf16=bf16)
    check_output(out.absolute(), force)
    train = load_labelled(data, text_column, label_column)
    dev = load_labelled(eval_data, text_column, label_column, train.label_names) if eval_data else None
    art = run_finetune(load_checkpoint(source, "text-classification"), train, dev, config, out, force=force,
                       progress=progress)
    step = art.lineage[-1]
    emit(art.to_manifest() | {"path": str(art.path)}, as_json, lambda: describe(art) +
         f"\nbest eval accuracy {step.metrics['eval'].get('accuracy', float('nan')):.4f}, "
         f"macro-F1 {step.metrics['eval'].get('macro_f1', float('nan')):.4f} after {step.metrics['steps']} steps")


@click.command()
@click.argument("artifact")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path))
@click.option("--layers", default=0, show_default=True, type=int, help="Structured: whole encoder layers to remove.")
@click.option("--heads", default=0.0, show_default=True, type=float, help="Structured: fraction of attention heads to remove.")
@click.option("--ffn", default=0.0, show_default=True, type=float, help="Structured: fraction of FFN neurons to remove.")
@click.option("--sparsity", type=float, help="Unstructured magnitude pruning: fraction of encoder weights to zero.")
@click.option("--pattern", type=click.Choice(["2:4"]), help="Semi-structured 2:4 sparsity (2 of every 4 weights zero).")
@click.option("--scope", default="global", show_default=True, help="Unstructured threshold: global or layer.")
@click.option("--data", help="Training data (structured: importance scores and recovery).")
@click.option("--eval", "eval_data", help="Evaluation data: accuracy before/after, best recovery checkpoint.")
@click.option("--samples", default=512, show_default=True, type=int, help="Examples used to score importance.")
@click.option("--recover-steps", default=0, show_default=True, type=int, help="Fine-tuning steps after removal.")
@click.option("--recover-lr", default=5e-5, show_default=True, type=float)
@click.option("--distill", is_flag=True, help="Recovery also learns the unpruned model's logits.")
@click.option("--seed", default=0, show_default=True, type=int)
@with_options(data_options)
@force_option
@json_option
def prune(artifact: str, out: Path, layers: int, heads: float, ffn: float, sparsity: float | None, pattern: str | None, scope: str,
          data: str | None, eval_data: str | None, samples: int, recover_steps: int, recover_lr: float, distill: bool,
          seed: int, text_column: str, label_column: str, force: bool, as_json: bool) -> None:
    """Make a classifier smaller: structured (--heads/--ffn), unstructured (--sparsity) or 2:4 (--pattern 2:4)."""
    from calibration.datasets import load_labelled
    from exporter.load import load_checkpoint
    from exporter.prune import PruneConfig
    from exporter.prune import prune as run_prune
    from exporter.stage import check_output

    chosen = [k for k, on in (("structured", heads or ffn or layers), ("unstructured", sparsity is not None), ("2:4", pattern)) if on]
    if len(chosen) != 1:
        raise ConfigError("choose one kind: --layers/--heads/--ffn (structured), --sparsity (unstructured) or --pattern 2:4")
    config = PruneConfig(kind=chosen[0], layers=layers, heads=heads, ffn=ffn, sparsity=sparsity if sparsity is not None else 0.5,
                         scope=scope, samples=samples, recover_steps=recover_steps, recover_lr=recover_lr,
                         distill=distill, seed=seed)
    check_output(out.absolute(), force)
    from exporter.cli_vision import refuse_vision_prune

    refuse_vision_prune(artifact)
    source = load_checkpoint(artifact, "text-classification")
    names = [source.labels[i] for i in sorted(source.labels)]
    train = load_labelled(data, text_column, label_column, names) if data else None
    dev = load_labelled(eval_data, text_column, label_column, names) if eval_data else None
    art = run_prune(source, config, out, train=train, dev=dev, force=force, progress=progress)
    m = art.lineage[-1].metrics
    summary = [describe(art), f"parameters {m['parameters_before']:,} -> {m['parameters_after']:,}"]
    if "structure" in m:
        summary.append(f"heads per layer {m['structure']['heads']}, FFN neurons per layer {m['structure']['ffn']}")
    if "sparsity" in m:
        summary.append(f"sparsity {m['sparsity']:.3f} of encoder weights (dense runtimes get no speed from this; see README)")
    for key in ("eval_before", "eval_after_removal", "eval"):
        if key in m:
            summary.append(f"{key.replace('_', ' ')}: accuracy {m[key]['accuracy']:.4f}")
    emit(art.to_manifest() | {"path": str(art.path)}, as_json, lambda: "\n".join(summary))


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--method", default="dynamic-int8", show_default=True,
              help="dynamic-int8, static-int8, fp16, or nncf-int8 (NNCF; needs the nncf extra; see --target).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path))
@click.option("--optimize/--no-optimize", default=True, show_default=True, help="Quantize the fused graph.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True)
@click.option("--reduce-range", is_flag=True, help="7-bit weights (for CPUs without VNNI).")
@click.option("--calib-data", help="Static calibration inputs: texts (CSV/TSV/JSONL, movie-snippets:train) or, "
              "for an image model, a folder of images or mnist-5k:train.")
@click.option("--calib-samples", default=256, show_default=True, type=int, help="Calibration inputs (texts stratified by length; images drawn at random).")
@click.option("--calib-cache", type=click.Path(path_type=Path), help="Reuse a range cache (calibration_cache.json).")
@click.option("--calibrator", default="minmax", show_default=True, help="minmax, percentile or entropy.")
@click.option("--percentile", default=99.999, show_default=True, type=float)
@click.option("--op-types", default="", help="Op types to quantize (default: the model family's: text "
              "MatMul,Attention,Gather,EmbedLayerNormalization; vision Conv,MatMul,Gemm, dynamic MatMul,Gemm).")
@click.option("--exclude-op-types", default="", help="Comma-separated op types to leave in fp32.")
@click.option("--exclude-nodes", default="", help="Comma-separated node names to leave in fp32.")
@click.option("--activation-type", default="uint8", show_default=True, help="int8 or uint8 (static).")
@click.option("--weight-type", default="int8", show_default=True, help="int8 or uint8.")
@click.option("--max-accuracy-drop", type=float, help="Accuracy budget in points; needs --eval-data.")
@click.option("--eval-data", help="Labelled data for the accuracy guard (e.g. movie-snippets:dev).")
@click.option("--report", is_flag=True, help="Per-node sensitivity analysis (output error when only it is quantized).")
@click.option("--target", default="tensorrt", show_default=True,
              help="nncf-int8: tensorrt (QDQ ONNX; also runs on onnxruntime and openvino) or openvino (OpenVINO IR).")
@click.option("--preset", default="",
              help="nncf-int8: performance (symmetric, TensorRT-parsable) or mixed (asymmetric); "
                   "default performance for --target tensorrt, mixed for openvino.")
@click.option("--subset-size", default=300, show_default=True, type=int, help="nncf-int8: calibration items NNCF uses.")
@click.option("--calib-pad-length", default=64, show_default=True, type=int,
              help="nncf-int8: pad (or cut) each calibration text to this many tokens; 0 = its own length.")
@click.option("--smooth-quant-alpha", default=0.95, show_default=True, type=float,
              help="nncf-int8: SmoothQuant strength for MatMuls, in [0, 1]; -1 = off.")
@with_options(data_options)
@force_option
@json_option
def quantize(artifact: Path, method: str, out: Path, optimize: bool, per_channel: bool, reduce_range: bool,
             calib_data: str | None, calib_samples: int, calib_cache: Path | None, calibrator: str, percentile: float,
             op_types: str, exclude_op_types: str, exclude_nodes: str, activation_type: str, weight_type: str,
             max_accuracy_drop: float | None, eval_data: str | None, report: bool, target: str, preset: str, subset_size: int,
             calib_pad_length: int, smooth_quant_alpha: float, text_column: str, label_column: str,
             force: bool, as_json: bool) -> None:
    """Quantize an ONNX artifact (int8 dynamic/static, fp16), validated and optionally accuracy-guarded."""
    from calibration.sources import labelled_for, raw_for
    from exporter.quantize import QuantConfig
    from exporter.quantize import quantize as run_quantize
    from exporter.stage import check_output

    def names(v: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in v.split(",") if x.strip())

    config = QuantConfig(method=method, optimize=optimize, per_channel=per_channel, reduce_range=reduce_range,
                         calibrator=calibrator, percentile=percentile, calib_samples=calib_samples,
                         op_types=names(op_types), exclude_op_types=names(exclude_op_types),
                         exclude_nodes=names(exclude_nodes), activation_type=activation_type, weight_type=weight_type,
                         max_accuracy_drop=max_accuracy_drop)
    if method != "nncf-int8" and (target != "tensorrt" or preset):
        raise ConfigError(f"--target and --preset are options of --method nncf-int8, got --method {method}")
    if method == "nncf-int8":
        config = nncf_config(calib_data, preset, subset_size, calib_pad_length, smooth_quant_alpha, max_accuracy_drop,
                             target)
    check_output(out.absolute(), force)
    art = Artifact.load(artifact)
    calibration = None
    if calib_data:
        raw = raw_for(art.task, calib_data, text_column)  # texts, or image paths for a vision model
        if method == "nncf-int8":  # one text per calibration item, padded to the configured length (0: its own)
            calibration = art.family.calibration_feeds(art, raw, calib_samples, batch_size=1,
                                                       pad_to=calib_pad_length or None)
        else:  # percentile/entropy need one shape for every batch
            calibration = art.family.calibration_feeds(art, raw, calib_samples, fixed_shape=calibrator != "minmax")
    names_map = [art.labels[i] for i in sorted(art.labels)] if art.labels else None
    evaluation = labelled_for(art.task, eval_data, text_column, label_column, names_map) if eval_data else None
    q = run_quantize(art, config, out, calibration=calibration, eval_data=evaluation, calib_cache=calib_cache,
                     report=report, force=force, progress=progress)
    m = q.lineage[-1].metrics
    lines = [describe(q), f"size      {m['size_mb']['fp32']} MB fp32 -> {m['size_mb']['quantized']} MB"]
    if "accuracy_guard" in m:
        g = m["accuracy_guard"]
        lines.append(f"accuracy  {g['accuracy_fp32']:.4f} fp32 -> {g['accuracy']:.4f} (drop {g['drop_points']:.2f} points, "
                     f"budget {g['budget_points']}); kept in fp32: {g['kept_fp32'] or 'none'}")
    if "qdq" in m:
        lines.append(f"QDQ       {m['qdq']['quantize_linear']} QuantizeLinear nodes; " + (
            "symmetric (zero points 0): TensorRT can parse it" if m["qdq"]["tensorrt_parsable"]
            else f"{m['qdq']['nonzero_zero_points']} non-zero zero points: TensorRT's parser rejects it"))
    if "fake_quantize" in m:
        lines.append(f"OpenVINO  {m['fake_quantize']} FakeQuantize ops; runs on {', '.join(q.meta['runs_on'])}")
    if report and "sensitivity" in m:
        lines.append("sensitivity (output error 1 - cosine when only this node is quantized), worst first:")
        lines += [f"  {r['error']:.2e}  {r['node']}" for r in m["sensitivity"][:15]]
    emit(q.to_manifest() | {"path": str(q.path)}, as_json, lambda: "\n".join(lines))


def nncf_config(calib_data: str | None, preset: str, subset_size: int, calib_pad_length: int, smooth_quant_alpha: float,
                max_accuracy_drop: float | None, target: str = "tensorrt") -> Any:
    """The nncf-int8 config, with the calibration file's name and sha256 for the lineage."""
    import hashlib

    from calibration.datasets import resolve
    from exporter.quantize_nncf import NncfConfig

    digest = ""
    if calib_data:
        path, _ = resolve(calib_data)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    return NncfConfig(target=target, preset=preset, subset_size=subset_size, calib_pad_length=calib_pad_length,
                      smooth_quant_alpha=smooth_quant_alpha, max_accuracy_drop=max_accuracy_drop,
                      calib_data=calib_data or "", calib_data_sha256=digest)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path))
@force_option
@json_option
def optimize(artifact: Path, out: Path, force: bool, as_json: bool) -> None:
    """Fuse an fp32 ONNX artifact's graph (Attention, SkipLayerNorm, Gelu) and validate it (fp32 tolerances)."""
    from exporter.optimize import optimize as run_optimize
    from exporter.stage import check_output

    check_output(out.absolute(), force)
    art = run_optimize(Artifact.load(artifact), out, force=force, progress=progress)
    emit(art.to_manifest() | {"path": str(art.path)}, as_json,
         lambda: describe(art) + f"\nfused ops {art.lineage[-1].metrics['fused_ops']}")


@click.command(name="eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Labelled data: CSV/TSV/JSONL or movie-snippets:test; images: a folder "
              "with one subfolder per label, or mnist-5k:test.")
@click.option("--batch-size", default=64, show_default=True, type=int)
@with_options(data_options)
@backend_option
@device_option
@json_option
def evaluate(artifact: Path, data: str, batch_size: int, text_column: str, label_column: str, backend: str,
             device: str, as_json: bool) -> None:
    """Accuracy, macro-F1 and confusion matrix of a classifier artifact (hf via torch, onnx via onnxruntime)."""
    from benchmarks.accuracy import measure_accuracy
    from calibration.sources import labelled_for
    from runtime.pipeline import pipeline_for

    art = Artifact.load(artifact)
    names = [art.labels[i] for i in sorted(art.labels)]
    labelled = labelled_for(art.task, data, text_column, label_column, names)  # before loading the model
    with pipeline_for(art, backend=backend, device=device, batch_size=batch_size) as clf:
        result = measure_accuracy(clf, labelled)
        result["backend"] = clf.session.describe()
    emit(result, as_json, lambda: format_eval(result))


def format_eval(r: dict[str, Any]) -> str:
    names = r["labels"]
    width = max(len(n) for n in names) + 2
    lines = [f"accuracy {r['accuracy']:.4f}   macro-F1 {r['macro_f1']:.4f}   n {r['n']}   ({r['backend']}, {r['seconds']}s)",
             "confusion (rows: true, columns: predicted)", " " * width + "".join(n.rjust(width) for n in names)]
    lines += [n.ljust(width) + "".join(str(v).rjust(width) for v in row) for n, row in zip(names, r["confusion"])]
    return "\n".join(lines)
