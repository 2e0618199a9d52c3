"""`kiln build` (ONNX -> TensorRT engine, exporter/tensorrt.py) and `kiln export-triton` (a Triton model
repository, exporter/triton.py)."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.common import choice, emit, example, force_option, int_list, json_option, output_option, progress
from exporter.cli.describe import describe
from exporter.tensorrt import FLAVOUR_CHOICES, PRECISIONS
from runtime.artifact import Artifact


@click.command(epilog=example("kiln build minilm-onnx -o minilm-trt --precision fp16",
                              "kiln build minilm-qdq -o minilm-trt-int8 --precision int8"))
@click.argument("artifact", type=click.Path(path_type=Path))
@output_option("Engine artifact directory to write.")
@click.option("--precision", type=choice(PRECISIONS), default="fp16", show_default=True,
              help="int8 needs a QDQ model: kiln quantize --method nncf-int8.")
@click.option("--shapes", multiple=True, help="Profile override NAME:MIN,OPT,MAX, dims joined by x "
              "(e.g. input_ids:1x16,8x128,32x512); inputs sharing an axis get the same range. Repeatable.")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="Timing cache file: reused if present, saved after.")
@click.option("--workspace-mb", type=int, help="Builder workspace limit in MB (default: TensorRT's).")
@click.option("--sparsity", is_flag=True, help="Allow 2:4 sparse kernels (for weights pruned with --pattern 2:4).")
@click.option("--trt", "flavour", type=choice(FLAVOUR_CHOICES), default="auto", show_default=True,
              help="tensorrt (datacenter; builds on the target GPU) or rtx (TensorRT-RTX; builds on any machine).")
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


@click.command("export-triton", epilog=example("kiln export-triton ft-fp32 ft-int8 --name fp32 --name int8 -o triton-repo"))
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option("Model repository directory to write.")
@click.option("--name", "names", multiple=True,
              help="Model name clients call, once per ARTIFACT in order (default: each artifact's directory name).")
@click.option("--max-batch-size", default=32, show_default=True, type=int, help="Largest batch Triton forms.")
@click.option("--preferred-batch-sizes", default="", help="Comma-separated, each <= --max-batch-size (default: none).")
@click.option("--max-queue-delay-us", default=0, show_default=True, type=int,
              help="Microseconds the dynamic batcher may wait for a batch to fill.")
@click.option("--max-queue-size", default=256, show_default=True, type=int, help="Waiting requests before rejection.")
@click.option("--queue-timeout-us", default=10_000_000, show_default=True, type=int,
              help="Microseconds a request may wait in the queue before it is rejected.")
@click.option("--instances", default=1, show_default=True, type=int, help="Model instances (instance_group count).")
@click.option("--kind", type=choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Where ONNX models run (KIND_CPU / KIND_GPU); TensorRT engines always run on the GPU.")
@click.option("--sequence-length", default=None, type=int,
              help="Pad every request to this many tokens so all can batch (0: to a multiple of 8, so only equal "
                   "lengths batch). Default: the model's max length when it is at most 128 tokens, else 0 "
                   "(benchmarks/results/triton.md: padding to 64 served 2.2x the requests of 0).")
@click.option("--ort-threads", default=0, show_default=True, type=int,
              help="onnxruntime intra-op threads per instance (0: the backend's default).")
@click.option("--ort-graph-optimization/--no-ort-graph-optimization", default=True, show_default=True,
              help="onnxruntime graph optimizations.")
@force_option
@json_option
def export_triton(artifacts: tuple[Path, ...], out: Path, names: tuple[str, ...], max_batch_size: int,
                  preferred_batch_sizes: str, max_queue_delay_us: int, max_queue_size: int, queue_timeout_us: int,
                  instances: int, kind: str, sequence_length: int | None, ort_threads: int, ort_graph_optimization: bool,
                  force: bool, as_json: bool) -> None:
    """Write a Triton model repository: per text classifier, the model, a tokenizer and a label model, and
    an ensemble that takes raw text (TEXT) and answers LABEL and SCORES."""
    from exporter.stage import check_output
    from exporter.triton import TritonConfig, to_triton

    config = TritonConfig(
        max_batch_size=max_batch_size,
        preferred_batch_sizes=tuple(int_list(preferred_batch_sizes, "--preferred-batch-sizes"))
        if preferred_batch_sizes.strip() else (),
        max_queue_delay_microseconds=max_queue_delay_us, max_queue_size=max_queue_size,
        queue_timeout_microseconds=queue_timeout_us, instance_count=instances, kind=f"KIND_{kind.upper()}",
        sequence_length=sequence_length, ort_intra_op_threads=ort_threads,
        ort_graph_optimization=ort_graph_optimization, names=names)
    check_output(out.absolute(), force)  # before reading any artifact
    summary = to_triton(artifacts, config, out, force=force, progress=progress)
    emit(summary, as_json, lambda: "\n".join(
        [f"repository  {summary['repository']}"] +
        [f"model       {name:<28} {kind_}" for name, kind_ in summary["models"].items()] +
        [f"endpoint    POST /v2/models/{name}/infer  (TEXT in; LABEL, SCORES out)" for name in summary["endpoints"]]))
