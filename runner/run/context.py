"""What the rooms of a run share: the ledger, the provider, the flow controls, the run's
figures, and how to stop.

Invariants:
- :class:`Tally` is the one place the run's counts and money move: counts per state
  change only through :meth:`Tally.move` (called by the transition writer), money is
  reserved only inside :meth:`Tally.reserve` (released on every way out), spent grows
  only through :meth:`Tally.charge` and shrinks through :meth:`Tally.refund`.
- Nothing here prints, writes SQL or speaks HTTP; :class:`RunContext` only hands out
  what the rooms need.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from runner.ledger import EventKind, Ledger, ShotRow
from runner.model import ShotState
from runner.provider import Provider
from runner.run.brake import FailureBrake
from runner.run.events import RunEvent, RunEventKind, RunObserver, RunSnapshot
from runner.run.flow import (
    CallbackPolicy,
    CallGate,
    InFlightLimiter,
    PollPlanner,
    SharedSlots,
    SlotShare,
)
from runner.run.options import HARD_STOPS, SchedulerOptions, StopReason

#: the kinds of run event that are routine (not kept as "recent" on the board)
_ROUTINE = frozenset({RunEventKind.SUBMITTED, RunEventKind.RENDERED, RunEventKind.DONE})


@dataclass
class Job:
    """One shot being driven through its lifecycle by one task."""

    row: ShotRow
    holds_slot: bool = False
    in_generate: bool = False
    #: this shot keeps failing transiently while others go through: leave it pending
    give_up: bool = False
    #: how long to wait before repeating a call that failed transiently
    retry_delay_s: float = 0.0
    #: monotonic start of the current render, for the render-time model
    accepted_mono: float | None = None
    #: with callbacks: set by a valid callback for this job's task (a fetch is due)
    wake: asyncio.Event | None = None
    #: with callbacks: the token of the attempt whose callback is awaited
    callback_token: str | None = None
    #: valid callbacks received for this job
    hints: int = 0


class Tally:
    """The run's figures: counts per state, money, throughput, recent notable events."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.counts: Counter[ShotState] = Counter()
        self.total = 0
        self.planned_uptc = 0
        self.spent_uptc = 0
        self.reserved_uptc = 0
        self.t0 = clock()
        #: the last time something moved (see SchedulerOptions.stall_timeout_s)
        self.last_progress = self.t0
        self.done_times: deque[float] = deque(maxlen=200)
        self.recent: deque[RunEvent] = deque(maxlen=6)
        #: shots whose download this run gave up on (still rendered, task id kept)
        self.not_downloaded = 0

    def start(self, counts: dict[ShotState, int], spent_uptc: int, planned_uptc: int) -> None:
        self.counts = Counter(counts)
        self.total = sum(self.counts.values())
        self.spent_uptc = spent_uptc
        self.planned_uptc = planned_uptc
        self.t0 = self.last_progress = self.clock()

    def move(self, row: ShotRow, state: ShotState) -> None:
        self.counts[row.state] -= 1
        self.counts[state] += 1
        row.state = state
        self.last_progress = self.clock()
        if state == ShotState.DONE:
            self.done_times.append(self.last_progress)

    def progressed(self) -> None:
        self.last_progress = self.clock()

    def budget_allows(self, price_uptc: int, cap_uptc: int | None) -> bool:
        if cap_uptc is None:
            return True
        return self.spent_uptc + self.reserved_uptc + price_uptc <= cap_uptc

    @contextlib.contextmanager
    def reserve(self, price_uptc: int) -> Iterator[None]:
        """Money committed to a generate call under way; released however it ends."""
        self.reserved_uptc += price_uptc
        try:
            yield
        finally:
            self.reserved_uptc -= price_uptc

    def charge(self, uptc: int) -> None:
        self.spent_uptc += uptc

    def refund(self, uptc: int) -> None:
        self.spent_uptc -= uptc

    def elapsed_s(self) -> float:
        return self.clock() - self.t0

    def snapshot(self, in_flight: int, target: int, calls: dict[str, int]) -> RunSnapshot:
        elapsed = self.elapsed_s()
        now = self.clock()
        recent_done = [t for t in self.done_times if now - t <= 30.0]
        rate = len(recent_done) / min(30.0, max(elapsed, 1e-9)) if recent_done else 0.0
        remaining = sum(
            n for s, n in self.counts.items() if not s.is_final and s != ShotState.AMBIGUOUS
        )
        return RunSnapshot(
            total=self.total,
            counts=dict(self.counts),
            in_flight=in_flight,
            target_concurrency=target,
            downloading=self.counts.get(ShotState.DOWNLOADING, 0),
            spent_uptc=self.spent_uptc,
            planned_uptc=self.planned_uptc,
            elapsed_s=elapsed,
            done_per_s=rate,
            eta_s=(remaining / rate) if rate > 0 else None,
            fetch_calls=int(calls.get("fetch", 0)),
            generate_calls=int(calls.get("generate", 0)),
            recent=tuple(self.recent),
        )


