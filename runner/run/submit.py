"""Submitting: one generate call per attempt, and what each answer makes of the shot.

Invariants:
- No generate request is sent before its intent is committed (the shot in
  ``submitting`` with its attempt row); money for the call is reserved from before the
  intent until the answer, and released however the call ends.
- What a provider error does to the shot is one row of :data:`OUTCOMES` (the attempt's
  outcome, the shot's state and reason, the events, whether to call again, whether to
  stop); only the flow controls' reactions (pause, lower the in-flight target, count a
  streak) are code.
- A repeat of an attempt (after a transient failure, a throttle, an ambiguous re-queue)
  sends the trace id that attempt was first sent with.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from runner import errors
from runner.ledger import AttemptOutcome, EventKind
from runner.model import ErrorKind, ShotState
from runner.money import uptc_text
from runner.provider import trace_id_for
from runner.run import crashpoints
from runner.run.callbacks import CallbackHub
from runner.run.context import Job, RunContext
from runner.run.crashpoints import CrashPoint
from runner.run.events import RunEventKind
from runner.run.flow import backoff_s
from runner.run.health import Health
from runner.run.options import StopReason
from runner.run.transitions import Note, Transitions
from runner.run.uploads import ImageUploads

#: after these, the next submit repeats the same render attempt (same trace id)
SAME_ATTEMPT_KINDS = frozenset(
    {
        ErrorKind.TRANSIENT.value,
        ErrorKind.RATE_LIMITED.value,
        ErrorKind.AUTH.value,
        ErrorKind.NO_CREDIT.value,
        ErrorKind.RETRY_SAME_ATTEMPT.value,
    }
)


@dataclass(frozen=True)
class Outcome:
    """What one provider error on a generate call makes of the shot."""

    attempt: AttemptOutcome
    state: ShotState
    kind: ErrorKind
    #: the ledger event, and the run event (with the text before the message)
    ledger_event: EventKind | None = None
    run_event: RunEventKind | None = None
    prefix: str = ""
    #: call again in this run (after a wait)
    retry: bool = False
    #: stop the whole run (hard) or only submitting (soft)
    stop: StopReason | None = None


_AMBIGUOUS = Outcome(
    AttemptOutcome.AMBIGUOUS,
    ShotState.AMBIGUOUS,
    ErrorKind.AMBIGUOUS,
    EventKind.SHOT_AMBIGUOUS,
    RunEventKind.AMBIGUOUS,
    "parked: ",
)
_MISMATCH_CHARGED = Outcome(
    AttemptOutcome.AMBIGUOUS,
    ShotState.AMBIGUOUS,
    ErrorKind.AMBIGUOUS,
    EventKind.SHOT_AMBIGUOUS,
    stop=StopReason.CONTRACT,
)
#: most specific first; a errors.ContractMismatch that may have cost a task is _MISMATCH_CHARGED
OUTCOMES: tuple[tuple[type[errors.ProviderError], Outcome], ...] = (
    (
        errors.ContractMismatch,  # nothing was made; the next run repeats this attempt
        Outcome(
            AttemptOutcome.MISMATCH,
            ShotState.PENDING,
            ErrorKind.TRANSIENT,
            EventKind.CONTRACT_MISMATCH,
            stop=StopReason.CONTRACT,
        ),
    ),
    (
        errors.AuthRefused,
        Outcome(AttemptOutcome.AUTH, ShotState.PENDING, ErrorKind.AUTH, stop=StopReason.AUTH),
    ),
    (
        errors.OutOfCredit,
        Outcome(
            AttemptOutcome.NO_CREDIT,
            ShotState.PENDING,
            ErrorKind.NO_CREDIT,
            stop=StopReason.OUT_OF_CREDIT,
        ),
    ),
    (
        errors.RateLimited,
        Outcome(
            AttemptOutcome.RATE_LIMITED,
            ShotState.PENDING,
            ErrorKind.RATE_LIMITED,
            EventKind.THROTTLED,
            RunEventKind.THROTTLED,
            "throttled: ",
            retry=True,
        ),
    ),
    (errors.AmbiguousSubmit, _AMBIGUOUS),
    (
        errors.InvalidRequest,
        Outcome(
            AttemptOutcome.INVALID,
            ShotState.FAILED,
            ErrorKind.INVALID,
            EventKind.SHOT_FAILED,
            RunEventKind.FAILED,
            "invalid request: ",
        ),
    ),
    # errors.TransientError and anything unforeseen from the provider: safe to call again
    (
        errors.ProviderError,
        Outcome(AttemptOutcome.TRANSIENT, ShotState.PENDING, ErrorKind.TRANSIENT, retry=True),
    ),
)


def outcome_for(exc: errors.ProviderError) -> Outcome:
    if isinstance(exc, errors.ContractMismatch) and exc.shot_charged:
        return _MISMATCH_CHARGED
    return next(outcome for kind, outcome in OUTCOMES if isinstance(exc, kind))


def with_hint(exc: errors.ProviderError) -> str:
    return f"{exc.message} What to do: {exc.hint}" if exc.hint else exc.message


class Submitter:
    """Sends a shot's generate call (once per attempt, retried as its outcome says)."""

    def __init__(
        self,
        ctx: RunContext,
        transitions: Transitions,
        health: Health,
        uploads: ImageUploads,
        callbacks: CallbackHub | None = None,
    ) -> None:
        self._ctx = ctx
        self._callbacks = callbacks
        self._tr = transitions
        self._health = health
        self._uploads = uploads
        self._ambiguous_streak = 0
        #: generate answers in a row with an error code pixrun does not know
        self._unknown_streak = 0

    async def submit(self, job: Job) -> None:
        """Submit until accepted, given up for this run, or stopped."""
        try:
            await self._submit(job)
        finally:
            if self._callbacks is not None and job.row.state != ShotState.SUBMITTED:
                self._callbacks.ended(job)  # no task: its callback URL names nothing

    async def _submit(self, job: Job) -> None:
        ctx, row = self._ctx, job.row
        same = row.attempts > 0 and row.error_kind in SAME_ATTEMPT_KINDS
        attempt_no = row.attempts if same else row.attempts + 1
        trace_id = await self._trace_id(job, attempt_no, same)
        transient_tries = 0
        wait_s = (row.not_before or 0) - time.time()
        if wait_s > 0:
            await asyncio.sleep(min(wait_s, 60.0))
        while True:
            if ctx.stopped():
                ctx.release(job)
                return
            await ctx.gate.wait()
            if ctx.stopped():
                ctx.release(job)
                return
            if not ctx.tally.budget_allows(row.price_uptc or 0, ctx.opt.budget_uptc):
                ctx.release(job)
                cap = uptc_text(ctx.opt.budget_uptc or 0)
                ctx.stop_submitting(
                    StopReason.BUDGET,
                    f"the budget cap of {cap} PTC would be passed: no more submissions",
                )
                return
            shared = ctx.shared
            if shared is not None and not shared.budget_allows(row.price_uptc or 0):
                ctx.release(job)
                cap = uptc_text(shared.budget_uptc or 0)
                ctx.stop_submitting(
                    StopReason.BUDGET,
                    f"the overall cap of {cap} PTC (--max-cost, all manifests together) "
                    "would be passed: no more submissions",
                )
                return
            sent = await self._call(job, attempt_no, trace_id, new=not same)
            if sent is None:
                return  # not sent: the run was stopping
            attempt_id, answer = sent
            if isinstance(answer, str):
                crashpoints.reached(CrashPoint.AFTER_SUBMIT_SENT)
                await self._accepted(job, attempt_id, answer)
                crashpoints.reached(CrashPoint.AFTER_TASK_COMMITTED)
                return
            exc = answer
            if not await self._failed(job, attempt_id, exc):
                return
            # an outage (every call failing) is waited out; only a shot that fails
            # while the provider otherwise answers uses up its tries
            counts = isinstance(exc, errors.UnknownProviderError) or (
                isinstance(exc, errors.TransientError) and not ctx.gate.provider_down
            )
            transient_tries += 1 if counts else 0
            if transient_tries >= ctx.opt.max_transient_tries:
                job.give_up = True  # the provider answers others but not this shot
                ctx.release(job)
                return
            if not job.holds_slot:
                return  # the lifecycle loop re-acquires a slot
            if job.retry_delay_s > 0:
                await asyncio.sleep(job.retry_delay_s)
                job.retry_delay_s = 0.0

    async def _trace_id(self, job: Job, attempt_no: int, same: bool) -> str:
        row, ledger = job.row, self._ctx.ledger
        if same:  # a repeat of an attempt already sent: the id it went out with
            sent = await ledger.sent_trace_id(row.shot_id, row.version, attempt_no)
            if sent is not None:
                return sent
        key = f"{row.shot_id}@v{row.version}"
        return trace_id_for(key, attempt_no, secret=ledger.trace_secret)

    async def _call(
        self, job: Job, attempt_no: int, trace_id: str, *, new: bool
    ) -> tuple[int, str | errors.ProviderError] | None:
        """One generate call: ``(attempt id, task id or error)``, or None (not sent)."""
        ctx, row = self._ctx, job.row
        # from the intent to the answer, a stop waits (briefly) for this shot: cut here,
        # it would become ambiguous
        job.in_generate = True
        attempt_id = 0
        try:
            with ctx.tally.reserve(row.price_uptc or 0):
                attempt_id = await self._tr.intent(row, attempt_no, trace_id, new=new)
                crashpoints.reached(CrashPoint.AFTER_INTENT)
                if ctx.hard_stopped():
                    job.in_generate = False
                    await self._not_sent(job, attempt_id)
                    return None
                body = await self._uploads.prepare(row.request)
                if self._callbacks is not None:
                    # added at send time, like uploaded image URLs: the stored request
                    # (and its hash) stays without it
                    body = {**body, "callback": self._callbacks.url_for(job, attempt_no)}
                return attempt_id, await ctx.provider.generate(body, trace_id=trace_id)
        except errors.ProviderError as exc:
            return attempt_id, exc
        finally:
            job.in_generate = False

    async def _not_sent(self, job: Job, attempt_id: int) -> None:
        """Stopping between the intent and the request: say nothing was sent, so no
        rerun parks this shot."""
        row = job.row
        kind = ErrorKind(row.error_kind) if row.error_kind else None
        await self._tr.attempt_ended(
            row,
            attempt_id,
            AttemptOutcome.TRANSIENT,
            ShotState.PENDING,
            kind,
            message="not sent: the run was stopping",
            not_before=row.not_before,
            record_error=False,
        )
        self._ctx.release(job)

    async def _accepted(self, job: Job, attempt_id: int, task_id: str) -> None:
        ctx, row = self._ctx, job.row
        ctx.limiter.on_accepted()
        self._health.ok()
        self._ambiguous_streak = self._unknown_streak = 0
        ctx.tally.charge(row.price_uptc or 0)
        await self._tr.accepted(row, attempt_id, task_id, time.time() + ctx.first_poll_delay_s())
        job.accepted_mono = time.monotonic()

    async def _failed(self, job: Job, attempt_id: int, exc: errors.ProviderError) -> bool:
        """Record a generate call that made no task. True: call again."""
        ctx, row = self._ctx, job.row
        outcome = outcome_for(exc)
        msg = exc.message
        not_before = self._react(job, exc, outcome)
        note = None
        if outcome.ledger_event is not None or outcome.run_event is not None:
            # a failure's ledger event names what failed; the others carry the message
            text = f"{outcome.prefix}{msg}" if outcome.state is ShotState.FAILED else msg
            note = Note(outcome.run_event, text, outcome.ledger_event, f"{outcome.prefix}{msg}")
        await self._tr.attempt_ended(
            row,
            attempt_id,
            outcome.attempt,
            outcome.state,
            outcome.kind,
            message=msg,
            http_status=exc.status,
            not_before=not_before,
            note=note,
        )
        if not outcome.retry or isinstance(exc, errors.RateLimited):
            ctx.release(job)  # a throttle gives the slot back: a lowered target holds
        self._stop_for(outcome, exc)
        return outcome.retry

    def _react(self, job: Job, exc: errors.ProviderError, outcome: Outcome) -> float | None:
        """The flow controls' reaction to an error; the shot's earliest next submit."""
        ctx = self._ctx
        if isinstance(exc, errors.RateLimited):
            self._health.throttled(exc)
            if isinstance(exc, errors.ConcurrencyLimited):
                ctx.limiter.on_concurrency_limited()
            ctx.gate.pause(exc.retry_after_s if exc.retry_after_s is not None else backoff_s(2))
            return None
        if outcome.attempt is AttemptOutcome.AMBIGUOUS and outcome.stop is None:
            self._ambiguous_streak += 1
            return None
        if isinstance(exc, errors.UnknownProviderError):
            # the provider answers, so it is no outage to wait out for hours: this shot
            # backs off on its own and uses up its tries; many in a row stop the run
            self._unknown_streak += 1
            if self._unknown_streak >= ctx.opt.max_transient_tries:
                ctx.request_stop(
                    StopReason.CONTRACT,
                    f"{self._unknown_streak} generate calls in a row were answered with an "
                    f"error pixrun does not know (the last: {exc.message}). Nothing was "
                    "charged or marked failed. What to do: check the provider's status and "
                    "the base URL (pixrun doctor), and report this answer; a rerun resumes",
                )
                return None
            job.retry_delay_s = backoff_s(
                2, base_s=ctx.opt.backoff_base_s, cap_s=ctx.opt.backoff_cap_s
            )
            return time.time() + job.retry_delay_s
        if outcome.retry:  # transient: back off (an outage holds every call)
            job.retry_delay_s = self._health.failed(exc)
            return time.time() + job.retry_delay_s
        return None

    def _stop_for(self, outcome: Outcome, exc: errors.ProviderError) -> None:
        ctx = self._ctx
        if outcome.stop is StopReason.CONTRACT:
            ctx.request_stop(StopReason.CONTRACT, with_hint(exc))
        elif outcome.stop is StopReason.AUTH:
            ctx.request_stop(StopReason.AUTH, f"the provider {exc.message}")
        elif outcome.stop is StopReason.OUT_OF_CREDIT:
            ctx.stop_submitting(
                StopReason.OUT_OF_CREDIT,
                f"the account is out of credit ({exc.message}); collecting what is in flight",
            )
        elif self._ambiguous_streak >= ctx.opt.ambiguous_streak_limit:
            ctx.stop_submitting(
                StopReason.AMBIGUOUS_STREAK,
                f"{self._ambiguous_streak} submissions in a row got no answer after being "
                "sent; stopped submitting so as not to pay for lost requests",
            )
