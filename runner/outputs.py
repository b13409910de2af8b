"""Where finished files go, and the promise that none is ever silently replaced.

Invariants:
- An output path is always inside the output directory (the manifest refuses others;
  :func:`resolve_output` checks again).
- An existing file at an output path is replaced only if it is byte-identical to what
  would be written; a different file is moved aside only when the ledger says it is an
  older version of the same shot, and refused otherwise. Every name created in the
  output folder (a published video, a sidecar, a version moved aside and its
  replacement) is made durable by a folder fsync before the shot counts as done.
- Sidecars are written to a temporary name, fsynced and renamed, like the videos; a
  sidecar written with its video shares the folder fsync that makes both names durable.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from runner.errors import DiskFull, OutputConflict, UsageError


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


def make_names_durable(folder: Path) -> None:
    """Make every name created in ``folder`` so far durable (a blocking folder fsync,
    shared with concurrent callers); for worker threads."""
    _FOLDER_SYNCS.make_durable(folder)


class _FolderSyncs:
    """Group commit for new names: one fsync of a folder makes durable every name that
    was published in it before that fsync began, so concurrent downloads into one folder
    share folder fsyncs instead of queueing one each behind the folder's lock.

    Called from worker threads, after the link: a thread counts its link, then either
    finds that an fsync begun after its count has finished, or runs one itself, which
    covers every link counted before it began.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folders: dict[str, _FolderSync] = {}

    def make_durable(self, directory: Path) -> None:
        with self._lock:
            folder = self._folders.setdefault(str(directory), _FolderSync())
            folder.linked += 1
            mine = folder.linked
        with folder.syncing:  # one fsync of a folder at a time
            if folder.durable >= mine:
                return  # an fsync that began after this link has finished
            with self._lock:
                covers = folder.linked
            _fsync_dir(directory)
            folder.durable = covers


@dataclass
class _FolderSync:
    linked: int = 0  # names published so far
    durable: int = 0  # of which a finished fsync covers the first this many
    syncing: threading.Lock = field(default_factory=threading.Lock)


_FOLDER_SYNCS = _FolderSyncs()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def archive_name(target: Path, version: int) -> Path:
    """``clip.mp4`` of version 1 -> ``clip.v1.mp4`` (first free name; its sidecar
    ``clip.v1.mp4.json`` goes with it)."""
    candidate = target.with_name(f"{target.stem}.v{version}{target.suffix}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.stem}.v{version}-{n}{target.suffix}")
    return candidate


def place_over(
    target: Path, staged: Path, aside: Path | None, then: Callable[[], None] | None = None
) -> None:
    """Settle a download that was staged beside an existing file at ``target``; for
    worker threads, one trip.

    ``aside`` None: the existing file is the same video, and the staged copy is dropped.
    Otherwise the existing file (an older version of the shot) moves to ``aside`` with
    its sidecar, and the staged one takes its place. ``then`` (the new sidecar) runs
    next, and one folder fsync then makes every new name durable, even when ``then``
    failed: as :func:`runner.provider.download.download_file` does for a video
    published anew.
    """
    if aside is None:
        staged.unlink(missing_ok=True)
    else:
        # the sidecar first: a crash between the two moves leaves the old video at the
        # target, which the rerun moves aside again under the same free name
        with contextlib.suppress(FileNotFoundError):
            os.replace(sidecar_path(target), sidecar_path(aside))
        os.replace(target, aside)
        os.replace(staged, target)
    try:
        if then is not None:
            then()
    finally:
        if aside is not None or then is not None:
            make_names_durable(target.parent)


def sidecar_path(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def write_sidecar(target: Path, data: dict[str, Any]) -> Path:
    """Write ``<target>.json``: to a temporary name, fsynced, then renamed into place.

    The new name is durable once its folder is fsynced; the download that calls this
    (in its worker thread, just after publishing the video) shares that folder fsync
    with the video. Raises :class:`DiskFull` or :class:`UsageError`, as writing the
    video would.
    """
    sidecar = sidecar_path(target)
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    payload = (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
    try:
        with open(tmp, "wb", buffering=0) as fh:
            write_all(fh, payload)
            os.fsync(fh.fileno())
        os.replace(tmp, sidecar)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(exc, sidecar) from exc
    return sidecar


def write_all(file: BinaryIO, data: bytes) -> None:
    """An unbuffered write may take less than it was given; write until all is taken."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:  # a raw file answers 0 / None only when it cannot proceed
            raise OSError(errno.EIO, "the file took no bytes")
        view = view[written:]


def write_error(exc: OSError, path: Path) -> DiskFull | UsageError:
    """An OS error while writing an output (a video or its sidecar), as the error the
    user can act on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"the disk is full while writing {path}",
            hint=f"free space under {path.parent} and rerun; finished files are kept",
        )
    return UsageError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="check that the output directory exists and is writable",
    )


