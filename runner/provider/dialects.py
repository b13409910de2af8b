"""Reading the provider's answers: two response dialects, one internal vocabulary.

Pure functions over (HTTP status, headers, decoded body); no I/O, so the sample payloads
can be replayed through exactly the code that reads live answers.

Dialects (detected by envelope keys, never configured):

- PixVerse: ``{"ErrCode": 0, "ErrMsg": "success", "Resp": {...}}``; generate answers
  ``Resp.video_id``; fetch answers ``Resp.status`` 1 done, 5/10 generating, 7 moderated,
  8 failed.
- Gateway "feed": ``{"code": 200, "msg": "success", "data": {...}}``; generate answers
  ``data.task_id``; fetch answers ``data.state`` (pending/running/succeeded/error) or the
  older ``data.status`` string ("0".."3").
- Bare errors: ``{"error": {"message": ...}}`` (gateway auth failures).

Invariants:
- Task ids come back as ``str`` whether the provider sent an int or a string.
- Every non-success answer becomes exactly one :class:`~runner.errors.ProviderError`
  subclass, chosen in this order: auth, money, concurrency, rate, not-found, invalid,
  server-side. The order matters: a 429 that says "concurrent" is a concurrency limit.
- A generate answer that says success but carries no readable task id is ambiguous: the
  task may exist and be charged.
"""

from __future__ import annotations

import dataclasses
import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from runner.errors import (
    AmbiguousSubmit,
    AuthRefused,
    ConcurrencyLimited,
    InvalidRequest,
    OutOfCredit,
    ProviderError,
    RateLimited,
    TaskNotFound,
    TransientError,
)


class TaskStatus(StrEnum):
    """Where a task stands at the provider, in pixrun's words."""

    QUEUED = "queued"  #: accepted, not started
    RENDERING = "rendering"  #: being generated
    SUCCEEDED = "succeeded"  #: done; ``video_url`` is set
    MODERATED = "moderated"  #: refused by content moderation; final, never retried
    FAILED = "failed"  #: the render failed; may be retried as a new attempt


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


class Op(StrEnum):
    """Which call an answer belongs to; the same signal can mean different things."""

    GENERATE = "generate"  #: POST generate (charged)
    FETCH = "fetch"  #: GET task (free)


#: codes seen in the documented samples; everything else maps by HTTP status, code
#: family and message wording
ERRCODE_INVALID_PARAMETER = 400017
ERRCODE_NO_CREDIT = 500043
ERRCODE_CONCURRENCY = 500044

PIXVERSE_DONE = 1
PIXVERSE_GENERATING = (5, 10)
PIXVERSE_MODERATED = 7
PIXVERSE_FAILED = 8

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

_WORDS_AUTH = ("api key", "apikey", "unauthorized", "token is invalid")
_WORDS_CREDIT = ("credit", "balance", "top up", "insufficient")
_WORDS_CONCURRENCY = ("concurrent",)
_WORDS_RATE = ("rate limit", "too many requests")
_WORDS_NOT_FOUND = ("not found", "not exist", "no such task")
_WORDS_MODERATION = (
    "moderat",
    "sensitive",
    "inappropriate",
    "nsfw",
    "content policy",
    "violat",
)

#: longest provider message we carry into an exception
MAX_MESSAGE_CHARS = 300

Redact = Callable[[str], str]


def _identity(text: str) -> str:
    return text


@dataclass(frozen=True)
class Envelope:
    """The outer shape of an answer, whichever dialect it was in."""

    #: "pixverse", "gateway", "error" or "unknown"
    dialect: str
    ok: bool
    code: int | str | None
    message: str | None
    payload: Any


def read_envelope(body: Any) -> Envelope:
    """Detect the dialect by its keys and split out code, message and payload."""
    if isinstance(body, dict):
        if "ErrCode" in body:
            code = body.get("ErrCode")
            return Envelope(
                "pixverse", _code_is(code, 0), code, _text(body.get("ErrMsg")), body.get("Resp")
            )
        if "code" in body and ("data" in body or "msg" in body or "message" in body):
            code = body.get("code")
            message = _text(body.get("msg")) or _text(body.get("message"))
            return Envelope("gateway", _code_is(code, 200, 0), code, message, body.get("data"))
        if "error" in body:
            err = body["error"]
            if isinstance(err, dict):
                return Envelope("error", False, err.get("code"), _text(err.get("message")), None)
            return Envelope("error", False, None, _text(err), None)
    return Envelope("unknown", False, None, None, None)


