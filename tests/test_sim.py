"""The simulator's books and faults: what it says happened must be what happened."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import fields
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import SIM_KEY, TEST_SECRET, ProviderFactory, SimFactory, final_state

from runner.errors import (
    AmbiguousSubmit,
    ConcurrencyLimited,
    OutOfCredit,
    TransientError,
    UsageError,
)
from runner.money import to_uptc
from runner.pricing import price_of
from runner.provider import TaskStatus, mp4_problem, trace_id_for
from runner.sim import SimConfig, Simulator, SimulatorThread, task_mp4, tiny_mp4


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
    "untaggable_words",
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
    assert "--untaggable-word" in result.output


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


def test_sim_command_offers_every_dialect_and_share_knob() -> None:
    from runner.cli.sim_cmd import SHARE_HELP, SIM_DIALECTS, sim_command
    from runner.sim.config import DIALECTS, SHARE_KNOBS, SimConfig

    assert tuple(SIM_DIALECTS) == tuple(DIALECTS)
    assert set(SHARE_HELP) == set(SHARE_KNOBS)
    # every option of the command is a knob of the simulator (its tables are typo-free)
    knobs = set(SimConfig.__dataclass_fields__)
    names = {p.name for p in sim_command.params} - {"host", "port", "prices_path"}
    assert names <= knobs, names - knobs


# ---- routes, families and provider faults (raw HTTP, as a client sees them) ---------------

SAMPLES = Path(__file__).parent / "data" / "api-samples"
PNG = (Path(__file__).parent / "data" / "manifests" / "images" / "ok.png").read_bytes()
JPG = (Path(__file__).parent / "data" / "manifests" / "images" / "ok.jpg").read_bytes()
CHEAP = {"prompt": "x", "model": "v4.5", "quality": "360p"}


async def call(
    sim: Simulator,
    method: str,
    path: str,
    *,
    body: Any = None,
    form: Any = None,
    trace_id: str | None = None,
) -> tuple[int, str, Any]:
    """(HTTP status, content type, parsed JSON or text) of one call with the sim's key."""

    headers = {"Authorization": f"Bearer {SIM_KEY}"}
    if trace_id:
        headers["Ai-trace-id"] = trace_id
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, sim.base_url + path, json=body, data=form, headers=headers
        ) as answer,
    ):
        text = await answer.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return answer.status, answer.content_type, parsed


