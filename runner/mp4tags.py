"""Metadata written into a finished MP4 (``output.embed_metadata``), without re-encoding.

Invariants:
- Tags go into the download's temporary file, after its bytes are verified and durable
  and before it is published: a published file is either as delivered or completely
  tagged, never half-tagged (a crash leaves only the ``.part`` file, which the next
  attempt truncates).
- A tagged file passes the download's own check again (a complete MP4 box chain), is
  fsynced and hashed anew: its size and sha256 are the file's, as the ledger, the
  sidecar's ``sha256`` and every later check of the file on disk know it; the sidecar
  keeps the delivered ones beside them (``delivered_sha256``, ``delivered_bytes``).
- A file mutagen cannot read or tag is kept as delivered, never lost: :class:`Embedder`
  records why (the caller writes it to the sidecar, the ledger and the run's events).
  A failed tag write that left the bytes changed is never published: the download is
  tried again (free), and that shot is not tagged again in this run.
- Only an allow-list of fields is written (:data:`REQUEST_FIELDS` and the shot's own
  fields): never image paths or URLs, a callback address, or the API key.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mutagen.mp4 import MP4, MP4FreeForm

from runner import __version__
from runner.errors import DownloadCorrupt
from runner.outputs import DownloadResult, write_error
from runner.provider.download import CHUNK_BYTES, Mp4Walk

#: the freeform atoms' namespace: ``----:com.pixrun:<field>``
FREEFORM = "----:com.pixrun:"
#: request fields written as freeform atoms (scalars only; nothing that names a file,
#: a URL or an address)
REQUEST_FIELDS = (
    "model",
    "quality",
    "duration",
    "ratio",
    "motion_mode",
    "style",
    "camera_movement",
    "template_id",
)
#: the shot's own fields written as freeform atoms, after the request's
SHOT_FIELDS = ("shot_id", "version", "task_id", "seed", "mode", "prompt", "manifest")


def tag_values(
    *,
    shot_id: str,
    version: int,
    task_id: str | None,
    seed: int | None,
    mode: str,
    prompt: str,
    request: Mapping[str, Any],
    manifest: str | None,
) -> dict[str, str]:
    """The machine fields of a shot, as text, in a stable order (None values left out)."""
    own: dict[str, Any] = {
        "shot_id": shot_id,
        "version": version,
        "task_id": task_id,
        "seed": seed,
        "mode": mode,
        "prompt": prompt,
        "manifest": manifest,
    }
    values: dict[str, str] = {}
    for key in REQUEST_FIELDS:
        value = request.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            values[key] = str(value)
    for key in SHOT_FIELDS:
        if own[key] is not None:
            values[key] = str(own[key])
    return values


def mp4_tags(values: Mapping[str, str]) -> dict[str, list[Any]]:
    """The atoms for ``values``: iTunes-style ones that players and asset managers show
    (title, album, comment, description, encoding tool), and every value again as a
    freeform ``----:com.pixrun:<field>`` atom for machines."""
    atoms: dict[str, list[Any]] = {"\xa9too": [f"pixrun {__version__}"]}
    if "shot_id" in values:
        atoms["\xa9nam"] = [values["shot_id"]]
    if "manifest" in values:
        atoms["\xa9alb"] = [values["manifest"]]
    if "prompt" in values:
        atoms["\xa9cmt"] = [values["prompt"]]
        atoms["desc"] = [values["prompt"]]
    for key, value in values.items():
        atoms[FREEFORM + key] = [MP4FreeForm(value.encode("utf-8"))]
    return atoms


class Embedder:
    """Tags one shot's downloads (a :data:`runner.outputs.Prepare` hook, for worker
    threads) and remembers how the last one went, for the sidecar and the ledger."""

    def __init__(self, values: Mapping[str, str]) -> None:
        #: the machine fields written (the sidecar records them)
        self.values = dict(values)
        self.atoms = mp4_tags(values)
        #: the last download as delivered, before tagging
        self.delivered: DownloadResult | None = None
        #: why the last download was kept untagged (None: it was tagged)
        self.untagged: str | None = None
        #: set when a tag write damaged a download: the next ones are kept untagged
        self._refused: str | None = None

    def __call__(self, part: Path, delivered: DownloadResult) -> DownloadResult:
        self.delivered, self.untagged = delivered, self._refused
        if self._refused is not None:
            return delivered
        # Exception, not only mutagen's own errors: a parser's slip on a provider's file
        # (IndexError, struct.error, ...) must not cost the paid video
        try:
            video = MP4(part)
        except Exception as exc:
            _raise_disk_error(exc, delivered.path)
            self.untagged = f"mutagen cannot read it ({_reason(exc)})"
            return delivered
        try:
            if video.tags is None:
                video.add_tags()
            tags = video.tags
            tags.update(self.atoms)
            video.save()
        except Exception as exc:
            _raise_disk_error(exc, delivered.path)
            self.untagged = f"mutagen cannot tag it ({_reason(exc)})"
            return self._after_failed_write(part, delivered)
        return _settle(part, delivered)

    def _after_failed_write(self, part: Path, delivered: DownloadResult) -> DownloadResult:
        size, sha256, _ = _scan(part)
        if (size, sha256) == (delivered.bytes, delivered.sha256):
            return delivered  # untouched: kept as delivered
        self._refused = self.untagged
        raise DownloadCorrupt(
            f"writing its tags damaged the download ({self.untagged}); it is fetched "
            "again and kept untagged"
        )


def _settle(part: Path, delivered: DownloadResult) -> DownloadResult:
    """Make the tagged file durable and know it anew, as a download is known."""
    try:
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
    except OSError as exc:
        raise write_error(exc, delivered.path) from exc
    size, sha256, problem = _scan(part)
    if problem is not None:
        raise DownloadCorrupt(f"the tagged file is unusable: {problem}")
    return DownloadResult(path=delivered.path, bytes=size, sha256=sha256)


def _scan(path: Path) -> tuple[int, str, str | None]:
    """Size, sha256 and MP4 problem (or None) of a file, in one read."""
    digest = hashlib.sha256()
    walk = Mp4Walk()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            walk.feed(chunk, size)
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest(), walk.problem(size)


def _raise_disk_error(exc: Exception, path: Path) -> None:
    """mutagen reports an OS error (a full disk) as its own: raise it as pixrun's."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES):
        raise write_error(cause, path) from exc


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
