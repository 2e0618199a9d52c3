"""`kiln serve`: an HTTP server over a classifier and its micro-batcher (the work is runtime/server.py)."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.common import (
    backend_option, backend_option_option, cuda_graphs_option, device_option, dtype_option, example,
    parse_backend_options, progress,
)
from runtime.artifact import Artifact
from runtime.errors import ConfigError


@click.command(epilog=example("kiln serve ft-int8 --port 8000",
                              "curl -s localhost:8000/v1/predict -d '{\"inputs\": [\"A gripping film.\"]}'"))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (localhost by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port to listen on.")
@click.option("--max-batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="1 turns batching off.")
@click.option("--max-delay-ms", default=0.0, show_default=True, type=float,
              help="Longest wait for a batch to fill (0: start when the model is free).")
@click.option("--max-queue", default=256, show_default=True, type=int, help="Waiting inputs before 503 overload.")
@click.option("--threads", default=0, show_default=True, type=int, help="Model intra-op threads (0: backend default).")
@click.option("--spinning/--no-spinning", default=True, show_default=True,
              help="onnxruntime: idle model threads spin briefly (faster; --no-spinning on a shared host).")
@click.option("--max-inputs", default=64, show_default=True, type=int, help="Texts (or images) per request.")
@click.option("--max-chars", default=2000, show_default=True, type=int, help="Characters per text.")
@click.option("--max-body-bytes", default=1 << 20, show_default=True, type=int, help="Request body limit.")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, type=float, help="Seconds a request may wait.")
@click.option("--body-timeout", "body_timeout_s", default=10.0, show_default=True, type=float,
              help="Seconds a client has to send its request body (slower: 408).")
@click.option("--max-connections", default=512, show_default=True, type=int,
              help="Open connections before new ones get 503.")
@click.option("--api-key-file", type=click.Path(path_type=Path),
              help="Require 'Authorization: Bearer <key>' (key on the file's first line; or set KILN_API_KEY).")
@click.option("--public-metrics", is_flag=True, help="With an API key: leave /metrics open for a scraper.")
@click.option("--log-inputs", is_flag=True, help="Write request texts to the access log (off: they are user data).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One line per request on stderr: request id, status, latency, input count.")
@click.option("--ssl-certfile", type=click.Path(path_type=Path), help="Serve HTTPS with this certificate (PEM).")
@click.option("--ssl-keyfile", type=click.Path(path_type=Path), help="The certificate's private key (PEM).")
@click.option("--require-signature", "signature_pub", type=click.Path(path_type=Path),
              help="Public key: refuse an artifact that is unsigned or changed since `kiln sign`.")
@click.option("--retry-load", is_flag=True,
              help="If the model cannot load, retry with backoff (logging each failure) instead of exiting.")
@backend_option
@device_option
@dtype_option
@backend_option_option
@cuda_graphs_option
def serve(artifact: Path, host: str, port: int, max_batch_size: int, max_delay_ms: float, max_queue: int, threads: int,
          spinning: bool, max_inputs: int, max_chars: int, max_body_bytes: int, timeout_s: float, body_timeout_s: float,
          max_connections: int, api_key_file: Path | None, public_metrics: bool, log_inputs: bool, access_log: bool,
          ssl_certfile: Path | None, ssl_keyfile: Path | None, signature_pub: Path | None, retry_load: bool,
          backend: str, device: str, dtype: str | None, cuda_graphs: bool, backend_options: tuple[str, ...]) -> None:
    """Serve a text or image classifier over HTTP: POST /v1/predict ({"inputs": [texts]}, or for images
    {"images": [base64]} or multipart/form-data), GET /healthz, /livez, /metrics, /openapi.json.

    SIGHUP (or an authenticated POST /admin/reload) loads the artifact again, warms it, then switches."""
    import logging
    import os

    from runtime.server import SERVED_TASKS, ServeConfig, check_port, import_serving, read_api_key
    from runtime.server import serve as run_server

    config = ServeConfig(host=host, port=port, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms,
                         max_queue=max_queue, threads=threads, spinning=spinning, max_inputs=max_inputs, max_chars=max_chars,
                         max_body_bytes=max_body_bytes, request_timeout_s=timeout_s, body_timeout_s=body_timeout_s,
                         max_connections=max_connections, backend=backend, device=device, dtype=dtype or "",
                         cuda_graphs=cuda_graphs, backend_options=tuple(parse_backend_options(backend_options).items()),
                         api_key=read_api_key(api_key_file, os.environ.get("KILN_API_KEY")),
                         public_metrics=public_metrics, log_inputs=log_inputs, retry_load=retry_load,
                         require_signature=str(signature_pub or ""), ssl_certfile=str(ssl_certfile or ""),
                         ssl_keyfile=str(ssl_keyfile or ""))
    art = Artifact.load(artifact)
    if art.task not in SERVED_TASKS:
        raise ConfigError(f"kiln serve serves {' and '.join(SERVED_TASKS)} artifacts; {artifact} is {art.task!r}")
    if config.backend_options:  # checked now: a mistake is not a model that fails to load (and is retried)
        from runtime.backends.options import options_for
        from runtime.session import resolve_backend

        options_for(resolve_backend(backend, art.format), dict(config.backend_options))
    import_serving()
    check_port(host, port)  # before "serving on": a busy port is one error line, not a start and a crash
    logging.basicConfig(level=logging.INFO, format="[kiln %(asctime)s] %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("kiln.access").setLevel(logging.INFO if access_log else logging.WARNING)
    scheme = "https" if ssl_certfile else "http"
    auth = "bearer token required" if config.api_key else "no authentication"
    progress(f"serving {art.path} on {scheme}://{host}:{port} (batch <= {max_batch_size}, delay <= {max_delay_ms} ms, "
             f"{auth})")
    run_server(art, config)
