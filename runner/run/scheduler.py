"""The run's state machine: dispatch, each shot's lifecycle, stopping, the end figures.

The scheduler drives each shot through its lifecycle::

    pending -> submitting -> submitted -> rendered -> downloading -> done
                   |             |  \\-> failed | moderated       (final)
                   |             \\-> pending (render failed, attempts left)
                   \\-> ambiguous (parked) | failed (invalid) | pending (retryable)

The rooms around it: :mod:`runner.run.submit` (generate calls and what their errors
make of a shot), :mod:`runner.run.poll` (asking how a task is doing),
:mod:`runner.run.collect` (downloads), :mod:`runner.run.health` (outages and the
watchdog), all writing through the one :class:`~runner.run.transitions.Transitions`.
It knows neither SQL nor HTTP: every durable step goes through the ledger, every call
through the provider.

Invariants:
- No generate request is sent before its intent is durable, and a task id is committed
  before the task is polled (see runner.run.submit).
- At most ``concurrency`` tasks (submitting or rendering) are in flight, and fewer after
  the provider signals its concurrency cap (AIMD in InFlightLimiter); downloads go
  before new submissions.
- Errors that the provider's answer proves harmless (5xx, throttling, a refused key, an
  empty account, an unrecognised answer) never fail a shot; only invalid requests,
  moderation, render failures past ``max_attempts``, render time-outs and deleted
  videos do.
- On stop (signal, refused key, contract mismatch, disk full, watchdog) nothing is lost:
  what is recorded is consistent at every commit, and tasks at the provider are
  collected by the next run.
- A sample run (``SchedulerOptions.submit_only``) submits only its shots; the others
  stay pending. Too many failures among the latest renders stop submitting (run.brake).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from runner.errors import LedgerError
from runner.ledger import EventKind, Ledger, ShotRow
from runner.model import ShotState
from runner.provider import Provider
from runner.run.callbacks import CallbackHub
from runner.run.collect import Collector
from runner.run.context import Job, RunContext, SharedFlow
from runner.run.events import RunEventKind, RunObserver, RunSnapshot
from runner.run.flow import CallbackPolicy
from runner.run.health import Health
from runner.run.options import (
    ACCOUNT_STOPS,
    HARD_STOPS,
    RunResult,
    SchedulerOptions,
    StopReason,
    exit_code_for,
)
from runner.run.poll import Poller
from runner.run.submit import Submitter
from runner.run.transitions import Transitions
from runner.run.uploads import ImageUploads

_SOFT_STOP_EVENTS = {
    StopReason.OUT_OF_CREDIT: RunEventKind.OUT_OF_CREDIT,
    StopReason.BUDGET: RunEventKind.BUDGET_REACHED,
}


def _state(row: ShotRow) -> ShotState:
    """The row's state now (a call, so type narrowing does not outlive an await)."""
    return row.state


