"""``pixrun doctor``: free checks, route discovery, --spend, and the settings file.

The CLI runs as a real process against a simulator thread, whose books prove what
reached the provider (doctor must create no task and charge nothing). Answers the
simulator never gives (a gateway that answers every route in its envelope, a generate
route that accepts anything, redirects) come from a small real aiohttp server.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from runkit import (
    KEY,
    PRICE_UPTC,
    SimThread,
    assert_key_absent,
    env_for,
    flat,
    free_port,
    pixrun,
)

from runner.doctor import (
    Outcome,
    check_clock,
    check_disk,
    check_ledger_folder,
    diagnose,
)
from runner.doctor_spend import _read_fetch, _task_id_of
from runner.errors import AmbiguousSubmit, ContractMismatch, ExitCode, TransientError, UsageError
from runner.provider import ProviderConfig, mp4_problem
from runner.provider.probe import ProbeAnswer, Verdict, classify
from runner.provider.settings_file import save_settings, saved_settings

ALT_FETCH = "/pix/fetch/{task_id}"


def doctor(
    args: list[str], base_url: str, cwd: Path, *, key: str = KEY, config: Path | None = None
) -> Any:
    env = env_for(base_url, key=key)
    if config is not None:
        env["PIXRUN_CONFIG"] = str(config)
    result = pixrun(["doctor", *args], env, cwd=cwd)
    assert_key_absent(KEY, result.stdout, result.stderr)
    return result


def books(sim: Any) -> tuple[int, int]:
    """(tasks created, micro-PTC charged) at the simulator."""
    stats = sim.stats(with_tasks=False)
    return stats["accepted_tasks"], stats["charges"]["sum_uptc"]


def results(stdout: str) -> dict[str, str]:
    return {c["name"]: c["result"] for c in json.loads(stdout)["checks"]}


# -- the CLI against the simulator ------------------------------------------------------


def test_all_good_is_free_and_exits_0(sim_thread: SimThread, tmp_path: Path) -> None:
    sim = sim_thread()
    result = doctor([], sim.base_url, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    out = flat(result.stdout)
    assert "free: no task was created" in out
    assert books(sim) == (0, 0)
    # the generate route was asked, and refused the probe
    assert sim.stats(with_tasks=False)["refusals"].get("invalid") == 1
    assert list(tmp_path.iterdir()) == [], "the ledger-folder probe file was left behind"
    assert sim.stats(with_tasks=False)["uploads"]["charged_uptc"] == 0


def test_json_format_parses_and_names_every_check(sim_thread: SimThread, tmp_path: Path) -> None:
    sim = sim_thread(dialect="gateway")
    result = doctor(["--format", "json"], sim.base_url, tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert results(result.stdout) == {
        "key": "ok",
        "dialect": "ok",
        "generate route": "ok",
        "fetch route": "ok",
        "upload route": "ok",
        "disk space": "ok",
        "ledger folder": "ok",
        "clock": "ok",
    }
    assert "gateway" in doc["checks"][1]["found"]
    assert doc["working"] == {
        "generate_path": "/pix/generate",
        "fetch_path": "/pix/task/{task_id}/fetch",
    }
    assert all(
        a["request"]["headers"]["Authorization"] == "Bearer [redacted]" for a in doc["answers"]
    )
    assert books(sim) == (0, 0)


def test_a_refused_key_exits_3(sim_thread: SimThread, tmp_path: Path) -> None:
    sim = sim_thread()
    result = doctor([], sim.base_url, tmp_path, key="sk-wrong-key-000")
    assert result.returncode == ExitCode.AUTH, result.stderr
    assert "refused the API key" in flat(result.stderr)
    assert books(sim) == (0, 0)


@pytest.mark.parametrize("route", [ALT_FETCH, "/pix/fetch?task_id={task_id}"])
def test_a_wrong_fetch_route_exits_5_then_save_fixes_it(
    sim_thread: SimThread, tmp_path: Path, route: str
) -> None:
    sim = sim_thread(fetch_path=route)
    settings = tmp_path / "conf" / "config.toml"
    first = doctor([], sim.base_url, tmp_path, config=settings)
    assert first.returncode == ExitCode.CONTRACT, first.stderr
    assert f"--provider-option fetch_path={route}" in flat(first.stderr)
    assert not settings.exists()

    saved = doctor(["--save"], sim.base_url, tmp_path, config=settings)
    assert saved.returncode == 0, saved.stderr + saved.stdout
    table = tomllib.loads(settings.read_text("utf-8"))["providers"][sim.base_url]
    assert table == {"fetch_path": route, "generate_path": "/pix/generate"}

    again = doctor(["--format", "json"], sim.base_url, tmp_path, config=settings)
    assert again.returncode == 0, again.stderr
    assert results(again.stdout)["fetch route"] == "ok"
    assert books(sim) == (0, 0)


def test_a_wrong_generate_route_exits_5(sim_thread: SimThread, tmp_path: Path) -> None:
    sim = sim_thread(generate_path="/pix/v2/generate")
    result = doctor([], sim.base_url, tmp_path)
    assert result.returncode == ExitCode.CONTRACT, result.stderr
    assert "generate_path=" in flat(result.stderr)
    fixed = doctor(["--provider-option", "generate_path=/pix/v2/generate"], sim.base_url, tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert books(sim) == (0, 0)


def test_spend_runs_one_cheapest_shot_end_to_end(sim_thread: SimThread, tmp_path: Path) -> None:
    sim = sim_thread()
    folder = tmp_path / "evidence"
    result = doctor(["--spend", "--yes", "--save-dir", str(folder)], sim.base_url, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert books(sim) == (1, PRICE_UPTC)
    (task,) = sim.stats()["tasks"]
    video = folder / "pixrun-doctor.mp4"
    assert mp4_problem(video) is None
    assert str(folder) in flat(result.stdout)
    generate = json.loads((folder / "01-generate.json").read_text("utf-8"))
    assert generate["status"] == 200
    assert generate["request"]["body"]["quality"] == "360p"
    assert str(generate["body"]["Resp"]["video_id"]) == task["task_id"]
    fetches = sorted(folder.glob("*-fetch-*.json"))
    assert fetches and json.loads(fetches[-1].read_text("utf-8"))["body"]["Resp"]["status"] == 1
    assert_key_absent(KEY, files=folder.iterdir())


def test_a_spend_shot_refused_by_moderation_exits_1_with_its_answers(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread(moderated_words=("paper boat",))
    folder = tmp_path / "evidence"
    result = doctor(["--spend", "--yes", "--save-dir", str(folder)], sim.base_url, tmp_path)
    assert result.returncode == ExitCode.SHOTS_FAILED, result.stderr
    assert "moderated" in flat(result.stderr) and str(folder) in flat(result.stderr)
    assert books(sim)[0] == 1
    last = json.loads(sorted(folder.glob("*-fetch-*.json"))[-1].read_text("utf-8"))
    assert last["body"]["Resp"]["status"] == 7
    assert not (folder / "pixrun-doctor.mp4").exists()


@pytest.mark.parametrize(
    ("ambiguous", "expected"), [((504,), TransientError), ((503, 504), AmbiguousSubmit)]
)
def test_spend_reads_a_generate_error_as_a_run_would(
    tmp_path: Path, ambiguous: tuple[int, ...], expected: type[Exception]
) -> None:
    # a 503 the gateway forwarded: the configured statuses decide "maybe charged"
    config = ProviderConfig(
        base_url="http://127.0.0.1:9", api_key=KEY, ambiguous_generate_statuses=ambiguous
    )
    answer = ProbeAnswer(
        request={"method": "POST", "url": config.generate_url()},
        status=503,
        body={"code": 503, "message": "upstream busy", "data": None},
    )
    with pytest.raises(expected) as caught:
        _task_id_of(answer, config, "trace-1", tmp_path)
    assert str(tmp_path) in (caught.value.hint or "")


def test_a_spend_fetch_in_no_known_status_names_the_paid_task_not_a_rerun() -> None:
    """doctor --spend keeps no ledger: a status no dialect defines ends the test naming
    the task that was paid for, never promising that a rerun collects it."""
    config = ProviderConfig(base_url="http://127.0.0.1:9", api_key=KEY)
    body = {"code": 200, "msg": "success", "data": {"task_id": "77", "state": "archived"}}
    answer = ProbeAnswer(
        request={"method": "GET", "url": config.fetch_url("77")}, status=200, body=body
    )
    with pytest.raises(ContractMismatch) as caught:
        _read_fetch(answer, classify(answer), config, "77")
    said = f"{caught.value.message} {caught.value.hint}"
    assert "Task 77 was created and charged" in said
    assert "rerun" not in said


def test_spend_without_a_terminal_needs_yes(sim_thread: SimThread, tmp_path: Path) -> None:
    sim = sim_thread()
    result = doctor(["--spend"], sim.base_url, tmp_path)
    assert result.returncode == ExitCode.INVALID
    assert "--yes" in flat(result.stderr)
    assert sim.stats(with_tasks=False)["calls"] == {}, "nothing may be sent before the yes"


def test_spend_is_not_run_when_the_routes_are_wrong(sim_thread: SimThread, tmp_path: Path) -> None:
    sim = sim_thread(fetch_path=ALT_FETCH)
    result = doctor(["--spend", "--yes", "--save-dir", str(tmp_path / "e")], sim.base_url, tmp_path)
    assert result.returncode == ExitCode.CONTRACT
    assert books(sim) == (0, 0)


def test_doctor_checks_the_folders_of_a_manifest(sim_thread: SimThread, tmp_path: Path) -> None:
    sim = sim_thread()
    manifest = tmp_path / "batch" / "shots.yaml"
    manifest.parent.mkdir()
    doc = {
        "version": 1,
        "output": {"dir": "renders/out"},
        "shots": [{"id": "a", "prompt": "a lake", "model": "v4.5", "quality": "360p"}],
    }
    manifest.write_text(yaml.safe_dump(doc), "utf-8")
    result = doctor(["--format", "json", str(manifest)], sim.base_url, tmp_path)
    assert result.returncode == 0, result.stderr
    found = {c["name"]: c["found"] for c in json.loads(result.stdout)["checks"]}
    assert str(manifest.parent / "renders" / "out") in found["disk space"]
    assert str(manifest.parent) in found["ledger folder"]


# -- the settings file -------------------------------------------------------------------


def test_an_explicit_option_beats_the_settings_file(
    sim_thread: SimThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = sim_thread()
    settings = tmp_path / "config.toml"
    monkeypatch.setenv("PIXRUN_CONFIG", str(settings))  # where this process saves
    save_settings(sim.base_url, {"fetch_path": "/pix/nowhere/{task_id}"})
    wrong = doctor([], sim.base_url, tmp_path, config=settings)
    assert wrong.returncode == ExitCode.CONTRACT, "the saved (wrong) route was not used"
    explicit = doctor(
        ["--provider-option", "fetch_path=/pix/task/{task_id}/fetch"],
        sim.base_url,
        tmp_path,
        config=settings,
    )
    assert explicit.returncode == 0, explicit.stderr


def test_an_unknown_key_in_the_settings_file_is_refused(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    settings = tmp_path / "config.toml"
    settings.write_text(f'[providers."{sim.base_url}"]\nfetch_pth = "/x/{{task_id}}"\n', "utf-8")
    result = doctor([], sim.base_url, tmp_path, config=settings)
    assert result.returncode == ExitCode.INVALID
    assert str(settings) in flat(result.stderr) and "fetch_pth" in result.stderr


def test_settings_apply_under_overrides_per_base_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tmp_path / "config.toml"
    monkeypatch.setenv("PIXRUN_CONFIG", str(settings))
    monkeypatch.setenv("PIXRUN_API_KEY", KEY)
    save_settings("https://a.example", {"fetch_path": "/a/{task_id}", "read_timeout_s": 7.5})
    save_settings("https://b.example/", {"fetch_path": "/b/{task_id}"})
    save_settings("https://a.example", {"generate_path": "/a/gen"})  # merged, not replaced
    a = ProviderConfig.from_env("https://a.example/")
    assert (a.fetch_path, a.generate_path, a.read_timeout_s) == ("/a/{task_id}", "/a/gen", 7.5)
    assert ProviderConfig.from_env("https://b.example").fetch_path == "/b/{task_id}"
    assert ProviderConfig.from_env("https://c.example").fetch_path == "/pix/task/{task_id}/fetch"
    flagged = ProviderConfig.from_env("https://a.example", fetch_path="/flag/{task_id}")
    assert flagged.fetch_path == "/flag/{task_id}"
    assert "api_key" not in settings.read_text("utf-8")


def test_the_settings_file_holds_no_key_or_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tmp_path / "config.toml"
    monkeypatch.setenv("PIXRUN_CONFIG", str(settings))
    settings.write_text('[providers."https://a.example"]\napi_key = "sk-x"\n', "utf-8")
    with pytest.raises(UsageError, match="api_key"):
        saved_settings("https://a.example", {"api_key", "fetch_path"})


def test_an_empty_pixrun_config_means_no_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIXRUN_CONFIG", "")
    assert saved_settings("https://a.example", {"fetch_path"}) == {}
    with pytest.raises(UsageError, match="PIXRUN_CONFIG"):
        save_settings("https://a.example", {"fetch_path": "/a/{task_id}"})


# -- the classification rule -------------------------------------------------------------


def answer(status: int | None, body: Any = None, **headers: str) -> ProbeAnswer:
    return ProbeAnswer(
        request={"method": "GET", "url": "http://x/"}, status=status, headers=headers, body=body
    )


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (401, {"ErrCode": 0, "Resp": {}}, Verdict.KEY_REFUSED),
        (403, "<html>forbidden</html>", Verdict.KEY_REFUSED),
        (302, "", Verdict.ROUTE_LEVEL),
        (404, "404: Not Found", Verdict.ROUTE_LEVEL),
        (405, {"error": {"message": "method not allowed"}}, Verdict.ROUTE_LEVEL),
        (404, {"error": {"message": "not found"}}, Verdict.ROUTE_LEVEL),
        (200, "<!doctype html><title>302.AI</title>", Verdict.ROUTE_LEVEL),
        (200, {"status": "ok"}, Verdict.ROUTE_LEVEL),
        (200, {"ErrCode": 500008, "ErrMsg": "Requested data not found"}, Verdict.NO_SUCH_TASK),
        (404, {"ErrCode": 500008, "ErrMsg": "?"}, Verdict.NO_SUCH_TASK),
        (200, {"code": 404, "msg": "?", "data": None}, Verdict.NO_SUCH_TASK),
        (404, {"code": 1, "msg": "task does not exist", "data": None}, Verdict.NO_SUCH_TASK),
        (400, {"ErrCode": 400017, "ErrMsg": "Invalid parameter"}, Verdict.ENVELOPE),
        (200, {"code": 200, "msg": "success", "data": {"state": "running"}}, Verdict.ENVELOPE),
        (503, "Service Unavailable", Verdict.INCONCLUSIVE),
        (429, {"error": {"message": "Too many requests"}}, Verdict.INCONCLUSIVE),
        (None, None, Verdict.NO_ANSWER),
    ],
)
def test_the_classification_rule(status: int | None, body: Any, verdict: Verdict) -> None:
    assert classify(answer(status, body)) is verdict


# -- answers the simulator never gives ------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def fake_api() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """``base_url = await fake_api(handler)``: a real server on 127.0.0.1 whose every
    request goes to ``handler``."""
    runners: list[web.AppRunner] = []

    async def make(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield make
    for runner in runners:
        await runner.cleanup()


def config_for(base_url: str) -> ProviderConfig:
    return ProviderConfig(base_url=base_url, api_key=KEY)


async def run_doctor(base_url: str, tmp_path: Path) -> dict[str, Any]:
    report = await diagnose(config_for(base_url), output_dir=tmp_path, ledger_dir=tmp_path)
    return {"report": report, **{c.name: c for c in report.checks}}


async def test_a_query_form_fetch_route_is_found(fake_api: Any, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/pix/generate":
            return web.json_response({"ErrCode": 400017, "ErrMsg": "Invalid parameter"}, status=400)
        if request.path == "/pixverse/v1/pro/feed" and request.query.get("task_id"):
            return web.json_response({"ErrCode": 500008, "ErrMsg": "Requested data not found"})
        return web.Response(status=404, text="<html>nginx</html>", content_type="text/html")

    found = await run_doctor(await fake_api(handler), tmp_path)
    fetch = found["fetch route"]
    assert fetch.outcome is Outcome.FAIL
    assert fetch.remedy == {"fetch_path": "/pixverse/v1/pro/feed?task_id={task_id}"}
    assert found["report"].exit_code == ExitCode.CONTRACT
    assert found["report"].working["fetch_path"] == "/pixverse/v1/pro/feed?task_id={task_id}"
    upload = found["upload route"]
    assert upload.outcome is Outcome.WARN and "image_encoding=data_uri" in upload.fix


async def test_a_provider_that_answers_every_route_proves_no_route(
    fake_api: Any, tmp_path: Path
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/pix/generate":
            return web.json_response(
                {"code": 400, "msg": "model is invalid", "data": None}, status=400
            )
        return web.json_response({"code": 404, "msg": "not found", "data": None}, status=404)

    found = await run_doctor(await fake_api(handler), tmp_path)
    assert found["fetch route"].outcome is Outcome.WARN
    assert "--spend" in found["fetch route"].fix
    assert "fetch_path" not in found["report"].working
    assert found["generate route"].outcome is Outcome.OK


async def test_the_dialect_is_read_from_the_fetch_route_found(
    fake_api: Any, tmp_path: Path
) -> None:
    """Generate and the configured fetch route are wrong, another fetch route answers in
    the PixVerse envelope: the dialect is known, and the fix names the routes, not "the
    base URL is not the 302.AI API"."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/pix/feed/"):
            return web.json_response({"ErrCode": 500008, "ErrMsg": "Requested data not found"})
        return web.Response(status=404, text="<html>nginx</html>", content_type="text/html")

    found = await run_doctor(await fake_api(handler), tmp_path)
    assert found["dialect"].outcome is Outcome.OK, found["dialect"]
    assert "pixverse" in found["dialect"].found
    assert found["fetch route"].remedy == {"fetch_path": "/pix/feed/{task_id}"}
    assert found["report"].exit_code == ExitCode.CONTRACT