def _code_is(code: Any, *values: int) -> bool:
    if isinstance(code, bool):
        return False
    if isinstance(code, int):
        return code in values
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code) in values
    return False


def _code_int(code: Any) -> int | None:
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().isdigit():
        return int(code)
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _has(message: str | None, words: tuple[str, ...]) -> bool:
    if not message:
        return False
    low = message.lower()
    return any(w in low for w in words)


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)


def error_for(
    op: Op,
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    redact: Redact = _identity,
) -> ProviderError | None:
    """The error an answer stands for, or None when it is a success envelope."""
    env = read_envelope(body)
    if 200 <= status < 300 and env.ok:
        return None
    code = _code_int(env.code)
    raw_message = env.message or (
        body.strip()[:MAX_MESSAGE_CHARS] if isinstance(body, str) else None
    )
    message = redact(raw_message)[:MAX_MESSAGE_CHARS] if raw_message else None
    shown = message or "no message"
    code_part = f", code {env.code}" if env.code is not None else ""
    where = f"{op.value}, HTTP {status}{code_part}"
    kw: dict[str, Any] = {"status": status, "provider_code": env.code}
    if 300 <= status < 400:
        # Redirects are not followed on the API: a POST must not silently become a GET
        # or be sent twice. A redirect means the configured URL is not the endpoint.
        location = headers.get("Location", "?")
        return ProviderError(
            f"the provider redirected to {location} ({where})",
            hint="set PIXRUN_BASE_URL to the final address",
            **kw,
        )
    if status in (401, 403) or code in (401, 403) or _has(message, _WORDS_AUTH):
        return AuthRefused(
            f"the provider refused the API key: {shown} ({where})",
            hint="check PIXRUN_API_KEY; nothing was marked failed, rerun when fixed",
            **kw,
        )
    if status == 402 or code in (402, ERRCODE_NO_CREDIT) or _has(message, _WORDS_CREDIT):
        return OutOfCredit(
            f"the account is out of credit: {shown} ({where})",
            hint="top up the 302.AI account, then rerun: finished work is kept",
            **kw,
        )
    retry_after_s = parse_retry_after(headers.get("Retry-After"))
    if code == ERRCODE_CONCURRENCY or _has(message, _WORDS_CONCURRENCY):
        return ConcurrencyLimited(
            f"too many generations in flight: {shown} ({where})", retry_after_s=retry_after_s, **kw
        )
    if status == 429 or code == 429 or _has(message, _WORDS_RATE):
        return RateLimited(f"rate limited: {shown} ({where})", retry_after_s=retry_after_s, **kw)
    if op is Op.FETCH and (status == 404 or code == 404 or _has(message, _WORDS_NOT_FOUND)):
        return TaskNotFound(f"the provider does not know this task: {shown} ({where})", **kw)
    if status in (404, 405):
        # An endpoint that does not exist is a configuration problem, not a
        # property of the shot: the caller should stop rather than fail every shot.
        return ProviderError(
            f"the {op.value} endpoint was not found: {shown} ({where})",
            hint="check PIXRUN_BASE_URL and the endpoint paths",
            **kw,
        )
    if (
        status in (400, 413, 422)
        or code in (400, 422)
        or (code is not None and 400000 <= code < 500000)
    ):
        return InvalidRequest(f"the provider rejected the request: {shown} ({where})", **kw)
    if _has(message, _WORDS_MODERATION):
        # Refused at submit time: as permanent as a bad parameter, never retried blindly.
        return InvalidRequest(f"the provider refused the prompt or image: {shown} ({where})", **kw)
    if status >= 500 or (code is not None and 500 <= code < 600):
        return TransientError(f"the provider had a server error: {shown} ({where})", **kw)
    if 400 <= status < 500:
        return InvalidRequest(f"the provider rejected the request: {shown} ({where})", **kw)
    if env.dialect == "unknown":
        return None
    # A well-formed error envelope with a code we do not know: nothing was created
    # (the provider said so), so trying again later is safe.
    return TransientError(f"the provider answered with an unknown error: {shown} ({where})", **kw)


