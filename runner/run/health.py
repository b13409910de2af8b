"""The provider's health as a run sees it, and the watchdog that never lets a run hang.

Invariants:
- An outage is logged once when it starts and once when it ends (a run event and a
  ledger event each), never once per failed call.
- The watchdog stops rather than hangs: a provider never reached in
  ``unreachable_grace_s`` (exit 2), an outage past ``outage_timeout_s`` (exit 1), or
  nothing progressing for ``stall_timeout_s`` outside an outage (exit 1). These are
  stops, not failures: everything stays resumable.
"""

from __future__ import annotations

from runner.errors import ProviderError
from runner.ledger import EventKind
from runner.model import ShotState
from runner.run.context import RunContext
from runner.run.events import RunEventKind
from runner.run.options import StopReason


class Health:
    """Tracks the provider's answers and watches the run for stalls."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        #: when the provider went down (monotonic), for one line per outage and its limit
        self.outage_since: float | None = None
        self.last_error = ""
        #: fetches of this run that found a task (0: the fetch route is unproven)
        self.tasks_found = 0

    def failed(self, exc: ProviderError) -> float:
        """A transient failure of an API call; how long that call should wait."""
        ctx = self._ctx
        delay = ctx.gate.record_failure(ctx.opt.backoff_base_s, ctx.opt.backoff_cap_s)
        self.last_error = exc.message
        if ctx.gate.provider_down and self.outage_since is None:
            self.outage_since = ctx.tally.clock()
            message = f"the provider is not answering ({exc.message}); backing off"
            ctx.emit(RunEventKind.PROVIDER_DOWN, message)
            ctx.ledger_event(EventKind.PROVIDER_DOWN, message)
        return delay

    def throttled(self, exc: ProviderError) -> None:
        """A call the provider throttled: not an outage, but the watchdog's "last error"
        when nothing else moves (every call held back by Retry-After)."""
        self.last_error = f"throttled: {exc.message}"

    def ok(self) -> None:
        ctx = self._ctx
        ctx.gate.record_success()
        if self.outage_since is not None:
            down_s = ctx.tally.clock() - self.outage_since
            self.outage_since = None
            message = f"the provider answers again after {down_s:.0f} s"
            ctx.emit(RunEventKind.INFO, message)
            ctx.ledger_event(EventKind.PROVIDER_BACK, message)

    def found_a_task(self) -> None:
        self.tasks_found += 1
        self._ctx.tally.progressed()  # the provider answered about a task: not a stall

    def watch(self, jobs: int) -> None:
        """One look of the watchdog (from the run's ticker)."""
        ctx = self._ctx
        if ctx.hard_stopped() or not jobs:
            return
        now = ctx.tally.clock()
        opt = ctx.opt
        base_url = ctx.provider.config.base_url
        if (
            ctx.provider.answers == 0
            and ctx.gate.failures > 0
            and now - ctx.tally.t0 > opt.unreachable_grace_s
        ):
            ctx.request_stop(
                StopReason.UNREACHABLE,
                f"the provider at {base_url} has not answered once in "
                f"{now - ctx.tally.t0:.0f} s (last error: {self.last_error}); is the address "
                "right? Check PIXRUN_BASE_URL or --base-url (pixrun doctor tests it)",
            )
            return
        if self.outage_since is not None:
            # waiting out an outage is not a stall; it has its own limit
            if now - self.outage_since > opt.outage_timeout_s:
                message = (
                    f"the provider at {base_url} has not answered for "
                    f"{now - self.outage_since:.0f} s (run.outage_timeout_s); stopped, "
                    "a rerun resumes"
                )
                ctx.ledger_event(EventKind.STALLED, message)
                ctx.request_stop(StopReason.OUTAGE, message)
            return
        idle_s = now - ctx.tally.last_progress
        if idle_s > opt.stall_timeout_s:
            message = (
                f"nothing progressed for {idle_s:.0f} s (run.stall_timeout_s); stuck: "
                f"{self._stuck() or 'no shots'}"
                + (f"; last error: {self.last_error}" if self.last_error else "")
                + ". Stopped; a rerun resumes"
            )
            ctx.ledger_event(EventKind.STALLED, message)
            ctx.request_stop(StopReason.STALLED, message)

    def _stuck(self) -> str:
        return ", ".join(
            f"{n} {state.value}"
            for state, n in sorted(self._ctx.tally.counts.items())
            if n and not state.is_final and state != ShotState.AMBIGUOUS
        )
