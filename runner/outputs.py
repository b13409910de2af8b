"""Where finished files go, and the promise that none is ever silently replaced.

Invariants:
- An output path is always inside the output directory (the manifest refuses others;
  :func:`resolve_output` checks again).
- An existing file at an output path is replaced only if it is byte-identical to what
  would be written; a different file is moved aside only when the ledger says it is an
  older version of the same shot, and refused otherwise.
- Sidecars are written to a temporary name and renamed, like the videos.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from runner.errors import DiskFull, OutputConflict


@functools.lru_cache(maxsize=8)
def _resolved(directory: Path) -> str:
    return str(directory.resolve())


def resolve_output(output_dir: Path, relpath: str) -> Path:
    """The absolute path of an output; refuses one outside the output directory.

    Pure string work (no system calls): it runs once per shot on the event loop.
    """
    base = _resolved(output_dir)
    target = os.path.normpath(os.path.join(base, relpath))
    if not target.startswith(base + os.sep):
        raise OutputConflict(f"output path {relpath!r} escapes the output directory {base}")
    return Path(target)


def staging_path(target: Path) -> Path:
    """Where a download lands when a file already sits at the target."""
    return target.with_name(f".{target.name}.incoming")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def archive_name(target: Path, version: int) -> Path:
    """``clip.mp4`` of version 1 -> ``clip.v1.mp4`` (first free name)."""
    candidate = target.with_name(f"{target.stem}.v{version}{target.suffix}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.stem}.v{version}-{n}{target.suffix}")
    return candidate


def write_sidecar(target: Path, data: dict[str, Any]) -> Path:
    sidecar = target.with_name(target.name + ".json")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, sidecar)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == 28:  # ENOSPC
            raise DiskFull(
                f"the disk is full writing {sidecar}", hint="free space, then rerun"
            ) from exc
        raise OutputConflict(f"cannot write {sidecar}: {exc.strerror}") from exc
    return sidecar
