"""Flow control for a run: how many tasks may be in flight, how fast calls may go,
and when to poll.

Invariants:
- :class:`InFlightLimiter` never lets ``in_flight`` exceed ``int(target)``, and
  ``target`` stays within ``[1, ceiling]``. It lowers the target multiplicatively when the
  provider says its concurrency cap is reached and raises it additively (about one slot
  per ``target`` accepted submissions), so a throttled run settles just under the cap.
- :class:`SharedSlots` (several batches in one run) keeps the limiter's bound over all
  of them and hands a free slot to the waiting batch ranked first (see its docstring).
- :class:`CallGate` spaces calls to at most ``rate_per_s`` and holds every call while a
  pause (``Retry-After``, or an outage back-off) is in force.
- :class:`PollPlanner` never proposes a delay below ``min_interval_s``, nor a gap
  between two polls of a task above ``max_interval_s``.
- :class:`CallbackPolicy` polls sparsely only while callbacks arrive; until the first
  one and after they go silent, it polls exactly as the planner says. Past its sparse
  points it backs off within the planner's bounds, so a lost callback costs time,
  never the shot.

Size: about 440 lines: five small classes, kept together so that every timing bound
of a run can be read in one place.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections import deque
from collections.abc import Callable


class InFlightLimiter:
    """Bounds tasks in flight at the provider, with AIMD on concurrency refusals."""

    def __init__(self, ceiling: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = max(1, ceiling)
        self.target = float(self.ceiling)
        self.in_flight = 0
        self._clock = clock
        self._cond = asyncio.Condition()
        self._last_decrease = -1e9

    @property
    def target_slots(self) -> int:
        return max(1, int(self.target))

    async def acquire(self, may: Callable[[], bool] | None = None) -> None:
        """Take a slot; with ``may``, only when it also says yes (see SlotShare)."""
        async with self._cond:
            await self._cond.wait_for(
                lambda: self.in_flight < self.target_slots and (may is None or may())
            )
            self.in_flight += 1

    def adopt(self) -> None:
        """Count a task already at the provider (a resumed run), even above the target."""
        self.in_flight += 1

    def idle(self) -> None:
        """The dispatcher has stopped asking (only a shared pool cares: SlotShare)."""

    def release(self) -> None:
        self.in_flight -= 1
        self._notify()

    def has_room(self) -> bool:
        return self.in_flight < self.target_slots

    def notify(self) -> None:
        """Have every waiter look again (what ``may`` says has changed)."""
        self._notify()

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._cond:
                self._cond.notify_all()

        # release() is called from synchronous code paths too
        asyncio.get_running_loop().create_task(wake())

    def on_concurrency_limited(self) -> None:
        """The provider refused a task for its concurrency cap: back off by 30%."""
        now = self._clock()
        # one refusal burst (many submits in flight at once) is one signal, not many
        if now - self._last_decrease < 1.0:
            return
        self._last_decrease = now
        self.target = max(1.0, min(self.target, float(self.in_flight)) * 0.7)

    def widen(self, ceiling: int) -> None:
        """Raise the ceiling (a batch with a larger ``run.concurrency`` joined)."""
        if ceiling > self.ceiling:
            self.target += ceiling - self.ceiling
            self.ceiling = ceiling
            self._notify()

    def on_accepted(self) -> None:
        if self.target < self.ceiling:
            self.target = min(float(self.ceiling), self.target + 1.0 / self.target)
            self._notify()


class SlotShare:
    """One batch's view of an :class:`InFlightLimiter` shared by several batches.

    It counts its own tasks in flight and takes a slot of the pool only when no batch
    ranked before it (lower ``rank``) is waiting for one and below its own ceiling.
    """

    def __init__(self, pool: SharedSlots, rank: tuple[int, int], ceiling: int) -> None:
        self._pool = pool
        self.rank = rank
        self.ceiling = max(1, ceiling)
        self.in_flight = 0
        #: acquires of this batch under way (its dispatcher, retries re-acquiring)
        self.waiting = 0
        #: until its dispatcher first asks (or finds no work), a batch counts as
        #: waiting: one that starts up a little later still goes first
        self.starting = True

    @property
    def target_slots(self) -> int:
        return self._pool.limiter.target_slots

    @property
    def eligible(self) -> bool:
        return (self.waiting > 0 or self.starting) and self.in_flight < self.ceiling

    def idle(self) -> None:
        """The batch's dispatcher has stopped asking (no work left, or stopped)."""
        self.starting = False
        self._pool.limiter.notify()

    async def acquire(self) -> None:
        limiter = self._pool.limiter
        self.waiting += 1
        self.starting = False
        try:
            await limiter.acquire(lambda: self._pool.may_take(self))
            self.in_flight += 1
        finally:
            self.waiting -= 1
            limiter.notify()  # one waiter fewer: a batch ranked after may be next

    def adopt(self) -> None:
        self.in_flight += 1
        self._pool.limiter.adopt()

    def release(self) -> None:
        self.in_flight -= 1
        self._pool.limiter.release()

    def has_room(self) -> bool:
        return self._pool.limiter.has_room() and self.in_flight < self.ceiling

    def on_concurrency_limited(self) -> None:
        self._pool.limiter.on_concurrency_limited()

    def on_accepted(self) -> None:
        self._pool.limiter.on_accepted()


