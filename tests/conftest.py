"""Shared fixtures. Add yours with small edits; keep each fixture self-contained."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from runner.provider import Provider, ProviderConfig, TaskState, TaskStatus
from runner.sim import SimConfig, Simulator, SimulatorThread

#: renders in the tests take 10-30 ms
FAST_RENDER_S = (0.01, 0.03)
SIM_KEY = "sim-test-key-0123456789"
#: a ledger's trace secret, for calls made outside a ledger
TEST_SECRET = b"pixrun-test-trace-secret"

#: the ``sim_factory`` fixture: ``sim = await sim_factory(**knobs)``
SimFactory = Callable[..., Awaitable[Simulator]]
#: the ``provider_factory`` fixture: ``provider = provider_factory(sim, **config)``
ProviderFactory = Callable[..., Provider]


async def final_state(provider: Provider, task_id: str, *, polls: int = 300) -> TaskState:
    """Fetch ``task_id`` every 10 ms until it has left queued and rendering (the
    simulator's renders take milliseconds); ``polls`` fetches at the most."""
    for _ in range(polls):
        state = await provider.fetch(task_id)
        if state.status not in (TaskStatus.QUEUED, TaskStatus.RENDERING):
            return state
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} never finished")


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    """``sim = await sim_factory(dialect="gateway", ...)``: a started simulator on
    127.0.0.1 with fast renders (any SimConfig knob may be passed); stopped afterwards."""
    started: list[Simulator] = []

    async def make(**knobs: Any) -> Simulator:
        knobs.setdefault("render_time_s", FAST_RENDER_S)
        knobs.setdefault("api_key", SIM_KEY)
        sim = Simulator(SimConfig(**knobs))
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def provider_factory() -> AsyncIterator[ProviderFactory]:
    """``provider_factory(sim_or_url, **config)``: an adapter with short timeouts,
    closed afterwards."""
    made: list[Provider] = []

    def make(target: Simulator | str, **overrides: Any) -> Provider:
        base_url = target if isinstance(target, str) else target.base_url
        overrides.setdefault("api_key", SIM_KEY)
        overrides.setdefault("connect_timeout_s", 2.0)
        overrides.setdefault("read_timeout_s", 2.0)
        overrides.setdefault("total_timeout_s", 5.0)
        provider = Provider(ProviderConfig(base_url=base_url, **overrides))
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


@pytest.fixture(autouse=True)
def _no_leftover_runs() -> Iterator[None]:
    """A test that failed half-way leaves no ``pixrun`` it started (runkit.start) behind."""
    from runkit import kill_leftovers

    yield
    kill_leftovers()


@pytest.fixture
def sim_thread() -> Iterator[Callable[..., SimulatorThread]]:
    """``sim = sim_thread(**knobs)``: a simulator in a background thread, outside the
    process under test (runner subprocesses); closed afterwards."""
    from runkit import FAST_RENDER_S as SUBPROCESS_RENDER_S
    from runkit import KEY

    started: list[SimulatorThread] = []

    def make(**knobs: Any) -> SimulatorThread:
        knobs.setdefault("render_time_s", SUBPROCESS_RENDER_S)
        knobs.setdefault("api_key", KEY)
        sim = SimulatorThread(SimConfig(**knobs))
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.close()


@pytest.fixture(autouse=True)
def _no_user_settings_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process code never reads the user's own settings file (an empty
    PIXRUN_CONFIG switches it off); a test that wants one points it at a tmp file."""
    monkeypatch.setenv("PIXRUN_CONFIG", "")


@pytest.fixture
def receiver() -> Iterator[Any]:
    """``receiver(**knobs)``: a notify endpoint (tests/hookkit.py), closed afterwards."""
    from hookkit import Receiver

    made: list[Receiver] = []

    def make(**knobs: Any) -> Receiver:
        made.append(Receiver(**knobs))
        return made[-1]

    yield make
    for r in made:
        r.close()
