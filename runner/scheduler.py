"""The run's state machine and timing: dispatch, polling, retries, downloads.

The scheduler drives each shot through its lifecycle::

    pending -> submitting -> submitted -> rendered -> downloading -> done
                   |             |  \\-> failed | moderated       (final)
                   |             \\-> pending (render failed, attempts left)
                   \\-> ambiguous (parked) | failed (invalid) | pending (retryable)

It knows neither SQL nor HTTP: every durable step goes through :class:`Ledger`, every
call through :class:`Provider`.

Invariants:
- No generate request is sent before :meth:`Ledger.begin_attempt` has returned (the
  intent is durable), and a task id is committed before the task is polled.
- At most ``concurrency`` tasks (submitting or rendering) are in flight, and fewer after
  the provider signals its concurrency cap (AIMD in :class:`InFlightLimiter`).
- Errors that the provider's answer proves harmless (5xx, throttling, a refused key, an
  empty account) never fail a shot; only invalid requests, moderation, render failures
  past ``max_attempts`` and render time-outs do.
- Nothing is ever generated again to fetch a file: expired URLs are refreshed by
  fetching the task again.
- On stop (signal, refused key, disk full) nothing is lost: what is recorded is
  consistent at every commit, and tasks at the provider are collected by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from runner import crashpoints
from runner.crashpoints import CrashPoint
from runner.errors import (
    AmbiguousSubmit,
    AuthRefused,
    ConcurrencyLimited,
    ContractMismatch,
    DiskFull,
    DownloadError,
    ExitCode,
    InvalidRequest,
    LedgerError,
    OutOfCredit,
    OutputConflict,
    ProviderError,
    RateLimited,
    TaskNotFound,
    TransientError,
    UrlExpired,
    UsageError,
)
from runner.events import RunEvent, RunEventKind, RunObserver, RunSnapshot
from runner.flow import CallGate, InFlightLimiter, PollPlanner, backoff_s
from runner.ledger import AttemptOutcome, EventKind, Ledger, ShotRow
from runner.model import ErrorKind, PollSettings, ShotState
from runner.outputs import (
    archive_name,
    place_over,
    resolve_output,
    sha256_file,
    staging_path,
    write_sidecar,
)
from runner.provider import DownloadResult, Provider, TaskState, TaskStatus, trace_id_for
from runner.uploads import ImageUploads

#: after these, the next submit repeats the same render attempt (same trace id)
_SAME_ATTEMPT_KINDS = frozenset(
    {
        ErrorKind.TRANSIENT.value,
        ErrorKind.RATE_LIMITED.value,
        ErrorKind.AUTH.value,
        ErrorKind.NO_CREDIT.value,
        ErrorKind.RETRY_SAME_ATTEMPT.value,
    }
)


class StopReason(str, Enum):
    """Why a run stopped submitting before the manifest was exhausted."""

    INTERRUPTED = "interrupted"  #: Ctrl-C or SIGTERM
    AUTH = "auth"  #: the provider refused the key
    OUT_OF_CREDIT = "out_of_credit"  #: the account is empty
    BUDGET = "budget"  #: the cost cap would be passed
    AMBIGUOUS_STREAK = "ambiguous_streak"  #: too many ambiguous submits in a row
    DISK_FULL = "disk_full"  #: the disk is full
    LEDGER = "ledger"  #: the ledger cannot be written
    CONTRACT = "contract"  #: the provider answered in a way pixrun does not recognise
    OUTAGE = "outage"  #: the provider stayed unreachable past run.outage_timeout_s
    UNREACHABLE = "unreachable"  #: the provider never answered at all (a typo'd URL?)
    STALLED = "stalled"  #: nothing progressed for run.stall_timeout_s


_EXIT_FOR_STOP = {
    StopReason.INTERRUPTED: ExitCode.INTERRUPTED,
    StopReason.AUTH: ExitCode.AUTH,
    StopReason.OUT_OF_CREDIT: ExitCode.MONEY,
    StopReason.BUDGET: ExitCode.MONEY,
    StopReason.AMBIGUOUS_STREAK: ExitCode.SHOTS_FAILED,
    StopReason.DISK_FULL: ExitCode.SHOTS_FAILED,
    StopReason.LEDGER: ExitCode.SHOTS_FAILED,
    StopReason.CONTRACT: ExitCode.CONTRACT,
    StopReason.OUTAGE: ExitCode.SHOTS_FAILED,
    StopReason.UNREACHABLE: ExitCode.INVALID,
    StopReason.STALLED: ExitCode.SHOTS_FAILED,
}

#: stop reasons after which nothing more may happen at all (not even collecting)
_HARD_STOPS = frozenset(
    {
        StopReason.INTERRUPTED,
        StopReason.AUTH,
        StopReason.DISK_FULL,
        StopReason.LEDGER,
        StopReason.CONTRACT,
        StopReason.OUTAGE,
        StopReason.UNREACHABLE,
        StopReason.STALLED,
    }
)


@dataclass(frozen=True)
class SchedulerOptions:
    output_dir: Path
    concurrency: int = 8
    download_concurrency: int = 4
    requests_per_s: float = 20.0
    poll: PollSettings = field(default_factory=PollSettings)
    budget_uptc: int | None = None
    sidecar: bool = True
    #: this many ambiguous submits in a row stop submitting
    ambiguous_streak_limit: int = 5
    #: consecutive transient submit failures (provider otherwise up) before giving up
    #: on a shot for this run; it stays pending
    max_transient_tries: int = 8
    #: a download that keeps failing (refused, reset, 5xx, cut short) fetches the task
    #: again for a fresh URL after this many failures in a row, and gives up (the shot
    #: stays collectable, its task id kept) after ``download_give_up_s`` or
    #: ``max_download_failures``, whichever comes first
    download_refresh_after: int = 2
    download_give_up_s: float = 120.0
    max_download_failures: int = 12
    #: a provider that answered nothing at all for this long since the first call is
    #: taken to be a wrong address (exit 2)
    unreachable_grace_s: float = 60.0
    #: a provider that answered before and then went away is waited for this long
    outage_timeout_s: float = 6 * 3600.0
    #: nothing progressed (no submit, state change, byte downloaded or task answer) for
    #: this long, outside an outage: stop, say what was stuck
    stall_timeout_s: float = 900.0
    snapshot_interval_s: float = 0.5
    #: what one upload of a local image costs (the price table's upload_ptc)
    upload_price_uptc: int = 1_000
    #: exponential back-off of retried calls: first delay and ceiling
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    #: on a stop, how long generate calls already under way may take to answer; well
    #: under the 2 s in which Ctrl-C must end the process (shutdown needs the rest)
    stop_grace_s: float = 1.0


@dataclass
class RunResult:
    exit_code: int
    stop_reason: StopReason | None
    message: str | None
    counts: dict[ShotState, int]
    spent_uptc: int
    elapsed_s: float
    calls: dict[str, int]
    ledger_commits: int


def _ignore_result(task: asyncio.Task[None]) -> None:
    """A background ledger event that failed: the batcher stops the run by itself."""
    if not task.cancelled():
        task.exception()


def _with_hint(exc: ProviderError) -> str:
    return f"{exc.message} What to do: {exc.hint}" if exc.hint else exc.message


def _lost(row: ShotRow) -> bool:
    """The shot was parked on the way (the provider no longer knows its task)."""
    return row.state == ShotState.AMBIGUOUS


def _state(row: ShotRow) -> ShotState:
    """The row's state now (a call, so type narrowing does not outlive an await)."""
    return row.state


