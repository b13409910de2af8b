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

Invariants (fail closed: pixrun acts only on answers it recognises):
- Task ids come back as ``str`` whether the provider sent an int or a string.
- Every non-success answer becomes exactly one :class:`~runner.errors.ProviderError`
  subclass. An answer pixrun does not recognise (a redirect, a 404/405 without a
  provider envelope, HTML or other non-JSON, JSON in no known envelope, a task status
  no dialect defines, a success without a task id) is a
  :class:`~runner.errors.ContractMismatch`, never "task gone" and never a shot failure.
- :class:`~runner.errors.TaskNotFound` comes only from a provider envelope (PixVerse or
  gateway) that says the task is unknown.
- Error codes are read before HTTP statuses and message words; the order of meanings
  is auth, money, concurrency, rate, not-found, invalid, server-side (a 429 that says
  "concurrent" is a concurrency limit).
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

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


class Op(StrEnum):
    """Which call an answer belongs to; the same signal can mean different things."""

    GENERATE = "generate"  #: POST generate (charged)
    FETCH = "fetch"  #: GET task (free)
    UPLOAD = "upload"  #: POST a local image (about 0.001 PTC)


#: PixVerse ErrCodes, from PixVerse's error-code table (docs.platform.pixverse.ai,
#: "Error codes"; mirrored by cloud.tencent.com/document/product/1823/138038) and the
#: samples in API.md. Codes not listed map by family and message wording.
ERRCODE_INVALID_PARAMETER = 400017
ERRCODE_NOT_FOUND = 500008
ERRCODE_NO_CREDIT = 500043
ERRCODE_CONCURRENCY = 500044


class Meaning(StrEnum):
    """What a provider error code stands for."""

    AUTH = "auth"  #: the key or account is refused
    MONEY = "money"  #: the account cannot pay (credits, a monthly limit)
    CONCURRENCY = "concurrency"  #: too many generations in flight
    RATE = "rate"  #: too many requests
    NOT_FOUND = "not_found"  #: no such task (or data)
    INVALID = "invalid"  #: this request can never succeed as it is
    TRANSIENT = "transient"  #: the provider's own trouble; nothing was created


ERRCODE_MEANINGS: dict[int, Meaning] = {
    400011: Meaning.INVALID,  # empty parameter
    400012: Meaning.AUTH,  # invalid account
    400013: Meaning.INVALID,  # invalid binding request: parameter type or value
    400017: Meaning.INVALID,  # invalid parameter
    400018: Meaning.INVALID,  # prompt / negative prompt over 2048 characters
    400019: Meaning.INVALID,  # the same, second code
    400032: Meaning.INVALID,  # invalid image id
    500008: Meaning.NOT_FOUND,  # requested data not found
    500020: Meaning.INVALID,  # no permission for this operation (model, feature)
    500030: Meaning.INVALID,  # image over 20 MB or 4000x4000 px
    500031: Meaning.INVALID,  # image information could not be read
    500032: Meaning.INVALID,  # invalid image format
    500033: Meaning.INVALID,  # invalid image width or height
    500041: Meaning.TRANSIENT,  # image upload failed (on the provider's side)
    500042: Meaning.INVALID,  # invalid image path
    500043: Meaning.MONEY,  # all credits used up
    500044: Meaning.CONCURRENCY,  # concurrent generation limit
    500054: Meaning.INVALID,  # the image failed content moderation
    500060: Meaning.MONEY,  # monthly effects activation limit (account level)
    500063: Meaning.INVALID,  # input (image, video or text) failed pre-moderation
    500069: Meaning.TRANSIENT,  # the system is under high load
    500070: Meaning.INVALID,  # the effect template is not activated
    500071: Meaning.INVALID,  # the effect does not support this resolution
}
#: gateway envelopes carry HTTP-like codes
_GATEWAY_CODE_MEANINGS: dict[int, Meaning] = {
    400: Meaning.INVALID,
    401: Meaning.AUTH,
    402: Meaning.MONEY,
    403: Meaning.AUTH,
    404: Meaning.NOT_FOUND,
    422: Meaning.INVALID,
    429: Meaning.RATE,
}

