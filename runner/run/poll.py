"""Polling: asking the provider how a task is doing, and what its answer makes of the
shot.

Invariants:
- Fetching is free and authoritative; a transient failure of it never fails a shot.
- A shot is generated again only when the provider positively says its render failed,
  with attempts left. A recognised "no such task" for a task accepted in an earlier run
  parks the shot (never paid for twice); for one accepted in this run, when no fetch
  has found any task yet, it means the fetch route is wrong: the run stops (exit 5).
- A deleted video, moderation and a render past ``poll.timeout_s`` end the shot; only
  a person re-renders it (it costs again).
- A callback only brings the next fetch forward; what the fetch says is what counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from runner.errors import AuthRefused, ContractMismatch, ProviderError, RateLimited, TaskNotFound
from runner.ledger import EventKind
from runner.model import ErrorKind, ShotState
from runner.provider import TaskState, TaskStatus
from runner.run import crashpoints
from runner.run.callbacks import CallbackHub
from runner.run.context import Job, RunContext
from runner.run.crashpoints import CrashPoint
from runner.run.events import RunEventKind
from runner.run.flow import backoff_s
from runner.run.health import Health
from runner.run.options import StopReason
from runner.run.submit import with_hint
from runner.run.transitions import Note, Transitions

_PENDING = (TaskStatus.QUEUED, TaskStatus.RENDERING)


class Poller:
    """Polls one shot's task until it ends, and commits what the end makes of it."""

    def __init__(
        self,
        ctx: RunContext,
        transitions: Transitions,
        health: Health,
        callbacks: CallbackHub | None = None,
    ) -> None:
        self._ctx = ctx
        self._tr = transitions
        self._health = health
        self._callbacks = callbacks

    async def await_render(self, job: Job, *, downloads_busy: bool) -> None:
        hub = self._callbacks
        if hub is None:
            await self._await_render(job, downloads_busy=downloads_busy)
            return
        hub.watch(job)
        try:
            await self._await_render(job, downloads_busy=downloads_busy)
        finally:
            hub.ended(job)

    async def _pause(self, job: Job, delay_s: float) -> bool:
        """Wait ``delay_s``, or less when a callback says the task may have ended.
        True: woken by a callback."""
        wake = job.wake
        if wake is None:
            await asyncio.sleep(delay_s)
            return False
        if not wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await wake.wait()
        hinted = wake.is_set()
        wake.clear()
        return hinted

    async def _await_render(self, job: Job, *, downloads_busy: bool) -> None:
        ctx, row = self._ctx, job.row
        assert row.task_id is not None
        now = time.time()
        delay = max(0.0, (row.next_poll_at or now) - now)
        last_pending_s = 0.0
        fetch_failures = 0
        while True:
            hinted = await self._pause(job, delay)
            try:
                state = await self.fetch(row.task_id)
            except TaskNotFound as exc:
                ctx.release(job)
                if job.accepted_mono is not None and self._health.tasks_found == 0:
                    # a task accepted seconds ago, and no fetch of this run has ever found
                    # one: the fetch route answers "no such task" for everything
                    ctx.request_stop(StopReason.CONTRACT, self._route_says_unknown(job, exc))
                    return
                await self.task_lost(job, exc)
                return
            if state is None:  # transient trouble: back off, never fail for it
                fetch_failures += 1
                pause_s = backoff_s(
                    fetch_failures, base_s=ctx.opt.backoff_base_s, cap_s=ctx.opt.backoff_cap_s
                )
                delay = max(ctx.opt.poll.min_interval_s, pause_s)
                continue
            fetch_failures = 0
            crashpoints.reached(CrashPoint.AFTER_POLL)
            elapsed_s = time.time() - (row.submitted_at or time.time())
            row.poll_count += 1
            if state.status in _PENDING:
                if elapsed_s > ctx.opt.poll.timeout_s:
                    ctx.release(job)
                    message = f"still rendering after {elapsed_s:.0f} s (poll.timeout_s)"
                    await self.finish(job, ShotState.FAILED, ErrorKind.TIMEOUT, message)
                    return
                last_pending_s = elapsed_s
                delay = ctx.next_poll_delay_s(elapsed_s)
                await self._tr.commit(
                    row, poll_count=row.poll_count, next_poll_at=time.time() + delay
                )
                continue
            ctx.release(job)
            if job.accepted_mono is not None:
                seen_s = time.monotonic() - job.accepted_mono
                if hinted:  # the callback came as it finished
                    ctx.planner.observe(seen_s)
                else:  # it finished between the last poll that saw it pending and this one
                    lower_s = min(last_pending_s, seen_s) if last_pending_s > 0 else seen_s
                    ctx.planner.observe((seen_s + lower_s) / 2)
            if ctx.policy is not None and ctx.policy.on_finished(hinted=hinted):
                self._callbacks_silent()
            await self.render_finished(job, state, downloads_busy=downloads_busy)
            return

    def _callbacks_silent(self) -> None:
        ctx = self._ctx
        assert ctx.policy is not None
        if ctx.policy.ever_called_back:
            message = (
                f"callbacks stopped arriving (none for {ctx.policy.silence_s():.0f} s while "
                "renders finished): polling every task in full again"
            )
        else:
            message = (
                "no callback has arrived although renders finished: is the callback URL "
                "reachable from the provider ('pixrun doctor --callback-url ...')? Polling "
                "collects every task meanwhile"
            )
        ctx.emit(RunEventKind.INFO, message)
        ctx.ledger_event(EventKind.CALLBACKS_SILENT, message)

    async def fetch(self, task_id: str) -> TaskState | None:
        """The task's state; None after a passing failure (the caller waits and asks
        again); raises TaskNotFound. A refused key or an unrecognised answer stops
        everything (this call's caller is cancelled with the rest)."""
        ctx = self._ctx
        await ctx.gate.wait()
        try:
            state = await ctx.provider.fetch(task_id)
        except RateLimited as exc:
            self._health.throttled(exc)
            ctx.gate.pause(exc.retry_after_s if exc.retry_after_s is not None else 1.0)
            return None
        except TaskNotFound:
            self._health.ok()
            raise
        except AuthRefused as exc:
            ctx.request_stop(StopReason.AUTH, f"the provider {exc.message}")
            return None
        except ContractMismatch as exc:
            ctx.ledger_event(EventKind.CONTRACT_MISMATCH, exc.message)
            ctx.request_stop(StopReason.CONTRACT, with_hint(exc))
            return None
        except ProviderError as exc:
            self._health.failed(exc)
            return None
        self._health.ok()
        self._health.found_a_task()
        return state

    def _route_says_unknown(self, job: Job, exc: TaskNotFound) -> str:
        row = job.row
        self._ctx.ledger_event(EventKind.CONTRACT_MISMATCH, exc.message, row.shot_id)
        return (
            f"the fetch route says task {row.task_id}, accepted moments ago, does not exist "
            f"({exc.message}), and no fetch of this run has found a task: the route is "
            "probably not the provider's fetch route. Nothing was marked failed and every "
            "task id is kept. What to do: run 'pixrun doctor', then set --provider-option "
            "fetch_path=... (or keep it with 'pixrun doctor --save'); a rerun collects "
            "every task at no new charge"
        )

    async def task_lost(self, job: Job, exc: TaskNotFound) -> None:
        """The provider says it does not know a task it accepted: park the shot. It was
        paid for; generating it again could pay twice, so only a person decides."""
        row = job.row
        message = (
            f"the provider says it does not know task {row.task_id} ({exc.message}); parked, "
            "never generated again automatically: check the task on the provider's side, "
            "then 'pixrun resolve' or 'pixrun retry --ambiguous'"
        )
        await self._tr.commit(
            row,
            ShotState.AMBIGUOUS,
            Note(RunEventKind.AMBIGUOUS, message, EventKind.SHOT_AMBIGUOUS, f"parked: {message}"),
            error_kind=ErrorKind.TASK_LOST,
            last_error=message,
            next_poll_at=None,
        )

    async def render_finished(self, job: Job, state: TaskState, *, downloads_busy: bool) -> None:
        ctx, row = self._ctx, job.row
        if row.task_id is not None and (state.refunded or state.points is not None):
            await ctx.ledger.record_task_cost(
                row.shot_id, row.task_id, refunded=state.refunded, points=state.points
            )
            if state.refunded:
                ctx.tally.refund(row.price_uptc or 0)
        if state.status == TaskStatus.SUCCEEDED and state.video_url:
            # With a download slot free, go straight to downloading: one commit fewer.
            # (A crash before the file is done costs one free fetch for a fresh URL.)
            await self._tr.commit(
                row,
                ShotState.RENDERED if downloads_busy else ShotState.DOWNLOADING,
                Note(RunEventKind.RENDERED, "rendered"),
                video_url=state.video_url,
                poster_url=state.poster_url,
                seed=state.seed,
                width=state.width,
                height=state.height,
                rendered_at=time.time(),
                poll_count=row.poll_count,
                next_poll_at=None,
            )
            crashpoints.reached(CrashPoint.AFTER_RENDERED)
            return
        if state.status == TaskStatus.MODERATED:
            message = state.message or "refused by content moderation"
            await self.finish(job, ShotState.MODERATED, ErrorKind.MODERATED, message)
            return
        if state.status == TaskStatus.DELETED:
            # rendered and paid for, then gone: rendering it again costs again, so a
            # person decides ('pixrun retry --shot')
            message = (
                f"{state.message or 'the provider deleted the video'} before it was saved; "
                f"'pixrun retry --shot {row.shot_id}' renders it again (charged)"
            )
            await self.finish(job, ShotState.FAILED, ErrorKind.DELETED, message)
            return
        reason = state.message or "the provider reported the render as failed"
        if row.attempts < row.max_attempts and ctx.stop is None:
            await self.finish(job, ShotState.PENDING, ErrorKind.RENDER_FAILED, reason)
            return
        message = f"{reason} (attempt {row.attempts} of {row.max_attempts})"
        await self.finish(job, ShotState.FAILED, ErrorKind.RENDER_FAILED, message)

    async def finish(self, job: Job, state: ShotState, kind: ErrorKind, message: str) -> None:
        """A render ended without a video to collect: retried, failed or moderated."""
        row = job.row
        if state == ShotState.PENDING:
            retry = f"attempt {row.attempts} failed: {message}; retrying"
            note = Note(RunEventKind.RETRY, retry, EventKind.RETRY)
        else:
            run_kind = (
                RunEventKind.MODERATED if state == ShotState.MODERATED else RunEventKind.FAILED
            )
            note = Note(run_kind, message, EventKind.SHOT_FAILED)
        await self._tr.commit(
            row,
            state,
            note,
            error_kind=kind,
            last_error=message,
            poll_count=row.poll_count,
            next_poll_at=None,
        )
