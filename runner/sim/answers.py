"""What the simulated provider says, per response family. Bodies only; no HTTP here.

Every shape follows a documented family (API.md, "Responses") and its sample payloads:
- pixverse: ``{"ErrCode", "ErrMsg", "Resp"}``, ``Resp.id`` / ``Resp.status``;
- web (PixVerse web app): the same envelope, ``Resp.video_id`` / ``Resp.video_status``;
- gateway: ``{"code", "msg", "data"}``, ``data.task_id`` / ``data.state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from runner.sim.books import DELETED, FAILED, MODERATED, QUEUED, RENDERING, SUCCEEDED, SimTask
from runner.sim.media import TINY_HEIGHT_PX, TINY_WIDTH_PX

#: sample bodies (api-samples/) the provider sends whatever the dialect
BODY_BAD_KEY = {"error": {"message": "invalid api key"}}
BODY_NO_CREDIT = {"ErrCode": 500043, "ErrMsg": "All Credits have been used up. Please top up."}
BODY_CONCURRENCY = {"ErrCode": 500044, "ErrMsg": "Reached the limit for concurrent generations."}
ERRCODE_INVALID = 400017
#: PixVerse's "no such task" (the gateway's is code 404 in its own envelope)
ERRCODE_NOT_FOUND = 500008
#: PixVerse's words for refusals that no retry fixes
PERMANENT_MESSAGES = {
    500054: "Content moderation failure. Image maybe contains inappropriate content",
    500060: "Monthly effects activation limit reached",
    500070: "This template is not activated for your account",
}

_PIXVERSE_STATUS = {QUEUED: 10, RENDERING: 5, SUCCEEDED: 1, DELETED: 6, MODERATED: 7, FAILED: 8}
_GATEWAY_STATE = {
    QUEUED: ("pending", "0"),
    RENDERING: ("running", "1"),
    SUCCEEDED: ("succeeded", "3"),
    FAILED: ("error", "2"),
    MODERATED: ("error", "2"),
    DELETED: ("error", "2"),
}
_FAIL_MESSAGE = {
    FAILED: "generation failed",
    MODERATED: "content moderation: the prompt was refused",
    DELETED: "video deleted",
}


def permanent_message(code: int) -> str:
    return PERMANENT_MESSAGES.get(code, f"Request refused (error {code})")


def ok_body(dialect: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    if dialect == "gateway":
        return {"code": 200, "msg": "success", "data": payload}
    return {"ErrCode": 0, "ErrMsg": "success", "Resp": payload}


def error_body(dialect: str, code: int, message: str) -> dict[str, Any]:
    if dialect == "gateway":
        return {"code": code, "msg": message, "data": None}
    return {"ErrCode": code, "ErrMsg": message}


def invalid_body(dialect: str, message: str) -> dict[str, Any]:
    """The invalid-parameter refusal: ErrCode 400017, or the gateway's code 400."""
    code = 400 if dialect == "gateway" else ERRCODE_INVALID
    return error_body(dialect, code, f"Invalid parameter: {message}")


def not_found_body(dialect: str) -> dict[str, Any]:
    """The recognised "no such task" envelope of each family."""
    if dialect == "gateway":
        return error_body(dialect, 404, "task not found")
    return error_body(dialect, ERRCODE_NOT_FOUND, "Requested data not found")


def generate_payload(dialect: str, task: SimTask) -> dict[str, Any]:
    if dialect == "gateway":
        return {"task_id": task.wire_id}
    return {"video_id": task.wire_id}


def task_payload(dialect: str, task: SimTask, status: str, url: str | None) -> dict[str, Any]:
    """A fetch answer's payload for ``task`` in ``status`` (``url`` when it succeeded)."""
    if dialect == "gateway":
        return _gateway_task(task, status, url)
    if dialect == "web":
        return _web_task(task, status, url)
    return _pixverse_task(task, status, url)


def _pixverse_task(task: SimTask, status: str, url: str | None) -> dict[str, Any]:
    done = status == SUCCEEDED
    return {
        "id": task.wire_id,
        "status": _PIXVERSE_STATUS[status],
        "url": url or "",
        "prompt": task.prompt,
        "negative_prompt": "",
        "seed": task.seed,
        "size": len(task.mp4()) if done else 0,
        "outputWidth": TINY_WIDTH_PX if done else 0,
        "outputHeight": TINY_HEIGHT_PX if done else 0,
        "resolution_ratio": TINY_HEIGHT_PX if done else 0,
        "style": "",
        "create_time": _iso(task.created_wall_s),
        "modify_time": _iso(task.created_wall_s + task.render_s),
    }


#: what PixVerse's web app keeps of its API's task fields (it renames the id and status)
_WEB_FIELDS = ("url", "prompt", "seed", "outputWidth", "outputHeight", "create_time", "modify_time")


def _web_task(task: SimTask, status: str, url: str | None) -> dict[str, Any]:
    api = _pixverse_task(task, status, url)
    return {
        "video_id": api["id"],
        "video_status": api["status"],
        **{key: api[key] for key in _WEB_FIELDS},
    }


def _gateway_task(task: SimTask, status: str, url: str | None) -> dict[str, Any]:
    state, old = _GATEWAY_STATE[status]
    return {
        "task_id": task.wire_id,
        "state": state,
        "status": old,
        "prompt": task.prompt,
        "video_url": url,
        "image_url": None,
        "poster": None,
        "msg": _FAIL_MESSAGE.get(status),
        "point": str(task.charged_uptc),
        "refund": "1" if status in (FAILED, MODERATED) else "0",
        "create_time": str(int(task.created_wall_s)),
        "update_time": str(int(task.created_wall_s + task.render_s)),
    }


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def callback_body(dialect: str, task: SimTask, status: str) -> dict[str, Any]:
    """What the simulator POSTs to a callback URL when a render ends: the task's id and
    status in the dialect's words (302 does not publish the real payload; pixrun must
    not rely on it)."""
    if dialect == "gateway":
        state, _ = _GATEWAY_STATE[status]
        return {"task_id": task.wire_id, "state": state}
    if dialect == "web":
        return {"video_id": task.wire_id, "video_status": _PIXVERSE_STATUS[status]}
    return {"id": task.wire_id, "status": _PIXVERSE_STATUS[status]}
