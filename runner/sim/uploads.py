"""Uploaded images: what the simulator accepts, and the name it stores them under.

Invariant: an upload's name is the SHA-256 of its bytes plus the extension of the
format its magic bytes show, so the same file always gets the same URL.
"""

from __future__ import annotations

import hashlib

#: 302.AI's upload cap (API.md, Endpoints: upload a local file)
UPLOAD_MAX_BYTES = 50 * 1024 * 1024
UPLOADS_PATH = "/_sim/uploads"
CONTENT_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def image_ext(head: bytes) -> str | None:
    """ ".jpg", ".png" or ".webp" from a file's first bytes; None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return None


def upload_name(data: bytes, ext: str) -> str:
    return hashlib.sha256(data).hexdigest() + ext