class SharedFlow:
    """What the batches of one run (``pixrun run a.yaml b.yaml``) share: the account's
    in-flight slots, its call gate, and an overall cost cap over all their ledgers."""

    def __init__(
        self,
        concurrency: int,
        requests_per_s: float,
        budget_uptc: int | None,
        *,
        grow: bool = False,
    ) -> None:
        self.slots = SharedSlots(concurrency)
        self.gate = CallGate(requests_per_s)
        self.budget_uptc = budget_uptc
        #: the pool's (slots, rate) grow to the largest of the batches that join
        self.grow_slots = self.grow_rate = grow
        #: each ledger's latest tally: one that runs again (a manifest dropped again
        #: into a watched folder) starts from what its ledger spent, and replaces the
        #: tally of its earlier run rather than counting that twice
        self.tallies: dict[Path, Tally] = {}
        #: the hard-stop hooks of the batches running now (see :meth:`stop_all`)
        self._stoppers: list[Callable[[StopReason, str], None]] = []
        self._stopping_all = False

    def join_stops(self, stop: Callable[[StopReason, str], None]) -> Callable[[], None]:
        """A running batch's hard stop, for :meth:`stop_all`; returns the remover."""
        self._stoppers.append(stop)
        return lambda: self._stoppers.remove(stop)

    def stop_all(self, reason: StopReason, message: str) -> None:
        """An account-wide stop (a refused key, a contract mismatch) seen by one batch
        stops every running batch at once: the others would hit it too, after paying
        for the tasks they submit meanwhile."""
        if self._stopping_all:
            return  # the batches stopped here call back in
        self._stopping_all = True
        try:
            for stop in list(self._stoppers):
                stop(reason, message)
        finally:
            self._stopping_all = False

    def admit(self, concurrency: int, requests_per_s: float) -> None:
        """A batch joins with these figures: the pool grows to them where it may."""
        if self.grow_slots:
            self.slots.limiter.widen(concurrency)
        if self.grow_rate:
            self.gate.widen(requests_per_s)

    def budget_allows(self, price_uptc: int) -> bool:
        """Spent (earlier runs included) and reserved over every ledger, plus this."""
        if self.budget_uptc is None:
            return True
        committed = sum(t.spent_uptc + t.reserved_uptc for t in self.tallies.values())
        return committed + price_uptc <= self.budget_uptc


class RunContext:
    """The ledger, the provider, the options and the flow controls of one run, the
    run's figures, and its stop state (set through the scheduler's ``request_stop``)."""

    def __init__(
        self,
        ledger: Ledger,
        provider: Provider,
        options: SchedulerOptions,
        observer: RunObserver,
        shared: SharedFlow | None = None,
        rank: tuple[int, int] = (0, 0),
    ) -> None:
        self.ledger = ledger
        self.provider = provider
        self.opt = options
        self.observer = observer
        self.shared = shared
        self.limiter: InFlightLimiter | SlotShare
        if shared is None:
            self.limiter = InFlightLimiter(options.concurrency)
            self.gate = CallGate(options.requests_per_s)
        else:  # one batch of several: the account's pool and gate, its own ceiling
            self.limiter = shared.slots.share(rank, options.concurrency)
            self.gate = shared.gate
        self.planner = PollPlanner(
            initial_delay_s=options.poll.initial_delay_s,
            min_interval_s=options.poll.min_interval_s,
            max_interval_s=options.poll.max_interval_s,
        )
        #: with callbacks: when to poll while they arrive (None: the planner alone)
        self.policy: CallbackPolicy | None = None
        self.tally = Tally()
        self.stop: StopReason | None = None
        self.stop_message: str | None = None
        #: set by the scheduler: stop submitting (soft) or everything (hard stops)
        self.request_stop: Callable[[StopReason, str], None] = lambda reason, message: None
        self.stop_submitting: Callable[[StopReason, str], None] = lambda reason, message: None
        self.brake = FailureBrake(options.halt_failure_share, options.halt_window)

    def start_tally(self, counts: dict[ShotState, int], spent_uptc: int, planned_uptc: int) -> None:
        """The run's figures from its ledger; with several batches, this tally now
        stands for its ledger under the overall cap (replacing an earlier run's, only
        once it holds what that ledger spent)."""
        self.tally.start(counts, spent_uptc, planned_uptc)
        if self.shared is not None:
            self.shared.tallies[self.ledger.path.resolve()] = self.tally

    def stopped(self) -> bool:
        return self.stop is not None

    def hard_stopped(self) -> bool:
        return self.stop in HARD_STOPS

    def render_ended(self, error: str | None) -> None:
        """A render ended for good in this run (``error`` None: it succeeded): the
        failure-rate brake stops submitting when too many of the latest failed."""
        message = self.brake.record(error)
        if message is not None:
            self.stop_submitting(StopReason.BRAKE, message)

    def may_submit(self, shot_id: str) -> bool:
        """Whether this run submits the shot (a sample run submits only its subset)."""
        only = self.opt.submit_only
        return only is None or shot_id in only

    def first_poll_delay_s(self) -> float:
        policy = self.policy
        return self.planner.first_delay_s() if policy is None else policy.first_delay_s()

    def next_poll_delay_s(self, elapsed_s: float) -> float:
        policy = self.policy
        return (
            self.planner.next_delay_s(elapsed_s)
            if policy is None
            else policy.next_delay_s(elapsed_s)
        )

    def release(self, job: Job) -> None:
        if job.holds_slot:
            job.holds_slot = False
            self.limiter.release()

    def emit(self, kind: RunEventKind, message: str, row: ShotRow | None = None) -> None:
        event = RunEvent(
            kind=kind,
            message=message,
            shot_id=None if row is None else row.shot_id,
            state=None if row is None else row.state,
            task_id=None if row is None else row.task_id,
            attempt=None if row is None else row.attempts,
            elapsed_s=self.tally.elapsed_s(),
        )
        if kind not in _ROUTINE:
            self.tally.recent.append(event)
        self.observer.event(event)

    def ledger_event(self, kind: EventKind, message: str, shot_id: str | None = None) -> None:
        """An event for the ledger, written in the background (it never blocks a call)."""
        task = asyncio.get_running_loop().create_task(self.ledger.add_event(kind, shot_id, message))
        task.add_done_callback(_ignore_result)


def _ignore_result(task: asyncio.Task[None]) -> None:
    """A background ledger event that failed: the batcher stops the run by itself."""
    if not task.cancelled():
        task.exception()
