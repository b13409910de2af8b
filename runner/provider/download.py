"""Downloading a finished video without ever leaving a bad file under its final name.

Invariants:
- Bytes are checked box by box and hashed as they arrive (nothing is read back), wait
  in memory up to :data:`WRITE_BYTES`, and are written by worker threads to a temporary
  file beside the target (``.<name>.part``): the event loop never waits on the disk.
  Only a complete, verified MP4 (the byte count matches ``Content-Length`` /
  ``Content-Range``, the box chain starts with ``ftyp``, has a ``moov`` and ends
  exactly at the end of the file) is fsynced and published under the final name,
  atomically; the new name is durable (its folder fsynced, one fsync shared by
  concurrent downloads) before :func:`download_file` returns.
  A companion file written by the caller's ``then`` hook in the same worker-thread trip
  (the sidecar) is covered by the same folder fsync. The caller's ``prepare`` hook
  (embedded tags, runner/mp4tags.py) reworks the durable temporary file before it is
  published, so a published file is never half-reworked.
- Publishing never replaces an existing file: if the target appeared meanwhile it must
  hold the same bytes, else :class:`~runner.errors.OutputConflict`.
- A cut transfer is resumed with ``Range`` when the server honours it, restarted from
  zero when it does not, at most ``resume_attempts`` times.
- The size cap is enforced from the announced length and again while streaming.
- Only http and https URLs are followed; the API key is never sent with a download.
- On any failure the temporary file is removed; after a hard kill only the ``.part``
  file can remain, and the next attempt truncates it.

Size: about 400 lines, one module: the transfer, its resume rules and the MP4 box walk
are one mechanism (bytes are checked as they arrive); its disk half is in
runner/outputs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import aiohttp
from yarl import URL

from runner.errors import (
    DownloadCorrupt,
    DownloadError,
    DownloadTooLarge,
    TransientError,
    UrlExpired,
)
from runner.outputs import (
    DownloadResult,
    Prepare,
    finish_and_publish,
    part_path,
    write_error,
    write_out,
)

CHUNK_BYTES = 256 * 1024
#: received bytes wait in memory up to this much, then a worker thread writes them: the
#: event loop never waits on the disk, and a video up to this size is opened, written,
#: fsynced and published in a single worker-thread trip
WRITE_BYTES = 1 << 20
_MAX_BOXES = 100_000
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


async def _in_worker(t: _Transfer, step: Callable[..., BinaryIO | None], *args: object) -> None:
    """Run a file step in a worker thread; the file it returns becomes the transfer's
    open file (None: the step closed it).

    The event loop never waits on the disk. If the caller is cancelled meanwhile, the
    step is waited for first, so that no file is opened or written after the caller
    has cleaned up (no stray ``.part`` file).
    """
    running = asyncio.get_running_loop().run_in_executor(None, step, *args)
    try:
        t.file = await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            t.file = await running
        raise


class _Cut(Exception):
    """The body stopped early; resume or restart."""


class _Transfer:
    """The bytes received (in memory until written), the running hash and what the
    server promised. The temporary file is opened by the first write, in a worker
    thread; until then it is None."""

    def __init__(
        self,
        dest: Path,
        part: Path,
        max_bytes: int,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.dest = dest
        self.on_bytes = on_bytes
        self.part = part
        self.file: BinaryIO | None = None
        self.max_bytes = max_bytes
        self.hasher = hashlib.sha256()
        self.received = 0
        self.total: int | None = None
        self.boxes = Mp4Walk()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        #: the file's bytes are void (the server started over): truncate before writing
        self.void = False

    def restart(self) -> None:
        self.pending = []
        self.pending_bytes = 0
        self.void = self.file is not None
        self.hasher = hashlib.sha256()
        self.received = 0
        self.total = None
        self.boxes = Mp4Walk()

    def expect_total(self, total: int | None) -> None:
        self.total = total
        if total is not None and total > self.max_bytes:
            raise DownloadTooLarge(
                f"the video at this URL is {total} bytes, above the cap of "
                f"{self.max_bytes} bytes; nothing was kept",
                hint="raise the download size cap if this is expected",
            )

    def take(self, chunk: bytes) -> bool:
        """Accept ``chunk``; True when enough waits in memory to be written now."""
        if self.received + len(chunk) > self.max_bytes:
            raise DownloadTooLarge(
                f"the body passed the download cap of {self.max_bytes} bytes; nothing was kept",
                hint="raise the download size cap if this is expected",
            )
        # checked before a byte is kept: an error page never reaches the disk
        self.boxes.feed(chunk, self.received)
        if (problem := self.boxes.broken) is not None:
            raise DownloadCorrupt(
                f"the body is unusable: {problem}; nothing was kept",
                hint="fetch the task again; the URL may point at an error page",
            )
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))
        self.hasher.update(chunk)
        self.received += len(chunk)
        return self.pending_bytes >= WRITE_BYTES

    def drain(self) -> tuple[BinaryIO | None, list[bytes], bool]:
        """What a worker must write: (file or None, chunks, truncate first?)."""
        work = (self.file, self.pending, self.void)
        self.pending, self.pending_bytes, self.void = [], 0, False
        return work

    async def write_pending(self) -> None:
        file, chunks, void = self.drain()
        try:
            await _in_worker(self, write_out, file, self.part, chunks, void)
        except OSError as exc:
            raise write_error(exc, self.dest) from exc


def check_url(url: str) -> URL:
    """The parsed URL, if it is one pixrun follows: http(s) with a host. The request goes
    to this parsed URL, so what was checked is exactly what is fetched."""
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise DownloadError(f"the video URL {url[:120]!r} is not a URL") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise DownloadError(
            f"refusing to download from {url[:120]!r}: only http and https URLs are followed"
        )
    return parsed


class Mp4Walk:
    """Walks the top-level box chain of an MP4 as its bytes arrive, in order, so a
    download is verified without reading the file back.

    Sound means: the chain starts with ``ftyp``, holds a ``moov``, and its last box ends
    exactly at the end of the file (or is a size-0 box, which runs to the end).
    """

    def __init__(self) -> None:
        self._next = 0  # where the next box header starts
        self._header = b""  # the bytes of that header seen so far
        self._boxes = 0
        self._last: tuple[str, int] = ("", 0)  # the last box: its type and start
        self._to_end = False  # a size-0 box runs to the end of the file
        self._seen: set[bytes] = set()
        self._problem: str | None = None

    def feed(self, chunk: bytes, offset: int) -> None:
        """Take ``chunk``, whose first byte is byte ``offset`` of the file."""
        end = offset + len(chunk)
        while self._problem is None and not self._to_end:
            at = self._next + len(self._header)
            if at >= end:
                return
            want = 16 if len(self._header) >= 8 and self._header[:4] == b"\0\0\0\1" else 8
            self._header += chunk[at - offset : at - offset + want - len(self._header)]
            if len(self._header) < 8:
                return
            if self._header[:4] == b"\0\0\0\1" and len(self._header) < 16:
                continue  # a 64-bit size follows
            self._box(self._header)
            self._header = b""

    def _box(self, header: bytes) -> None:
        pos = self._next
        box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
        header_len = 8
        if box_size == 1:
            box_size, header_len = int.from_bytes(header[8:16], "big"), 16
        name = kind.decode("latin-1")
        if self._boxes == 0 and kind != b"ftyp":
            self._problem = (
                f"it does not start with an ftyp box (it starts with {header[:8]!r}): not an MP4"
            )
            return
        self._boxes += 1
        if self._boxes > _MAX_BOXES:
            self._problem = "too many boxes to be a video"
            return
        self._seen.add(kind)
        self._last = (name, pos)
        if box_size == 0:
            self._to_end = True
            return
        if box_size < header_len:
            self._problem = f"the {name!r} box at byte {pos} has an impossible size"
            return
        self._next = pos + box_size

    @property
    def broken(self) -> str | None:
        """A problem already certain, whatever bytes follow (a bad first box, an
        impossible size, too many boxes); None so far."""
        return self._problem

    def problem(self, size: int) -> str | None:
        """What makes the ``size`` bytes fed so far not a complete MP4, or None."""
        if self._problem is not None:
            return self._problem
        if self._boxes == 0 and not self._header:
            return "the file is empty"
        if self._header:
            return f"a box header is cut off at byte {self._next} (the file is truncated)"
        if not self._to_end and self._next > size:
            name, pos = self._last
            return f"the {name!r} box at byte {pos} runs past the end (the file is truncated)"
        if b"moov" not in self._seen:
            return "it has no moov box: not a playable MP4"
        return None


def mp4_problem(path: Path) -> str | None:
    """What makes the file at ``path`` not a complete MP4 (see :class:`Mp4Walk`)."""
    walk = Mp4Walk()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            walk.feed(chunk, size)
            size += len(chunk)
    return walk.problem(size)


async def download_file(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    resume_attempts: int,
    timeout: aiohttp.ClientTimeout,
    on_request: Callable[[], None] = lambda: None,
    then: Callable[[DownloadResult], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    prepare: Prepare | None = None,
) -> DownloadResult:
    """Fetch ``url`` into ``dest`` (see the module invariants); answers the published file.

    ``prepare`` runs in the worker thread on the verified, fsynced temporary file before
    it is published (it may rewrite it: embedded tags) and answers what the file then
    is; its exceptions propagate as raised, with nothing published.
    ``then`` runs in the worker thread right after the file is published and before
    the folder fsync, so what it writes beside the file (a sidecar) shares that fsync;
    its exceptions propagate as raised, with the file left published.
    """
    parsed = check_url(url)
    dest = Path(dest)
    transfer = _Transfer(dest, part_path(dest), max_bytes, on_bytes)
    try:
        try:
            await _transfer_all(session, parsed, transfer, timeout, resume_attempts, on_request)
            problem = transfer.boxes.problem(transfer.received)
            if problem:
                raise DownloadCorrupt(f"the downloaded file is unusable: {problem}")
            result = DownloadResult(
                path=dest, bytes=transfer.received, sha256=transfer.hasher.hexdigest()
            )
            try:
                # one worker-thread trip: write what waits, fsync, publish, ``then``,
                # folder fsync
                work = transfer.drain()
                delivered = result

                def finish() -> None:  # None: the transfer's file is closed
                    nonlocal result
                    result = finish_and_publish(work, transfer.part, delivered, then, prepare)

                await _in_worker(transfer, finish)
            except OSError as exc:
                raise write_error(exc, dest) from exc
        finally:
            # After a failed write the close fails the same way; the error that
            # matters has been raised already (or the data is fsynced and closed).
            if transfer.file is not None:
                with contextlib.suppress(OSError):
                    transfer.file.close()
        return result
    except BaseException:
        with contextlib.suppress(OSError):
            transfer.part.unlink()
        raise


async def _transfer_all(
    session: aiohttp.ClientSession,
    url: URL,
    transfer: _Transfer,
    timeout: aiohttp.ClientTimeout,
    resume_attempts: int,
    on_request: Callable[[], None],
) -> None:
    """Requests until the whole body is in, resuming cut transfers a bounded number of times."""
    cuts = 0
    while True:
        on_request()
        try:
            await _one_request(session, url, transfer, timeout)
            return
        except _Cut as cut:
            cuts += 1
            if cuts > resume_attempts:
                raise DownloadCorrupt(
                    f"the download kept stopping early ({cut}); nothing was kept",
                    hint="it will be tried again later",
                ) from cut


async def _one_request(
    session: aiohttp.ClientSession,
    url: URL,
    t: _Transfer,
    timeout: aiohttp.ClientTimeout,
) -> None:
    """One GET (ranged when resuming); raises :class:`_Cut` when the body stops early."""
    headers = {"Accept-Encoding": "identity"}
    if t.received:
        headers["Range"] = f"bytes={t.received}-"
    try:
        async with session.get(
            url, headers=headers, timeout=timeout, auto_decompress=False
        ) as resp:
            _take_status(resp, t)
            async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                if t.take(chunk):
                    await t.write_pending()
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise TransientError(f"cannot reach the download server: {exc}") from exc
    except aiohttp.NonHttpUrlClientError as exc:
        raise DownloadError(f"refusing to follow a redirect to a non-http URL: {exc}") from exc
    except aiohttp.TooManyRedirects as exc:
        raise DownloadError("the download URL redirects too many times") from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise _Cut(f"after {t.received} bytes: {type(exc).__name__}") from exc
    except aiohttp.ClientResponseError as exc:
        raise _Cut(f"unreadable answer after {t.received} bytes") from exc
    if t.total is not None and t.received < t.total:
        raise _Cut(f"{t.received} of {t.total} bytes")
    if t.total is not None and t.received > t.total:
        raise DownloadCorrupt(f"the server sent {t.received} bytes but announced {t.total}")


def _take_status(resp: aiohttp.ClientResponse, t: _Transfer) -> None:
    """Check the status line and headers; set up ``t`` for the body that follows."""
    status = resp.status
    if status in (401, 403, 404, 410):
        raise UrlExpired(
            f"the video URL answered HTTP {status} (expired or revoked)",
            status=status,
            hint="fetch the task again for a fresh URL",
        )
    if status == 416 and t.received:
        t.restart()
        raise _Cut("the server refused to resume")
    if status == 429 or status >= 500:
        raise TransientError(f"the download server answered HTTP {status}", status=status)
    if status == 206 and t.received:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != t.received:
            t.restart()
            raise _Cut("the server resumed at the wrong offset")
        t.expect_total(None if match.group(3) == "*" else int(match.group(3)))
        return
    if status == 200:
        if t.received:
            t.restart()  # the server ignored Range: start over from byte 0
        t.expect_total(resp.content_length)
        return
    raise DownloadError(f"the download server answered HTTP {status}", status=status)
