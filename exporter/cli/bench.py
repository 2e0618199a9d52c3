"""`kiln bench`: latency percentiles and throughput per backend and batch size (the harness is benchmarks/)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from exporter.cli.common import (
    cuda_graphs_option, device_option, dtype_option, emit, example, int_list, json_option, progress,
)
from runtime.artifact import Artifact
from runtime.errors import ConfigError

DEFAULT_SEQ_LEN = 128  # or the artifact's maximum length, when that is shorter


@click.command(epilog=example("kiln bench out --batch-sizes 1,8 --backend onnxruntime,torch",
                              "kiln bench ft-int8 --seq-len 64 --json"))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seq-len", type=int, help=f"Tokens per input (default: {DEFAULT_SEQ_LEN}, or the artifact's maximum "
              "length when shorter).")
@click.option("--backend", default="auto", show_default=True,
              help="Comma-separated: auto, onnxruntime, torch (torch runs the checkpoint the artifact came from).")
@device_option
@click.option("--warmup", default=5, show_default=True, type=int, help="Untimed runs first.")
@click.option("--iters", default=30, show_default=True, type=int, help="Timed runs per configuration.")
@click.option("--threads", default=0, show_default=True, type=int, help="Intra-op threads (0: the backend's default).")
@click.option("--rounds", default=5, show_default=True, type=int,
              help="Interleave the timed runs of every configuration in this many rounds (fair under drift).")
@dtype_option
@cuda_graphs_option
@click.option("--markdown", is_flag=True, help="Print a Markdown table.")
@json_option
def bench(artifact: Path, batch_sizes: str, seq_len: int | None, backend: str, device: str, warmup: int, iters: int,
          threads: int, rounds: int, dtype: str | None, cuda_graphs: bool, markdown: bool, as_json: bool) -> None:
    """Measure latency percentiles and throughput per backend and batch size."""
    from benchmarks.environment import capture_environment
    from benchmarks.latency import example_feed, measure_interleaved, measure_latency
    from benchmarks.report import table
    from runtime.backends.options import dtype_options, torch_only
    from runtime.session import open_session

    sizes = int_list(batch_sizes, "--batch-sizes")
    art = Artifact.load(artifact)
    max_len = art.model_meta.max_length
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, max_len) if max_len else DEFAULT_SEQ_LEN
    if seq_len < 1:
        raise ConfigError(f"--seq-len must be >= 1, got {seq_len}")
    if max_len and seq_len > max_len:
        raise ConfigError(f"--seq-len {seq_len} exceeds the model's maximum length {max_len}")
    options = {"threads": threads} if threads else {}
    names = [b.strip() for b in backend.split(",") if b.strip()]
    torch_options = torch_only(names, device, dtype, cuda_graphs)
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(open_session(art, backend=n, device=device,
                                                     **options, **dtype_options(n, torch_options)))
                    for n in names]
        runs = {(n, b, seq_len): (s, example_feed(s, b, seq_len)) for n, s in zip(names, sessions) for b in sizes}
        progress(f"{len(runs)} configuration{'s' if len(runs) != 1 else ''} x ({warmup} warm-up + {iters} timed runs), "
                 f"interleaved in {rounds} round{'s' if rounds != 1 else ''}, {seq_len} tokens")
        sync = None
        if device == "cuda" and any(n == "torch" for n in names):
            import torch

            sync = torch.cuda.synchronize
        results = measure_interleaved(runs, warmup, iters, rounds) if sync is None else \
            {k: measure_latency(s, f, warmup, iters, sync) for k, (s, f) in runs.items()}
        rows = [r.to_dict() for r in results.values()]
    report = {"artifact": str(art.path.absolute()), "results": rows, "environment": capture_environment()}
    # the family's size column: seq_len for text, image (CxHxW) for vision
    cols = ["backend", "batch", art.family.size_column, "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput"]
    env = report["environment"]
    emit(report, as_json, lambda: table(rows, cols, markdown) +
         f"\n\n{env['cpu']} ({env['cpu_count']} cores, {' '.join(env['cpu_flags'])}); "
         f"throughput in {art.family.item_name}/s")
