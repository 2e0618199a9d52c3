"""`kiln loadtest`: drive a running server, or an artifact in-process, and report latency under load
(the work is benchmarks/load.py: load_target, run_load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from exporter.cli.common import choice, data_option, emit, example, json_option, progress, text_column_option
from runtime.errors import KilnError


def format_summary(s: dict[str, Any]) -> str:
    """The human form of a load summary: units, no raw Python values (None, dicts)."""
    errors = ", ".join(f"{kind} x{n}" for kind, n in s["errors"].items()) or "none"
    lines = [f"mode           {s['mode']}, {s['duration_s']:g} s",
             f"requests       {s['sent']} sent, {s['answered']} answered, {s['ok']} ok"
             + (f", {s['lost']} unfinished at the end" if s["lost"] else ""),
             f"errors         {errors}",
             f"throughput     {s['throughput_rps']:g} requests/s",
             f"latency        p50 {s['p50_ms']:g} ms, p90 {s['p90_ms']:g} ms, p99 {s['p99_ms']:g} ms, max {s['max_ms']:g} ms"
             + (" (of successful requests)" if s["errors"] else "")]
    if s.get("error_p99_ms") is not None:
        lines.append(f"error latency  p99 {s['error_p99_ms']:g} ms")
    if "client_cpu_pct" in s:
        lines.append(f"client CPU     {s['client_cpu_pct']:g}% of one core (the load generator's own share)")
    if s.get("stale_reconnects"):
        lines.append(f"reconnects     {s['stale_reconnects']} (idle keep-alive connections the server had closed)")
    return "\n".join(lines)


@click.command(epilog=example("kiln loadtest http://127.0.0.1:8000 --concurrency 32 --duration 20",
                              "kiln loadtest ft-int8 --rate 200     # in-process, no HTTP"))
@click.argument("target")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(min=1), help="Closed-loop clients.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True),
              help="Open loop: Poisson arrivals per second (instead of --concurrency).")
@click.option("--duration", default=20.0, show_default=True, type=float, help="Seconds of load.")
@data_option("Texts to send, one per request (CSV/TSV/JSONL or a dataset name), or images for an image model "
             "(a folder, mnist-5k:test).", default="movie-snippets:test", show_default=True)
@text_column_option
@click.option("--max-batch-size", default=32, show_default=True, type=int, help="In-process mode only: batch limit.")
@click.option("--max-delay-ms", default=0.0, show_default=True, type=float, help="In-process mode only: batch wait.")
@click.option("--max-queue", default=256, show_default=True, type=int, help="In-process mode only: queue limit.")
@click.option("--protocol", type=choice(["kiln", "triton"]), default="kiln", show_default=True,
              help="HTTP mode: kiln serve's /v1/predict, or Triton's KServe v2 /v2/models/MODEL/infer.")
@click.option("--model", default="", help="--protocol triton: the model to call (the ensemble export-triton wrote).")
@click.option("--api-key-file", type=click.Path(path_type=Path),
              help="kiln serve with authentication: send this token (or set KILN_API_KEY).")
@json_option
def loadtest(target: str, concurrency: int, rate: float | None, duration: float, data: str, text_column: str,
             max_batch_size: int, max_delay_ms: float, max_queue: int, protocol: str, model: str,
             api_key_file: Path | None, as_json: bool) -> None:
    """Load a running server (TARGET = http://host:port) or an in-process Batcher (TARGET = an artifact)."""
    import os

    from benchmarks.load import load_inputs, load_target, run_load
    from runtime.server import read_api_key

    api_key = read_api_key(api_key_file, os.environ.get("KILN_API_KEY")) if "://" in target else ""
    texts, images = load_inputs(data, text_column)  # image files' bytes for an image folder / mnist-5k:SPLIT
    opened = load_target(target, protocol, model, api_key, max_batch_size, max_delay_ms, max_queue, images=images)
    with opened as make:
        progress(f"{'open loop at ' + f'{rate:g}/s' if rate else f'{concurrency} closed-loop clients'} "
                 f"for {duration:g}s against {target}")
        summary = run_load(make, texts, concurrency, rate, duration).summary()
    emit(summary, as_json, lambda: format_summary(summary))
    if summary["sent"] and not summary["ok"]:  # a CI step must not pass on a run where nothing succeeded
        errors = ", ".join(f"{k} x{n}" for k, n in summary["errors"].items()) or "none"
        raise KilnError(f"no request succeeded ({summary['sent']} sent; errors: {errors})")
