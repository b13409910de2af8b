"""Polling: asking the provider how a task is doing, and what its answer makes of the
shot.

Invariants:
- Fetching is free and authoritative; a transient failure of it never fails a shot.
  A fetch refused for good (the account cannot pay, the request is invalid) stops the
  run at once (exit 4, exit 5): it is no outage to wait out, and no shot's failure.
- A shot is generated again only when the provider positively says its render failed,
  with attempts left. A recognised "no such task" for a task accepted in an earlier run
  parks the shot (never paid for twice); for one accepted in this run, when no fetch
  has found any task yet, it means the fetch route is wrong: the run stops (exit 5).
  The ledger remembers that route (``route_unproven``): a rerun on the same route stops
  the same way until a fetch on it finds a task, instead of parking every task.
- A deleted video, moderation and a render past ``poll.timeout_s`` end the shot; only
  a person re-renders it (it costs again).
- A callback only brings the next fetch forward; what the fetch says is what counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from runner.errors import (
    AuthRefused,
    ContractMismatch,
    InvalidRequest,
    OutOfCredit,
    ProviderError,
    RateLimited,
    TaskNotFound,
    UnknownProviderError,
)
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
        #: fetch answers in a row with an error code pixrun does not know
        self._unknown_streak = 0
        #: whether the configured fetch route is one an earlier run caught saying "no
        #: such task" for a task it had just accepted (None: not read yet)
        self._unproven: bool | None = None

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
                if self._health.tasks_found == 0 and (
                    job.accepted_mono is not None or await self._route_unproven()
                ):
                    # a task accepted seconds ago (or a route an earlier run caught doing
                    # so, still configured), and no fetch of this run has found one: the
                    # fetch route answers "no such task" for everything
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
        again); raises TaskNotFound. A refused key, an account that cannot pay, a fetch
        refused as invalid or an unrecognised answer stops everything (this call's
        caller is cancelled with the rest): asking again would not help, and waiting
        it out as an outage would hang the run for hours."""
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
        except OutOfCredit as exc:
            # not an outage: asking again will not help until the account is topped up
            ctx.request_stop(
                StopReason.LOCKED_OUT,
                f"the provider refuses even to say how tasks are doing: {exc.message}. "
                "Nothing was marked failed and every task id is kept. What to do: "
                f"{exc.hint or 'top up the account, then rerun'}; the rerun collects "
                "every task at no new charge",
            )
            return None
        except InvalidRequest as exc:
            # a fetch carries nothing of the shot's but the task id the provider gave:
            # a refusal means pixrun's fetch request is not the one the provider expects
            ctx.ledger_event(EventKind.CONTRACT_MISMATCH, exc.message)
            ctx.request_stop(
                StopReason.CONTRACT,
                f"GET {ctx.provider.config.fetch_url(task_id)}: {exc.message}: a fetch of a "
                "task the provider accepted was refused as invalid, so the fetch route or "
                "its form is probably not the provider's. Nothing was marked failed and "
                "every task id is kept. What to do: run 'pixrun doctor', then set "
                "--provider-option fetch_path=... (or keep it with 'pixrun doctor --save'); "
                "a rerun collects every task at no new charge",
            )
            return None
        except UnknownProviderError as exc:
            # the provider answers, so it is no outage to wait out for hours; many in a
            # row (over every task) mean pixrun cannot read this fetch route: stop
            self._unknown_streak += 1
            if self._unknown_streak >= ctx.opt.max_transient_tries:
                ctx.ledger_event(EventKind.CONTRACT_MISMATCH, exc.message)
                ctx.request_stop(
                    StopReason.CONTRACT,
                    f"{self._unknown_streak} fetches in a row were answered with an error "
                    f"pixrun does not know (the last: {exc.message}). Nothing was marked "
                    "failed and every task id is kept. What to do: run 'pixrun doctor', "
                    "check fetch_path, and report this answer; a rerun collects every task "
                    "at no new charge",
                )
            return None
        except ProviderError as exc:
            self._health.failed(exc)
            return None
        self._unknown_streak = 0
        self._health.ok()
        self._health.found_a_task()
        if self._health.tasks_found == 1 and await self._route_unproven():
            self._unproven = False  # the route is proven: its "no such task" counts again
            ctx.ledger_event(EventKind.ROUTE_PROVEN, self._route())
        return state

    def _route(self) -> str:
        config = self._ctx.provider.config
        return f"{config.base_url} {config.fetch_path}"

    async def _route_unproven(self) -> bool:
        """An earlier run caught the configured fetch route saying "no such task" for a
        task it had just accepted, and no fetch has found a task on it since: a rerun
        without the fix must stop again, not park every task as lost."""
        if self._unproven is None:
            self._unproven = await self._ctx.ledger.unproven_fetch_route() == self._route()
        return self._unproven

    def _route_says_unknown(self, job: Job, exc: TaskNotFound) -> str:
        row = job.row
        self._ctx.ledger_event(EventKind.CONTRACT_MISMATCH, exc.message, row.shot_id)
        self._ctx.ledger_event(EventKind.ROUTE_UNPROVEN, self._route())
        when = "accepted moments ago" if job.accepted_mono is not None else "accepted earlier"
        return (
            f"the fetch route says task {row.task_id}, {when}, does not exist "
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
