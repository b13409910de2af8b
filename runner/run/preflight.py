"""Checks before a run spends anything: the output folders, free space, and files that
are already there.

Invariants:
- Nothing here talks to the provider; everything runs before the first generate, so a
  refusal (:class:`~runner.errors.UsageError`, exit 2) costs nothing.
- Every output folder the run will write is created and proven writable by creating and
  deleting a probe file in it.
- A file already at a never-sent shot's output is adopted (done, nothing sent) only when
  its sidecar names the same request hash and its bytes have the sidecar's sha256 and
  are a complete MP4, and the sidecar's provider (when it names one) is this run's: a
  simulator's clip, or another provider's, never becomes this run's deliverable. Any
  other file there is refused before spending, never paid for and then failed as an
  output conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.ledger import Ledger
from runner.outputs import resolve_output, sha256_file, sidecar_path
from runner.provider import mp4_problem
from runner.provider.sizes import estimated_video_bytes
from runner.text import plural

#: room kept free beyond the estimate of the videos to come
MARGIN_BYTES = 50_000_000
#: a simulator's clips are tiny; estimate them as such
SIM_CLIP_BYTES = 50_000
_PROBE = ".pixrun-write-probe"
#: output folders probed before a run (a pattern like {shot_id}/clip.mp4 makes one per
#: shot: probing a few proves the disk and the permissions as well as probing all)
MAX_PROBED_FOLDERS = 64


@dataclass(frozen=True)
class Preflight:
    """What the checks found (all of it is also in the ledger's events)."""

    adopted: tuple[str, ...]
    needed_bytes: int
    free_bytes: int | None


def output_folders(output_dir: Path, relpaths: Iterable[str]) -> set[Path]:
    """The folders the outputs go to. Distinct folder strings first: a Path per shot
    cost 0.45 s at 100,000 shots, before the first request of every resume."""
    return {output_dir / folder for folder in {os.path.dirname(rel) for rel in relpaths}}


def check_folders_writable(folders: Iterable[Path]) -> None:
    """Create each folder (and parents) and prove it writable; UsageError if not."""
    for folder in sorted(set(folders))[:MAX_PROBED_FOLDERS]:
        probe = folder / _PROBE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"pixrun")
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            with contextlib.suppress(OSError):
                probe.unlink()
            raise UsageError(
                f"the output folder {folder} cannot be written: {exc.strerror or exc}; "
                "nothing was sent",
                hint="fix its permissions, free the disk, or point output.dir elsewhere",
            ) from exc


async def run_preflight(
    ledger: Ledger,
    output_dir: Path,
    *,
    simulated: bool,
    check_space: bool = True,
    provider: Mapping[str, Any] | None = None,
) -> Preflight:
    """Adopt files already there, refuse foreign ones, check the room left.
    ``provider``: this run's (:func:`runner.run.guard.provider_identity`)."""
    adopted = await _adopt_existing(ledger, output_dir, provider)
    to_come = await ledger.bytes_to_come()
    if simulated:
        needed = sum(n for _, _, n in to_come) * SIM_CLIP_BYTES
    else:
        needed = sum(estimated_video_bytes(q, d) * n for q, d, n in to_come)
    free: int | None = None
    if needed and check_space:
        try:
            free = shutil.disk_usage(output_dir).free
        except OSError:
            free = None
        if free is not None and free < needed + MARGIN_BYTES:
            raise UsageError(
                f"the disk of {output_dir} has {free / 1e9:.2f} GB free; the videos to come "
                f"need about {(needed + MARGIN_BYTES) / 1e9:.2f} GB; nothing was sent",
                hint="free space, or point output.dir at a larger disk",
            )
    return Preflight(tuple(adopted), needed, free)


async def _adopt_existing(
    ledger: Ledger, output_dir: Path, provider: Mapping[str, Any] | None
) -> list[str]:
    candidates = await ledger.never_sent()
    if not candidates:
        return []

    def look() -> tuple[list[dict[str, Any]], list[str]]:
        adopt: list[dict[str, Any]] = []
        foreign: list[str] = []
        for shot_id, version, relpath, request_hash in candidates:
            target = resolve_output(output_dir, relpath)
            if not target.exists():
                continue
            found = _adoptable(target, request_hash, provider)
            if isinstance(found, dict):
                adopt.append({"shot_id": shot_id, **found})
            elif version == 1:  # a later version's old file is moved aside, as ever
                foreign.append(f"{target} (shot {shot_id}{found or ''})")
        return adopt, foreign

    adopt, foreign = await asyncio.to_thread(look)
    if foreign:
        shown = "; ".join(foreign[:5]) + (
            f"; and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise UsageError(
            f"{plural(len(foreign), 'output file')} already "
            f"{'exists' if len(foreign) == 1 else 'exist'} that this run cannot take as its "
            f"own (no sidecar of this request and provider): {shown}. "
            "Nothing was sent (they would be paid for and then refused)",
            hint="move those files away, or change output.dir or output.filename",
        )
    await ledger.adopt(adopt)
    return [a["shot_id"] for a in adopt]


def _adoptable(
    target: Path, request_hash: str, provider: Mapping[str, Any] | None
) -> dict[str, Any] | str | None:
    """What the sidecar says of a matching file; None when it does not match, or why not
    (", rendered by ...") when it is this shot's file from another provider."""
    try:
        sidecar = json.loads(sidecar_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict):
        return None
    if sidecar.get("request_hash") != request_hash:
        if sidecar.get("shot_id") is not None and sidecar.get("version", 1) != 1:
            # this shot's own later take (a re-roll, or an edit since): the manifest alone
            # cannot tell its request, so it is not adopted; say what it is
            return (
                f", its version {sidecar.get('version')} (a re-roll or an edit) whose request "
                "the manifest no longer gives"
            )
        return None
    made_by = sidecar.get("provider")
    # a sidecar of an earlier pixrun names no provider: nothing to tell, adopted as ever
    if isinstance(made_by, dict) and provider is not None and not _same_provider(made_by, provider):
        return f", rendered by {_provider_text(made_by)}, not by {_provider_text(provider)}"
    try:
        if not target.is_file() or sha256_file(target) != sidecar.get("sha256"):
            return None
        if mp4_problem(target) is not None:
            return None
        size = target.stat().st_size
    except OSError:
        return None
    task_id = sidecar.get("task_id")
    seed = sidecar.get("seed")
    done_at = sidecar.get("done_at")
    return {
        "task_id": None if task_id is None else str(task_id),
        "seed": seed if isinstance(seed, int) else None,
        "bytes": size,
        "sha256": sidecar["sha256"],
        "done_at": done_at if isinstance(done_at, (int, float)) else target.stat().st_mtime,
    }


def _same_provider(made_by: Mapping[str, Any], provider: Mapping[str, Any]) -> bool:
    if bool(made_by.get("simulated")) != bool(provider.get("simulated")):
        return False
    return bool(provider.get("simulated")) or made_by.get("base_url") == provider.get("base_url")


def _provider_text(provider: Mapping[str, Any]) -> str:
    if provider.get("simulated"):
        return "the built-in simulator (--simulate)"
    return str(provider.get("base_url"))
