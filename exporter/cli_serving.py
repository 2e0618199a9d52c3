"""`kiln serve` and `kiln loadtest`."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli_common import (backend_option, cuda_graphs_option, device_option, dtype_option, emit, json_option,
                                 progress)
from runtime.artifact import Artifact
from runtime.errors import ConfigError


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (localhost by default).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--max-batch-size", default=32, show_default=True, type=int, help="1 turns batching off.")
@click.option("--max-delay-ms", default=0.0, show_default=True, type=float,
              help="Longest wait for a batch to fill (0: start when the model is free).")
@click.option("--max-queue", default=256, show_default=True, type=int, help="Waiting inputs before 503 overload.")
@click.option("--threads", default=0, show_default=True, type=int, help="Model intra-op threads (0: backend default).")
@click.option("--spinning/--no-spinning", default=True, show_default=True,
              help="onnxruntime: idle model threads spin briefly (faster; --no-spinning on a shared host).")
@click.option("--max-inputs", default=64, show_default=True, type=int, help="Texts per request.")
@click.option("--max-chars", default=2000, show_default=True, type=int, help="Characters per text.")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, type=float, help="Seconds a request may wait.")
@backend_option
@device_option
@dtype_option
@cuda_graphs_option
def serve(artifact: Path, host: str, port: int, max_batch_size: int, max_delay_ms: float, max_queue: int, threads: int,
          spinning: bool, max_inputs: int, max_chars: int, timeout_s: float, backend: str, device: str,
          dtype: str | None, cuda_graphs: bool) -> None:
    """Serve a text classifier over HTTP: POST /v1/predict, GET /healthz, GET /metrics."""
    from runtime.server import ServeConfig, import_serving
    from runtime.server import serve as run_server

    config = ServeConfig(host=host, port=port, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms,
                         max_queue=max_queue, threads=threads, spinning=spinning, max_inputs=max_inputs, max_chars=max_chars,
                         request_timeout_s=timeout_s, backend=backend, device=device, dtype=dtype or "",
                         cuda_graphs=cuda_graphs)
    art = Artifact.load(artifact)
    if art.task != "text-classification":
        raise ConfigError(f"kiln serve serves text-classification artifacts; {artifact} is {art.task!r}")
    import_serving()
    progress(f"serving {art.path} on http://{host}:{port} (batch <= {max_batch_size}, delay <= {max_delay_ms} ms)")
    run_server(art, config)


@click.command()
@click.argument("target")
@click.option("--concurrency", default=32, show_default=True, type=int, help="Closed-loop clients.")
@click.option("--rate", type=float, help="Open loop: Poisson arrivals per second (instead of --concurrency).")
@click.option("--duration", default=20.0, show_default=True, type=float, help="Seconds of load.")
@click.option("--data", default="movie-snippets:test", show_default=True, help="Texts to send (one per request).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--max-batch-size", default=32, show_default=True, type=int, help="In-process mode only.")
@click.option("--max-delay-ms", default=0.0, show_default=True, type=float, help="In-process mode only.")
@click.option("--max-queue", default=256, show_default=True, type=int, help="In-process mode only.")
@json_option
def loadtest(target: str, concurrency: int, rate: float | None, duration: float, data: str, text_column: str,
             max_batch_size: int, max_delay_ms: float, max_queue: int, as_json: bool) -> None:
    """Load a running server (TARGET = http://host:port) or an in-process Batcher (TARGET = an artifact)."""
    from benchmarks.load import batcher_target, closed_loop, http_target, open_loop
    from calibration.datasets import load_texts
    from runtime.batching import Batcher
    from runtime.pipeline import TextClassifier
    from runtime.server import length_bucket

    texts = load_texts(data, text_column)
    clf = batcher = None
    if "://" in target:
        make = http_target(target)
    else:
        clf = TextClassifier(target, batch_size=max_batch_size)
        batcher = Batcher(clf.predict_encoded, max_batch_size, max_delay_ms, max_queue, bucket=length_bucket)
        make = batcher_target(batcher, clf.encode)
    try:
        progress(f"{'open loop at ' + str(rate) + '/s' if rate else f'{concurrency} closed-loop clients'} "
                 f"for {duration:g}s against {target}")
        result = open_loop(make, texts, rate, duration) if rate else closed_loop(make, texts, concurrency, duration)
    finally:
        if batcher:
            batcher.close()
        if clf:
            clf.close()
    summary = result.summary()
    emit(summary, as_json, lambda: "\n".join(f"{k:<14} {v}" for k, v in summary.items()))