def parse_generate(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    redact: Redact = _identity,
    ambiguous_statuses: tuple[int, ...] = (504,),
) -> str:
    """The task id from a generate answer, or the error the answer stands for.

    ``ambiguous_statuses`` are server errors that mean a gateway forwarded the request
    and lost the answer (504 by default): the task may exist, so they raise
    :class:`AmbiguousSubmit` rather than :class:`TransientError`.
    """
    err = error_for(Op.GENERATE, status, headers, body, redact=redact)
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
        raise AmbiguousSubmit(
            f"generate answered HTTP {status} without a readable task id: the task may "
            "exist and be charged",
            status=status,
            provider_code=env.code,
        )
    return task_id


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


def parse_fetch(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    task_id: str,
    *,
    redact: Redact = _identity,
) -> TaskState:
    """A task's state from a fetch answer, or the error the answer stands for."""
    err = error_for(Op.FETCH, status, headers, body, redact=redact)
    if err is not None:
        raise err
    env = read_envelope(body)
    payload = env.payload
    if not isinstance(payload, dict):
        raise TransientError(f"fetch answered HTTP {status} without task details", status=status)
    if env.dialect == "pixverse":
        return _pixverse_state(payload, task_id, redact)
    return _gateway_state(payload, task_id, redact)


def _pixverse_state(resp: Mapping[str, Any], task_id: str, redact: Redact) -> TaskState:
    code = _code_int(resp.get("status"))
    url = _url(resp.get("url"))
    if code == PIXVERSE_DONE:
        status = TaskStatus.SUCCEEDED
    elif code == PIXVERSE_MODERATED:
        status = TaskStatus.MODERATED
    elif code == PIXVERSE_FAILED:
        status = TaskStatus.FAILED
    else:
        # 5 and 10 are documented as generating; anything new is treated as not done
        # yet, so the poll timeout (not a guess) decides what happens to it.
        status = TaskStatus.RENDERING
    message = _text(resp.get("ErrMsg") or resp.get("message") or resp.get("msg"))
    if status is TaskStatus.MODERATED and message is None:
        message = "refused by content moderation (status 7)"
    if status is TaskStatus.FAILED and message is None:
        message = "generation failed (status 8)"
    return _finish(
        TaskState(
            task_id=_task_id(resp.get("id")) or task_id,
            status=status,
            video_url=url,
            seed=_seed(resp.get("seed")),
            width=_int_or_none(resp.get("outputWidth")),
            height=_int_or_none(resp.get("outputHeight")),
            size_bytes=_int_or_none(resp.get("size")),
            message=redact(message)[:MAX_MESSAGE_CHARS] if message else None,
            prompt=_prompt(resp.get("prompt")),
        )
    )


def _gateway_state(data: Mapping[str, Any], task_id: str, redact: Redact) -> TaskState:
    state = _text(data.get("state"))
    old = _text(data.get("status"))
    status = _GATEWAY_STATES.get(state.lower()) if state else None
    if status is None and old is not None:
        status = _GATEWAY_OLD_STATUS.get(old)
    if status is None:
        status = TaskStatus.RENDERING
    message = _text(data.get("msg") or data.get("message") or data.get("fail_reason"))
    if status is TaskStatus.FAILED and _has(message, _WORDS_MODERATION):
        status = TaskStatus.MODERATED
    return _finish(
        TaskState(
            task_id=_task_id(data.get("task_id") or data.get("id")) or task_id,
            status=status,
            video_url=_url(data.get("video_url") or data.get("url")),
            poster_url=_url(data.get("poster")),
            seed=_seed(data.get("seed")),
            width=_int_or_none(data.get("width") or data.get("outputWidth")),
            height=_int_or_none(data.get("height") or data.get("outputHeight")),
            size_bytes=_int_or_none(data.get("size")),
            message=redact(message)[:MAX_MESSAGE_CHARS] if message else None,
            prompt=_prompt(data.get("prompt")),
        )
    )


def _prompt(value: Any) -> str | None:
    """The prompt as the provider echoes it; "..." and blanks (redacted samples) are None."""
    if isinstance(value, str) and value.strip() and value.strip() != "...":
        return value
    return None


def _seed(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
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