async def test_a_gateway_that_says_not_found_everywhere_is_a_route_mismatch(
    fake_api: Any, tmp_path: Path
) -> None:
    """Every path answers ``{"code": 404, "msg": "not found"}`` with HTTP 200: no route is
    proven, and a run would stop on the first generate (exit 5), so doctor says so."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"code": 404, "msg": "not found", "data": None})

    found = await run_doctor(await fake_api(handler), tmp_path)
    assert found["generate route"].outcome is Outcome.FAIL
    assert "generate_path" in found["generate route"].fix
    assert found["upload route"].outcome is Outcome.WARN
    assert found["report"].exit_code == ExitCode.CONTRACT
    assert "generate_path" not in found["report"].working


async def test_a_generate_route_that_accepts_the_probe_fails_loudly(
    fake_api: Any, tmp_path: Path
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/pix/generate":
            return web.json_response({"ErrCode": 0, "ErrMsg": "success", "Resp": {"video_id": 42}})
        return web.json_response({"ErrCode": 500008, "ErrMsg": "Requested data not found"})

    found = await run_doctor(await fake_api(handler), tmp_path)
    generate = found["generate route"]
    assert generate.outcome is Outcome.FAIL and "TASK MAY HAVE BEEN CREATED" in generate.found
    assert "42" in generate.found
    assert found["report"].exit_code == ExitCode.CONTRACT


async def test_redirects_and_html_are_route_level(fake_api: Any, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.Response(text="<html>welcome to 302.AI</html>", content_type="text/html")
        raise web.HTTPFound("https://302.ai/login")

    found = await run_doctor(await fake_api(handler), tmp_path)
    assert found["generate route"].outcome is Outcome.FAIL
    assert found["fetch route"].outcome is Outcome.FAIL
    assert "https://302.ai/login" in found["fetch route"].found
    assert found["dialect"].outcome is Outcome.FAIL
    assert found["key"].outcome is Outcome.WARN  # never proven either way
    assert found["report"].exit_code == ExitCode.CONTRACT


async def test_a_provider_that_is_down_exits_2(tmp_path: Path) -> None:
    port = free_port()  # a port nobody listens on
    found = await run_doctor(f"http://127.0.0.1:{port}", tmp_path)
    assert found["key"].outcome is Outcome.FAIL and "cannot connect" in found["key"].found
    assert found["report"].exit_code == ExitCode.INVALID


# -- machine checks ------------------------------------------------------------------------


def test_an_unwritable_ledger_folder_fails(tmp_path: Path) -> None:
    check = check_ledger_folder(tmp_path / "missing")
    assert check.outcome is Outcome.FAIL and check.exit_code == ExitCode.INVALID
    assert check_ledger_folder(tmp_path).outcome is Outcome.OK
    assert list(tmp_path.iterdir()) == []


def test_disk_space_of_a_folder_not_made_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check_disk(tmp_path / "not" / "yet").outcome is Outcome.OK
    monkeypatch.setattr("runner.doctor.MIN_FREE_BYTES", 10**18)
    assert check_disk(tmp_path).outcome is Outcome.WARN


def test_the_clock_against_the_provider_date() -> None:
    now_s = 1_700_000_000.0
    date = "Tue, 14 Nov 2023 22:13:20 GMT"  # == now_s
    near = ProbeAnswer(request={}, status=404, headers={"Date": date}, received_at_s=now_s + 2)
    far = ProbeAnswer(request={}, status=404, headers={"Date": date}, received_at_s=now_s + 600)
    assert check_clock([near]).outcome is Outcome.OK
    skewed = check_clock([far])
    assert skewed.outcome is Outcome.WARN and "+600 s" in skewed.found
    assert check_clock([ProbeAnswer(request={}, status=None)]).outcome is Outcome.WARN
