"""Flow control: the AIMD in-flight limiter, the call gate, the poll planner."""

from __future__ import annotations

import asyncio
import random

import pytest

from runner.run.flow import CallGate, InFlightLimiter, PollPlanner, backoff_s


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_limiter_never_exceeds_its_target() -> None:
    limiter = InFlightLimiter(3)
    peak = 0

    async def worker() -> None:
        nonlocal peak
        await limiter.acquire()
        peak = max(peak, limiter.in_flight)
        await asyncio.sleep(0.001)
        limiter.release()

    await asyncio.gather(*(worker() for _ in range(30)))
    assert peak == 3
    assert limiter.in_flight == 0


async def test_limiter_backs_off_multiplicatively_and_recovers_additively() -> None:
    clock = FakeClock()
    limiter = InFlightLimiter(20, clock=clock)
    for _ in range(20):
        await limiter.acquire()
    limiter.on_concurrency_limited()
    assert limiter.target_slots == 14  # 20 in flight x 0.7
    limiter.on_concurrency_limited()  # the same burst: not counted twice
    assert limiter.target_slots == 14
    clock.now += 2.0
    limiter.on_concurrency_limited()
    assert limiter.target_slots == 9
    assert not limiter.has_room()
    # about one slot per window of accepted submissions
    for _ in range(9):
        limiter.on_accepted()
    assert limiter.target_slots == 10
    for _ in range(200):
        limiter.on_accepted()
    assert limiter.target_slots == 20  # never above the ceiling


async def test_limiter_floor_is_one() -> None:
    clock = FakeClock()
    limiter = InFlightLimiter(2, clock=clock)
    for _ in range(10):
        clock.now += 5
        limiter.on_concurrency_limited()
    assert limiter.target_slots == 1


async def test_gate_spaces_calls_to_its_rate() -> None:
    gate = CallGate(200.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(21):
        await gate.wait()
    # 21 calls at 200/s take at least 100 ms
    assert loop.time() - start >= 0.095


async def test_gate_pauses_every_call_only_when_failures_pile_up() -> None:
    clock = FakeClock()
    gate = CallGate(0, clock=clock)
    gate.record_failure(base_s=10, cap_s=10)
    assert gate.paused_until == 0.0  # one failure: only that call waits
    gate.record_failure(base_s=10, cap_s=10)
    gate.record_failure(base_s=10, cap_s=10)
    assert gate.provider_down and gate.paused_until >= 5.0
    gate.record_success()
    assert not gate.provider_down


def test_backoff_grows_with_full_jitter_and_a_cap() -> None:
    random.seed(1)
    first = [backoff_s(1, base_s=1, cap_s=60) for _ in range(100)]
    fifth = [backoff_s(5, base_s=1, cap_s=60) for _ in range(100)]
    capped = [backoff_s(30, base_s=1, cap_s=60) for _ in range(100)]
    assert all(0.5 <= d <= 1 for d in first)
    assert all(8 <= d <= 16 for d in fifth)
    assert all(30 <= d <= 60 for d in capped)


def test_planner_cold_start_then_quantile_grid() -> None:
    planner = PollPlanner(initial_delay_s=3.0, min_interval_s=0.1, max_interval_s=10.0)
    assert planner.first_delay_s() == 3.0
    # nothing learned: geometric back-off from the elapsed time, within the bounds
    assert planner.next_delay_s(20.0) == 5.0
    assert planner.next_delay_s(0.1) == 0.1
    rng = random.Random(2)
    for _ in range(400):
        planner.observe(rng.uniform(10.0, 20.0))
    first = planner.first_delay_s()
    assert 10.5 < first < 12.5  # about the 1/8 quantile of U(10, 20)
    # polls walk the grid: each next poll is the next quantile point
    elapsed = first
    polls = 1
    while elapsed < 20.0:
        elapsed += planner.next_delay_s(elapsed)
        polls += 1
    assert polls <= 9
    # past anything seen, back off geometrically (bounded by max_interval_s)
    assert planner.next_delay_s(60.0) == 10.0


@pytest.mark.parametrize("render_s", [(1.0, 2.0), (30.0, 90.0)])
def test_planner_keeps_calls_and_detection_delay_low(render_s: tuple[float, float]) -> None:
    """The promise behind the makespan benchmark: few polls, short detection delay."""
    low, high = render_s
    planner = PollPlanner(initial_delay_s=low, min_interval_s=0.01, max_interval_s=high)
    rng = random.Random(3)
    for _ in range(300):
        planner.observe(rng.uniform(low, high))
    calls = 0
    delay = 0.0
    n = 2000
    for _ in range(n):
        finish = rng.uniform(low, high)
        t = planner.first_delay_s()
        calls += 1
        while t < finish:
            t += planner.next_delay_s(t)
            calls += 1
        delay += t - finish
    assert calls / n <= 5.0
    # on average about half the spacing of the 8-point quantile grid
    assert delay / n <= 0.6 * (high - low) / PollPlanner.GRID


def test_failures_inside_one_pause_do_not_escalate_it() -> None:
    clock = FakeClock()
    gate = CallGate(0, clock=clock)
    for _ in range(3):
        gate.record_failure(base_s=1, cap_s=60)
    failures, until = gate.failures, gate.paused_until
    # the calls that were waiting on this pause fail too: one round, one escalation
    for _ in range(10):
        waited = gate.record_failure(base_s=1, cap_s=60)
        assert 0 < waited <= until
    assert (gate.failures, gate.paused_until) == (failures, until)
    clock.now = until + 0.01  # the next round after the pause may escalate again
    gate.record_failure(base_s=1, cap_s=60)
    assert gate.failures == failures + 1