async def get_bytes(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        return answer.status, answer.content_type, await answer.read()


def fetch_path_of(task_id: str) -> str:
    return f"/pix/task/{task_id}/fetch"


async def test_unknown_routes_get_a_web_servers_page(sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    status, kind, text = await call(sim, "GET", "/pix/feed/123")
    assert (status, kind) == (404, "text/html")
    assert text.startswith("<html>") and "404 Not Found" in text
    status, kind, text = await call(sim, "GET", "/pix/generate")
    assert (status, kind) == (405, "text/html") and "405 Method Not Allowed" in text
    status, kind, _ = await call(sim, "POST", fetch_path_of("1"), body={})
    assert (status, kind) == (405, "text/html")
    assert sim.stats()["refusals"] == {"route": 3}
    assert sim.stats()["calls"] == {}


async def test_routes_can_be_moved_and_fetch_can_take_a_query(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(
        dialect="gateway", generate_path="/v2/make", fetch_path="/pix/fetch?task_id={task_id}"
    )
    provider = provider_factory(
        sim, generate_path="/v2/make", fetch_path="/pix/fetch?task_id={task_id}"
    )
    task_id = await provider.generate(CHEAP, trace_id="t")
    assert (await final_state(provider, task_id)).status is TaskStatus.SUCCEEDED
    status, _, body = await call(sim, "GET", "/pix/fetch?task_id=pix_nope")
    assert (status, body) == (200, {"code": 404, "msg": "task not found", "data": None})
    status, _, body = await call(sim, "GET", "/pix/fetch")
    assert status == 400 and body["msg"] == "Invalid parameter: task_id is required"
    status, kind, _ = await call(sim, "POST", "/pix/generate", body=CHEAP)  # the old route
    assert (status, kind) == (404, "text/html")


async def test_web_family_follows_its_samples(sim_factory: SimFactory) -> None:
    now_s = [0.0]
    sim = await sim_factory(dialect="web", render_time_s=(5.0, 5.0), clock=lambda: now_s[0])
    request = {**CHEAP, "seed": 123}
    status, _, made = await call(sim, "POST", "/pix/generate", body=request, trace_id="t")
    assert status == 200 and made["ErrCode"] == 0
    video_id = made["Resp"]["video_id"]
    assert isinstance(video_id, int)
    _, _, rendering = await call(sim, "GET", fetch_path_of(str(video_id)))
    assert rendering["Resp"]["video_status"] in (5, 10) and rendering["Resp"]["url"] == ""
    now_s[0] = 5.0
    _, _, done = await call(sim, "GET", fetch_path_of(str(video_id)))
    sample = json.loads((SAMPLES / "pixverse-web-fetch-done.json").read_text())
    assert set(sample) == set(done) and set(sample["Resp"]) == set(done["Resp"])
    resp = done["Resp"]
    assert (resp["video_id"], resp["video_status"], resp["seed"]) == (video_id, 1, 123)
    assert resp["url"].startswith(sim.base_url) and resp["prompt"] == "x"
    assert (resp["outputWidth"], resp["outputHeight"]) == (64, 64)


@pytest.mark.parametrize("dialect", ["pixverse", "web", "gateway"])
async def test_deleted_share_reports_deleted_once_the_render_ends(
    dialect: str, sim_factory: SimFactory
) -> None:
    now_s = [0.0]
    sim = await sim_factory(
        dialect=dialect, deleted_share=1.0, render_time_s=(5.0, 5.0), clock=lambda: now_s[0]
    )
    _, _, made = await call(sim, "POST", "/pix/generate", body=CHEAP, trace_id="t")
    task_id = str(made["data"]["task_id"] if dialect == "gateway" else made["Resp"]["video_id"])
    _, _, before = await call(sim, "GET", fetch_path_of(task_id))
    now_s[0] = 5.0
    status, _, after = await call(sim, "GET", fetch_path_of(task_id))
    assert status == 200
    if dialect == "gateway":
        assert before["data"]["state"] == "pending"
        assert (after["data"]["state"], after["data"]["msg"]) == ("error", "video deleted")
        assert after["data"]["video_url"] is None and after["data"]["refund"] == "0"
    else:
        key = "video_status" if dialect == "web" else "status"
        assert before["Resp"][key] == 10
        assert (after["Resp"][key], after["Resp"]["url"]) == (6, "")
    if dialect == "web":
        sample = json.loads((SAMPLES / "pixverse-web-fetch-deleted.json").read_text())
        assert set(sample["Resp"]) <= set(after["Resp"])
    assert sim.stats()["tasks"][0]["status"] == "deleted"
    assert sim.stats()["charges"]["refunded_uptc"] == 0


@pytest.mark.parametrize("not_found_status", [200, 404])
async def test_forgotten_and_unknown_tasks_answer_the_no_such_task_envelope(
    not_found_status: int, sim_factory: SimFactory
) -> None:
    expected = {
        "pixverse": {"ErrCode": 500008, "ErrMsg": "Requested data not found"},
        "web": {"ErrCode": 500008, "ErrMsg": "Requested data not found"},
        "gateway": {"code": 404, "msg": "task not found", "data": None},
    }
    for dialect, envelope in expected.items():
        sim = await sim_factory(
            dialect=dialect, forget_share=1.0, not_found_status=not_found_status
        )
        _, _, made = await call(sim, "POST", "/pix/generate", body=CHEAP, trace_id="t")
        assert made.get("ErrCode", made.get("code")) in (0, 200)
        task_id = sim.stats()["tasks"][0]["task_id"]
        for asked in (task_id, task_id, "no-such-task"):
            status, kind, body = await call(sim, "GET", fetch_path_of(asked))
            assert (status, kind, body) == (not_found_status, "application/json", envelope)
        assert sim.stats()["accepted_tasks"] == 1
        assert sim.stats()["tasks"][0]["forgotten"] is True


async def test_unknown_task_is_recognised_by_the_client_in_every_family(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    from runner.errors import TaskNotFound

    for dialect in ("pixverse", "web", "gateway"):
        sim = await sim_factory(dialect=dialect)
        with pytest.raises(TaskNotFound):
            await provider_factory(sim).fetch("315033920339999")


@pytest.mark.parametrize("in_200", [False, True])
async def test_errors_in_200_sends_every_provider_refusal_with_http_200(
    in_200: bool, sim_factory: SimFactory
) -> None:
    sim = await sim_factory(
        errors_in_200=in_200, balance_ptc="0.1", concurrency_limit=1, render_time_s=(60, 60)
    )
    bad = {**CHEAP, "quality": "8k"}
    answers = [await call(sim, "POST", "/pix/generate", body=bad, trace_id="1")]
    await call(sim, "POST", "/pix/generate", body=CHEAP, trace_id="2")  # uses all of it
    answers.append(await call(sim, "POST", "/pix/generate", body=CHEAP, trace_id="3"))
    sim.config.concurrency_limit = None
    answers.append(await call(sim, "POST", "/pix/generate", body=CHEAP, trace_id="4"))
    codes = [(status, body["ErrCode"]) for status, _, body in answers]
    if in_200:
        assert codes == [(200, 400017), (200, 500044), (200, 500043)]
    else:
        assert codes == [(400, 400017), (429, 500044), (402, 500043)]
    assert answers[0][2]["ErrMsg"].startswith("Invalid parameter: quality: '8k'")
    assert sim.stats()["accepted_tasks"] == 1


@pytest.mark.parametrize("in_200", [False, True])
async def test_permanent_error_refuses_a_share_of_generates_uncharged(
    in_200: bool, sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(
        permanent_error_code=500054, permanent_error_share=1.0, errors_in_200=in_200
    )
    status, _, body = await call(sim, "POST", "/pix/generate", body=CHEAP, trace_id="t")
    assert status == (200 if in_200 else 400)
    assert body == {
        "ErrCode": 500054,
        "ErrMsg": "Content moderation failure. Image maybe contains inappropriate content",
    }
    gateway = await sim_factory(
        dialect="gateway", permanent_error_code=500060, permanent_error_share=1.0
    )
    _, _, body = await call(gateway, "POST", "/pix/generate", body=CHEAP, trace_id="t")
    assert body["code"] == 500060 and "activation limit" in body["msg"]
    for s in (sim, gateway):
        assert s.stats()["accepted_tasks"] == 0
        assert s.stats()["refusals"] == {"permanent_error": 1}
        assert s.stats()["charges"]["sum_uptc"] == 0


def upload_form(data: bytes, name: str = "cat.png") -> Any:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    return form


async def test_uploads_are_stored_served_charged_and_counted(sim_factory: SimFactory) -> None:
    sim = await sim_factory(balance_ptc="1")
    status, _, first = await call(sim, "POST", "/302/upload-file", form=upload_form(PNG))
    sample = json.loads((SAMPLES / "upload-file-ok.json").read_text())
    assert status == 200 and set(first) == set(sample)
    assert (first["code"], first["msg"]) == (200, "success")
    url = first["data"]
    digest = hashlib.sha256(PNG).hexdigest()
    assert url == f"{sim.base_url}/_sim/uploads/{digest}.png"
    _, _, again = await call(sim, "POST", "/302/upload-file", form=upload_form(PNG))
    assert again["data"] == url
    await call(sim, "POST", "/302/upload-file", form=upload_form(JPG, "cat.jpg"))
    status, kind, served = await get_bytes(url)
    assert (status, kind, served) == (200, "image/png", PNG)
    stats = sim.stats()
    assert stats["uploads"] == {
        "count": 3,
        "bytes": 2 * len(PNG) + len(JPG),
        "charged_uptc": 3_000,
        "distinct": 2,
    }
    assert stats["balance_uptc"] == 1_000_000 - 3_000
    assert stats["charges"]["sum_uptc"] == 0, "uploads are not generate charges"


async def test_uploads_refuse_what_is_not_a_small_image(
    sim_factory: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runner.sim.server

    monkeypatch.setattr(runner.sim.server, "UPLOAD_MAX_BYTES", len(PNG) - 1)
    sim = await sim_factory()
    gif = b"GIF89a" + b"\0" * 100
    for form in (upload_form(gif), upload_form(PNG)):
        status, _, body = await call(sim, "POST", "/302/upload-file", form=form)
        assert status == 400 and body["code"] == 400 and body["msg"]
    status, _, body = await call(sim, "POST", "/302/upload-file", body={"file": "x"})
    assert status == 400 and "multipart" in body["msg"]
    webp = b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 8
    status, _, body = await call(sim, "POST", "/302/upload-file", form=upload_form(webp))
    assert status == 200 and body["data"].endswith(".webp")
    assert sim.stats()["uploads"]["count"] == 1
    assert sim.stats()["refusals"] == {"upload_invalid": 3}


async def test_upload_price_comes_from_the_knob_then_the_price_table(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    from runner.pricing import default_price_table, load_price_table

    table_file = tmp_path / "prices.json"
    raw = json.loads((Path(__file__).parents[1] / "runner/data/prices.json").read_text())
    table_file.write_text(json.dumps({**raw, "upload_ptc": "0.002"}))
    priced = await sim_factory(price_table=load_price_table(table_file))
    knob = await sim_factory(price_table=load_price_table(table_file), upload_price_uptc=7)
    plain = await sim_factory()
    for sim in (priced, knob, plain):
        await call(sim, "POST", "/302/upload-file", form=upload_form(PNG))
    assert priced.stats()["uploads"]["charged_uptc"] == 2_000
    assert knob.stats()["uploads"]["charged_uptc"] == 7
    expected = default_price_table().upload_ptc
    assert plain.stats()["uploads"]["charged_uptc"] == (
        1_000 if expected is None else to_uptc(expected)
    )


async def test_generates_name_uploads_and_inline_bytes(sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    _, _, up = await call(sim, "POST", "/302/upload-file", form=upload_form(PNG))
    stored = up["data"]
    never = f"{sim.base_url}/_sim/uploads/{'0' * 64}.png"
    image_body = {"prompt": "x", "model": "v4"}
    status, _, body = await call(
        sim, "POST", "/pix/generate", body={**image_body, "image": stored}, trace_id="a"
    )
    assert status == 200 and body["ErrCode"] == 0
    for field_value in (
        {"image": never},
        {"image": stored, "last_image": never},
        {"image_list": [stored, never]},
        {"fusion": [stored, never]},
    ):
        status, _, body = await call(
            sim, "POST", "/pix/generate", body={**image_body, **field_value}, trace_id="b"
        )
        assert status == 400 and body["ErrCode"] == 400017, field_value
        assert "was never uploaded" in body["ErrMsg"]
    inline = {**image_body, "image": "data:image/png;base64," + base64.b64encode(PNG).decode()}
    await call(sim, "POST", "/pix/generate", body=inline, trace_id="c")
    stats = sim.stats()
    assert stats["accepted_tasks"] == 2
    assert stats["inline_image_generates"] == 1
    assert len(json.dumps(inline)) <= stats["max_generate_body_bytes"] < len(json.dumps(inline)) + 8


async def test_dead_urls_refuse_connections_and_the_next_fetch_is_live(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    sim = await sim_factory(dead_url_share=1.0, render_time_s=(0.0, 0.0))
    provider = provider_factory(sim)
    task_id = await provider.generate(CHEAP, trace_id="t")
    dead = (await provider.fetch(task_id)).video_url
    assert dead is not None and not dead.startswith(sim.base_url)
    with pytest.raises(TransientError):
        await provider.download(dead, tmp_path / "dead.mp4")
    live = (await provider.fetch(task_id)).video_url
    assert live is not None and live.startswith(sim.base_url)
    assert (await provider.download(live, tmp_path / "live.mp4")).path.exists()
    assert not (await provider.fetch(task_id)).video_url.startswith(sim.base_url)  # type: ignore[union-attr]
    always = await sim_factory(dead_urls_always=True, render_time_s=(0.0, 0.0))
    provider = provider_factory(always)
    task_id = await provider.generate(CHEAP, trace_id="t")
    urls = [(await provider.fetch(task_id)).video_url for _ in range(3)]
    assert all(u is not None and not u.startswith(always.base_url) for u in urls)
    assert always.stats()["faults"] == {"dead_urls": 3}


# ---- the state file -------------------------------------------------------------------------


def made_id(dialect: str, body: Any) -> str:
    return str(body["data"]["task_id"] if dialect == "gateway" else body["Resp"]["video_id"])


def fetched(dialect: str, body: Any) -> tuple[str, str | None]:
    """(status word, video URL) of a fetch answer in any family, read by hand."""
    if dialect == "gateway":
        return body["data"]["state"], body["data"]["video_url"]
    key = "video_status" if dialect == "web" else "status"
    words = {1: "succeeded", 5: "running", 10: "running", 6: "deleted", 7: "moderated", 8: "error"}
    return words[body["Resp"][key]], body["Resp"]["url"] or None


async def settled(sim: Simulator, dialect: str, task_id: str) -> tuple[str, str | None]:
    for _ in range(300):
        status, _, body = await call(sim, "GET", fetch_path_of(task_id))
        assert status == 200, body
        word, url = fetched(dialect, body)
        if word not in ("pending", "running"):
            return word, url
        await asyncio.sleep(0.01)
    raise AssertionError("never finished")


@pytest.mark.parametrize("dialect", ["pixverse", "web", "gateway"])
async def test_a_new_simulator_on_the_state_file_knows_every_task(
    dialect: str, sim_factory: SimFactory, tmp_path: Path
) -> None:
    state = tmp_path / "sim.state.jsonl"
    knobs: dict[str, Any] = {
        "dialect": dialect,
        "state_path": state,
        "balance_ptc": "10",
        "dedupe_trace_id": True,
        "fail_first_attempt_share": 0.5,
        "seed": 3,
        "render_time_s": (0.0, 0.2),
    }
    first = await sim_factory(**knobs)
    traces = [trace_id_for(f"s{i}", 1, secret=TEST_SECRET) for i in range(8)]
    ids = []
    for i, trace in enumerate(traces):
        _, _, made = await call(first, "POST", "/pix/generate", body=request_for(i), trace_id=trace)
        ids.append(made_id(dialect, made))
    finals = {tid: (await settled(first, dialect, tid))[0] for tid in ids}
    assert set(finals.values()) == {"succeeded", "error"}
    _, _, up = await call(first, "POST", "/302/upload-file", form=upload_form(PNG))
    before = first.stats()
    await first.stop()

    second = await sim_factory(**knobs)
    assert second.port != first.port
    for tid in ids:
        word, url = await settled(second, dialect, tid)
        assert word == finals[tid]
        if word == "succeeded":
            assert url is not None and url.startswith(second.base_url)
            assert (await get_bytes(url))[2] == task_mp4(tid)
    _, _, again = await call(
        second, "POST", "/pix/generate", body=request_for(0), trace_id=traces[0]
    )
    assert made_id(dialect, again) == ids[0], "the trace-id dedupe map survived"
    after = second.stats()
    for key in ("accepted_tasks", "charges", "balance_uptc", "uploads"):
        assert after[key] == before[key], key
    assert after["faults"] == {"deduplicated": 1}
    moved = up["data"].replace(first.base_url, second.base_url)
    assert (await get_bytes(moved))[2] == PNG
    # the state file holds one line per change: 8 tasks, their refunds, one upload
    refunds = list(finals.values()).count("error")
    assert len(state.read_text().splitlines()) == 8 + refunds + 1


async def test_a_render_in_flight_when_the_process_died_ends_on_time(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    state = tmp_path / "sim.state.jsonl"
    first = await sim_factory(state_path=state, render_time_s=(0.3, 0.3))
    assert first.config.clock is time.time
    task_id = await provider_factory(first).generate(CHEAP, trace_id="t")
    await first.stop()
    second = await sim_factory(state_path=state, render_time_s=(0.3, 0.3))
    provider = provider_factory(second)
    assert (await provider.fetch(task_id)).status in (TaskStatus.QUEUED, TaskStatus.RENDERING)
    assert (await final_state(provider, task_id)).status is TaskStatus.SUCCEEDED
    assert second.stats()["in_flight"] == 0


async def test_a_torn_last_line_is_a_change_that_never_happened(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    state = tmp_path / "sim.state.jsonl"
    first = await sim_factory(state_path=state)
    await call(first, "POST", "/pix/generate", body=CHEAP, trace_id="a")
    await first.stop()
    with state.open("a") as torn:
        torn.write('{"t":"task","task_id":"9')
    second = await sim_factory(state_path=state)
    assert second.stats()["accepted_tasks"] == 1
    state.write_text("not json\n" + state.read_text())
    with pytest.raises(UsageError, match="not a simulator state record"):
        await sim_factory(state_path=state)


def test_config_rejects_nonsense_in_the_new_knobs() -> None:
    for knobs in (
        {"fetch_path": "/pix/fetch"},
        {"fetch_path": "/pix/fetch?id=1"},
        {"fetch_path": "pix/{task_id}"},
        {"generate_path": "pix/generate"},
        {"permanent_error_share": 0.5},
        {"permanent_error_code": 0},
        {"not_found_status": 99},
        {"deleted_share": 2.0},
        {"forget_share": -0.1},
        {"dead_url_share": 1.1},
        {"upload_price_uptc": -1},
    ):
        with pytest.raises(UsageError):
            SimConfig(**knobs)  # type: ignore[arg-type]
    assert SimConfig(fetch_path="/pix/fetch?task_id={task_id}").fetch_path.endswith("}")
    assert SimConfig().clock is time.monotonic


async def test_a_shots_later_attempt_after_a_restart_is_not_its_first(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    knobs: dict[str, Any] = {"state_path": tmp_path / "s.jsonl", "fail_first_attempt_share": 1.0}
    first = await sim_factory(**knobs)
    one = trace_id_for("shot", 1, secret=TEST_SECRET)
    task_id = await provider_factory(first).generate(CHEAP, trace_id=one)
    assert (await final_state(provider_factory(first), task_id)).status is TaskStatus.FAILED
    await first.stop()
    second = await sim_factory(**knobs)
    provider = provider_factory(second)
    two = await provider.generate(CHEAP, trace_id=trace_id_for("shot", 2, secret=TEST_SECRET))
    assert (await final_state(provider, two)).status is TaskStatus.SUCCEEDED


def test_pixrun_sim_passes_the_new_knobs_through(tmp_path: Path) -> None:
    state = tmp_path / "sim.jsonl"
    child = subprocess.Popen(
        [
            *(sys.executable, "-m", "runner", "sim", "--port", "0", "--dialect", "web"),
            *("--fetch-path", "/pix/fetch?id={task_id}", "--not-found-status", "404"),
            *("--errors-in-200", "--state-path", str(state), "--upload-price-uptc", "5"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().rsplit(" ", 1)[1].strip()
        auth = {"Authorization": "Bearer sim-key"}
        asked = urllib.request.Request(url + "/pix/fetch?id=42", headers=auth)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(asked, timeout=5)
        assert missing.value.code == 404
        assert json.loads(missing.value.read())["ErrCode"] == 500008
        bad = urllib.request.Request(
            url + "/pix/generate", data=b'{"prompt": "x"}', headers=auth, method="POST"
        )
        with urllib.request.urlopen(bad, timeout=5) as answer:  # errors in HTTP 200
            assert json.loads(answer.read())["ErrCode"] == 400017
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert state.exists() is False, "nothing changed the books: nothing was written"
    refused = subprocess.run(
        [sys.executable, "-m", "runner", "sim", "--port", "0", "--permanent-error-share", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=60,
    )
    assert refused.returncode == 2
    assert "permanent_error_share needs permanent_error_code" in refused.stderr
