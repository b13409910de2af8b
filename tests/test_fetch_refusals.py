"""Refusals the provider sends in a recognised envelope, against a real gateway stand-in
(the simulator never answers this way): a fetch refused for good, an error code pixrun
does not know. Asking again will not help, so the run stops within seconds with the
right exit code instead of waiting it out as an outage for hours; nothing is failed,
every task id is kept, and a rerun once the gateway answers collects every task
without a new generate.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from hookkit import AppThread
from runkit import KEY, explain, flat, ledger_task_ids, run_pixrun, states, write_manifest

TINY_MP4 = Path(__file__).resolve().parents[1] / "runner" / "data" / "tiny.mp4"


class Gateway(AppThread):
    """A gateway-dialect API in a thread: generate answers ``generate_refusal`` (a JSON
    body sent with HTTP 200) while it is set, else accepts; fetch answers ``refusal``
    while it is set, else "succeeded"."""

    def __init__(self) -> None:
        self.refusal: dict[str, Any] | None = None
        self.generate_refusal: dict[str, Any] | None = None
        self.generates = 0
        self._ids = itertools.count(1)
        app = web.Application()
        app.router.add_post("/pix/generate", self._generate)
        app.router.add_get("/pix/task/{task_id}/fetch", self._fetch)
        app.router.add_get("/v/{name}", self._video)
        super().__init__(app, access_log=False)
        self.base_url = self.origin

    async def _generate(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        self.generates += 1
        if self.generate_refusal is not None:
            return web.json_response(self.generate_refusal)
        task_id = f"t{next(self._ids)}"
        return web.json_response({"code": 200, "msg": "success", "data": {"task_id": task_id}})

    async def _fetch(self, request: web.Request) -> web.Response:
        if self.refusal is not None:
            return web.json_response(self.refusal)
        task_id = request.match_info["task_id"]
        data = {
            "task_id": task_id,
            "state": "succeeded",
            "video_url": f"{self.base_url}/v/{task_id}.mp4",
        }
        return web.json_response({"code": 200, "msg": "success", "data": data})

    async def _video(self, request: web.Request) -> web.Response:
        return web.Response(body=TINY_MP4.read_bytes(), content_type="video/mp4")


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway()
    yield gw
    gw.close()


UNKNOWN = {"ErrCode": 999999, "ErrMsg": "something new"}


def _batch(tmp_path: Path) -> Any:
    batch = write_manifest(tmp_path, 3, concurrency=3)
    doc = yaml.safe_load(batch.manifest.read_text())
    # an outage would end after 3 s here (exit 1): these answers must not be taken for one
    doc["run"]["outage_timeout_s"] = 3
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return batch


def _assert_stops(batch: Any, gateway: Gateway, words: str, state: str) -> None:
    """A run through the gateway stops (exit 5), says ``words``, and leaves every shot
    in ``state``: an answer pixrun cannot place is never waited out or retried for long."""
    stopped = run_pixrun(batch, gateway.base_url)
    said = explain(stopped)
    assert stopped.returncode == 5, said
    assert words in flat(stopped.stdout), said
    assert set(states(batch.ledger).values()) == {state}, said


def _assert_rerun_collects(batch: Any, gateway: Gateway) -> None:
    """Once the gateway answers again, a rerun finishes every shot."""
    run_pixrun(batch, gateway.base_url, check=True)
    assert set(states(batch.ledger).values()) == {"done"}


@pytest.mark.parametrize(
    ("refusal", "exit_code", "words"),
    [
        # an account-level refusal (a monthly limit) even on the free fetch: exit 4
        ({"ErrCode": 500060, "ErrMsg": "monthly limit reached"}, 4, "top up"),
        # pixrun's fetch refused as invalid: its fetch is not the provider's (exit 5)
        ({"ErrCode": 400017, "ErrMsg": "Invalid parameter"}, 5, "fetch_path"),
        # an error code pixrun does not know: asking again will not help (exit 5)
        (UNKNOWN, 5, "something new"),
    ],
)
def test_a_refused_fetch_stops_at_once_and_a_rerun_collects_for_free(
    tmp_path: Path, gateway: Gateway, refusal: dict[str, Any], exit_code: int, words: str
) -> None:
    batch = _batch(tmp_path)
    gateway.refusal = refusal
    first = run_pixrun(batch, gateway.base_url)
    said = explain(first)
    assert first.returncode == exit_code, said
    assert words in flat(first.stdout), said
    assert gateway.generates == 3
    assert set(states(batch.ledger).values()) == {"submitted"}, said
    assert len(ledger_task_ids(batch.ledger)) == 3

    gateway.refusal = None
    _assert_rerun_collects(batch, gateway)
    assert gateway.generates == 3, "a task was generated again"


def test_generates_answered_with_an_unknown_error_code_stop_the_run_uncharged(
    tmp_path: Path, gateway: Gateway
) -> None:
    """Every generate gets an error code pixrun does not know: a few tries, then a stop
    (exit 5) with every shot pending, not an outage waited out for hours."""
    batch = _batch(tmp_path)
    gateway.generate_refusal = UNKNOWN
    _assert_stops(batch, gateway, "something new", "pending")
    assert gateway.generates <= 8 + 3, "tried on well past the limit"
    gateway.generate_refusal = None
    _assert_rerun_collects(batch, gateway)


def test_a_rerun_on_a_route_that_knows_no_task_stops_again_never_parks(
    tmp_path: Path, gateway: Gateway
) -> None:
    """The fetch route answers a well-formed "no such task" for everything: the first run
    stops (exit 5). A hurried rerun without the fix must stop the same way, not park
    every task as lost (a parked shot is collected only by hand, or paid for again);
    once the route answers, a rerun collects every task without a new generate."""
    batch = _batch(tmp_path)
    gateway.refusal = {"code": 404, "msg": "task not found", "data": None}
    for _ in range(2):
        _assert_stops(batch, gateway, "fetch_path", "submitted")
    gateway.refusal = None
    _assert_rerun_collects(batch, gateway)
    assert gateway.generates == 3, "a task was generated again"
