"""Local image inputs: checked against PixVerse's limits before anything is spent.

Invariants:
- Only the header is decoded (Pillow opens lazily); files above the byte limit are
  refused from their size alone and never opened.
- Each path is inspected and hashed at most once per :class:`ImageChecker`.
- The content hash, not the path, identifies an image in request hashes, so moving a
  project does not change what counts as "the same request".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from runner.contract import IMAGE_MAX_ASPECT, IMAGE_MAX_BYTES, IMAGE_MIN_SIDE_PX, IMAGE_SUFFIXES

#: what Pillow calls the formats the provider accepts
_FORMATS = {"JPEG", "PNG"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageFault:
    """Why a local image cannot be sent."""

    message: str
    hint: str


def inspect_image(path: Path) -> ImageFault | None:
    """None when ``path`` is an acceptable input image, else what is wrong with it."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return ImageFault(
            f"{path.name} is not a .jpg, .jpeg or .png file",
            "convert it to JPEG or PNG",
        )
    try:
        size_bytes = path.stat().st_size
    except FileNotFoundError:
        return ImageFault(f"image not found: {path}", "check the path (relative to the manifest)")
    except OSError as exc:
        return ImageFault(f"cannot read image {path}: {exc.strerror}", "check the file")
    if not path.is_file():
        return ImageFault(f"{path} is not a file", "give the path of an image file")
    if size_bytes > IMAGE_MAX_BYTES:
        return ImageFault(
            f"{path.name} is {size_bytes / 1e6:.1f} MB; at most "
            f"{IMAGE_MAX_BYTES // (1024 * 1024)} MB is accepted",
            "resize or recompress it",
        )
    try:
        with Image.open(path) as im:
            fmt, (width, height) = im.format, im.size
            im.verify()
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        return ImageFault(
            f"{path.name} is not a readable image ({exc})", "re-export it as PNG/JPEG"
        )
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow reports truncated or corrupt files with these
        return ImageFault(f"{path.name} is damaged ({exc})", "re-export it as PNG or JPEG")
    if fmt not in _FORMATS:
        return ImageFault(
            f"{path.name} is a {fmt} image despite its name",
            "convert it to JPEG or PNG",
        )
    return _check_dimensions(path.name, width, height)


def _check_dimensions(name: str, width: int, height: int) -> ImageFault | None:
    if min(width, height) < IMAGE_MIN_SIDE_PX:
        return ImageFault(
            f"{name} is {width}x{height} px; both sides must be at least {IMAGE_MIN_SIDE_PX} px",
            "use a larger image",
        )
    aspect = max(width, height) / min(width, height)
    if aspect > IMAGE_MAX_ASPECT:
        return ImageFault(
            f"{name} is {width}x{height} px, aspect {aspect:.3f}:1; it must be within "
            f"1:{IMAGE_MAX_ASPECT} and {IMAGE_MAX_ASPECT}:1",
            "crop it closer to square",
        )
    return None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content (raises OSError)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ImageChecker:
    """Inspects and hashes each local image once."""

    def __init__(self) -> None:
        self._faults: dict[Path, ImageFault | None] = {}
        self._hashes: dict[Path, str] = {}

    def fault(self, path: Path) -> ImageFault | None:
        if path not in self._faults:
            self._faults[path] = inspect_image(path)
        return self._faults[path]

    def content_id(self, path: Path) -> str:
        """``sha256:<hex>`` of the content, or ``missing:<path>`` when unreadable."""
        found = self._hashes.get(path)
        if found is None:
            try:
                found = "sha256:" + file_sha256(path)
            except OSError:
                found = f"missing:{path}"
            self._hashes[path] = found
        return found
