"""Reading the provider's answers: two response dialects, one internal vocabulary.

Pure functions over (HTTP status, headers, decoded body); no I/O, so the sample payloads
can be replayed through exactly the code that reads live answers.

Dialects (detected by envelope keys, never configured):

- PixVerse: ``{"ErrCode": 0, "ErrMsg": "success", "Resp": {...}}``; generate answers
  ``Resp.video_id``; fetch answers ``Resp.status`` 1 done, 5/10 generating, 7 moderated,
  8 failed; the web-app family of the same envelope answers ``Resp.video_id`` and
  ``Resp.video_status`` (also 6: deleted).
- Gateway "feed": ``{"code": 200, "msg": "success", "data": {...}}``; generate answers
  ``data.task_id``; fetch answers ``data.state`` (pending/running/succeeded/error) or the
  older ``data.status`` string ("0".."3"), plus ``point`` (its cost figure) and
  ``refund`` ("1": a failed render was refunded).
- Bare errors: ``{"error": {"message": ...}}`` (the gateway's own layer: auth, money,
  parameters). Never a provider envelope: it cannot say "no such task".

Invariants:
- Task ids come back as ``str`` whether the provider sent an int or a string.
- What an error answer means, and which answers pixrun does not recognise at all (a
  :class:`~runner.errors.ContractMismatch`), is :mod:`runner.provider.verdicts`'s one
  reading; this module adds what only a success can fail: a task status no dialect
  defines, a success without a task id or without task details.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from runner.errors import AmbiguousSubmit, TransientError
from runner.provider.verdicts import (
    MAX_MESSAGE_CHARS,
    WORDS_MODERATION,
    Call,
    Op,
    Redact,
    code_int,
    error_for,
    has_words,
    identity,
    mismatch,
    read_envelope,
    text_of,
)


class TaskStatus(StrEnum):
    """Where a task stands at the provider, in pixrun's words."""

    QUEUED = "queued"  #: accepted, not started
    RENDERING = "rendering"  #: being generated
    SUCCEEDED = "succeeded"  #: done; ``video_url`` is set
    MODERATED = "moderated"  #: refused by content moderation; final, never retried
    FAILED = "failed"  #: the render failed; may be retried as a new attempt
    DELETED = "deleted"  #: rendered, then deleted at the provider (web status 6)


@dataclass(frozen=True)
class TaskState:
    """One fetch answer. Metadata is whatever the provider sent (None when absent)."""

    task_id: str
    status: TaskStatus
    video_url: str | None
    poster_url: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    #: the provider's reason for a failure or moderation, when it gave one
    message: str | None = None
    #: the prompt the task was made from, when the answer carries it (resolve checks it)
    prompt: str | None = None
    #: the provider says it gave back what this task cost (gateway ``refund: "1"``);
    #: None when the answer does not say
    refunded: bool | None = None
    #: the provider's own cost figure for the task, as sent (gateway ``point``)
    points: str | None = None


PIXVERSE_DONE = 1
PIXVERSE_GENERATING = (5, 10)
PIXVERSE_DELETED = 6
PIXVERSE_MODERATED = 7
PIXVERSE_FAILED = 8
_PIXVERSE_STATUSES: dict[int, TaskStatus] = {
    PIXVERSE_DONE: TaskStatus.SUCCEEDED,
    **dict.fromkeys(PIXVERSE_GENERATING, TaskStatus.RENDERING),
    PIXVERSE_DELETED: TaskStatus.DELETED,
    PIXVERSE_MODERATED: TaskStatus.MODERATED,
    PIXVERSE_FAILED: TaskStatus.FAILED,
}

_GATEWAY_STATES: dict[str, TaskStatus] = {
    "pending": TaskStatus.QUEUED,
    "queued": TaskStatus.QUEUED,
    "running": TaskStatus.RENDERING,
    "processing": TaskStatus.RENDERING,
    "succeeded": TaskStatus.SUCCEEDED,
    "success": TaskStatus.SUCCEEDED,
    "error": TaskStatus.FAILED,
    "failed": TaskStatus.FAILED,
    "moderated": TaskStatus.MODERATED,
}
_GATEWAY_OLD_STATUS: dict[str, TaskStatus] = {
    "0": TaskStatus.QUEUED,
    "1": TaskStatus.RENDERING,
    "2": TaskStatus.FAILED,
    "3": TaskStatus.SUCCEEDED,
}


def parse_generate(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    redact: Redact = identity,
    ambiguous_statuses: tuple[int, ...] = (504,),
    call: Call | None = None,
) -> str:
    """The task id from a generate answer, or the error the answer stands for.

    ``ambiguous_statuses`` are server errors that mean a gateway forwarded the request
    and lost the answer (504 by default): the task may exist, so they raise
    :class:`AmbiguousSubmit` rather than :class:`TransientError`. A success without a
    readable task id is a contract mismatch that may have cost a task.
    """
    err = error_for(Op.GENERATE, status, headers, body, redact=redact, call=call)
    if isinstance(err, TransientError) and status in ambiguous_statuses:
        raise AmbiguousSubmit(
            f"generate got HTTP {status} from the gateway: the task may exist and be charged",
            status=status,
            provider_code=err.provider_code,
        ) from err
    if err is not None:
        raise err
    env = read_envelope(body)
    payload = env.payload if isinstance(env.payload, dict) else {}
    task_id = _task_id(
        payload.get("video_id") if env.dialect == "pixverse" else payload.get("task_id")
    )
    if task_id is None:
        task_id = _task_id(payload.get("task_id") or payload.get("video_id") or payload.get("id"))
    if task_id is None:
        raise mismatch(
            call,
            status,
            headers,
            body,
            "a success without a task id",
            shot_charged=True,
            redact=redact,
            op=Op.GENERATE,
        )
    return task_id


