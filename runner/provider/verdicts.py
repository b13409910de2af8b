"""What a provider's answer means: its envelope, its error code, its wording, and
whether pixrun recognises it at all.

Pure functions over (HTTP status, headers, decoded body); no I/O. The dialect readers
(runner/provider/dialects.py) and ``pixrun doctor`` share this one reading.

Invariants (fail closed: pixrun acts only on answers it recognises):
- An answer pixrun does not recognise (a redirect, a 404/405 without a provider
  envelope, HTML or other non-JSON, JSON in no known envelope) is a
  :class:`~runner.errors.ContractMismatch`, never "task gone" and never a shot failure.
- :class:`~runner.errors.TaskNotFound` comes only from a provider envelope (PixVerse or
  gateway) that says the task is unknown. A 404 (HTTP status or gateway code) on
  generate or upload names no task: it is a contract mismatch, never a shot failure.
- Error codes are read before HTTP statuses and message words; the order of meanings
  is auth, money, concurrency, rate, not-found, invalid, server-side (a 429 that says
  "concurrent" is a concurrency limit).

Size: about 430 lines, one module on purpose: the code tables, the word rules and the
classifier are one reading of an answer, which must not drift apart.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from runner import errors


class Op(StrEnum):
    """Which call an answer belongs to; the same signal can mean different things."""

    GENERATE = "generate"  #: POST generate (charged)
    FETCH = "fetch"  #: GET task (free)
    UPLOAD = "upload"  #: POST a local image (about 0.001 PTC)


#: PixVerse ErrCodes, from PixVerse's error-code table (docs.platform.pixverse.ai,
#: "Error codes"; mirrored by cloud.tencent.com/document/product/1823/138038) and the
#: samples in API.md. Codes not listed map by family and message wording.


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


_WORDS_AUTH = ("api key", "apikey", "unauthorized", "token is invalid")
_WORDS_CREDIT = ("credit", "balance", "top up", "insufficient", "monthly")
_WORDS_CONCURRENCY = ("concurrent",)
_WORDS_RATE = ("rate limit", "too many requests")
_WORDS_NOT_FOUND = ("not found", "not exist", "no such task")
WORDS_MODERATION = (
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


def identity(text: str) -> str:
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
                "pixverse", _code_is(code, 0), code, text_of(body.get("ErrMsg")), body.get("Resp")
            )
        if "code" in body and ("data" in body or "msg" in body or "message" in body):
            code = body.get("code")
            message = text_of(body.get("msg")) or text_of(body.get("message"))
            return Envelope("gateway", _code_is(code, 200, 0), code, message, body.get("data"))
        if "error" in body:
            err = body["error"]
            if isinstance(err, dict):
                return Envelope("error", False, err.get("code"), text_of(err.get("message")), None)
            return Envelope("error", False, None, text_of(err), None)
    return Envelope("unknown", False, None, None, None)


def _code_is(code: Any, *values: int) -> bool:
    if isinstance(code, bool):
        return False
    if isinstance(code, int):
        return code in values
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code) in values
    return False


def code_int(code: Any) -> int | None:
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().isdigit():
        return int(code)
    return None


def text_of(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def has_words(message: str | None, words: tuple[str, ...]) -> bool:
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


_WORD_MEANINGS: tuple[tuple[tuple[str, ...], Meaning], ...] = (
    (_WORDS_AUTH, Meaning.AUTH),
    (_WORDS_CREDIT, Meaning.MONEY),
    (_WORDS_CONCURRENCY, Meaning.CONCURRENCY),
    (_WORDS_RATE, Meaning.RATE),
    (_WORDS_NOT_FOUND, Meaning.NOT_FOUND),
    (WORDS_MODERATION, Meaning.INVALID),
)


def meaning_of(env: Envelope, message: str | None) -> Meaning | None:
    """What an error envelope's code (then its wording) stands for; None: unknown."""
    code = code_int(env.code)
    if code is not None:
        table = ERRCODE_MEANINGS if env.dialect == "pixverse" else _GATEWAY_CODE_MEANINGS
        if code in table:
            return table[code]
        if env.dialect == "gateway" and 500 <= code < 600:
            return Meaning.TRANSIENT
    for words, meaning in _WORD_MEANINGS:  # in order: the first that matches wins
        if has_words(message, words):
            return meaning
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
    redact: Redact = identity,
    op: Op | None = None,
) -> errors.ContractMismatch:
    """The stop-everything error for an answer pixrun does not recognise; its hint names
    the setting of the route that answered (``op``)."""
    where = str(call) if call is not None else "the provider"
    kind = headers.get("Content-Type", "").split(";")[0].strip()
    shown = f"HTTP {status}" + (f", {kind}" if kind else "")
    charged = (
        " The request may have created a task: the shot is parked, never sent again blindly."
        if shot_charged
        else ""
    )
    return errors.ContractMismatch(
        redact(
            f"{where} answered in a way pixrun does not recognise: {why} ({shown}: "
            f"{quote_body(body)}). Nothing was marked failed and every task id is kept." + charged
        ),
        status=status,
        shot_charged=shot_charged,
        hint=_MISMATCH_HINT if op is None else _MISMATCH_HINTS.get(op, _MISMATCH_HINT),
    )