@dataclass(frozen=True)
class DownloadResult:
    """A verified file under its final name."""

    path: Path
    bytes: int
    sha256: str


# -- the disk half of a download: temporary file, fsync, atomic publication -----------
# (runner/provider/download.py speaks HTTP and checks the bytes; it calls these from
# worker threads, so the event loop never waits on the disk)


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` are written before they are verified."""
    return dest.with_name(f".{dest.name}.part")


def open_part(path: Path) -> BinaryIO:
    """Open (and truncate) the temporary file, unbuffered: every write goes straight to
    the kernel, so no bytes wait in a Python buffer; a seam for disk-full tests."""
    return open(path, "wb", buffering=0)


def prepare_part(part: Path) -> BinaryIO:
    try:
        return open_part(part)
    except FileNotFoundError:  # the folder is new (or was removed): make it, once
        part.parent.mkdir(parents=True, exist_ok=True)
        return open_part(part)


def write_out(file: BinaryIO | None, part: Path, chunks: list[bytes], void: bool) -> BinaryIO:
    """Open the temporary file if it is not yet, drop void bytes, append ``chunks``;
    runs in a worker thread. A file it opened is closed again if writing fails."""
    opened = file is None
    if file is None:
        file = prepare_part(part)
    try:
        if void:
            file.seek(0)
            file.truncate()
        for chunk in chunks:
            write_all(file, chunk)
    except BaseException:
        if opened:
            with contextlib.suppress(OSError):
                file.close()
        raise
    return file


#: a step between the durable temporary file and its publication (embedding tags): it
#: may rewrite the file in place, and answers what the file then is
Prepare = Callable[[Path, DownloadResult], DownloadResult]


def finish_and_publish(
    work: tuple[BinaryIO | None, list[bytes], bool],
    part: Path,
    result: DownloadResult,
    then: Callable[[DownloadResult], None] | None,
    prepare: Prepare | None = None,
) -> DownloadResult:
    """Write what waits in memory, make the bytes durable, let ``prepare`` rework the
    temporary file (it leaves it durable), publish it under the final name, run ``then``
    (files it writes beside the video share the folder fsync), then make the new names
    durable. One worker-thread trip for all of it; answers the published file."""
    file, chunks, void = work
    file = write_out(file, part, chunks, void)
    try:
        file.flush()  # a no-op for the raw file; a buffered one (a test seam) needs it
        os.fsync(file.fileno())
    finally:
        file.close()  # here, not on the event loop: closing can wait on the disk too
    if prepare is not None:
        # before publication: a crash or a failure here leaves only the temporary file
        result = prepare(part, result)
    linked = publish(part, result.path, result.bytes, result.sha256)
    try:
        if then is not None:
            then(result)
    finally:
        # the video's name is made durable even when ``then`` failed: it is published
        if linked or then is not None:
            make_names_durable(result.path.parent)
    return result


def publish(part: Path, dest: Path, size: int, sha256: str) -> bool:
    """Give ``part`` the name ``dest`` atomically, never replacing another file; False
    when an identical file already had that name (nothing new to make durable)."""
    try:
        os.link(part, dest)
    except FileExistsError:
        if dest.is_file() and dest.stat().st_size == size and sha256_file(dest) == sha256:
            part.unlink()
            return False
        raise OutputConflict(
            f"{dest} already exists with different content; it was not replaced",
            hint="move the existing file away, or change the output file name",
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # No hard links here (some network and FAT file systems): rename is still
        # atomic; the existence check is racy only against another writer, and the
        # ledger lock excludes those.
        if dest.exists():
            raise OutputConflict(
                f"{dest} already exists; it was not replaced",
                hint="move the existing file away, or change the output file name",
            ) from None
        os.rename(part, dest)
    else:
        part.unlink()
    return True
