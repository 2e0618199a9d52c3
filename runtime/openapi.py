"""The OpenAPI 3.0 description of `kiln serve` (GET /openapi.json), with this server's limits in it.

Written by hand, not generated: the server has six routes and no framework models, and the limits a
client must respect (inputs per request, characters per input) come from the running configuration.
"""

from __future__ import annotations

from typing import Any


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def text_request(config: Any) -> dict[str, Any]:
    return {"application/json": {"schema": {
        "type": "object", "required": ["inputs"],
        "properties": {"inputs": {"type": "array", "minItems": 1, "maxItems": config.max_inputs,
                                  "items": {"type": "string", "maxLength": config.max_chars}}}}}}


def image_request(config: Any) -> dict[str, Any]:
    """The two forms runtime/image_requests.py reads: base64 image files in JSON, or multipart file parts."""
    return {
        "application/json": {"schema": {
            "type": "object", "required": ["images"],
            "properties": {"images": {
                "type": "array", "minItems": 1, "maxItems": config.max_inputs,
                "description": "Encoded image files (PNG, JPEG, ...), base64; a data: URL prefix is accepted",
                "items": {"type": "string", "format": "byte"}}}}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {
                "type": "array", "minItems": 1, "maxItems": config.max_inputs,
                "description": "One file part per image, in order (any part name is read)",
                "items": {"type": "string", "format": "binary"}}}}},
    }


def openapi_document(config: Any, images: bool = False) -> dict[str, Any]:
    """The document for a text classifier, or with images=True for an image classifier (request forms)."""
    from importlib import metadata

    try:
        version = metadata.version("modelkiln")
    except metadata.PackageNotFoundError:
        version = "0"
    secured = [{"bearer": []}] if config.api_key else []
    common = {"401": _error("Missing or wrong API key"), "500": _error("The model failed; see the server log")}
    prediction = {
        "type": "object", "required": ["label", "score", "scores"],
        "properties": {"label": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1},
                       "scores": {"type": "object", "additionalProperties": {"type": "number"}}},
    }
    status_body = {"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string"}, "error": {"type": "string"},
                                  "artifact": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "kiln serve", "version": version,
                 "description": ("Image classification with micro-batching. Send encoded image files (base64 JSON "
                                 f"or multipart, at most {config.max_body_bytes} bytes a request), get labels."
                                 if images else "Text classification with micro-batching. Send raw texts, get labels.")},
        "paths": {
            "/v1/predict": {"post": {
                "summary": "Classify images" if images else "Classify texts", "operationId": "predict",
                "security": secured,
                "requestBody": {"required": True, "content": image_request(config) if images else text_request(config)},
                "responses": {
                    "200": {"description": "One prediction per input, in order", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["predictions"], "properties": {
                            "predictions": {"type": "array", "items": prediction}}}}}},
                    "400": _error("The body is not JSON"), "408": _error("The body arrived too slowly"),
                    "413": _error("Over a size limit"), "422": _error("Valid JSON of the wrong shape"),
                    "503": _error("Loading, overloaded or shutting down; retry after Retry-After seconds"),
                    "504": _error("No answer within the request timeout"), **common}}},
            "/healthz": {"get": {"summary": "Readiness: 200 when the model is loaded and the worker runs",
                                 "operationId": "readiness", "security": [],
                                 "responses": {"200": {"description": "ready", "content": {
                                     "application/json": {"schema": status_body}}},
                                               "503": {"description": "starting, failed or draining", "content": {
                                                   "application/json": {"schema": status_body}}}}}},
            "/livez": {"get": {"summary": "Liveness: 503 only when a restart is needed", "operationId": "liveness",
                               "security": [],
                               "responses": {"200": {"description": "alive", "content": {
                                   "application/json": {"schema": status_body}}},
                                             "503": {"description": "dead", "content": {
                                                 "application/json": {"schema": status_body}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                                 "security": [] if config.public_metrics else secured,
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}},
                                               "401": common["401"]}}},
            "/admin/reload": {"post": {
                "summary": "Load an artifact (default: the serving path), warm it, then switch with no downtime",
                "operationId": "reload", "security": secured,
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"artifact": {"type": "string"}}}}}},
                "responses": {"200": {"description": "switched", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"status": {"type": "string"}, "artifact": {"type": "string"},
                                                     "seconds": {"type": "number"}}}}}},
                              "400": _error("The body is not JSON"), "403": _error("No API key configured"),
                              "409": _error("The new model failed to load; the old one still serves"),
                              "422": _error("Wrong shape"), **common}}},
        },
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"}, "request_id": {"type": "string"}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
