"""`kiln build`: an ONNX artifact -> a TensorRT engine artifact (exporter/tensorrt.py)."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli_common import describe, emit, force_option, json_option, progress
from runtime.artifact import Artifact


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Engine artifact directory.")
@click.option("--precision", default="fp16", show_default=True,
              help="fp32, fp16, int8 (needs a QDQ model: kiln quantize --method nncf-int8) or best.")
@click.option("--shapes", multiple=True, help="Profile override NAME:MIN,OPT,MAX, dims joined by x "
              "(e.g. input_ids:1x16,8x128,32x512); inputs sharing an axis get the same range. Repeatable.")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="Timing cache file: reused if present, saved after.")
@click.option("--workspace-mb", type=int, help="Builder workspace limit in MB (default: TensorRT's).")
@click.option("--sparsity", is_flag=True, help="Allow 2:4 sparse kernels (for weights pruned with --pattern 2:4).")
@click.option("--trt", "flavour", default="auto", show_default=True,
              help="auto, tensorrt (datacenter; builds on the target GPU) or rtx (TensorRT-RTX; builds on any machine).")
@force_option
@json_option
def build(artifact: Path, out: Path, precision: str, shapes: tuple[str, ...], timing_cache: Path | None,
          workspace_mb: int | None, sparsity: bool, flavour: str, force: bool, as_json: bool) -> None:
    """Build a TensorRT engine from an ONNX ARTIFACT; the manifest records what built it and for which GPU."""
    from exporter.stage import check_output
    from exporter.tensorrt import BuildConfig, to_tensorrt

    config = BuildConfig(precision=precision, shapes=";".join(shapes), workspace_mb=workspace_mb, sparsity=sparsity,
                         trt=flavour, timing_cache=str(timing_cache) if timing_cache else None)
    check_output(out.absolute(), force)
    art = to_tensorrt(Artifact.load(artifact), config, out, force=force, progress=progress)
    emit(art.to_manifest() | {"path": str(art.path)}, as_json, lambda: describe(art))
