"""The HTTP face of `kiln serve` (starlette): routes, authentication, body limits, access log, OpenAPI.

Every request, whatever happens inside, ends as a JSON answer that is counted in /metrics and written
to the access log with a request id, its status, latency and input count; a bug becomes a 500 with the
request id, never a dropped connection or a traceback sent to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import signal
import threading
import time
import uuid
from typing import Any

from runtime.errors import KilnError
from runtime.openapi import openapi_document
from runtime.server import HTTPError, Service

access_log = logging.getLogger("kiln.access")
log = logging.getLogger("kiln.serve")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OPEN_PATHS = ("/healthz", "/livez", "/openapi.json")  # never need the token: probes and docs


def request_id(headers: Any) -> str:
    """The caller's X-Request-Id when it is a sane token (never echo arbitrary bytes into logs), else a new one."""
    given = headers.get("x-request-id", "")
    return given if REQUEST_ID.match(given) else uuid.uuid4().hex[:16]


def authorized(headers: Any, api_key: str) -> bool:
    """Constant-time bearer token check (hashing first, so the comparison does not leak the key's length)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(hashlib.sha256(token.strip().encode("utf-8", "replace")).digest(),
                               hashlib.sha256(api_key.encode()).digest())


async def read_body(request: Any, limit: int, timeout_s: float) -> bytes:
    """Read at most `limit` bytes within `timeout_s`: a chunked upload without Content-Length is cut off
    as soon as it passes the limit (memory stays bounded), and a client that stalls gets 408."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, f"Content-Length must be a non-negative integer, got {declared[:40]!r}")
        if int(declared) > limit:
            raise HTTPError(413, f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0

    async def pull() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)

    from starlette.requests import ClientDisconnect

    try:
        await asyncio.wait_for(pull(), timeout_s)
    except asyncio.TimeoutError:
        raise HTTPError(408, f"the request body did not arrive within {timeout_s:g}s") from None
    except ClientDisconnect:  # the client left mid-body: its mistake, not a server error (nginx's 499)
        raise HTTPError(499, "the client closed the connection before sending the whole body") from None
    return b"".join(chunks)


def create_app(service: Service) -> Any:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    config = service.config

    def guarded(handler: Any, path: str) -> Any:
        """Authentication, request id, error mapping, metrics and the access log around one route."""

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            rid = request_id(request.headers)
            info: dict[str, Any] = {}
            try:
                needs_key = config.api_key and path not in OPEN_PATHS and not (path == "/metrics" and config.public_metrics)
                if needs_key and not authorized(request.headers, config.api_key):
                    raise HTTPError(401, "missing or wrong API key; send 'Authorization: Bearer <key>'",
                                    {"WWW-Authenticate": "Bearer"})
                response = await handler(request, info)
            except HTTPError as e:
                response = JSONResponse({"error": e.message, "request_id": rid}, e.status, headers=e.headers)
            except Exception:  # noqa: BLE001 - a bug is one 500 for this request, logged with its id
                log.exception("request %s: internal error", rid)
                response = JSONResponse({"error": f"internal error; the server log has request id {rid}",
                                         "request_id": rid}, 500)
            response.headers["X-Request-Id"] = rid
            seconds = time.perf_counter() - started
            service.requests.labels(path, str(response.status_code)).inc()
            if path == "/v1/predict":
                service.latency.observe(seconds)
            line = (f"request_id={rid} method={request.method} path={path} status={response.status_code} "
                    f"ms={seconds * 1000:.1f} inputs={info.get('inputs', 0)}")
            if config.log_inputs and "texts" in info:
                line += " texts=" + json.dumps(info["texts"], ensure_ascii=True)
            access_log.info(line)
            return response

        return endpoint

    async def predict(request: Request, info: dict[str, Any]) -> Response:
        texts = service.parse(await read_body(request, config.max_body_bytes, config.body_timeout_s),
                              request.headers.get("content-type", "application/json"))
        info["inputs"] = len(texts)
        if all(isinstance(t, str) for t in texts):  # images are never written to the log
            info["texts"] = texts
        return JSONResponse(await service.predict(texts))

    async def healthz(request: Request, info: dict[str, Any]) -> Response:
        status, body = service.readiness()
        return JSONResponse(body, status)

    async def livez(request: Request, info: dict[str, Any]) -> Response:
        status, body = service.liveness()
        return JSONResponse(body, status)

    async def metrics(request: Request, info: dict[str, Any]) -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request, info: dict[str, Any]) -> Response:
        return JSONResponse(openapi_document(config, images=service.serves_images))

    async def reload(request: Request, info: dict[str, Any]) -> Response:
        if not config.api_key:
            raise HTTPError(403, "admin endpoints are off: start kiln serve with --api-key-file (or KILN_API_KEY)")
        body = await read_body(request, 64 << 10, config.body_timeout_s)
        source = None
        if body.strip():
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                raise HTTPError(400, 'expected a JSON object {"artifact": "path"} or an empty body') from None
            if not isinstance(payload, dict) or not isinstance(payload.get("artifact", ""), str):
                raise HTTPError(422, 'expected a JSON object {"artifact": "path"} or an empty body')
            source = payload.get("artifact") or None
        try:
            result = await asyncio.to_thread(service.reload, source)
        except KilnError as e:
            raise HTTPError(409, str(e)) from None
        return JSONResponse(result)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        threading.Thread(target=service.start, name="kiln-model-load", daemon=True).start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
            loop.add_signal_handler(signal.SIGHUP, lambda: threading.Thread(
                target=reload_logged, name="kiln-reload", daemon=True).start())
        yield
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        await asyncio.to_thread(service.close)

    def reload_logged() -> None:
        log.info("SIGHUP: reloading %s", service.source)
        with contextlib.suppress(KilnError):  # already logged; the old model keeps serving
            service.reload()

    routes = [("/v1/predict", predict, ["POST"]), ("/healthz", healthz, ["GET"]), ("/livez", livez, ["GET"]),
              ("/metrics", metrics, ["GET"]), ("/openapi.json", openapi, ["GET"]),
              ("/admin/reload", reload, ["POST"])]
    app = Starlette(routes=[Route(p, guarded(h, p), methods=m) for p, h, m in routes], lifespan=lifespan)

    app.router.redirect_slashes = False  # '/v1/predict/' is a 404 like any unknown path, not a redirect

    async def not_found(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        rid = request_id(request.headers)
        message = f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not found')}"
        service.requests.labels("other", str(code)).inc()
        access_log.info(f"request_id={rid} method={request.method} path=other status={code} ms=0.0 inputs=0")
        return JSONResponse({"error": message, "request_id": rid}, code, headers={"X-Request-Id": rid})

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_found)
    return app
