"""`kiln export-triton`: a Triton Inference Server model repository from Kiln artifacts."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli_common import emit, force_option, json_option, progress


@click.command("export-triton")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Model repository directory to write.")
@click.option("--name", "names", multiple=True,
              help="Model name clients call, once per ARTIFACT in order (default: each artifact's directory name).")
@click.option("--max-batch-size", default=32, show_default=True, type=int)
@click.option("--preferred-batch-sizes", default="", help="Comma-separated, each <= --max-batch-size (default: none).")
@click.option("--max-queue-delay-us", default=0, show_default=True, type=int,
              help="Microseconds the dynamic batcher may wait for a batch to fill.")
@click.option("--max-queue-size", default=256, show_default=True, type=int, help="Waiting requests before rejection.")
@click.option("--queue-timeout-us", default=10_000_000, show_default=True, type=int,
              help="Microseconds a request may wait in the queue before it is rejected.")
@click.option("--instances", default=1, show_default=True, type=int, help="Model instances (instance_group count).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Where ONNX models run (KIND_CPU / KIND_GPU); TensorRT engines always run on the GPU.")
@click.option("--sequence-length", default=0, show_default=True, type=int,
              help="Pad every request to this many tokens so all can batch (0: to a multiple of 8, so only equal "
                   "lengths batch; with the stand-in backend 64 gave 2.2x the throughput: benchmarks/results/triton.md).")
@click.option("--ort-threads", default=0, show_default=True, type=int,
              help="onnxruntime intra-op threads per instance (0: the backend's default).")
@click.option("--ort-graph-optimization/--no-ort-graph-optimization", default=True, show_default=True,
              help="onnxruntime graph optimizations.")
@force_option
@json_option
def export_triton(artifacts: tuple[Path, ...], out: Path, names: tuple[str, ...], max_batch_size: int,
                  preferred_batch_sizes: str, max_queue_delay_us: int, max_queue_size: int, queue_timeout_us: int,
                  instances: int, kind: str, sequence_length: int, ort_threads: int, ort_graph_optimization: bool,
                  force: bool, as_json: bool) -> None:
    """Write a Triton model repository: per text classifier, the model, a tokenizer and a label model, and
    an ensemble that takes raw text (TEXT) and answers LABEL and SCORES."""
    from exporter.cli_common import int_list
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
