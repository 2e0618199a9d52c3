"""`kiln serve`: HTTP over TextClassifier + Batcher (starlette + uvicorn, Prometheus metrics).

POST /v1/predict {"inputs": ["text", ...]} -> {"predictions": [{"label", "score", "scores"}]}
GET /healthz -> 200 once the model is loaded and warmed up, 503 before
GET /metrics -> Prometheus text: requests by status, latency, batch sizes, queue depth
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.artifact import Artifact
from runtime.batching import Batcher, BatcherClosed, RequestTimeout
from runtime.errors import BackendError, ConfigError, OverloadError
from runtime.pipeline import TextClassifier

BUCKET_TOKENS = 32  # requests whose token counts fall in the same 32-token band share a batch


def length_bucket(encoding: Any) -> int:
    """The Batcher bucket of one tokenized input: its 32-token band."""
    return len(encoding.ids) // BUCKET_TOKENS


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    # 0: a batch starts as soon as the model is free; what arrives while it runs forms the next batch.
    # On this project's 2-core CPU that matched a 5 ms wait in throughput and cut one-client latency from
    # 8.7 to 3.2 ms (benchmarks/results/serve.md); on a GPU a few ms of waiting may pay.
    max_delay_ms: float = 0.0
    max_queue: int = 256
    threads: int = 0  # intra-op threads for the model (0: the backend's default)
    # onnxruntime: idle intra-op threads spin briefly before sleeping. Measured here, turning it off cost
    # about 5% throughput with batching and 20% without; --no-spinning is for hosts shared with other work.
    spinning: bool = True
    max_inputs: int = 64
    max_chars: int = 2000
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 10.0
    backend: str = "auto"
    device: str = "cpu"
    dtype: str = ""  # torch backend: float32, float16 or bfloat16 ("": float32)
    cuda_graphs: bool = False  # torch backend on cuda: one CUDA graph per (bucketed) input shape
    warmup: int = 3

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_inputs", "max_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.request_timeout_s <= 0 or self.max_delay_ms < 0:
            raise ConfigError("request_timeout_s must be > 0 and max_delay_ms >= 0")
        if (self.dtype or self.cuda_graphs) and self.backend != "torch":
            raise ConfigError("dtype and cuda_graphs are options of the torch backend; add --backend torch")
        if self.cuda_graphs and self.device != "cuda":
            raise ConfigError("cuda_graphs needs --device cuda")


def import_serving() -> tuple[Any, Any, Any]:
    try:
        import prometheus_client
        import starlette
        import uvicorn
    except ImportError:
        raise BackendError("kiln serve needs starlette, uvicorn and prometheus-client; "
                           "pip install 'modelkiln[serve]'") from None
    return starlette, uvicorn, prometheus_client


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Service:
    """The model, its batcher and its metrics; loaded in the background so /healthz can say 'starting'."""

    def __init__(self, artifact: str | Path | Artifact, config: ServeConfig) -> None:
        _, _, prom = import_serving()
        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        self.config = config
        self.ready = False
        self.error: str | None = None
        self.clf: TextClassifier | None = None
        self.batcher: Batcher | None = None
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("kiln_requests", "HTTP predict requests by status code", ["status"], registry=self.registry)
        self.latency = prom.Histogram("kiln_request_latency_seconds", "Predict request latency", registry=self.registry,
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch_size = prom.Histogram("kiln_batch_size", "Inputs per model call", registry=self.registry,
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = prom.Histogram("kiln_batch_seconds", "Model call latency", registry=self.registry)
        self.queue = prom.Gauge("kiln_queue_depth", "Inputs waiting for a batch", registry=self.registry)
        self.queue.set_function(lambda: self.batcher.queue_depth if self.batcher else 0)

    def load(self) -> None:
        try:
            options: dict[str, Any] = {"threads": self.config.threads} if self.config.threads else {}
            if self.config.dtype:
                options["dtype"] = self.config.dtype
            if self.config.cuda_graphs:
                options["cuda_graphs"] = True
            if self.config.backend in ("auto", "onnxruntime") and self.artifact.format == "onnx":
                options["spinning"] = self.config.spinning
            clf = TextClassifier(self.artifact, backend=self.config.backend, device=self.config.device,
                                 batch_size=self.config.max_batch_size, **options)
            for _ in range(self.config.warmup):  # first runs pay for kernel selection and arena growth
                clf.predict(["warm up the model"] * min(8, self.config.max_batch_size))
            clf.warm_up_shapes()  # with CUDA graphs: capture every bucket shape before reporting ready
            self.clf = clf
            self.batcher = Batcher(clf.predict_encoded, self.config.max_batch_size, self.config.max_delay_ms,
                                   self.config.max_queue, bucket=length_bucket,
                                   timeout_s=self.config.request_timeout_s, on_batch=self._on_batch)
            self.ready = True
        except Exception as e:  # reported by /healthz; the process stays up for inspection
            self.error = str(e)

    def _on_batch(self, size: int, depth: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def close(self) -> None:
        if self.batcher:
            self.batcher.close(drain=True)  # accepted requests finish before the model goes away
        if self.clf:
            self.clf.close()

    def parse(self, body: bytes) -> list[str]:
        c = self.config
        if len(body) > c.max_body_bytes:
            raise HTTPError(413, f"request body is {len(body)} bytes; the limit is {c.max_body_bytes}")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"request body is not valid JSON ({e})") from None
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise HTTPError(422, 'expected a JSON object {"inputs": ["text", ...]}')
        inputs = payload["inputs"]
        if not isinstance(inputs, list):
            raise HTTPError(422, f"'inputs' must be a list of strings, got {type(inputs).__name__}")
        if not inputs:
            raise HTTPError(422, "'inputs' is empty; send at least one text")
        if len(inputs) > c.max_inputs:
            raise HTTPError(413, f"{len(inputs)} inputs in one request; the limit is {c.max_inputs}")
        for i, text in enumerate(inputs):
            if not isinstance(text, str):
                raise HTTPError(422, f"inputs[{i}] must be a string, got {type(text).__name__}")
            if len(text) > c.max_chars:
                raise HTTPError(413, f"inputs[{i}] has {len(text)} characters; the limit is {c.max_chars}")
        return inputs

    async def predict(self, body: bytes) -> dict[str, Any]:
        if not self.ready or self.clf is None or self.batcher is None:
            raise HTTPError(503, "the model is still loading" if not self.error else f"the model failed to load: {self.error}",
                            {"Retry-After": "1"})
        texts = self.parse(body)
        try:
            futures = self.batcher.submit_many(self.clf.encode(texts))
        except (OverloadError, BatcherClosed) as e:
            raise HTTPError(503, str(e), {"Retry-After": "1"}) from None
        try:
            preds = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                           self.config.request_timeout_s + 1)
        except (RequestTimeout, asyncio.TimeoutError):
            raise HTTPError(504, f"no answer within {self.config.request_timeout_s}s") from None
        return {"predictions": [p.to_dict() for p in preds]}


def create_app(service: Service) -> Any:
    import contextlib

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            declared = int(request.headers.get("content-length") or 0)
            if declared > service.config.max_body_bytes:
                raise HTTPError(413, f"request body is {declared} bytes; the limit is {service.config.max_body_bytes}")
            response = JSONResponse(await service.predict(await request.body()))
        except HTTPError as e:
            response = JSONResponse({"error": e.message}, e.status, headers=e.headers)
        service.requests.labels(str(response.status_code)).inc()
        service.latency.observe(time.perf_counter() - started)
        return response

    async def healthz(request: Request) -> Response:
        if service.ready:
            return JSONResponse({"status": "ready"})
        body = {"status": "failed", "error": service.error} if service.error else {"status": "starting"}
        return JSONResponse(body, 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        threading.Thread(target=service.load, name="kiln-model-load", daemon=True).start()
        yield
        await asyncio.to_thread(service.close)

    return Starlette(routes=[Route("/v1/predict", predict, methods=["POST"]), Route("/healthz", healthz),
                             Route("/metrics", metrics)], lifespan=lifespan)


def serve(artifact: str | Path | Artifact, config: ServeConfig) -> None:
    """Run until SIGINT/SIGTERM; uvicorn then stops accepting, finishes in-flight requests, and we drain."""
    _, uvicorn, _ = import_serving()
    service = Service(artifact, config)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=config.host, port=config.port,
                                           log_level="warning", timeout_graceful_shutdown=30, access_log=False))
    server.run()