PIXVERSE_DONE = 1
PIXVERSE_GENERATING = (5, 10)
PIXVERSE_DELETED = 6
PIXVERSE_MODERATED = 7
PIXVERSE_FAILED = 8
_PIXVERSE_STATUSES: dict[int, TaskStatus] = {
    PIXVERSE_DONE: TaskStatus.SUCCEEDED,
    5: TaskStatus.RENDERING,
    10: TaskStatus.RENDERING,
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

_WORDS_AUTH = ("api key", "apikey", "unauthorized", "token is invalid")
_WORDS_CREDIT = ("credit", "balance", "top up", "insufficient", "monthly")
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
#: how much of an unrecognised answer a contract-mismatch message quotes
QUOTE_CHARS = 120

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

    @property
    def provider(self) -> bool:
        """A provider envelope (PixVerse or gateway family): the only kind that can
        carry a task, or say that a task does not exist."""
        return self.dialect in ("pixverse", "gateway")


@dataclass(frozen=True)
class Call:
    """Which request an answer belongs to, for messages: ``GET https://.../fetch``."""

    method: str
    url: str

    def __str__(self) -> str:
        return f"{self.method} {self.url}"


def quote_body(body: Any) -> str:
    """The first bytes of an answer, shown in a contract-mismatch message."""
    if isinstance(body, str):
        text = body
    else:
        try:
            text = json.dumps(body, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(body)
    text = " ".join(text.split())
    if not text:
        return "an empty body"
    return repr(text[:QUOTE_CHARS] + ("…" if len(text) > QUOTE_CHARS else ""))


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


def _meaning(env: Envelope, message: str | None) -> Meaning | None:
    """What an error envelope's code (then its wording) stands for; None: unknown."""
    code = _code_int(env.code)
    if code is not None:
        table = ERRCODE_MEANINGS if env.dialect == "pixverse" else _GATEWAY_CODE_MEANINGS
        if code in table:
            return table[code]
        if env.dialect == "gateway" and 500 <= code < 600:
            return Meaning.TRANSIENT
    if _has(message, _WORDS_AUTH):
        return Meaning.AUTH
    if _has(message, _WORDS_CREDIT):
        return Meaning.MONEY
    if _has(message, _WORDS_CONCURRENCY):
        return Meaning.CONCURRENCY
    if _has(message, _WORDS_RATE):
        return Meaning.RATE
    if _has(message, _WORDS_NOT_FOUND):
        return Meaning.NOT_FOUND
    if _has(message, _WORDS_MODERATION):
        return Meaning.INVALID
    if code is not None and 400000 <= code < 500000:
        return Meaning.INVALID
    return None


def mismatch(
    call: Call | None,
    status: int,
    headers: Mapping[str, str],
    body: Any,
    why: str,
    *,
    shot_charged: bool = False,
    redact: Redact = _identity,
) -> ContractMismatch:
    """The stop-everything error for an answer pixrun does not recognise."""
    where = str(call) if call is not None else "the provider"
    kind = headers.get("Content-Type", "").split(";")[0].strip()
    shown = f"HTTP {status}" + (f", {kind}" if kind else "")
    charged = (
        " The request may have created a task: the shot is parked, never sent again blindly."
        if shot_charged
        else ""
    )
    return ContractMismatch(
        redact(
            f"{where} answered in a way pixrun does not recognise: {why} ({shown}: "
            f"{quote_body(body)}). Nothing was marked failed and every task id is kept." + charged
        ),
        status=status,
        shot_charged=shot_charged,
        hint="check the provider's base URL and routes: run 'pixrun doctor', then set "
        "--provider-option fetch_path=... or generate_path=... (or keep them with "
        "'pixrun doctor --save'); a rerun with the right setting collects every task "
        "at no new charge",
    )


def error_for(
    op: Op,
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    redact: Redact = _identity,
    call: Call | None = None,
) -> ProviderError | None:
    """The error an answer stands for, or None when it is a success envelope."""
    env = read_envelope(body)
    if 200 <= status < 300 and env.provider and env.ok:
        return None
    if 300 <= status < 400:
        # Redirects are not followed on the API: a POST must not silently become a GET
        # or be sent twice. A redirect means the configured URL is not the endpoint.
        location = headers.get("Location", "?")
        return mismatch(call, status, headers, body, f"a redirect to {location}", redact=redact)
    message = redact(env.message)[:MAX_MESSAGE_CHARS] if env.message else None
    meaning = _meaning(env, message) if env.dialect != "unknown" else None
    said = _Said(
        op,
        status,
        message or "no message",
        f"{op.value}, HTTP {status}" + (f", code {env.code}" if env.code is not None else ""),
        {"status": status, "provider_code": env.code},
    )
    err = _account_level(said, meaning, headers)
    if err is not None:
        return err
    if status >= 500 and not env.provider:
        # a server error page (a proxy's HTML, a plain text) is an outage, not a
        # wrong route: the provider is there and failing
        return TransientError(f"the provider had a server error ({said.where})", **said.kw)
    if status == 413:
        return InvalidRequest(
            f"the request is too large for the provider ({said.where})", **said.kw
        )
    if not env.provider and not (env.dialect == "error" and status in (400, 422)):
        # 2xx/4xx without a provider envelope: not this API (a wrong route, a web page)
        why = "no provider envelope" if env.dialect != "unknown" else "not a provider answer"
        if status in (404, 405):
            why = f"no such route, {why}"
        charged = op is Op.GENERATE and 200 <= status < 300
        return mismatch(call, status, headers, body, why, shot_charged=charged, redact=redact)
    return _request_level(said, meaning, env.provider)


@dataclass(frozen=True)
class _Said:
    """An error answer, ready for the message of the error it becomes."""

    op: Op
    status: int
    shown: str
    where: str
    kw: dict[str, Any]


def _account_level(
    said: _Said, meaning: Meaning | None, headers: Mapping[str, str]
) -> ProviderError | None:
    """Auth, money, concurrency and rate: whatever the envelope, they stop or wait."""
    status, shown, where, kw = said.status, said.shown, said.where, said.kw
    if status in (401, 403) or meaning is Meaning.AUTH:
        return AuthRefused(
            f"refused the API key: {shown} ({where})",
            hint="check PIXRUN_API_KEY; nothing was marked failed, rerun when fixed",
            **kw,
        )
    if status == 402 or meaning is Meaning.MONEY:
        return OutOfCredit(
            f"the account cannot pay: {shown} ({where})",
            hint="top up the 302.AI account (or wait for the monthly limit to reset), then "
            "rerun: finished work is kept",
            **kw,
        )
    retry_after_s = parse_retry_after(headers.get("Retry-After"))
    if meaning is Meaning.CONCURRENCY:
        return ConcurrencyLimited(
            f"too many generations in flight: {shown} ({where})", retry_after_s=retry_after_s, **kw
        )
    if status == 429 or meaning is Meaning.RATE:
        return RateLimited(f"rate limited: {shown} ({where})", retry_after_s=retry_after_s, **kw)
    return None


def _request_level(said: _Said, meaning: Meaning | None, provider: bool) -> ProviderError:
    """What a recognised error envelope says about this one request or task."""
    status, shown, where, kw = said.status, said.shown, said.where, said.kw
    if meaning is Meaning.NOT_FOUND:
        if said.op is Op.FETCH and provider:
            return TaskNotFound(f"the provider does not know this task: {shown} ({where})", **kw)
        return InvalidRequest(f"the provider says: {shown} ({where})", **kw)
    if meaning is Meaning.INVALID:
        return InvalidRequest(f"the provider refused the request: {shown} ({where})", **kw)
    if meaning is Meaning.TRANSIENT or status >= 500:
        return TransientError(f"the provider had a server error: {shown} ({where})", **kw)
    if 400 <= status < 500:
        return InvalidRequest(f"the provider refused the request: {shown} ({where})", **kw)
    # A provider envelope with an error code pixrun does not know, on HTTP 2xx: the
    # provider said it made nothing. Retried a bounded number of times (the shot is
    # left pending after that), never counted as a render failure.
    return TransientError(f"the provider answered with an unknown error: {shown} ({where})", **kw)


def parse_generate(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    redact: Redact = _identity,
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
        )
    return task_id


def parse_upload(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    redact: Redact = _identity,
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
        raise mismatch(call, status, headers, body, "an upload answer without a URL", redact=redact)
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
    redact: Redact = _identity,
    call: Call | None = None,
) -> TaskState:
    """A task's state from a fetch answer, or the error the answer stands for."""
    err = error_for(Op.FETCH, status, headers, body, redact=redact, call=call)
    if err is not None:
        raise err
    env = read_envelope(body)
    payload = env.payload
    if not isinstance(payload, dict):
        raise mismatch(call, status, headers, body, "a success without task details", redact=redact)
    try:
        if env.dialect == "pixverse":
            return _pixverse_state(payload, task_id, redact)
        return _gateway_state(payload, task_id, redact)
    except _Unknown as exc:
        raise mismatch(call, status, headers, body, str(exc), redact=redact) from None


def _pixverse_state(resp: Mapping[str, Any], task_id: str, redact: Redact) -> TaskState:
    # the API family says ``status``; the web-app family (302's field names) ``video_status``
    raw = resp.get("status") if "status" in resp else resp.get("video_status")
    code = _code_int(raw)
    status = _PIXVERSE_STATUSES.get(code) if code is not None else None
    if status is None:
        raise _Unknown(f"task status {raw!r}, which no documented dialect defines")
    url = _url(resp.get("url"))
    message = _text(resp.get("ErrMsg") or resp.get("message") or resp.get("msg"))
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
        raise _Unknown(
            f"task state {state!r} / status {old!r}, which no documented dialect defines"
        )
    message = _text(data.get("msg") or data.get("message") or data.get("fail_reason"))
    if status is TaskStatus.FAILED and _has(message, _WORDS_MODERATION):
        status = TaskStatus.MODERATED
    refund = _text(data.get("refund"))
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
            refunded=None if refund is None else refund == "1",
            points=_text(data.get("point")),
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
