"""Collecting: downloading a finished render into its output, and checking the files of
earlier runs.

Invariants:
- Nothing is ever generated again to fetch a file: a URL that expired or a download
  host that keeps failing is refreshed by fetching the task again (free).
- Download hosts are not the API: their failures never count towards the provider's
  outage, and every failure counts towards giving the download up for this run
  (``download_give_up_s`` / ``max_download_failures``); a shot given up on stays
  collectable (rendered, task id kept, URL dropped so the next run fetches afresh).
- A download host that is down is not waited out shot by shot: after
  ``downloads_down_after`` shots given up on in a row (none downloaded in between), each
  further shot gets only its tries up to one fresh URL, until a download works again.
  Said once each way (a run event and a ledger event), like a provider outage.
- An existing different file is never overwritten: an older version of the same shot is
  moved aside (with its sidecar), anything else fails the shot as an output conflict.
- A shot is done only once its file (and sidecar) are published and durable; the
  sidecar and the ledger record the same done time.
- With ``output.embed_metadata`` the file is tagged before it is published
  (runner/mp4tags.py): the ledger's and the sidecar's size and sha256 are the tagged
  file's, so every later check of the file on disk (a rerun, adoption) holds it to
  those; the sidecar keeps the delivered ones too. A file that cannot be tagged is kept
  as delivered, and the sidecar, a ledger event and a run event say why.

Size: about 470 lines, mostly one class: downloading, placing and the sidecar share
the collector's give-up bookkeeping (per shot and for the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from runner.errors import (
    DiskFull,
    DownloadError,
    InvalidRequest,
    OutputConflict,
    TaskNotFound,
    TransientError,
    UrlExpired,
    UsageError,
)
from runner.ledger import EventKind, ShotRow
from runner.model import ErrorKind, ShotState
from runner.money import uptc_text
from runner.mp4tags import Embedder, tag_values
from runner.outputs import (
    Prepare,
    archive_name,
    place_over,
    resolve_output,
    sha256_file,
    staging_path,
    write_sidecar,
)
from runner.provider import DownloadResult, TaskStatus
from runner.provider.images import FILE_PREFIX, path_of_file_uri
from runner.run import crashpoints
from runner.run.context import Job, RunContext
from runner.run.crashpoints import CrashPoint
from runner.run.events import RunEventKind
from runner.run.flow import backoff_s
from runner.run.options import StopReason
from runner.run.poll import Poller
from runner.run.transitions import Note, Transitions

#: a rendered shot without a URL (dropped when a download was given up on, or never
#: kept): the normal way a rerun collects it, not a failure
_NO_URL = "no download URL known"


class _Sidecar:
    """A shot's sidecar, waiting for what only the finished download knows. Called in
    the worker-thread trip that publishes the video (:meth:`Provider.download`, or
    :func:`runner.outputs.place_over` for a video staged beside an existing file), so
    both names share one folder fsync."""

    def __init__(self, target: Path, fields: dict[str, Any], embedder: Embedder | None) -> None:
        self.target = target
        self.fields = fields
        self.embedder = embedder
        #: set once written: the shot's done time, as the sidecar records it
        self.done_at: float | None = None

    def __call__(self, result: DownloadResult) -> None:
        done_at = time.time()
        data = {**self.fields, "sha256": result.sha256, "bytes": result.bytes, "done_at": done_at}
        embedder = self.embedder
        if embedder is not None and embedder.delivered is not None:
            data["delivered_sha256"] = embedder.delivered.sha256
            data["delivered_bytes"] = embedder.delivered.bytes
            data["embedded_metadata"] = None if embedder.untagged else embedder.values
            if embedder.untagged:
                data["embed_error"] = embedder.untagged
        write_sidecar(self.target, data)
        self.done_at = done_at


def sidecar_fields(row: ShotRow, provider: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar, but for what only the finished download knows. ``provider``: who
    rendered it (a lost ledger's rerun adopts the file only for the same provider)."""
    # local images as plain paths (decoded), wherever they are: image, last_image, lists
    request = {
        key: [_local_path(v) for v in value] if isinstance(value, list) else _local_path(value)
        for key, value in row.request.items()
    }
    return {
        "shot_id": row.shot_id,
        "version": row.version,
        # a lost ledger's rerun adopts this file when the request is the same
        "request_hash": row.request_hash,
        "prompt": row.prompt,
        "mode": row.mode,
        "request": request,
        "task_id": row.task_id,
        "seed": row.seed,
        "price_uptc": row.price_uptc,
        "price_ptc": uptc_text(row.price_uptc),
        "attempts": row.attempts,
        "submitted_at": row.submitted_at,
        "rendered_at": row.rendered_at,
        "provider": None if provider is None else dict(provider),
    }