_MISMATCH_HINT = (
    "check the provider's base URL and routes: run 'pixrun doctor', then set "
    "--provider-option fetch_path=... or generate_path=... (or keep them with "
    "'pixrun doctor --save'); a rerun with the right setting collects every task at no "
    "new charge"
)
_MISMATCH_HINTS = {
    Op.FETCH: "the fetch route is probably wrong: run 'pixrun doctor' (it finds the right "
    "one), then set --provider-option fetch_path=... (or keep it with 'pixrun doctor "
    "--save'); a rerun collects every task at no new charge",
    Op.GENERATE: "the generate route or base URL is probably wrong: run 'pixrun doctor', "
    "then set --provider-option generate_path=... or PIXRUN_BASE_URL",
    Op.UPLOAD: "the upload route is probably wrong: set --provider-option upload_path=..., "
    "or send images inline with --provider-option image_encoding=data_uri",
}


def error_for(
    op: Op,
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    redact: Redact = identity,
    call: Call | None = None,
) -> errors.ProviderError | None:
    """The error an answer stands for, or None when it is a success envelope."""
    env = read_envelope(body)
    if 200 <= status < 300 and env.provider and env.ok:
        return None
    if 300 <= status < 400:
        # Redirects are not followed on the API: a POST must not silently become a GET
        # or be sent twice. A redirect means the configured URL is not the endpoint.
        location = headers.get("Location", "?")
        return mismatch(
            call, status, headers, body, f"a redirect to {location}", redact=redact, op=op
        )
    message = redact(env.message)[:MAX_MESSAGE_CHARS] if env.message else None
    meaning = meaning_of(env, message) if env.dialect != "unknown" else None
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
        return errors.TransientError(f"the provider had a server error ({said.where})", **said.kw)
    if status == 413:
        return errors.InvalidRequest(
            f"the request is too large for the provider ({said.where})", **said.kw
        )
    if not env.provider and not (env.dialect == "error" and status in (400, 422)):
        # 2xx/4xx without a provider envelope: not this API (a wrong route, a web page)
        why = "no provider envelope" if env.dialect != "unknown" else "not a provider answer"
        if status in (404, 405):
            why = f"no such route, {why}"
        charged = op is Op.GENERATE and 200 <= status < 300
        return mismatch(
            call, status, headers, body, why, shot_charged=charged, redact=redact, op=op
        )
    if op is not Op.FETCH and (status == 404 or _gateway_404(env)):
        # "not found" from generate or upload names no task: the route is not there
        # (gateways answer unknown paths in their envelope). Stopping costs nothing;
        # failing every shot for it would fail a whole batch for a setting
        why = "no such route, a 'not found' answer to a request that names no task"
        return mismatch(call, status, headers, body, why, redact=redact, op=op)
    return _request_level(said, meaning, env.provider)


def _gateway_404(env: Envelope) -> bool:
    return env.dialect == "gateway" and code_int(env.code) == 404


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
) -> errors.ProviderError | None:
    """Auth, money, concurrency and rate: whatever the envelope, they stop or wait."""
    status, shown, where, kw = said.status, said.shown, said.where, said.kw
    if status in (401, 403) or meaning is Meaning.AUTH:
        return errors.AuthRefused(
            f"refused the API key: {shown} ({where})",
            hint="check PIXRUN_API_KEY; nothing was marked failed, rerun when fixed",
            **kw,
        )
    if status == 402 or meaning is Meaning.MONEY:
        return errors.OutOfCredit(
            f"the account cannot pay: {shown} ({where})",
            hint="top up the 302.AI account (or wait for the monthly limit to reset), then "
            "rerun: finished work is kept",
            **kw,
        )
    retry_after_s = parse_retry_after(headers.get("Retry-After"))
    if meaning is Meaning.CONCURRENCY:
        return errors.ConcurrencyLimited(
            f"too many generations in flight: {shown} ({where})", retry_after_s=retry_after_s, **kw
        )
    if status == 429 or meaning is Meaning.RATE:
        return errors.RateLimited(
            f"rate limited: {shown} ({where})", retry_after_s=retry_after_s, **kw
        )
    return None


def _request_level(said: _Said, meaning: Meaning | None, provider: bool) -> errors.ProviderError:
    """What a recognised error envelope says about this one request or task."""
    status, shown, where, kw = said.status, said.shown, said.where, said.kw
    if meaning is Meaning.NOT_FOUND:
        if said.op is Op.FETCH and provider:
            return errors.TaskNotFound(
                f"the provider does not know this task: {shown} ({where})", **kw
            )
        return errors.InvalidRequest(f"the provider says: {shown} ({where})", **kw)
    if meaning is Meaning.INVALID:
        return errors.InvalidRequest(f"the provider refused the request: {shown} ({where})", **kw)
    if meaning is Meaning.TRANSIENT or status >= 500:
        return errors.TransientError(f"the provider had a server error: {shown} ({where})", **kw)
    if 400 <= status < 500:
        return errors.InvalidRequest(f"the provider refused the request: {shown} ({where})", **kw)
    # A provider envelope with an error code pixrun does not know, on HTTP 2xx: the
    # provider said it made nothing. Retried a bounded number of times (the shot is
    # left pending after that), never counted as a render failure.
    return errors.UnknownProviderError(
        f"the provider answered with an unknown error: {shown} ({where})", **kw
    )