class Scheduler:
    def __init__(
        self,
        ledger: Ledger,
        provider: Provider,
        options: SchedulerOptions,
        observer: RunObserver,
        callbacks: CallbackHub | None = None,
        shared: SharedFlow | None = None,
        rank: tuple[int, int] = (0, 0),
    ) -> None:
        ctx = self._ctx = RunContext(ledger, provider, options, observer, shared, rank)
        self._callbacks = callbacks
        if callbacks is not None:
            ctx.policy = callbacks.policy = CallbackPolicy(
                ctx.planner, silence_min_s=4 * options.poll.max_interval_s
            )
            callbacks.record = lambda shot_id, text: ctx.ledger_event(
                EventKind.CALLBACK, text, shot_id
            )
        ctx.request_stop = self.request_stop
        ctx.stop_submitting = self._stop_submitting
        transitions = Transitions(ctx)
        self._health = Health(ctx)
        uploads = ImageUploads(
            ledger,
            provider,
            enabled=provider.config.image_encoding == "upload",
            price_uptc=options.upload_price_uptc,
            on_charge=ctx.tally.charge,
        )
        self._submitter = Submitter(ctx, transitions, self._health, uploads, callbacks)
        self._poller = Poller(ctx, transitions, self._health, callbacks)
        self._collector = Collector(ctx, transitions, self._poller)
        self._jobs: dict[asyncio.Task[None], Job] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._all_stopped = asyncio.Event()

    # -- stopping ------------------------------------------------------------------

    def request_stop(self, reason: StopReason, message: str) -> None:
        """A hard stop: stop submitting and collecting (generate calls under way get a
        short grace). Soft stops go through :meth:`_stop_submitting`."""
        assert reason in HARD_STOPS, reason
        ctx = self._ctx
        if ctx.stop in HARD_STOPS:
            return
        ctx.stop, ctx.stop_message = reason, message
        self._cancel_dispatch()
        ctx.emit(RunEventKind.STOPPING, message)
        asyncio.get_running_loop().create_task(self._cancel_jobs())
        if reason in ACCOUNT_STOPS and ctx.shared is not None:
            ctx.shared.stop_all(reason, message)

    def withdraw(self, message: str) -> None:
        """A soft stop from outside (its manifest left a watched folder): no more
        submissions; the tasks in flight are collected (they are paid for)."""
        self._stop_submitting(StopReason.WITHDRAWN, message)

    def _stop_submitting(self, reason: StopReason, message: str) -> None:
        ctx = self._ctx
        if ctx.stop is None:
            ctx.stop, ctx.stop_message = reason, message
            ctx.emit(_SOFT_STOP_EVENTS.get(reason, RunEventKind.STOPPING), message)
            self._cancel_dispatch()

    def _cancel_dispatch(self) -> None:
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()

    async def _cancel_jobs(self) -> None:
        """Cancel collecting at once; give generate calls under way a short grace."""
        for task, job in list(self._jobs.items()):
            if not job.in_generate:
                task.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ctx.opt.stop_grace_s
        while any(j.in_generate for j in self._jobs.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for task in list(self._jobs):
            task.cancel()

    # -- the run -------------------------------------------------------------------

    async def run(self, *, planned_uptc: int = 0) -> RunResult:
        ctx = self._ctx
        ledger = ctx.ledger
        ctx.start_tally(await ledger.counts_by_state(), await ledger.spent_uptc(), planned_uptc)
        ticker = asyncio.create_task(self._ticker(), name="snapshots")
        leave = ctx.shared.join_stops(self.request_stop) if ctx.shared is not None else None
        try:
            for row in await ledger.shots_in([ShotState.SUBMITTED, ShotState.RENDERED]):
                job = Job(row)
                if row.state == ShotState.SUBMITTED:
                    # already at the provider: counts against concurrency even if above it
                    ctx.limiter.adopt()
                    job.holds_slot = True
                self._spawn(job)
            verify = asyncio.create_task(self._collector.verify_done(self._spawn))
            self._dispatcher = asyncio.create_task(self._dispatch(), name="dispatch")
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._dispatcher
            finally:
                ctx.limiter.idle()  # a shared pool's slots move on to the next batch
            if ctx.hard_stopped():
                verify.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await verify
            await self._wait_jobs()  # includes re-downloads that verification queued
        except LedgerError as exc:
            ctx.stop, ctx.stop_message = StopReason.LEDGER, str(exc)
            await self._cancel_jobs()
        finally:
            if leave is not None:
                leave()
            ctx.limiter.idle()  # on every way out, or the batches after it would wait
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        with contextlib.suppress(LedgerError):
            await ledger.flush()  # the writes of jobs a stop cancelled
            ctx.tally.counts.clear()
            ctx.tally.counts.update(await ledger.counts_by_state())
        ctx.observer.snapshot(self._snapshot())
        return self._result()

    async def _dispatch(self) -> None:
        ctx = self._ctx
        cursor = -1
        buffer: deque[ShotRow] = deque()
        collector = self._collector
        while ctx.stop is None:
            if not buffer:
                rows = await ctx.ledger.next_pending(after_seq=cursor, limit=256)
                if not rows:
                    return
                buffer.extend(rows)
                cursor = rows[-1].seq
            row = buffer.popleft()
            if not ctx.may_submit(row.shot_id):
                continue  # outside the sample (--only/--limit): pending for a later run
            # downloads first: finished renders are money already spent
            while collector.backlog > 2 * ctx.opt.download_concurrency:
                collector.backlog_drained.clear()
                await collector.backlog_drained.wait()
            await ctx.limiter.acquire()
            # the budget is checked where money is committed: before each generate call
            self._spawn(Job(row, holds_slot=True))

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._lifecycle(job), name=f"shot:{job.row.shot_id}")
        self._jobs[task] = job
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        job = self._jobs.pop(task, None)
        if job is not None:
            self._ctx.release(job)
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

    async def _lifecycle(self, job: Job) -> None:
        ctx, row = self._ctx, job.row
        while True:
            if _state(row) == ShotState.PENDING:
                if not job.holds_slot:
                    if ctx.stop is not None or not ctx.may_submit(row.shot_id):
                        return
                    await ctx.limiter.acquire()
                    job.holds_slot = True
                await self._submitter.submit(job)
                state = _state(row)
                if state != ShotState.SUBMITTED:
                    if state == ShotState.PENDING and ctx.stop is None and not job.give_up:
                        continue  # throttled or transient: try again (slot re-acquired)
                    return
            if _state(row) == ShotState.SUBMITTED:
                await self._poller.await_render(job, downloads_busy=self._collector.busy)
                if _state(row) == ShotState.PENDING:
                    continue  # render failed with attempts left
            if _state(row) in (ShotState.RENDERED, ShotState.DOWNLOADING):
                await self._collector.collect(job)
            return

    # -- what the run tells --------------------------------------------------------

    def _snapshot(self) -> RunSnapshot:
        ctx = self._ctx
        calls = dict(ctx.provider.calls)
        return ctx.tally.snapshot(ctx.limiter.in_flight, ctx.limiter.target_slots, calls)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._ctx.opt.snapshot_interval_s)
            self._ctx.observer.snapshot(self._snapshot())
            self._health.watch(len(self._jobs))

    def _result(self) -> RunResult:
        ctx = self._ctx
        counts = dict(ctx.tally.counts)
        return RunResult(
            exit_code=exit_code_for(ctx.stop, counts),
            stop_reason=ctx.stop,
            message=ctx.stop_message,
            counts=counts,
            spent_uptc=ctx.tally.spent_uptc,
            elapsed_s=ctx.tally.elapsed_s(),
            calls=dict(ctx.provider.calls),
            ledger_commits=ctx.ledger.commit_count,
            callbacks={} if self._callbacks is None else dict(self._callbacks.counts),
            not_downloaded=ctx.tally.not_downloaded,
        )
