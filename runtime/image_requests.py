"""Image requests for `kiln serve` (runtime/server.py): {"images": ["<base64>", ...]} JSON bodies and
multipart/form-data uploads (one file part per image), read into encoded image bytes. Decoding the bytes
is the vision family's job (runtime/tasks/vision.py); a body that is not either is a 4xx here."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from runtime.errors import InputError


def images_from_json(images: Any, max_inputs: int) -> list[bytes]:
    """The 'images' member of a JSON body: a list of base64 strings (a data: URL prefix is allowed)."""
    if not isinstance(images, list):
        raise InputError(f"'images' must be a list of base64-encoded image files, got {type(images).__name__}")
    check_count(len(images), max_inputs)
    out = []
    for i, item in enumerate(images):
        if not isinstance(item, str):
            raise InputError(f"images[{i}] must be a base64 string, got {type(item).__name__}")
        data = item.split(",", 1)[1] if item.startswith("data:") else item
        try:
            out.append(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise InputError(f"images[{i}] is not valid base64") from None
    return out


def images_from_multipart(body: bytes, content_type: str, max_inputs: int) -> list[bytes]:
    """Every file part of a multipart/form-data body, in order (the stdlib MIME parser: no extra dependency)."""
    from email import policy
    from email.parser import BytesParser

    if "boundary=" not in content_type:
        raise InputError("multipart/form-data without a boundary; let the client library set the Content-Type")
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise InputError("the multipart body could not be parsed")
    parts = [p for p in message.iter_parts() if p.get_filename() is not None or p.get_content_maintype() == "image"]
    check_count(len(parts), max_inputs)
    return [p.get_payload(decode=True) or b"" for p in parts]


def check_count(n: int, max_inputs: int) -> None:
    if n == 0:
        raise InputError("no images in the request; send at least one")
    if n > max_inputs:
        raise TooMany(f"{n} images in one request; the limit is {max_inputs}")


class TooMany(InputError):
    """More inputs than --max-inputs (the server answers 413, not 422)."""
