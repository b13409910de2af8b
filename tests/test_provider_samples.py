"""Every documented sample payload through the adapter's readers, and one contract suite
run against both response dialects of the simulator."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_SECRET, ProviderFactory, SimFactory, final_state

from runner.errors import (
    AmbiguousSubmit,
    AuthRefused,
    ConcurrencyLimited,
    ContractMismatch,
    InvalidRequest,
    OutOfCredit,
    ProviderError,
    RateLimited,
    TaskNotFound,
    TransientError,
    UnknownProviderError,
    UsageError,
)
from runner.provider import (
    Provider,
    ProviderConfig,
    TaskState,
    TaskStatus,
    parse_fetch,
    parse_generate,
    trace_id_for,
)
from runner.provider.dialects import parse_upload
from runner.provider.verdicts import Call, parse_retry_after
from runner.sim import shot_key_of

SAMPLES = Path(__file__).parent / "data" / "api-samples"


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


# (op, HTTP status the sample is replayed with, headers, expected result or error class)
EXPECTED: dict[str, tuple[str, int, dict[str, str], Any]] = {
    "pixverse-generate-ok.json": ("generate", 200, {}, "315033920339584"),
    "gateway-generate-ok.json": ("generate", 200, {}, "pix_a766793f5e6b4f4e"),
    "pixverse-fetch-done.json": (
        "fetch",
        200,
        {},
        TaskState(
            task_id="315033920339584",
            status=TaskStatus.SUCCEEDED,
            video_url="https://media.pixverse.ai/pixverse%2Fmp4%2Fmedia%2Fweb%2Fexample_seed824547905.mp4",
            seed=824547905,
            width=1280,
            height=720,
            size_bytes=3145728,
            prompt="a red fox running through fresh snow",
        ),
    ),
    "pixverse-fetch-generating.json": ("fetch", 200, {}, TaskStatus.RENDERING),
    "pixverse-fetch-moderated.json": ("fetch", 200, {}, TaskStatus.MODERATED),
    "pixverse-fetch-failed.json": ("fetch", 200, {}, TaskStatus.FAILED),
    "gateway-fetch-running.json": ("fetch", 200, {}, TaskStatus.RENDERING),
    "gateway-fetch-succeeded.json": (
        "fetch",
        200,
        {},
        TaskState(
            task_id="pix_a766793f5e6b4f4e",
            status=TaskStatus.SUCCEEDED,
            video_url="https://file.example-cdn.net/video/pix/20261120/5a31988f.mp4",
            poster_url="https://file.example-cdn.net/video/pix/20261120/2a020e61.jpg",
            prompt="a red fox running through fresh snow",
            refunded=False,
            points="300",
        ),
    ),
    "gateway-fetch-error.json": ("fetch", 200, {}, TaskStatus.FAILED),
    "http-401.json": ("generate", 401, {}, AuthRefused),
    "http-402-balance.json": ("generate", 402, {}, OutOfCredit),
    "http-429-concurrency.json": ("generate", 429, {"Retry-After": "7"}, ConcurrencyLimited),
    "pixverse-error-params.json": ("generate", 200, {}, InvalidRequest),
    "pixverse-web-fetch-done.json": ("fetch", 200, {}, TaskStatus.SUCCEEDED),
    "pixverse-web-fetch-deleted.json": ("fetch", 200, {}, TaskStatus.DELETED),
    "upload-file-ok.json": (
        "upload",
        200,
        {},
        "https://file.302.ai/gpt/imgs/20261120/3f2a9c0d1e.png",
    ),
}


def replay(name: str) -> Any:
    op, status, headers, _ = EXPECTED[name]
    body = sample(name)
    if op == "generate":
        return parse_generate(status, headers, body)
    if op == "upload":
        return parse_upload(status, headers, body)
    return parse_fetch(status, headers, body, "asked-id")


#: samples only the simulator's tests replay so far (the web family, uploads); their
#: expectations belong here once the adapter reads them
def test_every_sample_has_an_expectation() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_replays_to_its_meaning(name: str) -> None:
    expected = EXPECTED[name][3]
    if isinstance(expected, type) and issubclass(expected, ProviderError):
        with pytest.raises(expected) as info:
            replay(name)
        assert type(info.value) is expected
        return
    result = replay(name)
    if isinstance(expected, TaskStatus):
        assert isinstance(result, TaskState)
        assert result.status is expected
    else:
        assert result == expected


def test_integer_task_ids_come_back_as_text() -> None:
    assert replay("pixverse-generate-ok.json") == "315033920339584"
    state = replay("pixverse-fetch-generating.json")
    assert state.task_id == "315033920339584"
    assert state.video_url is None and state.width is None and state.size_bytes is None


def test_failures_carry_the_providers_reason() -> None:
    assert replay("gateway-fetch-error.json").message == "generation failed"
    assert "moderation" in (replay("pixverse-fetch-moderated.json").message or "")


def test_error_samples_carry_codes_and_retry_after() -> None:
    with pytest.raises(ConcurrencyLimited) as conc:
        replay("http-429-concurrency.json")
    assert conc.value.retry_after_s == 7.0
    assert conc.value.provider_code == 500044
    assert isinstance(conc.value, RateLimited)
    with pytest.raises(OutOfCredit) as money:
        # the balance message alone is enough, whatever the HTTP status
        parse_generate(200, {}, sample("http-402-balance.json"))
    assert money.value.provider_code == 500043
    with pytest.raises(InvalidRequest) as bad:
        parse_generate(400, {}, sample("pixverse-error-params.json"))
    assert "Invalid parameter" in str(bad.value)


@pytest.mark.parametrize(
    ("old_status", "expected"),
    [
        ("0", TaskStatus.QUEUED),
        ("1", TaskStatus.RENDERING),
        ("2", TaskStatus.FAILED),
        ("3", TaskStatus.SUCCEEDED),
    ],
)
def test_gateway_older_status_strings(old_status: str, expected: TaskStatus) -> None:
    data = {"task_id": "pix_1", "status": old_status, "video_url": "https://x.example/v.mp4"}
    body = {"code": 200, "msg": "success", "data": data}
    assert parse_fetch(200, {}, body, "pix_1").status is expected


def test_gateway_state_wins_over_old_status_and_moderation_is_recognised() -> None:
    data = {"task_id": "pix_1", "state": "pending", "status": "3"}
    body = {"code": 200, "msg": "success", "data": data}
    assert parse_fetch(200, {}, body, "pix_1").status is TaskStatus.QUEUED
    data = {"task_id": "pix_1", "state": "error", "msg": "content moderation: refused"}
    body = {"code": 200, "msg": "success", "data": data}
    assert parse_fetch(200, {}, body, "pix_1").status is TaskStatus.MODERATED


def test_pixverse_alternate_generating_code_keeps_polling_and_unknown_ones_stop() -> None:
    body = {"ErrCode": 0, "ErrMsg": "success", "Resp": {"id": 5, "status": 10, "url": ""}}
    assert parse_fetch(200, {}, body, "5").status is TaskStatus.RENDERING
    for code in (99, None, "done"):
        body = {"ErrCode": 0, "ErrMsg": "success", "Resp": {"id": 5, "status": code}}
        with pytest.raises(ContractMismatch, match="no documented dialect"):
            parse_fetch(200, {}, body, "5")
    body = {"code": 200, "msg": "success", "data": {"task_id": "x", "state": "exploded"}}
    with pytest.raises(ContractMismatch):
        parse_fetch(200, {}, body, "x")


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (404, "404: Not Found", {"Content-Type": "text/plain"}),
        (404, "<html><body>Not Found</body></html>", {"Content-Type": "text/html"}),
        (405, "405: Method Not Allowed", {}),
        (404, {"error": {"message": "no route"}}, {}),
        (302, "", {"Location": "https://login.example/"}),
        (200, "<!doctype html><title>302.AI</title>", {"Content-Type": "text/html"}),
        (200, {"task": "?"}, {}),
        (200, {"code": 200, "msg": "success", "data": "a string"}, {}),
    ],
)
def test_a_route_level_fetch_answer_is_a_contract_mismatch_never_task_gone(
    status: int, body: Any, headers: dict[str, str]
) -> None:
    call = Call("GET", "https://api.example/pix/task/7/fetch")
    with pytest.raises(ContractMismatch) as info:
        parse_fetch(status, headers, body, "7", call=call)
    text = str(info.value)
    assert "GET https://api.example/pix/task/7/fetch" in text and f"HTTP {status}" in text
    assert "fetch_path" in (info.value.hint or "") and "pixrun doctor" in (info.value.hint or "")
    assert info.value.exit_code == 5 and not info.value.shot_charged


def test_generate_answers_say_whether_a_task_may_exist() -> None:
    call = Call("POST", "https://api.example/pix/generate")
    with pytest.raises(ContractMismatch) as wrong_route:
        parse_generate(404, {}, "404: Not Found", call=call)
    assert not wrong_route.value.shot_charged
    with pytest.raises(ContractMismatch) as no_id:
        parse_generate(200, {}, {"ErrCode": 0, "ErrMsg": "success", "Resp": {}}, call=call)
    assert no_id.value.shot_charged and "parked" in str(no_id.value)


def test_web_dialect_statuses_refunds_and_points() -> None:
    def web(status: int) -> dict[str, Any]:
        resp = {"video_id": 42, "video_status": status, "url": "https://v.example/a.mp4"}
        return {"ErrCode": 0, "ErrMsg": "success", "Resp": resp}

    assert parse_fetch(200, {}, web(1), "42").status is TaskStatus.SUCCEEDED
    assert parse_fetch(200, {}, web(5), "42").status is TaskStatus.RENDERING
    deleted = parse_fetch(200, {}, web(6), "42")
    assert deleted.status is TaskStatus.DELETED and "deleted" in (deleted.message or "")
    assert parse_fetch(200, {}, web(7), "42").status is TaskStatus.MODERATED
    assert parse_fetch(200, {}, web(8), "42").status is TaskStatus.FAILED
    failed = parse_fetch(200, {}, sample("gateway-fetch-error.json"), "pix_b1c2d3e4f5a6b7c8")
    assert failed.refunded is True and failed.points == "0"
    done = parse_fetch(200, {}, sample("gateway-fetch-succeeded.json"), "pix_a766793f5e6b4f4e")
    assert done.refunded is False and done.points == "300"
    assert parse_fetch(200, {}, sample("pixverse-fetch-done.json"), "1").refunded is None


def test_success_without_a_url_is_not_collectable_yet() -> None:
    body = {"ErrCode": 0, "ErrMsg": "success", "Resp": {"id": 5, "status": 1, "url": ""}}
    state = parse_fetch(200, {}, body, "5")
    assert state.status is TaskStatus.RENDERING
    assert state.message


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (503, "<html>503 Service Unavailable</html>", TransientError),
        (500, {"code": 500, "msg": "internal error", "data": None}, TransientError),
        (504, "gateway timeout", AmbiguousSubmit),
        (200, "<html>ok?</html>", ContractMismatch),
        (200, {"ErrCode": 0, "ErrMsg": "success", "Resp": {}}, ContractMismatch),
        (422, {"error": {"message": "bad field"}}, InvalidRequest),
        (404, "not found", ContractMismatch),
        (404, {"error": {"message": "Invalid URL (POST /pix/generat)"}}, ContractMismatch),
        (405, {"detail": "Method Not Allowed"}, ContractMismatch),
        (200, {"result": "ok"}, ContractMismatch),
        (301, "", ContractMismatch),
        (413, "<html>413 Request Entity Too Large</html>", InvalidRequest),
        (200, {"ErrCode": 500054, "ErrMsg": "Content moderation failure."}, InvalidRequest),
        (200, {"ErrCode": 500070, "ErrMsg": "This template is not activated"}, InvalidRequest),
        (200, {"ErrCode": 500060, "ErrMsg": "Monthly effects activation limit"}, OutOfCredit),
        (200, {"ErrCode": 500069, "ErrMsg": "high load"}, TransientError),
        (200, {"code": 401, "msg": "token is invalid"}, AuthRefused),
        (200, {"ErrCode": 999999, "ErrMsg": "something new"}, UnknownProviderError),
        (200, {"ErrCode": 500063, "ErrMsg": "input contains sensitive content"}, InvalidRequest),
        # a "not found" names no task on generate: the route is missing, no shot's fault
        (200, {"code": 404, "msg": "not found", "data": None}, ContractMismatch),
        (404, {"code": 404, "msg": "route not found", "data": None}, ContractMismatch),
        (404, {"ErrCode": 400017, "ErrMsg": "Invalid parameter"}, ContractMismatch),
        (400, {"code": 400, "msg": "model not found", "data": None}, InvalidRequest),
    ],
)
def test_generate_answers_that_are_not_a_task(status: int, body: Any, error: type) -> None:
    with pytest.raises(error) as info:
        parse_generate(status, {}, body)
    assert type(info.value) is error


def test_an_upload_route_that_says_not_found_is_a_contract_mismatch() -> None:
    with pytest.raises(ContractMismatch):
        parse_upload(200, {}, {"code": 404, "msg": "not found", "data": None})


def test_fetch_not_found_in_both_dialects() -> None:
    with pytest.raises(TaskNotFound):
        parse_fetch(404, {}, {"ErrCode": 404, "ErrMsg": "task not found"}, "1")
    with pytest.raises(TaskNotFound):
        parse_fetch(200, {}, {"code": 404, "msg": "task does not exist", "data": None}, "1")


def test_provider_messages_are_redacted() -> None:
    key = "sk-live-SECRET-0123"
    body = {"error": {"message": f"invalid api key {key}"}}
    with pytest.raises(AuthRefused) as info:
        parse_generate(401, {}, body, redact=lambda text: text.replace(key, "[redacted]"))
    assert key not in str(info.value) and key not in repr(info.value)


def test_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now_s=now.timestamp()) == pytest.approx(30.0)
    assert parse_retry_after(format_datetime(now, usegmt=True), now_s=now.timestamp() + 5) == 0.0


# ---- the Ai-trace-id rule and the configuration ----------------------------------------


def test_trace_id_is_deterministic_per_shot_and_attempt() -> None:
    a1 = trace_id_for("shot-a", 1, secret=TEST_SECRET)
    assert a1 == trace_id_for("shot-a", 1, secret=TEST_SECRET)
    assert (
        len(
            {
                a1,
                trace_id_for("shot-a", 2, secret=TEST_SECRET),
                trace_id_for("shot-b", 1, secret=TEST_SECRET),
            }
        )
        == 3
    )
    parsed = uuid.UUID(a1)
    assert parsed.version == 8
    assert parsed.int & 0xFFFFFFFF == 1
    # the simulator recognises the attempts of one shot (for "fail the first attempt")
    assert shot_key_of(a1, {}) == shot_key_of(trace_id_for("shot-a", 2, secret=TEST_SECRET), {})
    assert shot_key_of(a1, {}) != shot_key_of(trace_id_for("shot-b", 1, secret=TEST_SECRET), {})


def test_trace_ids_of_two_ledgers_never_meet() -> None:
    """Two ledgers (two people, two projects) with a shot of the same name: a provider
    that deduplicates on the trace id must not hand one the other's video."""
    other = b"another-ledger-secret-0123456789"
    mine = {trace_id_for("hero@v1", n, secret=TEST_SECRET) for n in range(1, 50)}
    theirs = {trace_id_for("hero@v1", n, secret=other) for n in range(1, 50)}
    assert not mine & theirs
    with pytest.raises(ValueError):
        trace_id_for("hero@v1", 1, secret=b"short")


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXRUN_API_KEY", raising=False)
    monkeypatch.delenv("PIXRUN_BASE_URL", raising=False)
    with pytest.raises(UsageError) as info:
        ProviderConfig.from_env()
    assert "PIXRUN_API_KEY" in str(info.value) and info.value.hint
    monkeypatch.setenv("PIXRUN_API_KEY", "sk-SECRET-value")
    config = ProviderConfig.from_env()
    assert config.base_url == "https://api.302.ai"
    assert "sk-SECRET-value" not in repr(config)
    assert "SECRET" not in repr(Provider(config))
    monkeypatch.setenv("PIXRUN_BASE_URL", "http://127.0.0.1:9/")
    assert ProviderConfig.from_env().base_url == "http://127.0.0.1:9"
    assert ProviderConfig.from_env("http://h:1", read_timeout_s=3).read_timeout_s == 3
    with pytest.raises(UsageError):
        ProviderConfig.from_env("ftp://h")
    with pytest.raises(UsageError):
        ProviderConfig.from_env(no_such_setting=1)