class Collector:
    """Downloads rendered shots (with their own concurrency) and re-checks done ones."""

    def __init__(self, ctx: RunContext, transitions: Transitions, poller: Poller) -> None:
        self._ctx = ctx
        self._tr = transitions
        self._poller = poller
        self.slots = asyncio.Semaphore(ctx.opt.download_concurrency)
        self.backlog = 0
        self.backlog_drained = asyncio.Event()
        #: shots given up on since the last download that worked (transfer failures)
        self._given_up_in_a_row = 0

    @property
    def busy(self) -> bool:
        return self.slots.locked()

    async def collect(self, job: Job) -> None:
        self.backlog += 1
        queued = True
        try:
            async with self.slots:
                queued = False
                self.backlog -= 1
                if self.backlog <= 2 * self._ctx.opt.download_concurrency:
                    self.backlog_drained.set()
                await self._download(job)
        finally:
            if queued:  # cancelled while waiting for a download slot
                self.backlog -= 1

    async def _download(self, job: Job) -> None:
        ctx, row = self._ctx, job.row
        try:
            target = resolve_output(ctx.opt.output_dir, row.output_path)
        except OutputConflict as exc:
            await self._poller.finish(job, ShotState.FAILED, ErrorKind.OUTPUT_CONFLICT, str(exc))
            return
        if row.state != ShotState.DOWNLOADING:
            await self._tr.commit(row, ShotState.DOWNLOADING)
        # the file is tagged before it is published, and the sidecar is written in the
        # download's own worker-thread trip, sharing the folder fsync that makes the
        # video's name durable
        embedder = _embedder(row, ctx.opt.batch_name) if ctx.opt.embed_metadata else None
        sidecar = (
            _Sidecar(target, sidecar_fields(row, ctx.opt.provider), embedder)
            if ctx.opt.sidecar
            else None
        )
        fetched = await self._fetch_file(job, target, sidecar, embedder)
        if fetched is None:
            return
        result, staged = fetched
        if staged is not None and not await self._place_over_existing(
            job, target, staged, result, sidecar
        ):
            return
        crashpoints.reached(CrashPoint.MID_DOWNLOAD)
        # the sidecar records the done time; the ledger records the same one
        done_at = sidecar.done_at if sidecar is not None and sidecar.done_at else time.time()
        note = Note(RunEventKind.DONE, f"saved {row.output_path}")
        if embedder is not None and embedder.untagged:
            message = (
                f"saved {row.output_path} without embedded metadata: {embedder.untagged}; "
                "the file is kept as delivered"
            )
            note = Note(RunEventKind.DONE, message, EventKind.UNTAGGED)
        await self._tr.commit(
            row,
            ShotState.DONE,
            note,
            bytes=result.bytes,
            sha256=result.sha256,
            done_at=done_at,
            error_kind=None,
            last_error=None,
        )
        if note.ledger_kind == EventKind.UNTAGGED:
            ctx.emit(RunEventKind.INFO, note.message, row)  # a done event is routine
        crashpoints.reached(CrashPoint.AFTER_DONE)

    async def _fetch_file(
        self, job: Job, target: Path, sidecar: _Sidecar | None, embedder: Embedder | None
    ) -> tuple[DownloadResult, Path | None] | None:
        """Download with retries; ``(result, staging path or None)``, or None if given up."""
        ctx, row = self._ctx, job.row
        opt = ctx.opt
        failures = refreshes = 0
        first_failure: float | None = None
        # Straight to the final name: the adapter publishes without ever replacing a
        # file. Only when something already sits there do we stage and compare.
        staged: Path | None = None
        while True:
            try:
                if not row.video_url:
                    raise UrlExpired(_NO_URL)
                if staged is not None:  # a staging file left by a crash is never trusted
                    await asyncio.to_thread(staged.unlink, missing_ok=True)
                result = await ctx.provider.download(
                    row.video_url,
                    staged or target,
                    then=sidecar if staged is None else None,
                    on_bytes=self._on_bytes,
                    prepare=_tagging(embedder),
                )
                self._downloads_work()
                return result, staged
            except UrlExpired as exc:
                # each refresh is progress (a fresh URL); only a task that keeps handing
                # out URLs that expire before they can be used is given up on
                refreshes += 1
                if refreshes > opt.max_download_failures or not await self.refresh_url(
                    job, str(exc)
                ):
                    if not _parked(row):
                        await self._given_up(job, "the URL expired and no fresh one came")
                    return None
            except (DiskFull, UsageError) as exc:  # the file system refuses (full, permissions)
                await self._write_failed(job, exc)
                return None
            except OutputConflict as exc:
                if staged is None:
                    staged = staging_path(target)
                    continue
                await self._given_up(job, str(exc))
                return None
            except (DownloadError, TransientError, OSError) as exc:
                failures += 1
                now = time.monotonic()
                first_failure = first_failure or now
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                took_s = now - first_failure
                host_down = self._given_up_in_a_row >= opt.downloads_down_after
                if (
                    # a host that is down gets only the tries up to one fresh URL
                    (host_down and failures > opt.download_refresh_after)
                    or took_s >= opt.download_give_up_s
                    or failures >= opt.max_download_failures
                ):
                    message = f"the download failed {failures} times over {took_s:.0f} s"
                    if host_down:
                        message = (
                            f"the download failed {failures} times, a fresh URL included, "
                            "while downloads keep failing"
                        )
                    await self._given_up(job, f"{message} (last: {reason})")
                    self._download_given_up(reason)
                    return None
                # the host may be gone for good (a dead CDN node, a simulator that
                # restarted elsewhere): every few failures, ask where the video is now
                refresh = failures % opt.download_refresh_after == 0
                if refresh and not await self.refresh_url(job, reason) and _parked(row):
                    return None
                await asyncio.sleep(backoff_s(failures, base_s=opt.backoff_base_s, cap_s=10.0))

    def _download_given_up(self, reason: str) -> None:
        self._given_up_in_a_row += 1
        if self._given_up_in_a_row == self._ctx.opt.downloads_down_after:
            message = (
                f"downloads keep failing ({self._given_up_in_a_row} shots in a row, last: "
                f"{reason}): a few quick tries per shot until one works again; every shot not "
                "downloaded keeps its task, and a rerun downloads it at no charge"
            )
            self._ctx.emit(RunEventKind.DOWNLOADS_DOWN, message)
            self._ctx.ledger_event(EventKind.DOWNLOADS_DOWN, message)

    def _downloads_work(self) -> None:
        if self._given_up_in_a_row >= self._ctx.opt.downloads_down_after:
            message = f"downloads work again, after {self._given_up_in_a_row} not downloaded"
            self._ctx.emit(RunEventKind.INFO, message)
            self._ctx.ledger_event(EventKind.DOWNLOADS_BACK, message)
        self._given_up_in_a_row = 0

    def _on_bytes(self, size_bytes: int) -> None:
        self._ctx.tally.progressed()

    async def _place_over_existing(
        self,
        job: Job,
        target: Path,
        staged: Path,
        result: DownloadResult,
        sidecar: _Sidecar | None,
    ) -> bool:
        """A file already sits at the target: keep it if identical, move it aside if it
        is this shot's older version, never clobber anything else. The sidecar is
        written in the same worker-thread trip. False: the shot is dealt with."""
        row = job.row
        current = await asyncio.to_thread(sha256_file, target)
        aside = None
        aside_version = 0
        if current != result.sha256:
            owner = await self._ctx.ledger.output_owner(row.output_path)
            if owner is None or owner[0] != row.shot_id or owner[1] != current:
                staged.unlink(missing_ok=True)
                message = (
                    f"a different file already exists at {target}; move it away or change "
                    f"output.filename, then 'pixrun retry --shot {row.shot_id}'"
                )
                await self._poller.finish(job, ShotState.FAILED, ErrorKind.OUTPUT_CONFLICT, message)
                return False
            aside_version = owner[2]
            aside = archive_name(target, aside_version)
        then = functools.partial(sidecar, result) if sidecar is not None else None
        failure: DiskFull | UsageError | None = None
        try:
            await asyncio.to_thread(place_over, target, staged, aside, then)
        except (DiskFull, UsageError) as exc:
            failure = exc  # only the new sidecar can fail: the files have moved
        if aside is not None:
            # the archived version's record follows its file (its sidecar went along)
            relpath = PurePosixPath(row.output_path).with_name(aside.name).as_posix()
            await self._ctx.ledger.version_moved_aside(row.shot_id, aside_version, relpath)
        if failure is not None:
            await self._write_failed(job, failure)
            return False
        return True

    async def refresh_url(self, job: Job, why: str) -> bool:
        """Fetch the task again (free) for a fresh download URL; False when none came
        (a task the provider no longer knows is parked on the way)."""
        ctx, row = self._ctx, job.row
        assert row.task_id is not None
        # fetching is free: ride out throttling and passing errors like a poll does
        for attempt in range(1, 21):
            try:
                state = await self._poller.fetch(row.task_id)
            except TaskNotFound as exc:
                await self._poller.task_lost(job, exc)
                return False
            if state is not None:
                break
            if ctx.hard_stopped():
                return False
            await asyncio.sleep(backoff_s(attempt, base_s=ctx.opt.backoff_base_s, cap_s=10.0))
        else:
            return False
        if state.status != TaskStatus.SUCCEEDED or not state.video_url:
            return False
        message = (
            "no download URL kept (a rerun, or a download given up on): fetched one (free)"
            if why == _NO_URL
            else f"download failed ({why}): fetched a fresh URL"
        )
        note = Note(RunEventKind.URL_REFRESHED, message, EventKind.URL_REFRESHED)
        await self._tr.commit(row, None, note, video_url=state.video_url)
        return True

    async def _given_up(
        self, job: Job, message: str, *, kind: ErrorKind = ErrorKind.DOWNLOAD
    ) -> None:
        """The render is paid for: keep the shot collectable (rendered, task id kept) for
        the next run, which fetches the task again for a fresh URL before it downloads."""
        shown = (
            "not downloaded (a rerun or 'pixrun retry' downloads it again, at no charge): "
            f"{message}"
        )
        self._ctx.tally.not_downloaded += 1
        await self._tr.commit(
            job.row,
            ShotState.RENDERED,
            Note(RunEventKind.FAILED, message, EventKind.DOWNLOAD_FAILED, shown),
            error_kind=kind,
            last_error=message,
            video_url=None,
        )

    async def _write_failed(self, job: Job, exc: DiskFull | UsageError) -> None:
        """An output could not be written: the shot stays collectable; a full disk
        stops the run (every further file would fail the same way)."""
        if isinstance(exc, DiskFull):
            await self._given_up(job, str(exc), kind=ErrorKind.DISK_FULL)
            self._ctx.request_stop(StopReason.DISK_FULL, f"{exc}: free space, then rerun")
        else:
            await self._given_up(job, str(exc))

    async def verify_done(self, spawn: Callable[[Job], None]) -> None:
        """Done shots whose file vanished or changed size are downloaded again."""
        ctx = self._ctx
        outputs = await ctx.ledger.done_outputs()
        base = ctx.opt.output_dir

        def missing() -> list[str]:
            bad = []
            for shot_id, relpath, size in outputs:
                try:
                    if (base / relpath).stat().st_size != size:
                        bad.append(shot_id)
                except OSError:
                    bad.append(shot_id)
            return bad

        for shot_id in await asyncio.to_thread(missing):
            row = await ctx.ledger.get_shot(shot_id)
            if row is None or row.state != ShotState.DONE:
                continue
            await self._tr.commit(
                row,
                ShotState.RENDERED,
                error_kind=ErrorKind.DOWNLOAD,
                last_error="the output file was missing or changed: downloading again",
            )
            spawn(Job(row))


def _tagging(embedder: Embedder | None) -> Prepare | None:
    if embedder is None:
        return None

    def prepare(part: Path, delivered: DownloadResult) -> DownloadResult:
        tagged = embedder(part, delivered)
        crashpoints.reached(CrashPoint.AFTER_TAGGED)
        return tagged

    return prepare


def _embedder(row: ShotRow, batch_name: str | None) -> Embedder:
    return Embedder(
        tag_values(
            shot_id=row.shot_id,
            version=row.version,
            task_id=row.task_id,
            seed=row.seed,
            mode=row.mode,
            prompt=row.prompt,
            request=row.request,
            manifest=batch_name,
        )
    )


def _parked(row: ShotRow) -> bool:
    """The shot was parked on the way (the provider no longer knows its task)."""
    return row.state == ShotState.AMBIGUOUS


def _local_path(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FILE_PREFIX):
        with contextlib.suppress(InvalidRequest):  # another host's: kept as written
            return str(path_of_file_uri(value))
    return value
