"""`kiln quantize`: an ONNX artifact -> int8 (dynamic, static QDQ, NNCF) or fp16, validated and optionally
accuracy-guarded. The work is exporter.quantize (calibration_set, quantize) and exporter.quantize_nncf."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from exporter.cli.common import (
    calib_data_option, choice, data_options, emit, eval_data_option, example, force_option, given_options,
    json_option, output_option, progress,
)
from exporter.cli.describe import describe
from exporter.quantize import CALIBRATORS, METHODS, QUANT_TYPES, check_options_for
from runtime.artifact import Artifact


def names(v: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in v.split(",") if x.strip())


def summary(q: Artifact, report: bool) -> str:
    m = q.lineage[-1].metrics
    size = m["size_mb"]
    lines = [describe(q, size=f"{size['quantized']} MB model (fp32 model {size['fp32']} MB)")]
    if "accuracy_guard" in m:
        g = m["accuracy_guard"]
        lines.append(f"accuracy  {g['accuracy_fp32']:.4f} fp32 -> {g['accuracy']:.4f} (drop {g['drop_points']:.2f} points, "
                     f"budget {g['budget_points']}); kept in fp32: {', '.join(g['kept_fp32']) or 'none'}")
    if "qdq" in m:
        lines.append(f"QDQ       {m['qdq']['quantize_linear']} QuantizeLinear nodes; " + (
            "symmetric (zero points 0): TensorRT can parse it" if m["qdq"]["tensorrt_parsable"]
            else f"{m['qdq']['nonzero_zero_points']} non-zero zero points: TensorRT's parser rejects it"))
    if "fake_quantize" in m:
        lines.append(f"OpenVINO  {m['fake_quantize']} FakeQuantize ops; runs on {', '.join(q.meta['runs_on'])}")
    if report and "sensitivity" in m:
        lines.append("sensitivity (output error 1 - cosine when only this node is quantized), worst first:")
        lines += [f"  {r['error']:.2e}  {r['node']}" for r in m["sensitivity"][:15]]
    return "\n".join(lines)


@click.command(epilog=example(
    "kiln quantize ft-onnx --method dynamic-int8 -o ft-int8 --max-accuracy-drop 0.5 --eval-data movie-snippets:dev",
    "kiln quantize ft-onnx --method static-int8 --calib-data movie-snippets:train -o ft-qdq --report",
    "kiln quantize minilm-onnx --method nncf-int8 --calib-data movie-snippets:dev -o minilm-int8"))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--method", type=choice(METHODS), default="dynamic-int8", show_default=True,
              help="nncf-int8 is TensorRT-ready QDQ (needs the nncf extra).")
@output_option()
@click.option("--optimize/--no-optimize", default=True, show_default=True, help="Quantize the fused graph.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales per channel or per tensor.")
@click.option("--reduce-range", is_flag=True, help="7-bit weights (for CPUs without VNNI).")
@calib_data_option("Calibration inputs: texts (CSV/TSV/JSONL, movie-snippets:train) or, for an image model, a "
                   "folder of images or mnist-5k:train.")
@click.option("--calib-samples", default=256, show_default=True, type=int,
              help="Calibration inputs (texts stratified by length; images drawn at random).")
@click.option("--calib-cache", type=click.Path(path_type=Path), help="Reuse a range cache (calibration_cache.json).")
@click.option("--calibrator", type=choice(CALIBRATORS), default="minmax", show_default=True,
              help="static-int8: how activation ranges are chosen.")
@click.option("--percentile", default=99.999, show_default=True, type=float, help="--calibrator percentile: the percentile.")
@click.option("--op-types", default="", help="Comma-separated op types to quantize (default: the model family's: text "
              "MatMul,Attention,Gather,EmbedLayerNormalization; vision Conv,MatMul,Gemm, dynamic MatMul,Gemm).")
@click.option("--exclude-op-types", default="", help="Comma-separated op types to leave in fp32.")
@click.option("--exclude-nodes", default="", help="Comma-separated node names to leave in fp32.")
@click.option("--activation-type", type=choice(QUANT_TYPES), default="uint8", show_default=True,
              help="static-int8: activation integer type.")
@click.option("--weight-type", type=choice(QUANT_TYPES), default="int8", show_default=True, help="Weight integer type.")
@click.option("--max-accuracy-drop", type=float, help="Accuracy budget in points; needs --eval-data.")
@eval_data_option("Labelled data for the accuracy guard (e.g. movie-snippets:dev).")
@click.option("--report", is_flag=True, help="Per-node sensitivity analysis (output error when only it is quantized).")
@click.option("--target", type=choice(["tensorrt", "openvino"]), default="tensorrt", show_default=True,
              help="nncf-int8: tensorrt (QDQ ONNX; also runs on onnxruntime and openvino) or openvino (OpenVINO IR).")
@click.option("--preset", type=choice(["performance", "mixed"]), default=None,
              help="nncf-int8: performance (symmetric, TensorRT-parsable) or mixed (asymmetric); "
                   "default performance for --target tensorrt, mixed for openvino.")
@click.option("--subset-size", default=300, show_default=True, type=int, help="nncf-int8: calibration items NNCF uses.")
@click.option("--calib-pad-length", default=64, show_default=True, type=int,
              help="nncf-int8: pad (or cut) each calibration text to this many tokens; 0 = its own length.")
@click.option("--smooth-quant-alpha", default=0.95, show_default=True, type=float,
              help="nncf-int8: SmoothQuant strength for MatMuls, in [0, 1]; -1 = off.")
@data_options
@force_option
@json_option
def quantize(artifact: Path, method: str, out: Path, optimize: bool, per_channel: bool, reduce_range: bool,
             calib_data: str | None, calib_samples: int, calib_cache: Path | None, calibrator: str, percentile: float,
             op_types: str, exclude_op_types: str, exclude_nodes: str, activation_type: str, weight_type: str,
             max_accuracy_drop: float | None, eval_data: str | None, report: bool, target: str, preset: str | None,
             subset_size: int,
             calib_pad_length: int, smooth_quant_alpha: float, text_column: str, label_column: str,
             force: bool, as_json: bool) -> None:
    """Quantize an ONNX artifact (int8 dynamic/static, fp16), validated and optionally accuracy-guarded."""
    from calibration.sources import labelled_for
    from exporter.quantize import QuantConfig, calibration_set
    from exporter.quantize import quantize as run_quantize
    from exporter.stage import check_output

    config: Any
    check_options_for(method, given_options(click.get_current_context()), calibrator)
    if method == "nncf-int8":
        from exporter.quantize_nncf import nncf_config_for

        config = nncf_config_for(calib_data, target=target, preset=preset or "", subset_size=subset_size,
                                 calib_pad_length=calib_pad_length, smooth_quant_alpha=smooth_quant_alpha,
                                 max_accuracy_drop=max_accuracy_drop)
    else:
        config = QuantConfig(method=method, optimize=optimize, per_channel=per_channel, reduce_range=reduce_range,
                             calibrator=calibrator, percentile=percentile, calib_samples=calib_samples,
                             op_types=names(op_types), exclude_op_types=names(exclude_op_types),
                             exclude_nodes=names(exclude_nodes), activation_type=activation_type,
                             weight_type=weight_type, max_accuracy_drop=max_accuracy_drop)
    check_output(out.absolute(), force)
    art = Artifact.load(artifact)
    calibration = calibration_set(art, calib_data, config, text_column, calib_samples) if calib_data else None
    label_names = [art.labels[i] for i in sorted(art.labels)] if art.labels else None
    evaluation = labelled_for(art.task, eval_data, text_column, label_column, label_names) if eval_data else None
    q = run_quantize(art, config, out, calibration=calibration, eval_data=evaluation, calib_cache=calib_cache,
                     report=report, force=force, progress=progress)
    emit(q.to_manifest() | {"path": str(q.path)}, as_json, lambda: summary(q, report))