# ---- one contract suite, both dialects, over real HTTP ---------------------------------

TEXT_REQUEST = {"prompt": "a red fox in snow", "model": "v4.5", "quality": "540p", "duration": 5}


@pytest.fixture(params=["pixverse", "gateway"])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_contract_lifecycle(
    dialect: str, sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    sim = await sim_factory(dialect=dialect, render_time_s=(0.05, 0.05))
    provider = provider_factory(sim)
    task_id = await provider.generate(
        TEXT_REQUEST, trace_id=trace_id_for("s1", 1, secret=TEST_SECRET)
    )
    assert isinstance(task_id, str)
    if dialect == "pixverse":
        assert task_id.isdigit()
    else:
        assert task_id.startswith("pix_")
    first = await provider.fetch(task_id)
    assert first.status in (TaskStatus.QUEUED, TaskStatus.RENDERING)
    assert first.video_url is None
    done = await final_state(provider, task_id, polls=200)
    assert done.status is TaskStatus.SUCCEEDED
    assert done.task_id == task_id
    assert done.video_url is not None
    result = await provider.download(done.video_url, tmp_path / "s1.mp4")
    record = sim.stats()["tasks"][0]
    assert result.sha256 == record["sha256"]
    if dialect == "pixverse":
        assert (done.width, done.height, done.size_bytes) == (64, 64, result.bytes)


async def test_contract_moderation_and_failure(
    dialect: str, sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(
        dialect=dialect, moderated_words=("forbidden",), fail_first_attempt_share=1.0
    )
    provider = provider_factory(sim)
    moderated = await provider.generate(
        {**TEXT_REQUEST, "prompt": "a Forbidden scene"},
        trace_id=trace_id_for("m", 1, secret=TEST_SECRET),
    )
    assert (await final_state(provider, moderated, polls=200)).status is TaskStatus.MODERATED
    failed = await provider.generate(
        TEXT_REQUEST, trace_id=trace_id_for("f", 1, secret=TEST_SECRET)
    )
    state = await final_state(provider, failed, polls=200)
    assert state.status is TaskStatus.FAILED and state.message
    retried = await provider.generate(
        TEXT_REQUEST, trace_id=trace_id_for("f", 2, secret=TEST_SECRET)
    )
    assert (await final_state(provider, retried, polls=200)).status is TaskStatus.SUCCEEDED


async def test_contract_refusals(
    dialect: str, sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(dialect=dialect)
    provider = provider_factory(sim)
    with pytest.raises(InvalidRequest) as bad:
        await provider.generate({**TEXT_REQUEST, "quality": "1080p", "duration": 8}, trace_id="t")
    assert "1080p" in str(bad.value)
    with pytest.raises(TaskNotFound):
        await provider.fetch("315033920339999" if dialect == "pixverse" else "pix_nope")
    with pytest.raises(AuthRefused):
        await provider_factory(sim, api_key="wrong-key").fetch("1")
    assert sim.stats()["accepted_tasks"] == 0