def parse_upload(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    redact: Redact = identity,
    call: Call | None = None,
) -> str:
    """The URL of an uploaded file (``{"code": 200, "data": "<url>"}``), or the error."""
    err = error_for(Op.UPLOAD, status, headers, body, redact=redact, call=call)
    if err is not None:
        raise err
    env = read_envelope(body)
    data = env.payload
    url = _url(data) if isinstance(data, str) else None
    if url is None and isinstance(data, dict):
        url = _url(data.get("url") or data.get("file_url"))
    if url is None:
        raise mismatch(
            call,
            status,
            headers,
            body,
            "an upload answer without a URL",
            redact=redact,
            op=Op.UPLOAD,
        )
    return url


def _task_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _int_or_none(value: Any) -> int | None:
    """A positive metadata number; 0 and junk mean "not known yet"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
        return number if number > 0 else None
    return None


def _url(value: Any) -> str | None:
    if isinstance(value, str) and value.strip().lower().startswith(("http://", "https://")):
        return value.strip()
    return None


class _Unknown(Exception):
    """A task answer in a known envelope whose status no dialect defines."""


def parse_fetch(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    task_id: str,
    *,
    redact: Redact = identity,
    call: Call | None = None,
) -> TaskState:
    """A task's state from a fetch answer, or the error the answer stands for."""
    err = error_for(Op.FETCH, status, headers, body, redact=redact, call=call)
    if err is not None:
        raise err
    env = read_envelope(body)
    payload = env.payload
    if not isinstance(payload, dict):
        raise mismatch(
            call,
            status,
            headers,
            body,
            "a success without task details",
            redact=redact,
            op=Op.FETCH,
        )
    try:
        if env.dialect == "pixverse":
            return _pixverse_state(payload, task_id, redact)
        return _gateway_state(payload, task_id, redact)
    except _Unknown as exc:
        raise mismatch(call, status, headers, body, str(exc), redact=redact, op=Op.FETCH) from None


def _pixverse_state(resp: Mapping[str, Any], task_id: str, redact: Redact) -> TaskState:
    # the API family says ``status``; the web-app family (302's field names) ``video_status``
    raw = resp.get("status") if "status" in resp else resp.get("video_status")
    code = code_int(raw)
    status = _PIXVERSE_STATUSES.get(code) if code is not None else None
    if status is None:
        raise _Unknown(f"task status {raw!r}, which no documented dialect defines")
    url = _url(resp.get("url"))
    message = text_of(resp.get("ErrMsg") or resp.get("message") or resp.get("msg"))
    if status is TaskStatus.MODERATED and message is None:
        message = "refused by content moderation (status 7)"
    if status is TaskStatus.FAILED and message is None:
        message = "generation failed (status 8)"
    if status is TaskStatus.DELETED and message is None:
        message = "the provider deleted the video (status 6)"
    return _finish(
        TaskState(
            task_id=_task_id(resp.get("id") or resp.get("video_id")) or task_id,
            status=status,
            video_url=url,
            seed=code_int(resp.get("seed")),
            width=_int_or_none(resp.get("outputWidth")),
            height=_int_or_none(resp.get("outputHeight")),
            size_bytes=_int_or_none(resp.get("size")),
            message=redact(message)[:MAX_MESSAGE_CHARS] if message else None,
            prompt=_prompt(resp.get("prompt")),
        )
    )


def _gateway_state(data: Mapping[str, Any], task_id: str, redact: Redact) -> TaskState:
    state = text_of(data.get("state"))
    old = text_of(data.get("status"))
    status = _GATEWAY_STATES.get(state.lower()) if state else None
    if status is None and old is not None:
        status = _GATEWAY_OLD_STATUS.get(old)
    if status is None:
        raise _Unknown(
            f"task state {state!r} / status {old!r}, which no documented dialect defines"
        )
    message = text_of(data.get("msg") or data.get("message") or data.get("fail_reason"))
    if status is TaskStatus.FAILED and has_words(message, WORDS_MODERATION):
        status = TaskStatus.MODERATED
    refund = text_of(data.get("refund"))
    return _finish(
        TaskState(
            task_id=_task_id(data.get("task_id") or data.get("id")) or task_id,
            status=status,
            video_url=_url(data.get("video_url") or data.get("url")),
            poster_url=_url(data.get("poster")),
            seed=code_int(data.get("seed")),
            width=_int_or_none(data.get("width") or data.get("outputWidth")),
            height=_int_or_none(data.get("height") or data.get("outputHeight")),
            size_bytes=_int_or_none(data.get("size")),
            message=redact(message)[:MAX_MESSAGE_CHARS] if message else None,
            prompt=_prompt(data.get("prompt")),
            refunded=None if refund is None else refund == "1",
            points=text_of(data.get("point")),
        )
    )


def _prompt(value: Any) -> str | None:
    """The prompt as the provider echoes it; "..." and blanks (redacted samples) are None."""
    if isinstance(value, str) and value.strip() and value.strip() != "...":
        return value
    return None


def _finish(state: TaskState) -> TaskState:
    """A "succeeded" without a URL is not collectable yet: keep polling for the URL."""
    if state.status is TaskStatus.SUCCEEDED and state.video_url is None:
        return dataclasses.replace(
            state,
            status=TaskStatus.RENDERING,
            message="the provider reports success but gave no video URL yet",
        )
    return state
