"""Local image inputs: checked against the provider's limits before anything is spent.

The limits (types, bytes, sides, aspect) come from the rules file
(:class:`~runner.manifest.rules.ImageLimits`); see runner/data/rules.json for their sources.

Invariants:
- Only regular files are read. A path is opened with ``O_NONBLOCK`` and checked with
  ``fstat`` before any byte is read, so a FIFO, a device (a link to /dev/zero), a
  directory or a socket is refused at once instead of blocking or reading forever.
- At most ``max_bytes + 1`` bytes are ever read from one file, by the inspection and by
  the content hash alike: a file larger than the limit (or one growing past it while it
  is read) is refused, never read to its end.
- Only the header is decoded (Pillow opens lazily, from the bytes already read).
- Each path is inspected and hashed at most once per :class:`ImageChecker`.
- The content hash, not the path, identifies an image in request hashes, so moving a
  project does not change what counts as "the same request".
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image, UnidentifiedImageError

from runner.manifest.rules import PILLOW_FORMATS, ImageLimits

_CHUNK = 1 << 20
#: the largest file 302's upload takes (the run uploads, and the plan prices, no larger)
UPLOAD_MAX_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class ImageFault:
    """Why a local image cannot be sent."""

    message: str
    hint: str


class NotRegularFile(OSError):
    """The path is not a regular file (a FIFO, a device, a directory, ...)."""


class TooLarge(OSError):
    """The file holds more bytes than the limit."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_capped(path: Path, max_bytes: int) -> bytes:
    """The content of the regular file at ``path``, reading at most ``max_bytes + 1``.

    Raises :class:`NotRegularFile`, :class:`TooLarge`, or OSError (missing, no access).
    Opening with O_NONBLOCK keeps a FIFO without a writer from blocking the open.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, f"{path} is {_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise TooLarge(errno.EFBIG, f"{path} is larger than {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _mb(size_bytes: int) -> str:
    return f"{size_bytes / 2**20:g} MB"


def inspect_image(path: Path, limits: ImageLimits) -> ImageFault | None:
    """None when ``path`` is an acceptable input image, else what is wrong with it."""
    return _inspect(path, limits)[0]


def _inspect(path: Path, limits: ImageLimits) -> tuple[ImageFault | None, bytes | None]:
    """The fault (or None) and the bytes read (None when the file could not be read)."""
    if path.suffix.lower() not in limits.suffixes:
        return ImageFault(
            f"{path.name} is not a {limits.suffix_text()} file",
            "convert it to one of those types (PixVerse takes no others)",
        ), None
    try:
        data = read_capped(path, limits.max_bytes)
    except FileNotFoundError:
        return ImageFault(
            f"image not found: {path}", "check the path (relative to the manifest)"
        ), None
    except NotRegularFile as exc:
        return ImageFault(str(exc.strerror), "give the path of an image file"), None
    except TooLarge:
        return ImageFault(
            f"{path.name} is over {_mb(limits.max_bytes)}; at most {_mb(limits.max_bytes)} "
            "is accepted",
            "resize or recompress it",
        ), None
    except OSError as exc:
        return ImageFault(f"cannot read image {path}: {exc.strerror}", "check the file"), None
    return _inspect_data(path.name, data, limits), data


def _inspect_data(name: str, data: bytes, limits: ImageLimits) -> ImageFault | None:
    """The suffix is checked already; the content must be what the suffix says, since
    the provider adapter names the type from the suffix."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
            im.verify()
    except UnidentifiedImageError:
        return ImageFault(f"{name} is not a readable image", "re-export it")
    except Image.DecompressionBombError as exc:
        return ImageFault(f"{name} is not a readable image ({exc})", "re-export it")
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow reports truncated or corrupt files with these
        return ImageFault(f"{name} is damaged ({exc})", "re-export it")
    if fmt != PILLOW_FORMATS[Path(name).suffix.lower()]:
        return ImageFault(
            f"{name} is a {fmt} image despite its name",
            f"convert it to one of {limits.suffix_text()}",
        )
    return _check_dimensions(name, width, height, limits)


def _check_dimensions(name: str, width: int, height: int, limits: ImageLimits) -> ImageFault | None:
    if limits.max_side_px is not None and max(width, height) > limits.max_side_px:
        return ImageFault(
            f"{name} is {width}x{height} px; neither side may exceed {limits.max_side_px} px",
            "scale it down",
        )
    if limits.min_side_px is not None and min(width, height) < limits.min_side_px:
        return ImageFault(
            f"{name} is {width}x{height} px; both sides must be at least {limits.min_side_px} px",
            "use a larger image",
        )
    if limits.max_aspect is not None:
        aspect = max(width, height) / max(min(width, height), 1)
        if aspect > limits.max_aspect:
            return ImageFault(
                f"{name} is {width}x{height} px, aspect {aspect:.3f}:1; it must be within "
                f"1:{limits.max_aspect:g} and {limits.max_aspect:g}:1",
                "crop it closer to square",
            )
    return None


def file_sha256(path: Path, max_bytes: int) -> str:
    """Hex sha256 of a regular file's content; raises OSError (also for a file that is
    not regular or is over ``max_bytes``)."""
    return hashlib.sha256(read_capped(path, max_bytes)).hexdigest()


class ImageChecker:
    """Inspects and hashes each local image once, under one set of limits."""

    def __init__(self, limits: ImageLimits) -> None:
        self.limits = limits
        self._faults: dict[Path, ImageFault | None] = {}
        self._hashes: dict[Path, str] = {}

    def fault(self, path: Path) -> ImageFault | None:
        if path not in self._faults:
            fault, data = _inspect(path, self.limits)
            self._faults[path] = fault
            if data is not None:
                # one read serves both: the hash is of exactly the bytes inspected
                self._hashes.setdefault(path, "sha256:" + hashlib.sha256(data).hexdigest())
        return self._faults[path]

    def content_id(self, path: Path) -> str:
        """``sha256:<hex>`` of the content, or ``missing:<path>`` when unreadable (also
        when not a regular file or over the size limit: such a file is never sent)."""
        found = self._hashes.get(path)
        if found is None:
            try:
                found = "sha256:" + file_sha256(path, self.limits.max_bytes)
            except OSError:
                found = f"missing:{path}"
            self._hashes[path] = found
        return found


def local_image_digests(requests: Iterable[Mapping[str, Any]], max_bytes: int) -> dict[str, Path]:
    """``sha256 -> path`` of each distinct local (``file://``) image these requests use:
    what uploading them would send, one upload per content. Unreadable files are left
    out (the manifest check reports them)."""
    paths: dict[Path, None] = {}
    for request in requests:
        for value in request.values():
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, str) and item.startswith("file://"):
                    paths[Path(unquote(urlsplit(item).path))] = None
    digests: dict[str, Path] = {}
    for path in paths:
        try:
            digests.setdefault(file_sha256(path, max_bytes), path)
        except OSError:
            continue
    return digests
