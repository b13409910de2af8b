"""Turning local images (``file://`` URIs in a request) into what the provider accepts.

Invariants:
- Only string values that start with ``file://`` are touched, at the top level or inside
  a top-level list (``image``, ``last_image``, ``image_list``, ``fusion``); everything
  else is passed through unchanged, and the caller's mapping is never modified.
- A local image that cannot be read is the shot's problem
  (:class:`~runner.errors.InvalidRequest`), raised before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from runner.errors import InvalidRequest

FILE_PREFIX = "file://"
_MIME_BY_SUFFIX = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


def path_of_file_uri(uri: str) -> Path:
    """The local path a ``file://`` URI names."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InvalidRequest(f"{uri[:120]!r} names a file on another host")
    return Path(unquote(parts.path))


def _encode_file(uri: str, encoding: str) -> str:
    path = path_of_file_uri(uri)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(
            f"cannot read the local image {path}: {exc.strerror or exc}",
            hint="check that the image file still exists; nothing was sent",
        ) from exc
    text = base64.b64encode(data).decode("ascii")
    if encoding == "base64":
        return text
    mime = _MIME_BY_SUFFIX.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    return f"data:{mime or 'application/octet-stream'};base64,{text}"


def _encode_value(value: Any, encoding: str) -> Any:
    if isinstance(value, str) and value.startswith(FILE_PREFIX):
        return _encode_file(value, encoding)
    if isinstance(value, list):
        return [_encode_value(item, encoding) for item in value]
    return value


def has_local_images(request: Mapping[str, Any]) -> bool:
    for value in request.values():
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and v.startswith(FILE_PREFIX) for v in items):
            return True
    return False


async def encode_local_images(request: Mapping[str, Any], encoding: str) -> dict[str, Any]:
    """A copy of ``request`` with every ``file://`` image inlined per ``encoding``."""
    if not has_local_images(request):
        return dict(request)

    def encode_all() -> dict[str, Any]:
        return {key: _encode_value(value, encoding) for key, value in request.items()}

    # Reading and base64-encoding up to 10 MB per image is blocking work.
    return await asyncio.to_thread(encode_all)