class SharedSlots:
    """The in-flight pool of one account, shared by several batches in one run.

    Invariants: the pool's ``in_flight`` never exceeds its target (the ceiling, AIMD
    below it), a batch never has more than its own ceiling in flight, and a free slot
    goes to the waiting batch of the lowest rank that is below its ceiling. A batch
    whose dispatcher has run out of work waits for nothing, so its slots flow to the
    next batch as they free up: no tail between batches.
    """

    def __init__(self, ceiling: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = InFlightLimiter(ceiling, clock=clock)
        self.shares: list[SlotShare] = []

    def share(self, rank: tuple[int, int], ceiling: int) -> SlotShare:
        share = SlotShare(self, rank, ceiling)
        self.shares.append(share)
        return share

    def may_take(self, share: SlotShare) -> bool:
        if share.in_flight >= share.ceiling:
            return False
        return not any(s.rank < share.rank and s.eligible for s in self.shares)


class CallGate:
    """Spaces provider calls to a rate and holds them during pauses."""

    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._clock = clock
        self._next_slot = 0.0
        self.paused_until = 0.0
        #: consecutive transient failures across all calls (provider health)
        self.failures = 0

    def widen(self, rate_per_s: float) -> None:
        """Allow a higher rate (a batch with a larger ``run.requests_per_s`` joined)."""
        if rate_per_s > 0 and 0.0 < 1.0 / rate_per_s < self._interval_s:
            self._interval_s = 1.0 / rate_per_s

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    @property
    def provider_down(self) -> bool:
        return self.failures >= 3

    def record_failure(self, base_s: float = 0.5, cap_s: float = 30.0) -> float:
        """A transient failure. Returns how long the failed call should wait.

        One failure among successes is that call's problem: only it waits. Several in
        a row look like an outage: then every call is held back, exponentially longer.
        """
        now = self._clock()
        if self.provider_down and now < self.paused_until:
            # a call let through in the same round as the one that set this pause: one
            # round escalates once, else N waiting calls would multiply the pause by 2**N
            return self.paused_until - now
        self.failures += 1
        delay = backoff_s(self.failures, base_s=base_s, cap_s=cap_s)
        if self.provider_down:
            self.pause(delay)
        return delay

    def record_success(self) -> None:
        self.failures = 0

    async def wait(self) -> None:
        while True:
            now = self._clock()
            if now < self.paused_until:
                await asyncio.sleep(self.paused_until - now)
                continue
            if self._interval_s == 0.0:
                return
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval_s
            if slot > now:
                await asyncio.sleep(slot - now)
            return


def backoff_s(attempt: int, *, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Exponential back-off with full jitter (AWS style): uniform in [d/2, d]."""
    delay = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    return random.uniform(delay / 2, delay)


class PollPlanner:
    """Decides when to poll a task, from the render times seen so far.

    Until enough renders have finished it polls at ``initial_delay_s`` and then backs
    off geometrically. Afterwards it polls at evenly spaced quantiles of the observed
    render-time distribution, so a task is checked when it is likely to have just
    finished: few calls per task and a short wait between finishing and noticing.
    """

    #: quantile points per distribution; more means shorter detection delay, more calls
    GRID = 8
    MIN_SAMPLES = 8

    def __init__(
        self,
        *,
        initial_delay_s: float,
        min_interval_s: float,
        max_interval_s: float,
        window: int = 512,
    ) -> None:
        self.initial_delay_s = initial_delay_s
        self.min_interval_s = min_interval_s
        self.max_interval_s = max(max_interval_s, min_interval_s)
        self._samples: deque[float] = deque(maxlen=window)
        self._grid: list[float] = []
        self._ordered: list[float] = []
        self._dirty = 0

    def observe(self, render_s: float) -> None:
        """A task finished about ``render_s`` seconds after it was accepted."""
        self._samples.append(max(0.0, render_s))
        self._dirty += 1

    def _quantiles(self) -> list[float]:
        if self._dirty and (not self._grid or self._dirty >= max(4, len(self._samples) // 16)):
            ordered = self._ordered = sorted(self._samples)
            n = len(ordered)
            self._grid = [
                ordered[min(n - 1, int(n * k / self.GRID))] for k in range(1, self.GRID + 1)
            ]
            self._dirty = 0
        return self._grid

    def quantile_s(self, share: float) -> float:
        """The render time that ``share`` of the renders seen took at most (``seen_any``)."""
        self._quantiles()
        ordered = self._ordered
        return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * share)))]

    def top_s(self) -> float:
        """A little past the slowest render seen (``seen_any``)."""
        self._quantiles()
        return self._ordered[-1] * 1.05

    @property
    def learned(self) -> bool:
        return len(self._samples) >= self.MIN_SAMPLES

    @property
    def seen_any(self) -> bool:
        return bool(self._samples)

    def first_delay_s(self) -> float:
        """Delay until a new task's first poll. Not capped by ``max_interval_s``, which
        bounds the gap between two polls: there is no sense in checking a task long
        before any task like it has ever finished."""
        if not self.learned:
            return max(self.min_interval_s, self.initial_delay_s)
        return max(self.min_interval_s, self._quantiles()[0])

    def next_delay_s(self, elapsed_s: float) -> float:
        """Delay until the next poll of a task accepted ``elapsed_s`` seconds ago."""
        if self.learned:
            grid = self._quantiles()
            i = bisect.bisect_right(grid, elapsed_s + self.min_interval_s * 0.5)
            if i < len(grid):
                return self._clamp(grid[i] - elapsed_s)
            # just past the slowest render seen: most likely a slightly slower one, so
            # keep the grid's spacing for a few more polls before backing off
            spacing = (grid[-1] - grid[0]) / (len(grid) - 1)
            if spacing > 0 and elapsed_s < grid[-1] + 3 * spacing:
                return self._clamp(spacing)
        # beyond anything seen (or nothing learned yet): back off geometrically
        return self._clamp(max(self.min_interval_s, 0.25 * elapsed_s))

    def backoff_delay_s(self, elapsed_s: float) -> float:
        """A delay that grows with the task's age: half of it, within the bounds."""
        return self._clamp(0.5 * elapsed_s)

    def _clamp(self, delay_s: float) -> float:
        return min(self.max_interval_s, max(self.min_interval_s, delay_s))


class CallbackPolicy:
    """When to poll a task whose provider also calls back when it ends.

    Polling is the safety net. Until a callback has arrived, and after callbacks have
    gone silent, tasks are polled as the planner says. While callbacks arrive, a task
    is polled only at a few late points of the learned render-time distribution (more
    of them while a larger share of renders is found by polls, i.e. callbacks get
    lost: six of its eight quantile points at a fifth lost), then backing off
    geometrically past the slowest render seen.
    """

    #: quantile points polled: 1 (the top eighth) + this x the share of renders found by
    #: polls rather than callbacks, up to the planner's whole grid (6 of 8 at a fifth)
    POINTS_PER_MISS_SHARE = 25
    #: renders found finished by polls since the last callback before callbacks count
    #: as silent (and that long without one: see ``silence_s``)
    SILENT_AFTER_POLLED = 5

    def __init__(
        self,
        planner: PollPlanner,
        *,
        silence_min_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.planner = planner
        self.silence_min_s = silence_min_s
        self._clock = clock
        #: callbacks are arriving: poll sparsely
        self.trusted = False
        self.ever_called_back = False
        self._last_callback = clock()
        self._polled_since_callback = 0
        self._said_never = False
        self._recent: deque[bool] = deque(maxlen=200)

    # -- what happened ---------------------------------------------------------------

    def on_callback(self) -> None:
        """A valid callback for a task in flight arrived."""
        self._last_callback = self._clock()
        self._polled_since_callback = 0
        self.trusted = self.ever_called_back = True

    def on_finished(self, *, hinted: bool) -> bool:
        """A render was found finished, after a callback (``hinted``) or by a poll.
        True once when callbacks have just gone silent: the caller says so."""
        self._recent.append(hinted)
        if hinted:
            return False
        self._polled_since_callback += 1
        if self._polled_since_callback < self.SILENT_AFTER_POLLED:
            return False
        if self._clock() - self._last_callback < self.silence_s():
            return False
        if self.trusted:
            self.trusted = False
            return True
        if not self.ever_called_back and not self._said_never:
            self._said_never = True  # none ever came: said once per run
            return True
        return False

    def miss_share(self) -> float:
        """Share of recent renders found by a poll rather than a callback."""
        return self._recent.count(False) / len(self._recent) if self._recent else 0.0

    def silence_s(self) -> float:
        """How long without a callback, while renders finish, means they stopped."""
        span = self.planner.top_s() if self.planner.seen_any else self.planner.initial_delay_s
        return max(self.silence_min_s, 2 * span)

    # -- when to poll ------------------------------------------------------------------

    def _points(self) -> list[float]:
        """When to poll: the top ``k`` of the planner's quantile points (more of them
        the more callbacks get lost: a lost one waits for the next point), then just
        past the slowest render seen."""
        grid = PollPlanner.GRID
        k = min(grid, 1 + round(self.POINTS_PER_MISS_SHARE * self.miss_share()))
        shares = [1 - j / grid for j in range(k, 0, -1)]
        return [*(self.planner.quantile_s(q) for q in shares), self.planner.top_s()]

    def first_delay_s(self) -> float:
        if not (self.trusted and self.planner.seen_any):
            return self.planner.first_delay_s()
        return max(self.planner.min_interval_s, self._points()[0])

    def next_delay_s(self, elapsed_s: float) -> float:
        planner = self.planner
        if not self.trusted:
            return planner.next_delay_s(elapsed_s)
        if planner.seen_any:
            for point in self._points():
                if point > elapsed_s + planner.min_interval_s * 0.5:
                    return max(planner.min_interval_s, point - elapsed_s)
        # slower than any render seen (or too few seen, or the early ones seen were the
        # quick ones): back off geometrically, the callback is still the likely news
        return planner.backoff_delay_s(elapsed_s)
