"""`kiln export` and `kiln optimize`: a checkpoint -> a validated ONNX artifact, and graph fusion."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.common import example, emit, force_option, json_option, output_option, progress
from exporter.cli.describe import describe
from runtime.artifact import Artifact


@click.command(epilog=example("kiln export minilm --task feature-extraction -o minilm-onnx",
                              "kiln export ft -o ft-onnx --optimize     # the task comes from ft's manifest"))
@click.argument("source")
@click.option("--task", help="text-classification, token-classification, feature-extraction or image-classification "
              "(default: the task in SOURCE's Kiln manifest).")
@output_option()
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (14..20).")
@click.option("--optimize", is_flag=True, help="Fuse Attention/LayerNorm/Gelu with onnxruntime's optimizer.")
@click.option("--trust-pickle", is_flag=True, help="Allow pickled .bin/.pt weights (they can run code).")
@click.option("--allow-untrained", is_flag=True,
              help="Export even when the checkpoint lacks some weights (e.g. a classification head): timing only.")
@force_option
@json_option
def export(source: str, task: str | None, out: Path, opset: int, optimize: bool, trust_pickle: bool,
           allow_untrained: bool, force: bool, as_json: bool) -> None:
    """Export SOURCE (a model directory, weights file, or `minilm`) to a validated ONNX artifact."""
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from exporter.stage import check_output

    config = OnnxConfig(opset=opset, optimize=optimize, allow_untrained=allow_untrained)
    check_output(out.absolute(), force)  # fail before loading anything heavy
    art = to_onnx(load_checkpoint(source, task, trust_pickle=trust_pickle), config, out, force=force, progress=progress)
    emit(art.to_manifest() | {"path": str(art.path)}, as_json, lambda: describe(art))


@click.command(epilog=example("kiln optimize minilm-onnx -o minilm-fused"))
@click.argument("artifact", type=click.Path(path_type=Path))
@output_option()
@force_option
@json_option
def optimize(artifact: Path, out: Path, force: bool, as_json: bool) -> None:
    """Fuse an fp32 ONNX artifact's graph (Attention, SkipLayerNorm, Gelu) and validate it (fp32 tolerances)."""
    from exporter.optimize import optimize as run_optimize
    from exporter.stage import check_output

    check_output(out.absolute(), force)
    art = run_optimize(Artifact.load(artifact), out, force=force, progress=progress)
    emit(art.to_manifest() | {"path": str(art.path)}, as_json, lambda: describe(art))
