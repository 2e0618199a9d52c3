"""`kiln serve`: the model service behind the HTTP app (runtime/http_app.py), and the process around it.

POST /v1/predict {"inputs": ["text", ...]} -> {"predictions": [{"label", "score", "scores"}]}
GET /healthz (readiness), GET /livez (liveness), GET /metrics (Prometheus), GET /openapi.json,
POST /admin/reload (authenticated). SIGHUP reloads the artifact from disk without downtime.

The service must stay truthful and up whatever a client or the model does: a model that cannot load
ends the process with the reason (or is retried with backoff under --retry-load); a model that is
replaced is loaded and warmed beside the old one, which keeps serving until the switch and then drains.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runtime.artifact import Artifact
from runtime.backends.options import torch_only
from runtime.batched import BUCKET_TOKENS, batched_classifier, length_bucket  # noqa: F401 - the server's names too
from runtime.batching import Batcher, BatcherClosed, RequestTimeout
from runtime.errors import BackendError, ConfigError, InputError, KilnError, ModelOutputError, OverloadError
from runtime.image_requests import TooMany, images_from_json, images_from_multipart
from runtime.pipeline import TextClassifier

SERVED_TASKS = ("text-classification", "image-classification")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MIN_API_KEY_CHARS = 16
log = logging.getLogger("kiln.serve")


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
    # a client must deliver its whole body within this; a slow (or stalled) upload gets 408, not a worker
    body_timeout_s: float = 10.0
    # open connections beyond this get 503 from uvicorn before any body is read
    max_connections: int = 512
    backend: str = "auto"
    device: str = "cpu"
    dtype: str = ""  # torch backend: float32, float16 or bfloat16 ("": float32)
    cuda_graphs: bool = False  # torch backend on cuda: one CUDA graph per (bucketed) input shape
    # other backend options by name (runtime/backends/options.py), e.g. {"static_cache": 4} for openvino;
    # checked by the backend's options class when the model opens (unknown names refused)
    backend_options: tuple[tuple[str, Any], ...] = ()
    warmup: int = 3
    api_key: str = field(default="", repr=False)  # bearer token; "" = no authentication (loopback only, warned)
    public_metrics: bool = False  # with an api key: /metrics open too (for a scraper without the token)
    log_inputs: bool = False  # request texts in the log: off unless asked (they are user data)
    require_signature: str = ""  # public key: refuse an artifact that is unsigned or altered since signing
    retry_load: bool = False  # a model that cannot load: retry with backoff instead of exiting
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_inputs", "max_chars", "max_body_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        for name in ("request_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.max_delay_ms >= 0:
            raise ConfigError(f"max_delay_ms must be >= 0, got {self.max_delay_ms}")
        torch_only([self.backend], self.device, self.dtype, self.cuda_graphs)
        if self.api_key and (len(self.api_key) < MIN_API_KEY_CHARS or not self.api_key.isascii()
                             or not self.api_key.isprintable() or any(c.isspace() for c in self.api_key)):
            # HTTP headers carry Latin-1 at best: a non-ASCII key could never be sent back, so no request would pass
            raise ConfigError(f"the API key must be at least {MIN_API_KEY_CHARS} printable ASCII characters with no "
                              f"whitespace, got {len(self.api_key)} characters")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError("TLS needs both --ssl-certfile and --ssl-keyfile")
        for name in ("ssl_certfile", "ssl_keyfile", "require_signature"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                raise ConfigError(f"{name.replace('_', '-')} {getattr(self, name)!r} is not a readable file")

    @property
    def exposed(self) -> bool:
        """Bound beyond loopback: reachable by other machines."""
        return self.host not in LOOPBACK and not self.host.startswith("127.")


def read_api_key(path: str | Path | None, env_value: str | None) -> str:
    """The bearer token from --api-key-file (its first line) or the KILN_API_KEY environment variable."""
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --api-key-file {str(path)!r}: {e}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ConfigError(f"--api-key-file {str(path)!r} is empty; put the token on its first line")
        return key
    return (env_value or "").strip()


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


@dataclass
class Model:
    """One loaded artifact: its classifier and the batcher in front of it."""

    artifact: Artifact
    clf: TextClassifier  # or runtime.tasks.vision.ImageClassifier (same encode / predict_encoded / predict)
    batcher: Batcher
    loaded_at: float
    source: Path  # where it was loaded from (the artifact itself may be a verified private snapshot)
    snapshot: Path | None = None

    def close(self) -> None:
        self.batcher.close(drain=True)  # accepted requests finish before the model goes away
        self.clf.close()
        if self.snapshot is not None:
            shutil.rmtree(self.snapshot, ignore_errors=True)


def signed_snapshot(source: Path, public_key: str) -> Path:
    """Copy the artifact into a private folder, then verify that copy: what is loaded is exactly what was
    verified, whatever happens to `source` meanwhile (verifying in place, then reading the files again,
    let a swap between the two go through)."""
    from runtime.signing import verify_artifact

    if not source.is_dir():
        return source  # Artifact.load/verify_artifact give the one-line error
    root = Path(tempfile.mkdtemp(prefix="kiln-serve-verified-"))
    snap = root / source.name
    try:
        shutil.copytree(source, snap, symlinks=True)  # links stay links: verification refuses them
        verify_artifact(snap, public_key)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return snap


class Service:
    """The current model, its metrics, and loading/reloading; the model loads in the background so
    /healthz can say 'starting'."""

    def __init__(self, artifact: str | Path | Artifact, config: ServeConfig,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        _, _, prom = import_serving()
        self.source = artifact.path if isinstance(artifact, Artifact) else Path(artifact)
        self.config = config
        self.model: Model | None = None
        self.error: str | None = None  # the last load failure
        self.fatal = False  # the first load failed and will not be retried: the process should end
        self.draining = False
        self.on_fatal = on_fatal
        self._reload_lock = threading.Lock()
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("kiln_requests", "HTTP requests by path and status code", ["path", "status"],
                                     registry=self.registry)
        self.latency = prom.Histogram("kiln_request_latency_seconds", "Predict request latency", registry=self.registry,
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch_size = prom.Histogram("kiln_batch_size", "Inputs per model call", registry=self.registry,
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = prom.Histogram("kiln_batch_seconds", "Model call latency", registry=self.registry)
        self.queue = prom.Gauge("kiln_queue_depth", "Inputs waiting for a batch", registry=self.registry)
        self.queue.set_function(lambda: self.model.batcher.queue_depth if self.model else 0)
        self.reloads = prom.Counter("kiln_reloads", "Model loads by outcome", ["outcome"], registry=self.registry)
        self.up = prom.Gauge("kiln_worker_alive", "1 while the batching worker runs", registry=self.registry)
        self.up.set_function(lambda: 1 if self.model and self.model.batcher.alive else 0)

    # -- state -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.model is not None and self.model.batcher.alive and not self.draining

    def readiness(self) -> tuple[int, dict[str, Any]]:
        if self.ready:
            assert self.model is not None
            return 200, {"status": "ready", "artifact": str(self.model.source)}
        if self.draining:
            return 503, {"status": "draining"}
        if self.model is not None:
            return 503, {"status": "failed", "error": "the batching worker has stopped"}
        if self.error:
            return 503, {"status": "failed" if self.fatal else "retrying", "error": self.error}
        return 503, {"status": "starting"}

    def liveness(self) -> tuple[int, dict[str, Any]]:
        """Alive unless something only a restart can fix happened (a dead worker, a load that will not be retried)."""
        if self.model is not None and not self.model.batcher.alive and not self.draining:
            return 503, {"status": "dead", "error": "the batching worker has stopped"}
        if self.fatal:
            return 503, {"status": "dead", "error": self.error}
        return 200, {"status": "alive"}

    # -- loading ---------------------------------------------------------------------------------
    def load_model(self, source: str | Path) -> Model:
        """Load, check and warm one artifact; the caller decides when it starts taking traffic."""
        c = self.config
        source = Path(source)
        path = signed_snapshot(source, c.require_signature) if c.require_signature else source
        try:
            return self._load(path, source)
        except BaseException:
            if path != source:
                shutil.rmtree(path.parent, ignore_errors=True)
            raise

    def _load(self, path: Path, source: Path) -> Model:
        c = self.config
        art = Artifact.load(path)
        if art.task not in SERVED_TASKS:
            raise ConfigError(f"kiln serve serves {' and '.join(SERVED_TASKS)} artifacts; {source} is {art.task!r}")
        options: dict[str, Any] = {"threads": c.threads} if c.threads else {}
        if c.dtype:
            options["dtype"] = c.dtype
        if c.cuda_graphs:
            options["cuda_graphs"] = True
        options.update(dict(c.backend_options))
        if c.backend in ("auto", "onnxruntime") and art.format == "onnx":
            options["spinning"] = c.spinning
        elif not c.spinning:  # only onnxruntime's thread pool spins: say so rather than ignore the option
            raise ConfigError(f"--no-spinning applies to onnxruntime's thread pool; {source} runs on "
                              f"{c.backend if c.backend != 'auto' else art.format}, which has no spinning option")
        b = batched_classifier(art, c.max_batch_size, c.max_delay_ms, c.max_queue, timeout_s=c.request_timeout_s,
                               on_batch=self._on_batch, warmup=c.warmup, check=check_finite, backend=c.backend,
                               device=c.device, **options)
        return Model(art, b.clf, b.batcher, time.time(), source, path.parent if path != source else None)

    def start(self) -> None:
        """The first load (in a background thread): exit on failure, or retry with backoff under retry_load."""
        delay = 1.0
        while True:
            try:
                self.model = self.load_model(self.source)
                self.error = None
                self.reloads.labels("ok").inc()
                log.info("model loaded from %s; ready", self.source)
                return
            except Exception as e:  # noqa: BLE001 - every load failure is reported, none is a traceback
                self.error = describe_error(e)
                self.reloads.labels("failed").inc()
                if not self.config.retry_load:
                    self.fatal = True
                    if self.on_fatal:  # the owner ends the process and says why (kiln serve: one `error:` line)
                        self.on_fatal(self.error)
                    else:
                        log.error("the model failed to load: %s", self.error)
                    return
                log.error("the model failed to load: %s; retrying in %.0f s", self.error, delay)
            if self.draining:
                return
            time.sleep(delay)
            delay = min(delay * 2, 60.0)

    def reload(self, source: str | Path | None = None) -> dict[str, Any]:
        """Load `source` (default: the serving path, re-read from disk), warm it, then switch; the old model
        keeps serving throughout and drains afterwards. A failed load changes nothing and raises KilnError."""
        with self._reload_lock:
            path = Path(source) if source is not None else self.source
            started = time.perf_counter()
            try:
                new = self.load_model(path)
            except Exception as e:  # noqa: BLE001
                self.reloads.labels("failed").inc()
                message = describe_error(e)
                log.error("reload from %s failed; still serving the previous model: %s", path, message)
                raise KilnError(f"reload from {path} failed; still serving the previous model: {message}") from None
            old, self.model = self.model, new
            self.source, self.error, self.fatal = path, None, False
            self.reloads.labels("ok").inc()
            if old is not None:  # requests already queued there finish there; new ones go to `new`
                threading.Thread(target=old.close, name="kiln-drain-old-model", daemon=True).start()
            seconds = time.perf_counter() - started
            log.info("reloaded model from %s in %.2f s", path, seconds)
            return {"status": "reloaded", "artifact": str(new.source), "seconds": round(seconds, 3)}

    def _on_batch(self, size: int, depth: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def close(self) -> None:
        self.draining = True
        if self.model:
            self.model.close()

    # -- requests --------------------------------------------------------------------------------
    def parse(self, body: bytes, content_type: str = "application/json") -> list[Any]:
        """A request's inputs: texts ({"inputs": [...]}), or for an image model encoded images
        ({"images": ["<base64>", ...]} or multipart/form-data file parts)."""
        c = self.config
        if len(body) > c.max_body_bytes:
            raise HTTPError(413, f"request body is {len(body)} bytes; the limit is {c.max_body_bytes}")
        if content_type.lower().startswith("multipart/form-data"):
            return self.parse_images(lambda: images_from_multipart(body, content_type, c.max_inputs))
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as e:  # also non-UTF-8, 5,000-digit numbers, deep nesting
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
            raise HTTPError(400, f"request body is not valid JSON ({reason})") from None
        if isinstance(payload, dict) and "images" in payload and "inputs" not in payload:
            return self.parse_images(lambda: images_from_json(payload["images"], c.max_inputs))
        if self.serves_images:
            raise HTTPError(422, 'this is an image classifier: send {"images": ["<base64 image file>", ...]} '
                                 "or multipart/form-data with one file part per image")
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
            if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):  # JSON "\ud800" decodes to a lone surrogate
                raise HTTPError(422, f"inputs[{i}] contains an unpaired UTF-16 surrogate; send valid Unicode text")
        return inputs

    @property
    def serves_images(self) -> bool:
        model = self.model
        return model is not None and model.artifact.family.name == "vision"

    def parse_images(self, read: Callable[[], list[bytes]]) -> list[bytes]:
        if self.model is not None and not self.serves_images:
            raise HTTPError(422, f"this model classifies text ({self.model.artifact.task}); it takes "
                                 '{"inputs": ["text", ...]}, not images')
        try:
            return read()
        except TooMany as e:
            raise HTTPError(413, str(e)) from None
        except InputError as e:
            raise HTTPError(422, str(e)) from None

    async def predict(self, texts: list[Any]) -> dict[str, Any]:
        for _ in range(2):  # a reload may close the batcher between our read of self.model and the submit
            model = self.model
            if not self.ready or model is None:
                status, body = self.readiness()
                message = {"starting": "the model is still loading", "draining": "the server is shutting down"}.get(
                    body["status"], f"the model is not available: {body.get('error')}")
                raise HTTPError(503, message, {"Retry-After": "1"})
            try:
                encodings = model.clf.encode(texts)
                futures = model.batcher.submit_many(encodings)
            except InputError as e:
                raise HTTPError(422, str(e)) from None
            except BatcherClosed as e:
                if self.model is not model:
                    continue  # switched to a new model: submit there
                raise HTTPError(503, str(e), {"Retry-After": "1"}) from None
            except OverloadError as e:
                raise HTTPError(503, str(e), {"Retry-After": "1"}) from None
            break
        try:
            preds = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                           self.config.request_timeout_s + 1)
            check_finite(preds)
        except (RequestTimeout, asyncio.TimeoutError):
            for f in futures:
                f.cancel()  # what has not run yet will not run; the worker skips it
            raise HTTPError(504, f"no answer within {self.config.request_timeout_s}s") from None
        except InputError as e:
            raise HTTPError(422, str(e)) from None
        except KilnError as e:  # the model failed for this batch (e.g. non-finite output): the server's fault
            log.error("prediction failed: %s", e)
            raise HTTPError(500, f"the model failed on this request: {e}") from None
        return {"predictions": [p.to_dict() for p in preds]}


def check_finite(preds: list[Any]) -> None:
    """Refuse to answer NaN/inf: it is not JSON, and it means the model is broken, not that it is unsure."""
    for i, p in enumerate(preds):
        if not all(math.isfinite(v) for v in p.scores.values()):
            raise ModelOutputError(f"the model produced non-finite scores for input {i}; the artifact is "
                                   "corrupt or numerically unstable (run `kiln inspect --verify`)", i)


def describe_error(e: BaseException) -> str:
    return str(e) if isinstance(e, KilnError) else f"{type(e).__name__}: {e}"


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, a port that something already listens on (before loading a model or saying
    "serving on"); uvicorn would otherwise log its own error in another format and exit with status 3."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r} is not an address this machine can bind ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a TIME_WAIT socket is no conflict
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                # not a usage mistake (exit 2) but the machine's state: exit 1, like a model that cannot load
                raise KilnError(f"port {port} is in use on {host} (another server?); choose another with --port "
                                "or stop what listens there") from None
            if e.errno == errno.EACCES:
                raise ConfigError(f"port {port} on {host} needs privileges this user does not have; choose a port "
                                  "above 1023 with --port") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def serve(artifact: str | Path | Artifact, config: ServeConfig) -> None:
    """Run until SIGINT/SIGTERM; uvicorn then stops accepting, finishes in-flight requests, and we drain.

    Raises KilnError when the model could not load (so the process exits non-zero with the reason)."""
    from runtime.http_app import create_app
    from runtime.http_protocol import protocol_with_head_deadline

    _, uvicorn, _ = import_serving()
    check_port(config.host, config.port)
    holder: dict[str, Any] = {}

    def stop(reason: str) -> None:
        if "server" in holder:
            holder["server"].should_exit = True

    service = Service(artifact, config, on_fatal=stop)
    if config.exposed and not config.api_key:
        log.warning("serving on %s without authentication: anyone who can reach this port can use the model; "
                    "give --api-key-file (or KILN_API_KEY) and TLS (--ssl-certfile/--ssl-keyfile)", config.host)
    extra: dict[str, Any] = {"ssl_certfile": config.ssl_certfile, "ssl_keyfile": config.ssl_keyfile} \
        if config.ssl_certfile else {}
    protocol = protocol_with_head_deadline(config.body_timeout_s)  # headers get the body's deadline too
    if protocol is not None:
        extra["http"] = protocol
    server = uvicorn.Server(uvicorn.Config(
        create_app(service), host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=30,
        access_log=False, limit_concurrency=config.max_connections, timeout_keep_alive=5, **extra))
    holder["server"] = server
    server.run()
    if service.fatal:
        raise KilnError(f"the model failed to load: {service.error}")
