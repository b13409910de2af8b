"""The simulator's books and faults: what it says happened must be what happened."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import fields
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from runner.errors import (
    AmbiguousSubmit,
    ConcurrencyLimited,
    OutOfCredit,
    TransientError,
    UsageError,
)
from runner.pricing import price_of, to_uptc
from runner.provider import Provider, TaskState, TaskStatus, mp4_problem, trace_id_for
from runner.sim import SimConfig, Simulator, SimulatorThread, task_mp4, tiny_mp4

#: a ledger's trace secret, for calls made outside a ledger
TEST_SECRET = b"pixrun-test-trace-secret"

SimFactory = Callable[..., Awaitable[Simulator]]
ProviderFactory = Callable[..., Provider]


def request_for(i: int) -> dict[str, Any]:
    """A mix of the priced parameters (qualities x durations x motion modes)."""
    quality = ("360p", "540p", "720p", "1080p")[i % 4]
    duration = 8 if i % 3 == 0 and quality != "1080p" else 5
    fast = i % 5 == 0 and quality != "1080p" and not (quality == "720p" and duration == 8)
    request: dict[str, Any] = {
        "prompt": f"shot number {i}",
        "model": "v4.5",
        "quality": quality,
        "duration": duration,
    }
    if fast:
        request["motion_mode"] = "fast"
    return request


async def final_state(provider: Provider, task_id: str) -> TaskState:
    for _ in range(300):
        state = await provider.fetch(task_id)
        if state.status not in (TaskStatus.QUEUED, TaskStatus.RENDERING):
            return state
        await asyncio.sleep(0.01)
    raise AssertionError("never finished")


async def test_books_n_tasks_charged_by_the_price_rule(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    n = 24
    sim = await sim_factory(balance_ptc="100")
    provider = provider_factory(sim)
    requests = [request_for(i) for i in range(n)]
    task_ids = await asyncio.gather(
        *(
            provider.generate(r, trace_id=trace_id_for(f"s{i}", 1, secret=TEST_SECRET))
            for i, r in enumerate(requests)
        )
    )
    assert len(set(task_ids)) == n
    prices = [price_of(r) for r in requests]
    assert None not in prices
    expected = {tid: to_uptc(p) for tid, p in zip(task_ids, prices, strict=True) if p is not None}
    assert len(set(expected.values())) >= 5, "the mix covers several prices"
    stats = sim.stats()
    assert stats["accepted_tasks"] == n
    assert stats["charges"]["sum_uptc"] == sum(expected.values())
    assert stats["balance_uptc"] == to_uptc(Decimal(100)) - sum(expected.values())
    by_id = {t["task_id"]: t for t in stats["tasks"]}
    assert {tid: by_id[tid]["charged_uptc"] for tid in task_ids} == expected
    assert all(t["charged"] == 1 for t in stats["tasks"])
    # every task serves distinct, valid bytes, and the hash it reports is what arrives
    for i, tid in enumerate(task_ids[:4]):
        state = await final_state(provider, tid)
        assert state.video_url is not None
        result = await provider.download(state.video_url, tmp_path / f"{i}.mp4")
        assert result.sha256 == by_id[tid]["sha256"]
        assert mp4_problem(result.path) is None
    assert len({t["sha256"] for t in stats["tasks"]}) == n
    assert sim.stats()["calls"]["generate"] == n


async def test_balance_runs_out_exactly(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(balance_ptc="1.0")
    provider = provider_factory(sim)
    request = {"prompt": "x", "model": "v4.5", "quality": "720p", "duration": 8}  # 0.4 PTC
    await provider.generate(request, trace_id="a")
    await provider.generate(request, trace_id="b")
    with pytest.raises(OutOfCredit):
        await provider.generate(request, trace_id="c")
    cheap = {"prompt": "x", "model": "v4.5", "quality": "360p"}  # 0.1 PTC still fits
    await provider.generate(cheap, trace_id="d")
    stats = sim.stats()
    assert stats["accepted_tasks"] == 3
    assert stats["balance_ptc"] == "0.1"
    assert stats["refusals"]["balance"] == 1


async def test_failed_first_attempt_is_refunded_and_the_retry_renders(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(balance_ptc="1", fail_first_attempt_share=1.0)
    provider = provider_factory(sim)
    request = {"prompt": "x", "model": "v4.5", "quality": "540p"}  # 0.15 PTC
    first = await provider.generate(request, trace_id=trace_id_for("shot", 1, secret=TEST_SECRET))
    assert (await final_state(provider, first)).status is TaskStatus.FAILED
    second = await provider.generate(request, trace_id=trace_id_for("shot", 2, secret=TEST_SECRET))
    assert (await final_state(provider, second)).status is TaskStatus.SUCCEEDED
    stats = sim.stats()
    assert stats["charges"]["sum_ptc"] == "0.3"
    assert stats["charges"]["refunded_ptc"] == "0.15"
    assert stats["balance_ptc"] == "0.85"


async def test_dedupe_on_trace_id_charges_once(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    request = {"prompt": "x", "model": "v4.5", "quality": "360p"}
    deduping = await sim_factory(dedupe_trace_id=True)
    provider = provider_factory(deduping)
    trace = trace_id_for("shot", 1, secret=TEST_SECRET)
    assert await provider.generate(request, trace_id=trace) == await provider.generate(
        request, trace_id=trace
    )
    assert deduping.stats()["accepted_tasks"] == 1
    assert deduping.stats()["faults"]["deduplicated"] == 1
    plain = await sim_factory(dedupe_trace_id=False)
    provider = provider_factory(plain)
    await provider.generate(request, trace_id=trace)
    await provider.generate(request, trace_id=trace)
    assert plain.stats()["accepted_tasks"] == 2


async def test_ambiguous_submit_retried_with_the_same_trace_is_charged_once(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(dedupe_trace_id=True, lost_generate_share=1.0)
    provider = provider_factory(sim)
    request = {"prompt": "x", "model": "v4.5", "quality": "360p"}
    trace = trace_id_for("shot", 1, secret=TEST_SECRET)
    with pytest.raises(AmbiguousSubmit):
        await provider.generate(request, trace_id=trace)
    task_id = await provider.generate(request, trace_id=trace)  # dedupe answers, not lost
    stats = sim.stats()
    assert stats["accepted_tasks"] == 1 and stats["tasks"][0]["task_id"] == task_id
    assert stats["charges"]["sum_ptc"] == "0.1"


async def test_concurrency_limit_frees_as_renders_end(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    now_s = [0.0]
    sim = await sim_factory(concurrency_limit=2, render_time_s=(5.0, 5.0), clock=lambda: now_s[0])
    provider = provider_factory(sim)
    request = {"prompt": "x", "model": "v4.5", "quality": "360p"}
    await provider.generate(request, trace_id="a")
    await provider.generate(request, trace_id="b")
    with pytest.raises(ConcurrencyLimited):
        await provider.generate(request, trace_id="c")
    now_s[0] = 5.0
    await provider.generate(request, trace_id="c")
    assert sim.stats()["in_flight"] == 1
    assert sim.stats()["refusals"]["concurrency"] == 1


async def test_status_is_computed_lazily_without_timers(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    now_s = [0.0]
    sim = await sim_factory(dialect="gateway", render_time_s=(10.0, 10.0), clock=lambda: now_s[0])
    provider = provider_factory(sim)
    before = len(asyncio.all_tasks())
    ids = [
        await provider.generate({"prompt": f"p{i}", "model": "v4"}, trace_id=str(i))
        for i in range(20)
    ]
    assert len(asyncio.all_tasks()) == before, "no task or timer per render"
    assert (await provider.fetch(ids[0])).status is TaskStatus.QUEUED
    now_s[0] = 5.0
    assert (await provider.fetch(ids[0])).status is TaskStatus.RENDERING
    now_s[0] = 10.0
    assert (await provider.fetch(ids[0])).status is TaskStatus.SUCCEEDED
    assert sim.stats()["tasks"][0]["fetches"] == 3


async def test_unpriced_requests_are_counted_not_guessed(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory()
    ten_s = {"prompt": "x", "model": "v4.5", "quality": "360p", "duration": 10}
    await provider_factory(sim).generate(ten_s, trace_id="t")
    stats = sim.stats()
    assert stats["charges"]["unpriced"] == 1
    assert stats["tasks"][0]["price_ptc"] is None
    priced = await sim_factory(unknown_price_ptc="0.3")
    await provider_factory(priced).generate(ten_s, trace_id="t")
    assert priced.stats()["charges"]["sum_ptc"] == "0.3"


async def test_generate_hook_failure_is_a_violation_and_a_500(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    async def refuse(body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        raise AssertionError("ledger has no intent for this shot")

    sim = await sim_factory(generate_hook=refuse)
    with pytest.raises(TransientError):
        await provider_factory(sim).generate({"prompt": "x", "model": "v4"}, trace_id="t")
    stats = sim.stats()
    assert stats["accepted_tasks"] == 0
    assert stats["violations"] == [
        "generate_hook: AssertionError: ledger has no intent for this shot"
    ]


async def test_restart_on_the_same_port_keeps_the_books(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory()
    provider = provider_factory(sim)
    request = {"prompt": "x", "model": "v4", "quality": "360p"}
    task_id = await provider.generate(request, trace_id="a")
    await provider.fetch(task_id)  # leaves a keep-alive connection in the pool
    port = sim.port
    await sim.stop()
    with pytest.raises(TransientError):
        await provider.generate(request, trace_id="b")
    with pytest.raises(TransientError):
        await provider.fetch(task_id)
    assert await sim.start(port=port) == f"http://127.0.0.1:{port}"
    assert (await final_state(provider, task_id)).status is TaskStatus.SUCCEEDED
    await provider.generate(request, trace_id="b")
    assert sim.stats()["accepted_tasks"] == 2


async def test_faults_are_repeatable_with_a_seed(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    outcomes: list[list[str]] = []
    for _ in range(2):
        sim = await sim_factory(seed=7, error_5xx_share=0.5, render_time_s=(0.0, 0.0))
        provider = provider_factory(sim)
        seen = []
        for i in range(20):
            try:
                await provider.generate({"prompt": f"p{i}", "model": "v4"}, trace_id=str(i))
                seen.append("ok")
            except TransientError:
                seen.append("503")
        outcomes.append(seen)
        await sim.stop()
    assert outcomes[0] == outcomes[1]
    assert 0 < outcomes[0].count("503") < 20


async def test_stats_endpoint_matches_stats(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(dialect="gateway")
    await provider_factory(sim).generate({"prompt": "x", "model": "v4"}, trace_id="t")

    def get(path: str) -> Any:
        with urllib.request.urlopen(sim.base_url + path, timeout=5) as answer:
            return json.loads(answer.read())

    full = await asyncio.to_thread(get, "/_sim/stats")
    assert full["accepted_tasks"] == 1 and full["tasks"][0]["prompt"] == "x"
    assert full["tasks"][0]["trace_id"] == "t"
    brief = await asyncio.to_thread(get, "/_sim/stats?tasks=0")
    assert "tasks" not in brief and brief["charges"] == full["charges"]


def test_each_task_serves_a_valid_unique_mp4(tmp_path: Path) -> None:
    a, b = task_mp4("1"), task_mp4("2")
    assert a != b and a.startswith(tiny_mp4()) and task_mp4("1") == a
    for name, data in (("a", a), ("b", b), ("tiny", tiny_mp4())):
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(data)
        assert mp4_problem(path) is None
    assert len(tiny_mp4()) < 3000


def test_config_rejects_nonsense() -> None:
    with pytest.raises(UsageError):
        SimConfig(dialect="soap")
    with pytest.raises(UsageError):
        SimConfig(error_5xx_share=1.5)
    with pytest.raises(UsageError):
        SimConfig(render_time_s=(2.0, 1.0))
    with pytest.raises(UsageError):
        SimConfig(balance_ptc="lots")  # type: ignore[arg-type]


def test_simulator_thread_serves_from_its_own_loop() -> None:
    with SimulatorThread(SimConfig(render_time_s=(0.01, 0.01))) as sim:
        port = sim.port
        with urllib.request.urlopen(sim.base_url + "/_sim/stats", timeout=5) as answer:
            assert json.loads(answer.read())["accepted_tasks"] == 0
        sim.stop_server()
        with pytest.raises(OSError):
            urllib.request.urlopen(sim.base_url + "/_sim/stats", timeout=5)
        assert sim.start_server() == f"http://127.0.0.1:{port}"
        assert sim.stats()["calls"] == {}


# ---- the command line ----------------------------------------------------------------------

#: SimConfig fields that are for code, not for the command line
NOT_ON_THE_COMMAND_LINE = {
    "generate_hook",
    "clock",
    "price_table",
    "moderated_words",
}


def test_sim_help_documents_every_knob() -> None:
    from click.testing import CliRunner

    from runner.cli.sim_cmd import sim_command

    result = CliRunner().invoke(sim_command, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for f in fields(SimConfig):
        if f.name not in NOT_ON_THE_COMMAND_LINE:
            assert "--" + f.name.replace("_", "-") in result.output, f.name
    assert "--moderated-word" in result.output and "--prices" in result.output


def test_pixrun_sim_runs_until_ctrl_c() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "runner", "sim", "--port", "0", "--render-time-s", "0.01", "0.02"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert "listening on http://127.0.0.1:" in first
        url = first.rsplit(" ", 1)[1].strip()
        lines = [child.stdout.readline() for _ in range(4)]
        assert f"export PIXRUN_BASE_URL={url}\n" in [line.strip() + "\n" for line in lines]
        with urllib.request.urlopen(url + "/_sim/stats", timeout=5) as answer:
            assert json.loads(answer.read())["accepted_tasks"] == 0
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert "simulator stopped: 0 tasks" in out


def test_sim_command_offers_every_dialect() -> None:
    from runner.cli.sim_cmd import SIM_DIALECTS
    from runner.sim.config import DIALECTS

    assert tuple(SIM_DIALECTS) == tuple(DIALECTS)