@dataclass
class _Job:
    row: ShotRow
    holds_slot: bool = False
    in_generate: bool = False
    #: this shot keeps failing transiently while others go through: leave it pending
    give_up: bool = False
    #: how long to wait before repeating a call that failed transiently
    retry_delay_s: float = 0.0
    #: wall-clock start of the current render, for the render-time model
    accepted_mono: float | None = None


class _Sidecar:
    """A shot's sidecar, waiting for what only the finished download knows. Called in
    the worker-thread trip that publishes the video (:meth:`Provider.download`, or
    :func:`runner.outputs.place_over` for a video staged beside an existing file), so
    both names share one folder fsync."""

    def __init__(self, target: Path, fields: dict[str, Any]) -> None:
        self.target = target
        self.fields = fields
        #: set once written: the shot's done time, as the sidecar records it
        self.done_at: float | None = None

    def __call__(self, result: DownloadResult) -> None:
        done_at = time.time()
        data = {**self.fields, "sha256": result.sha256, "bytes": result.bytes, "done_at": done_at}
        write_sidecar(self.target, data)
        self.done_at = done_at


class Scheduler:
    def __init__(
        self,
        ledger: Ledger,
        provider: Provider,
        options: SchedulerOptions,
        observer: RunObserver,
    ) -> None:
        self._ledger = ledger
        self._provider = provider
        self._opt = options
        self._observer = observer
        self._limiter = InFlightLimiter(options.concurrency)
        self._gate = CallGate(options.requests_per_s)
        self._planner = PollPlanner(
            initial_delay_s=options.poll.initial_delay_s,
            min_interval_s=options.poll.min_interval_s,
            max_interval_s=options.poll.max_interval_s,
        )
        self._downloads = asyncio.Semaphore(options.download_concurrency)
        self._uploads = ImageUploads(
            ledger,
            provider,
            enabled=provider.config.image_encoding == "upload",
            price_uptc=options.upload_price_uptc,
            on_charge=self._charged,
        )
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._submit_stop: StopReason | None = None
        self._stop_message: str | None = None
        self._counts: Counter[ShotState] = Counter()
        self._total = 0
        self._planned_uptc = 0
        self._spent_uptc = 0
        self._reserved_uptc = 0
        self._download_backlog = 0
        self._backlog_drained = asyncio.Event()
        self._ambiguous_streak = 0
        self._t0 = time.monotonic()
        self._done_times: deque[float] = deque(maxlen=200)
        self._recent: deque[RunEvent] = deque(maxlen=6)
        self._dispatcher: asyncio.Task[None] | None = None
        self._all_stopped = asyncio.Event()
        #: the last time something moved (see SchedulerOptions.stall_timeout_s)
        self._last_progress = time.monotonic()
        #: when the provider went down, for one log line per outage and its time limit
        self._outage_since: float | None = None
        self._last_provider_error = ""
        #: fetches of this run that found a task (0: the fetch route is unproven)
        self._tasks_found = 0

    # -- public --------------------------------------------------------------------

    def request_stop(self, reason: StopReason = StopReason.INTERRUPTED, message: str = "") -> None:
        """Stop submitting; for hard stops also stop collecting (after a short grace)."""
        if self._submit_stop in _HARD_STOPS:
            return
        first = self._submit_stop is None
        self._submit_stop = reason
        if message or first:
            self._stop_message = message or self._stop_message
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()
        if reason in _HARD_STOPS:
            self._emit(RunEventKind.STOPPING, message or f"stopping: {reason.value}")
            asyncio.get_running_loop().create_task(self._cancel_jobs())

    async def run(self, *, planned_uptc: int = 0) -> RunResult:
        self._t0 = self._last_progress = time.monotonic()
        self._planned_uptc = planned_uptc
        self._counts = Counter(await self._ledger.counts_by_state())
        self._total = sum(self._counts.values())
        self._spent_uptc = await self._ledger.spent_uptc()
        ticker = asyncio.create_task(self._ticker(), name="snapshots")
        try:
            for row in await self._ledger.shots_in([ShotState.SUBMITTED, ShotState.RENDERED]):
                job = _Job(row)
                if row.state == ShotState.SUBMITTED:
                    # already at the provider: counts against concurrency even if above it
                    self._limiter.in_flight += 1
                    job.holds_slot = True
                self._spawn(job)
            verify = asyncio.create_task(self._verify_done(), name="verify-done")
            self._dispatcher = asyncio.create_task(self._dispatch(), name="dispatch")
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            if self._submit_stop in _HARD_STOPS:
                verify.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await verify
            await self._wait_jobs()  # includes re-downloads that verification queued
        except LedgerError as exc:
            self._submit_stop = StopReason.LEDGER
            self._stop_message = str(exc)
            await self._cancel_jobs()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        with contextlib.suppress(LedgerError):
            await self._ledger.flush()  # the writes of jobs a stop cancelled
            self._counts = Counter(await self._ledger.counts_by_state())
        self._observer.snapshot(self._snapshot())
        return self._result()

    # -- dispatch ------------------------------------------------------------------

    async def _dispatch(self) -> None:
        cursor = -1
        buffer: deque[ShotRow] = deque()
        while self._submit_stop is None:
            if not buffer:
                rows = await self._ledger.next_pending(after_seq=cursor, limit=256)
                if not rows:
                    return
                buffer.extend(rows)
                cursor = rows[-1].seq
            # downloads first: finished renders are money already spent
            while self._download_backlog > 2 * self._opt.download_concurrency:
                self._backlog_drained.clear()
                await self._backlog_drained.wait()
            await self._limiter.acquire()
            # the budget is checked where money is committed: before each generate call
            self._spawn(_Job(buffer.popleft(), holds_slot=True))

    def _stopped(self) -> bool:
        return self._submit_stop is not None

    def _hard_stopped(self) -> bool:
        return self._submit_stop in _HARD_STOPS

    def _budget_allows(self, row: ShotRow) -> bool:
        cap = self._opt.budget_uptc
        if cap is None:
            return True
        price = row.price_uptc or 0
        return self._spent_uptc + self._reserved_uptc + price <= cap

    def _stop_submitting(self, reason: StopReason, message: str) -> None:
        if self._submit_stop is None:
            self._submit_stop = reason
            self._stop_message = message
            kind = {
                StopReason.OUT_OF_CREDIT: RunEventKind.OUT_OF_CREDIT,
                StopReason.BUDGET: RunEventKind.BUDGET_REACHED,
            }.get(reason, RunEventKind.STOPPING)
            self._emit(kind, message)
            if self._dispatcher is not None and not self._dispatcher.done():
                self._dispatcher.cancel()

    def _spawn(self, job: _Job) -> None:
        task = asyncio.create_task(self._lifecycle(job), name=f"shot:{job.row.shot_id}")
        self._jobs[task] = job
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        job = self._jobs.pop(task, None)
        if job is not None and job.holds_slot:
            job.holds_slot = False
            self._limiter.release()
        if not self._jobs:
            self._all_stopped.set()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, LedgerError):
                self.request_stop(StopReason.LEDGER, str(exc))
            else:  # a bug: stop rather than carry on in an unknown state
                self.request_stop(StopReason.LEDGER, f"internal error: {exc!r}")

    async def _wait_jobs(self) -> None:
        while self._jobs:
            self._all_stopped.clear()
            await self._all_stopped.wait()

    async def _cancel_jobs(self) -> None:
        """Cancel collecting at once; give generate calls under way a short grace."""
        for task, job in list(self._jobs.items()):
            if not job.in_generate:
                task.cancel()
        deadline = time.monotonic() + self._opt.stop_grace_s
        while any(j.in_generate for j in self._jobs.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in list(self._jobs):
            task.cancel()

    # -- one shot ------------------------------------------------------------------

    async def _lifecycle(self, job: _Job) -> None:
        row = job.row
        while True:
            if _state(row) == ShotState.PENDING:
                if not job.holds_slot:
                    if self._submit_stop is not None:
                        return
                    await self._limiter.acquire()
                    job.holds_slot = True
                await self._submit(job)
                state = _state(row)
                if state != ShotState.SUBMITTED:
                    if state == ShotState.PENDING and self._submit_stop is None:
                        if job.give_up:
                            return
                        continue  # throttled or transient: try again (slot re-acquired)
                    return
            if _state(row) == ShotState.SUBMITTED:
                await self._await_render(job)
                if _state(row) == ShotState.PENDING:
                    continue  # render failed with attempts left
            if _state(row) in (ShotState.RENDERED, ShotState.DOWNLOADING):
                await self._collect(job)
            return

    def _release(self, job: _Job) -> None:
        if job.holds_slot:
            job.holds_slot = False
            self._limiter.release()

    def _move(self, row: ShotRow, state: ShotState) -> None:
        self._counts[row.state] -= 1
        self._counts[state] += 1
        row.state = state
        self._last_progress = time.monotonic()

    def _charged(self, uptc: int) -> None:
        self._spent_uptc += uptc

    def _progressed(self) -> None:
        self._last_progress = time.monotonic()

    # -- provider health: one line per change of the outage ---------------------------

    def _provider_failed(self, exc: ProviderError) -> float:
        """A transient failure of an API call; how long that call should wait."""
        delay = self._gate.record_failure(self._opt.backoff_base_s, self._opt.backoff_cap_s)
        self._last_provider_error = exc.message
        if self._gate.provider_down and self._outage_since is None:
            self._outage_since = time.monotonic()
            message = f"the provider is not answering ({exc.message}); backing off"
            self._emit(RunEventKind.PROVIDER_DOWN, message)
            self._ledger_event(EventKind.PROVIDER_DOWN, message)
        return delay

    def _provider_ok(self) -> None:
        self._gate.record_success()
        if self._outage_since is not None:
            down_s = time.monotonic() - self._outage_since
            self._outage_since = None
            message = f"the provider answers again after {down_s:.0f} s"
            self._emit(RunEventKind.INFO, message)
            self._ledger_event(EventKind.PROVIDER_BACK, message)

    def _ledger_event(self, kind: EventKind, message: str, shot_id: str | None = None) -> None:
        """An event for the ledger, written in the background (it never blocks a call)."""
        task = asyncio.get_running_loop().create_task(
            self._ledger.add_event(kind, shot_id, message)
        )
        task.add_done_callback(_ignore_result)

    async def _submit(self, job: _Job) -> None:
        row = job.row
        same = row.attempts > 0 and row.error_kind in _SAME_ATTEMPT_KINDS
        attempt_no = row.attempts if same else row.attempts + 1
        trace_id = None
        if same:  # a repeat of an attempt already sent: the id it went out with
            trace_id = await self._ledger.sent_trace_id(row.shot_id, row.version, attempt_no)
        if trace_id is None:
            trace_id = trace_id_for(
                f"{row.shot_id}@v{row.version}", attempt_no, secret=self._ledger.trace_secret
            )
        price = row.price_uptc or 0
        transient_tries = 0
        now_wall = time.time()
        if row.not_before and row.not_before > now_wall:
            await asyncio.sleep(min(row.not_before - now_wall, 60.0))
        while True:
            if self._submit_stop is not None:
                self._release(job)
                return
            await self._gate.wait()
            if self._stopped():
                self._release(job)
                return
            if not self._budget_allows(row):
                self._release(job)
                cap = (self._opt.budget_uptc or 0) / 1e6
                self._stop_submitting(
                    StopReason.BUDGET,
                    f"the budget cap of {cap:g} PTC would be passed: no more submissions",
                )
                return
            self._reserved_uptc += price
            # from the intent to the answer, a stop waits (briefly) for this shot: cut
            # here, it would become ambiguous
            job.in_generate = True
            try:
                attempt_id = await self._ledger.begin_attempt(
                    row, attempt_no=attempt_no, trace_id=trace_id, new_attempt=not same
                )
                self._move(row, ShotState.SUBMITTING)
                row.attempts = attempt_no
                crashpoints.reached(CrashPoint.AFTER_INTENT)
                if self._hard_stopped():
                    # nothing was sent: say so, so that no rerun parks this shot
                    job.in_generate = False
                    self._reserved_uptc -= price
                    await self._ledger.attempt_finished(
                        row.shot_id,
                        attempt_id,
                        AttemptOutcome.TRANSIENT,
                        message="not sent: the run was stopping",
                        http_status=None,
                        shot_fields={"state": ShotState.PENDING, "error_kind": row.error_kind},
                    )
                    self._move(row, ShotState.PENDING)
                    self._release(job)
                    return
                try:
                    body = await self._uploads.prepare(row.request)
                    task_id = await self._provider.generate(body, trace_id=trace_id)
                finally:
                    job.in_generate = False
            except ProviderError as exc:
                self._reserved_uptc -= price
                retry = await self._submit_failed(job, attempt_id, exc)
                if not retry:
                    return
                # an outage (every call failing) is waited out; only a shot that fails
                # while the provider otherwise answers uses up its tries
                counts = isinstance(exc, TransientError) and not self._gate.provider_down
                transient_tries += 1 if counts else 0
                if transient_tries >= self._opt.max_transient_tries:
                    # the provider answers others but not this shot: leave it pending
                    job.give_up = True
                    self._release(job)
                    return
                if not job.holds_slot:
                    return  # the lifecycle loop re-acquires a slot
                if job.retry_delay_s > 0:
                    await asyncio.sleep(job.retry_delay_s)
                    job.retry_delay_s = 0.0
                continue
            except BaseException:
                job.in_generate = False
                self._reserved_uptc -= price
                raise
            self._reserved_uptc -= price
            crashpoints.reached(CrashPoint.AFTER_SUBMIT_SENT)
            await self._accepted(job, attempt_id, task_id)
            crashpoints.reached(CrashPoint.AFTER_TASK_COMMITTED)
            return

    async def _accepted(self, job: _Job, attempt_id: int, task_id: str) -> None:
        row = job.row
        self._limiter.on_accepted()
        self._provider_ok()
        self._ambiguous_streak = 0
        self._spent_uptc += row.price_uptc or 0
        delay = self._planner.first_delay_s()
        now = time.time()
        await self._ledger.attempt_accepted(
            row.shot_id, attempt_id, task_id, row.price_uptc, next_poll_at=now + delay
        )
        self._move(row, ShotState.SUBMITTED)
        row.task_id = task_id
        row.submitted_at = now
        row.next_poll_at = now + delay
        row.poll_count = 0
        row.error_kind = None
        job.accepted_mono = time.monotonic()
        self._emit(RunEventKind.SUBMITTED, f"accepted as task {task_id}", row)

    async def _submit_failed(self, job: _Job, attempt_id: int, exc: ProviderError) -> bool:
        """Record a generate call that produced no task. True: try the call again."""
        row = job.row
        now = time.time()
        msg = exc.message

        async def finish(
            outcome: AttemptOutcome,
            state: ShotState,
            kind: ErrorKind,
            *,
            not_before: float | None = None,
            event: tuple[EventKind, str] | None = None,
        ) -> None:
            await self._ledger.attempt_finished(
                row.shot_id,
                attempt_id,
                outcome,
                message=msg,
                http_status=exc.status,
                shot_fields={
                    "state": state,
                    "error_kind": kind.value,
                    "last_error": msg,
                    "not_before": not_before,
                },
                event=event,
            )
            self._move(row, state)
            row.error_kind = kind.value

        if isinstance(exc, ContractMismatch):
            if exc.shot_charged:  # the request may have created a task: park it
                await finish(
                    AttemptOutcome.AMBIGUOUS,
                    ShotState.AMBIGUOUS,
                    ErrorKind.AMBIGUOUS,
                    event=(EventKind.SHOT_AMBIGUOUS, msg),
                )
            else:  # nothing was made; the next run repeats this attempt
                await finish(
                    AttemptOutcome.MISMATCH,
                    ShotState.PENDING,
                    ErrorKind.TRANSIENT,
                    event=(EventKind.CONTRACT_MISMATCH, msg),
                )
            self._release(job)
            self.request_stop(StopReason.CONTRACT, _with_hint(exc))
            return False
        if isinstance(exc, AuthRefused):
            await finish(AttemptOutcome.AUTH, ShotState.PENDING, ErrorKind.AUTH)
            self._release(job)
            self.request_stop(StopReason.AUTH, f"the provider {msg}")
            return False
        if isinstance(exc, OutOfCredit):
            await finish(AttemptOutcome.NO_CREDIT, ShotState.PENDING, ErrorKind.NO_CREDIT)
            self._release(job)
            self._stop_submitting(
                StopReason.OUT_OF_CREDIT,
                f"the account is out of credit ({msg}); collecting what is in flight",
            )
            return False
        if isinstance(exc, RateLimited):
            if isinstance(exc, ConcurrencyLimited):
                self._limiter.on_concurrency_limited()
            wait_s = exc.retry_after_s if exc.retry_after_s is not None else backoff_s(2)
            self._gate.pause(wait_s)
            await finish(
                AttemptOutcome.RATE_LIMITED,
                ShotState.PENDING,
                ErrorKind.RATE_LIMITED,
                event=(EventKind.THROTTLED, msg),
            )
            self._emit(RunEventKind.THROTTLED, f"throttled: {msg}", row)
            # give the slot back so a lowered target takes effect at once
            self._release(job)
            return True
        if isinstance(exc, AmbiguousSubmit):
            await finish(
                AttemptOutcome.AMBIGUOUS,
                ShotState.AMBIGUOUS,
                ErrorKind.AMBIGUOUS,
                event=(EventKind.SHOT_AMBIGUOUS, msg),
            )
            self._release(job)
            self._emit(RunEventKind.AMBIGUOUS, f"parked: {msg}", row)
            self._ambiguous_streak += 1
            if self._ambiguous_streak >= self._opt.ambiguous_streak_limit:
                self._stop_submitting(
                    StopReason.AMBIGUOUS_STREAK,
                    f"{self._ambiguous_streak} submissions in a row got no answer after "
                    "being sent; stopped submitting so as not to pay for lost requests",
                )
            return False
        if isinstance(exc, InvalidRequest):
            await finish(
                AttemptOutcome.INVALID,
                ShotState.FAILED,
                ErrorKind.INVALID,
                event=(EventKind.SHOT_FAILED, f"invalid request: {msg}"),
            )
            self._release(job)
            self._emit(RunEventKind.FAILED, f"invalid request: {msg}", row)
            return False
        # TransientError and anything unforeseen from the provider: safe to retry
        delay = self._provider_failed(exc)
        job.retry_delay_s = delay
        await finish(
            AttemptOutcome.TRANSIENT,
            ShotState.PENDING,
            ErrorKind.TRANSIENT,
            not_before=now + delay,
        )
        return True

    # -- rendering -------------------------------------------------------------------

    async def _await_render(self, job: _Job) -> None:
        row = job.row
        assert row.task_id is not None
        now = time.time()
        delay = max(0.0, (row.next_poll_at or now) - now)
        last_pending_s = 0.0
        fetch_failures = 0
        while True:
            await asyncio.sleep(delay)
            try:
                state = await self._fetch(row.task_id)
            except TaskNotFound as exc:
                self._release(job)
                if job.accepted_mono is not None and self._tasks_found == 0:
                    # a task accepted seconds ago, and no fetch of this run has ever found
                    # one: the fetch route answers "no such task" for everything
                    self.request_stop(StopReason.CONTRACT, self._route_says_unknown(row, exc))
                    return
                await self._task_lost(job, exc)
                return
            if state is None:  # transient trouble: back off, never fail for it
                fetch_failures += 1
                delay = max(
                    self._opt.poll.min_interval_s,
                    backoff_s(
                        fetch_failures,
                        base_s=self._opt.backoff_base_s,
                        cap_s=self._opt.backoff_cap_s,
                    ),
                )
                continue
            fetch_failures = 0
            crashpoints.reached(CrashPoint.AFTER_POLL)
            elapsed_s = time.time() - (row.submitted_at or time.time())
            row.poll_count += 1
            if state.status in (TaskStatus.QUEUED, TaskStatus.RENDERING):
                if elapsed_s > self._opt.poll.timeout_s:
                    self._release(job)
                    await self._finish_render(
                        job,
                        ShotState.FAILED,
                        ErrorKind.TIMEOUT,
                        f"still rendering after {elapsed_s:.0f} s (poll.timeout_s)",
                    )
                    return
                last_pending_s = elapsed_s
                delay = self._planner.next_delay_s(elapsed_s)
                await self._ledger.update_shot(
                    row.shot_id,
                    {"poll_count": row.poll_count, "next_poll_at": time.time() + delay},
                )
                continue
            self._release(job)
            if job.accepted_mono is not None:
                # it finished between the last poll that saw it pending and this one
                seen_s = time.monotonic() - job.accepted_mono
                lower_s = min(last_pending_s, seen_s) if last_pending_s > 0 else seen_s
                self._planner.observe((seen_s + lower_s) / 2)
            await self._render_finished(job, state)
            return

    async def _fetch(self, task_id: str) -> TaskState | None:
        await self._gate.wait()
        try:
            state = await self._provider.fetch(task_id)
        except RateLimited as exc:
            self._gate.pause(exc.retry_after_s if exc.retry_after_s is not None else 1.0)
            return None
        except TaskNotFound:
            self._provider_ok()
            raise
        except (AuthRefused, ContractMismatch) as exc:
            # stops everything; this call's caller is cancelled with the rest
            reason = StopReason.AUTH if isinstance(exc, AuthRefused) else StopReason.CONTRACT
            if reason is StopReason.CONTRACT:
                self._ledger_event(EventKind.CONTRACT_MISMATCH, exc.message)
            self.request_stop(
                reason, f"the provider {exc}" if reason is StopReason.AUTH else _with_hint(exc)
            )
            return None
        except ProviderError as exc:
            self._provider_failed(exc)
            return None
        self._provider_ok()
        self._progressed()  # the provider answered about a task: not a stall
        self._tasks_found += 1
        return state

    def _route_says_unknown(self, row: ShotRow, exc: TaskNotFound) -> str:
        self._ledger_event(EventKind.CONTRACT_MISMATCH, exc.message, row.shot_id)
        return (
            f"the fetch route says task {row.task_id}, accepted moments ago, does not exist "
            f"({exc.message}), and no fetch of this run has found a task: the route is "
            "probably not the provider's fetch route. Nothing was marked failed and every "
            "task id is kept. What to do: run 'pixrun doctor', then set --provider-option "
            "fetch_path=... (or keep it with 'pixrun doctor --save'); a rerun collects "
            "every task at no new charge"
        )

    async def _task_lost(self, job: _Job, exc: TaskNotFound) -> None:
        """The provider says it does not know a task it accepted: park the shot. It was
        paid for; generating it again could pay twice, so only a person decides."""
        row = job.row
        message = (
            f"the provider says it does not know task {row.task_id} ({exc.message}); parked, "
            "never generated again automatically: check the task on the provider's side, "
            "then 'pixrun resolve' or 'pixrun retry --ambiguous'"
        )
        await self._ledger.update_shot(
            row.shot_id,
            {
                "state": ShotState.AMBIGUOUS,
                "error_kind": ErrorKind.TASK_LOST.value,
                "last_error": message,
                "next_poll_at": None,
            },
            event=(EventKind.SHOT_AMBIGUOUS, message),
        )
        self._move(row, ShotState.AMBIGUOUS)
        row.error_kind = ErrorKind.TASK_LOST.value
        self._emit(RunEventKind.AMBIGUOUS, f"parked: {message}", row)

    async def _render_finished(self, job: _Job, state: TaskState) -> None:
        row = job.row
        if row.task_id is not None and (state.refunded or state.points is not None):
            await self._ledger.record_task_cost(
                row.shot_id, row.task_id, refunded=state.refunded, points=state.points
            )
            if state.refunded:
                self._spent_uptc -= row.price_uptc or 0
        if state.status == TaskStatus.SUCCEEDED and state.video_url:
            now = time.time()
            # With a download slot free, go straight to downloading: one commit fewer.
            # (A crash before the file is done costs one free fetch for a fresh URL.)
            next_state = ShotState.RENDERED if self._downloads.locked() else ShotState.DOWNLOADING
            await self._ledger.update_shot(
                row.shot_id,
                {
                    "state": next_state,
                    "video_url": state.video_url,
                    "poster_url": state.poster_url,
                    "seed": state.seed,
                    "width": state.width,
                    "height": state.height,
                    "rendered_at": now,
                    "poll_count": row.poll_count,
                    "next_poll_at": None,
                },
            )
            self._move(row, next_state)
            row.video_url = state.video_url
            row.poster_url = state.poster_url
            row.seed = state.seed
            row.rendered_at = now
            crashpoints.reached(CrashPoint.AFTER_RENDERED)
            self._emit(RunEventKind.RENDERED, "rendered", row)
            return
        if state.status == TaskStatus.MODERATED:
            await self._finish_render(
                job,
                ShotState.MODERATED,
                ErrorKind.MODERATED,
                state.message or "refused by content moderation",
            )
            return
        if state.status == TaskStatus.DELETED:
            # rendered and paid for, then gone: rendering it again costs again, so a
            # person decides ('pixrun retry --shot')
            await self._finish_render(
                job,
                ShotState.FAILED,
                ErrorKind.DELETED,
                f"{state.message or 'the provider deleted the video'} before it was saved; "
                f"'pixrun retry --shot {row.shot_id}' renders it again (charged)",
            )
            return
        reason = state.message or "the provider reported the render as failed"
        if row.attempts < row.max_attempts and self._submit_stop is None:
            await self._finish_render(job, ShotState.PENDING, ErrorKind.RENDER_FAILED, reason)
            return
        await self._finish_render(
            job,
            ShotState.FAILED,
            ErrorKind.RENDER_FAILED,
            f"{reason} (attempt {row.attempts} of {row.max_attempts})",
        )

    async def _finish_render(
        self, job: _Job, state: ShotState, kind: ErrorKind, message: str
    ) -> None:
        row = job.row
        if state == ShotState.PENDING:
            event = (EventKind.RETRY, f"attempt {row.attempts} failed: {message}; retrying")
            run_kind = RunEventKind.RETRY
        else:
            event = (EventKind.SHOT_FAILED, message)
            run_kind = (
                RunEventKind.MODERATED if state == ShotState.MODERATED else RunEventKind.FAILED
            )
        await self._ledger.update_shot(
            row.shot_id,
            {
                "state": state,
                "error_kind": kind.value,
                "last_error": message,
                "poll_count": row.poll_count,
                "next_poll_at": None,
            },
            event=event,
        )
        self._move(row, state)
        row.error_kind = kind.value
        self._emit(run_kind, message, row)

    # -- downloading ----------------------------------------------------------------

    async def _collect(self, job: _Job) -> None:
        self._download_backlog += 1
        queued = True
        try:
            async with self._downloads:
                queued = False
                self._download_backlog -= 1
                if self._download_backlog <= 2 * self._opt.download_concurrency:
                    self._backlog_drained.set()
                await self._download(job)
        finally:
            if queued:  # cancelled while waiting for a download slot
                self._download_backlog -= 1

    async def _download(self, job: _Job) -> None:
        row = job.row
        try:
            target = resolve_output(self._opt.output_dir, row.output_path)
        except OutputConflict as exc:
            await self._finish_render(job, ShotState.FAILED, ErrorKind.OUTPUT_CONFLICT, str(exc))
            return
        if row.state != ShotState.DOWNLOADING:
            await self._ledger.update_shot(row.shot_id, {"state": ShotState.DOWNLOADING})
            self._move(row, ShotState.DOWNLOADING)
        # the sidecar is written in the download's own worker-thread trip, and shares
        # the folder fsync that makes the video's name durable
        sidecar = _Sidecar(target, self._sidecar_fields(row)) if self._opt.sidecar else None
        fetched = await self._fetch_file(job, target, sidecar)
        if fetched is None:
            return
        result, staged = fetched
        if staged is not None and not await self._place_over_existing(
            job, target, staged, result, sidecar
        ):
            return
        crashpoints.reached(CrashPoint.MID_DOWNLOAD)
        now = time.time()
        if sidecar is not None:
            # the sidecar records the done time; the ledger records the same one
            assert sidecar.done_at is not None  # written in the trip that placed the video
            now = sidecar.done_at
        await self._ledger.update_shot(
            row.shot_id,
            {
                "state": ShotState.DONE,
                "bytes": result.bytes,
                "sha256": result.sha256,
                "done_at": now,
                "error_kind": None,
                "last_error": None,
            },
        )
        self._move(row, ShotState.DONE)
        self._done_times.append(time.monotonic())
        crashpoints.reached(CrashPoint.AFTER_DONE)
        self._emit(RunEventKind.DONE, f"saved {row.output_path}", row)

    async def _fetch_file(
        self, job: _Job, target: Path, sidecar: _Sidecar | None
    ) -> tuple[DownloadResult, Path | None] | None:
        """Download with retries; ``(result, staging path or None)``, or None if given up.

        Download hosts are not the API: their failures never count towards the
        provider's outage, and every failure counts, whatever the API's health. A host
        that keeps failing (refused, reset, 5xx, cut short) gets a fresh URL through a
        free fetch every ``download_refresh_after`` failures; past
        ``download_give_up_s`` (or ``max_download_failures``) the shot is given up for
        this run, still collectable, never generated again.
        """
        row = job.row
        failures = 0
        first_failure: float | None = None
        refreshes = 0
        # Straight to the final name: the adapter publishes without ever replacing a
        # file. Only when something already sits there do we stage and compare.
        staged: Path | None = None
        while True:
            dest = target if staged is None else staged
            try:
                if not row.video_url:
                    raise UrlExpired("no download URL known")
                if staged is not None:  # a staging file left by a crash is never trusted
                    await asyncio.to_thread(staged.unlink, missing_ok=True)
                result = await self._provider.download(
                    row.video_url,
                    dest,
                    then=sidecar if staged is None else None,
                    on_bytes=self._on_bytes,
                )
                return result, staged
            except UrlExpired as exc:
                # each refresh is progress (a fresh URL); only a task that keeps handing
                # out URLs that expire before they can be used is given up on
                refreshes += 1
                if refreshes > self._opt.max_download_failures or not await self._refresh_url(
                    job, str(exc)
                ):
                    if _lost(row):
                        return None  # the provider no longer knows the task: parked
                    await self._download_failed(
                        job, "the download URL expired and no fresh one could be had"
                    )
                    return None
            except (DiskFull, UsageError) as exc:  # the file system refuses (full, permissions)
                await self._write_failed(job, exc)
                return None
            except OutputConflict as exc:
                if staged is None:
                    staged = staging_path(target)
                    continue
                await self._download_failed(job, str(exc))
                return None
            except (DownloadError, TransientError, OSError) as exc:
                failures += 1
                now = time.monotonic()
                first_failure = first_failure or now
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                if (
                    now - first_failure >= self._opt.download_give_up_s
                    or failures >= self._opt.max_download_failures
                ):
                    await self._download_failed(
                        job,
                        f"the download failed {failures} times over "
                        f"{now - first_failure:.0f} s (last: {reason})",
                    )
                    return None
                # the host may be gone for good (a dead CDN node, a simulator that
                # restarted elsewhere): every few failures, ask where the video is now
                refresh = failures % self._opt.download_refresh_after == 0
                if refresh and not await self._refresh_url(job, reason) and _lost(row):
                    return None
                await asyncio.sleep(
                    backoff_s(failures, base_s=self._opt.backoff_base_s, cap_s=10.0)
                )

    def _on_bytes(self, size_bytes: int) -> None:
        self._last_progress = time.monotonic()

    async def _place_over_existing(
        self,
        job: _Job,
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
            owner = await self._ledger.output_owner(row.output_path)
            if owner is None or owner[0] != row.shot_id or owner[1] != current:
                staged.unlink(missing_ok=True)
                await self._finish_render(
                    job,
                    ShotState.FAILED,
                    ErrorKind.OUTPUT_CONFLICT,
                    f"a different file already exists at {target}; move it away or change "
                    "output.filename, then 'pixrun retry --shot " + row.shot_id + "'",
                )
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
            await self._ledger.version_moved_aside(row.shot_id, aside_version, relpath)
        if failure is not None:
            await self._write_failed(job, failure)
            return False
        return True

    async def _refresh_url(self, job: _Job, why: str) -> bool:
        """Fetch the task again (free) for a fresh download URL; False when none came
        (a task the provider no longer knows is parked on the way)."""
        row = job.row
        assert row.task_id is not None
        # fetching is free: ride out throttling and passing errors like a poll does
        for attempt in range(1, 21):
            try:
                state = await self._fetch(row.task_id)
            except TaskNotFound as exc:
                await self._task_lost(job, exc)
                return False
            if state is not None:
                break
            if self._hard_stopped():
                return False
            await asyncio.sleep(backoff_s(attempt, base_s=self._opt.backoff_base_s, cap_s=10.0))
        else:
            return False
        if state.status != TaskStatus.SUCCEEDED or not state.video_url:
            return False
        row.video_url = state.video_url
        message = f"download failed ({why}): fetched a fresh URL"
        await self._ledger.update_shot(
            row.shot_id,
            {"video_url": state.video_url},
            event=(EventKind.URL_REFRESHED, message),
        )
        self._emit(RunEventKind.URL_REFRESHED, message, row)
        return True

    async def _download_failed(
        self, job: _Job, message: str, *, kind: ErrorKind = ErrorKind.DOWNLOAD
    ) -> None:
        """The render is paid for: keep the shot collectable (rendered, task id kept) for
        the next run, which fetches the task again for a fresh URL before it downloads."""
        row = job.row
        await self._ledger.update_shot(
            row.shot_id,
            {
                "state": ShotState.RENDERED,
                "error_kind": kind.value,
                "last_error": message,
                "video_url": None,
            },
            event=(EventKind.DOWNLOAD_FAILED, message),
        )
        row.video_url = None
        self._move(row, ShotState.RENDERED)
        self._emit(
            RunEventKind.FAILED,
            f"not downloaded (a rerun or 'pixrun retry' downloads it again, at no charge): "
            f"{message}",
            row,
        )

    async def _write_failed(self, job: _Job, exc: DiskFull | UsageError) -> None:
        """An output could not be written: the shot stays collectable; a full disk
        stops the run (every further file would fail the same way)."""
        if isinstance(exc, DiskFull):
            await self._download_failed(job, str(exc), kind=ErrorKind.DISK_FULL)
            self.request_stop(StopReason.DISK_FULL, f"{exc}: free space, then rerun")
        else:
            await self._download_failed(job, str(exc))

    @staticmethod
    def _sidecar_fields(row: ShotRow) -> dict[str, Any]:
        """The sidecar, but for what only the finished download knows."""
        request = dict(row.request)
        for key in ("image", "last_image"):
            if isinstance(request.get(key), str) and request[key].startswith("file://"):
                request[key] = request[key][len("file://") :]
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
            "price_ptc": None if row.price_uptc is None else row.price_uptc / 1e6,
            "attempts": row.attempts,
            "submitted_at": row.submitted_at,
            "rendered_at": row.rendered_at,
        }

    # -- verification of earlier runs' files ----------------------------------------

    async def _verify_done(self) -> None:
        """Done shots whose file vanished or changed size are downloaded again."""
        outputs = await self._ledger.done_outputs()
        base = self._opt.output_dir

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
            row = await self._ledger.get_shot(shot_id)
            if row is None or row.state != ShotState.DONE:
                continue
            await self._ledger.update_shot(
                shot_id,
                {
                    "state": ShotState.RENDERED,
                    "error_kind": ErrorKind.DOWNLOAD.value,
                    "last_error": "the output file was missing or changed: downloading again",
                },
            )
            self._move(row, ShotState.RENDERED)
            self._spawn(_Job(row))

    # -- reporting -----------------------------------------------------------------

    def _emit(self, kind: RunEventKind, message: str, row: ShotRow | None = None) -> None:
        event = RunEvent(
            kind=kind,
            message=message,
            shot_id=None if row is None else row.shot_id,
            state=None if row is None else row.state,
            task_id=None if row is None else row.task_id,
            attempt=None if row is None else row.attempts,
            elapsed_s=time.monotonic() - self._t0,
        )
        if kind not in (RunEventKind.SUBMITTED, RunEventKind.RENDERED, RunEventKind.DONE):
            self._recent.append(event)
        self._observer.event(event)

    def _snapshot(self) -> RunSnapshot:
        elapsed = time.monotonic() - self._t0
        now = time.monotonic()
        recent_done = [t for t in self._done_times if now - t <= 30.0]
        rate = len(recent_done) / min(30.0, max(elapsed, 1e-9)) if recent_done else 0.0
        remaining = sum(
            n for s, n in self._counts.items() if not s.is_final and s != ShotState.AMBIGUOUS
        )
        calls = getattr(self._provider, "calls", {})
        return RunSnapshot(
            total=self._total,
            counts=dict(self._counts),
            in_flight=self._limiter.in_flight,
            target_concurrency=self._limiter.target_slots,
            downloading=self._counts.get(ShotState.DOWNLOADING, 0),
            spent_uptc=self._spent_uptc,
            planned_uptc=self._planned_uptc,
            elapsed_s=elapsed,
            done_per_s=rate,
            eta_s=(remaining / rate) if rate > 0 else None,
            fetch_calls=int(calls.get("fetch", 0)),
            generate_calls=int(calls.get("generate", 0)),
            recent=tuple(self._recent),
        )

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._opt.snapshot_interval_s)
            self._observer.snapshot(self._snapshot())
            self._watchdog()

    def _watchdog(self) -> None:
        """Stop rather than hang: a provider never reached, an outage past its limit, or
        a run in which nothing has moved for ``stall_timeout_s``. Everything stays
        resumable: these are stops, not failures."""
        if self._hard_stopped() or not self._jobs:
            return
        now = time.monotonic()
        opt = self._opt
        base_url = self._provider.config.base_url
        if (
            self._provider.answers == 0
            and self._gate.failures > 0
            and now - self._t0 > opt.unreachable_grace_s
        ):
            self.request_stop(
                StopReason.UNREACHABLE,
                f"the provider at {base_url} has not answered once in {now - self._t0:.0f} s "
                f"(last error: {self._last_provider_error}); is the address right? Check "
                "PIXRUN_BASE_URL or --base-url (pixrun doctor tests it)",
            )
            return
        if self._outage_since is not None:
            # waiting out an outage is not a stall; it has its own limit
            if now - self._outage_since > opt.outage_timeout_s:
                message = (
                    f"the provider at {base_url} has not answered for "
                    f"{now - self._outage_since:.0f} s (run.outage_timeout_s); stopped, "
                    "a rerun resumes"
                )
                self._ledger_event(EventKind.STALLED, message)
                self.request_stop(StopReason.OUTAGE, message)
            return
        if now - self._last_progress > opt.stall_timeout_s:
            waiting = ", ".join(
                f"{n} {state.value}"
                for state, n in sorted(self._counts.items())
                if n and not state.is_final and state != ShotState.AMBIGUOUS
            )
            last = f"; last error: {self._last_provider_error}" if self._last_provider_error else ""
            message = (
                f"nothing progressed for {now - self._last_progress:.0f} s "
                f"(run.stall_timeout_s): stuck are {waiting or 'no shots'}{last}. Stopped; "
                "a rerun resumes"
            )
            self._ledger_event(EventKind.STALLED, message)
            self.request_stop(StopReason.STALLED, message)

    def _result(self) -> RunResult:
        counts = dict(self._counts)
        reason = self._submit_stop
        if reason is not None:
            code = _EXIT_FOR_STOP[reason]
        elif any(n for s, n in counts.items() if s != ShotState.DONE and n > 0):
            code = ExitCode.SHOTS_FAILED
        else:
            code = ExitCode.OK
        calls = dict(getattr(self._provider, "calls", {}))
        return RunResult(
            exit_code=code,
            stop_reason=reason,
            message=self._stop_message,
            counts=counts,
            spent_uptc=self._spent_uptc,
            elapsed_s=time.monotonic() - self._t0,
            calls=calls,
            ledger_commits=self._ledger.commit_count,
        )
