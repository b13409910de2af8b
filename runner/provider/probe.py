"""Raw probes of the provider for ``pixrun doctor``: one request, the answer as it came.

A probe sends one GET or POST with the key and returns what came back: the status, the
headers that matter, the body (decoded JSON when it is JSON, else text). The doctor
reads it with :func:`classify`, the one rule that says whether a route exists.

Invariants:
- A probe never raises for an HTTP status, and a transport failure is an answer too
  (``error`` says what happened, ``sent`` whether the request may have left).
- Redirects are never followed: a redirect says the route is not the API.
- The API key never appears in anything returned: the URL, the kept headers, the body
  and every message pass through :meth:`ProviderConfig.redact`, and the request's
  ``Authorization`` header is recorded as ``Bearer [redacted]``.
- Bodies are capped (:data:`MAX_BODY_BYTES`); a probe never waits longer than its
  short timeouts.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp

from runner.provider.client import (
    TRACE_HEADER,
    ClosesOnExit,
    api_headers,
    api_session,
    describe_exc,
)
from runner.provider.config import ProviderConfig
from runner.provider.verdicts import Meaning, meaning_of, read_envelope

#: the answer headers a probe keeps (what a route check and a bug report need)
KEPT_HEADERS = ("Content-Type", "Content-Length", "Location", "Date", "Retry-After")
MAX_BODY_BYTES = 64 * 1024
#: probes are quick questions; a provider that takes longer is reported as not answering
PROBE_CONNECT_TIMEOUT_S = 5.0
PROBE_TOTAL_TIMEOUT_S = 20.0

#: where a fetch route may be: 302 publishes none for this API (API.md "Endpoints"), so
#: these are the plausible forms, the configured default first
FETCH_ROUTE_CANDIDATES = (
    "/pix/task/{task_id}/fetch",
    "/pix/fetch/{task_id}",
    "/pix/task/{task_id}",
    "/pix/feed/{task_id}",
    "/pix/fetch?task_id={task_id}",
    "/pix/task?task_id={task_id}",
    "/pix/feed?task_id={task_id}",
    "/pixverse/v1/pro/feed?task_id={task_id}",
)
#: a route no API has: when it answers like a real one, "the route exists" means nothing
CONTROL_FETCH_ROUTE = "/pixrun-doctor-no-such-route/{task_id}"


class Verdict(StrEnum):
    """What one answer says about the route it came from (see :func:`classify`)."""

    KEY_REFUSED = "key_refused"  #: 401/403, whatever the body
    ROUTE_LEVEL = "route_level"  #: the route does not exist, or is not this API
    NO_SUCH_TASK = "no_such_task"  #: a recognised envelope says the task is unknown
    ENVELOPE = "envelope"  #: any other answer in a recognised envelope: the route exists
    INCONCLUSIVE = "inconclusive"  #: 429 or 5xx outside an envelope: ask again later
    NO_ANSWER = "no_answer"  #: the connection failed; nothing came back


@dataclass(frozen=True)
class ProbeAnswer:
    """One request and what came back, with the key blotted out everywhere."""

    #: method, url, headers (Authorization redacted) and body of the request
    request: dict[str, Any]
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    #: decoded JSON when the body is JSON, else its text (None when nothing came)
    body: Any = None
    body_bytes: int = 0
    truncated: bool = False
    #: what went wrong on the wire ("cannot connect: ...", "no answer: ...")
    error: str | None = None
    #: False only when the request certainly never left (the connection failed)
    sent: bool = True
    elapsed_s: float = 0.0
    #: local wall-clock time when the answer arrived (unix seconds)
    received_at_s: float = 0.0

    @property
    def url(self) -> str:
        return str(self.request.get("url", ""))

    def to_dict(self) -> dict[str, Any]:
        """Everything, for a bug report (already redacted)."""
        return {
            "request": self.request,
            "status": self.status,
            "headers": self.headers,
            "body": self.body,
            "body_bytes": self.body_bytes,
            "truncated": self.truncated,
            "error": self.error,
            "elapsed_s": round(self.elapsed_s, 3),
            "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.received_at_s)),
        }

    def summary(self) -> str:
        """One line: HTTP status, content type, the envelope's code and message."""
        if self.status is None:
            return self.error or "no answer"
        parts = [f"HTTP {self.status}"]
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype:
            parts.append(ctype)
        env = read_envelope(self.body)
        if env.provider:
            name = "ErrCode" if env.dialect == "pixverse" else "code"
            parts.append(f"{name} {env.code}")
            if env.message:
                parts.append(repr(env.message[:80]))
        elif isinstance(self.body, str) and self.body.strip():
            parts.append(repr(" ".join(self.body.split())[:60]))
        elif self.body is not None and not isinstance(self.body, str):
            parts.append(f"JSON {_json_preview(self.body)}")
        if "Location" in self.headers:
            parts.append(f"-> {self.headers['Location']}")
        return ", ".join(parts)


def _json_preview(body: Any) -> str:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def dialect_of(answer: ProbeAnswer) -> str | None:
    """ "pixverse" or "gateway" when the answer is in one of this API's envelopes."""
    env = read_envelope(answer.body)
    return env.dialect if env.provider else None


def classify(answer: ProbeAnswer) -> Verdict:
    """The one rule: what this answer says about the route it came from.

    401/403 refuse the key, whatever the body. A recognised envelope (PixVerse
    ``ErrCode``/``Resp`` or gateway ``code``/``data``) means the route is this API; it
    says "no such task" by PixVerse ErrCode 500008, gateway code 404, or a message with
    "not found", "not exist" or "no such task", whatever the HTTP status. Everything
    else (a redirect, a 404/405 page, HTML or other non-JSON, JSON in neither envelope)
    is route-level, except 429 and 5xx, which a healthy route also sends under load.
    """
    if answer.status is None:
        return Verdict.NO_ANSWER
    if answer.status in (401, 403):
        return Verdict.KEY_REFUSED
    if 300 <= answer.status < 400:
        return Verdict.ROUTE_LEVEL
    env = read_envelope(answer.body)
    if not env.provider:
        if answer.status == 429 or answer.status >= 500:
            return Verdict.INCONCLUSIVE
        return Verdict.ROUTE_LEVEL
    # read as a run reads it (one table of codes and words): the doctor may not call
    # "no such task" what a run would call something else, or the reverse
    if meaning_of(env, env.message) is Meaning.NOT_FOUND:
        return Verdict.NO_SUCH_TASK
    return Verdict.ENVELOPE


def accepted_task(answer: ProbeAnswer) -> str | None:
    """When a generate answer looks like an accepted task: its id (or "?" when the
    envelope says success without one); None when it is a refusal."""
    env = read_envelope(answer.body)
    if not env.provider:
        return None
    payload = env.payload if isinstance(env.payload, dict) else {}
    for key in ("video_id", "task_id", "id"):
        value = payload.get(key)
        if isinstance(value, int | str) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    if answer.status is not None and 200 <= answer.status < 300 and env.ok:
        return "?"
    return None


class Prober(ClosesOnExit):
    """Sends probes; use as ``async with Prober(config) as prober``.

    Every probe goes on a fresh connection: a probe is one question, and a generate
    probe must be one request on the wire, never replayed on a reused connection.
    """

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=min(config.total_timeout_s, PROBE_TOTAL_TIMEOUT_S),
            sock_connect=min(config.connect_timeout_s, PROBE_CONNECT_TIMEOUT_S),
            sock_read=min(config.read_timeout_s, PROBE_TOTAL_TIMEOUT_S),
        )

    async def __aenter__(self) -> Prober:
        self._session = api_session(self.config, force_close=True)
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, url: str) -> ProbeAnswer:
        return await self._send("GET", url, api_headers(self.config), None, None)

    async def post_json(
        self, url: str, body: dict[str, Any], *, trace_id: str | None = None
    ) -> ProbeAnswer:
        headers = api_headers(self.config)
        headers["Content-Type"] = "application/json"
        if trace_id is not None:
            headers[TRACE_HEADER] = trace_id
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        return await self._send("POST", url, headers, data, body)

    async def post_empty_form(self, url: str) -> ProbeAnswer:
        """A multipart form with no field at all (an upload with no file)."""
        form = aiohttp.MultipartWriter("form-data")
        headers = api_headers(self.config)
        return await self._send("POST", url, headers, form, "multipart/form-data, no field")

    async def _send(
        self, method: str, url: str, headers: dict[str, str], data: Any, shown_body: Any
    ) -> ProbeAnswer:
        if self._session is None:
            raise RuntimeError("use Prober as an async context manager")
        redact = self.config.redact
        shown_headers = {k: v for k, v in headers.items() if k != "Authorization"}
        request = {
            "method": method,
            "url": redact(url),
            "headers": {"Authorization": "Bearer [redacted]", **shown_headers},
            "body": shown_body,
        }
        t0 = time.monotonic()
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                raw, truncated = await _read_capped(resp)
                status = resp.status
                kept = {h: redact(resp.headers[h]) for h in KEPT_HEADERS if h in resp.headers}
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            why = describe_exc(self.config, exc)
            return self._failed(request, t0, f"cannot connect: {why}", sent=False)
        except aiohttp.InvalidURL as exc:
            return self._failed(request, t0, f"not a valid URL: {redact(str(exc))}", sent=False)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            why = describe_exc(self.config, exc)
            return self._failed(request, t0, f"no answer: {why}", sent=True)
        text = redact(raw.decode("utf-8", errors="replace"))
        body: Any = text
        if not truncated:
            with contextlib.suppress(ValueError):
                body = json.loads(text)
        return ProbeAnswer(
            request=request,
            status=status,
            headers=kept,
            body=body,
            body_bytes=len(raw),
            truncated=truncated,
            elapsed_s=time.monotonic() - t0,
            received_at_s=time.time(),
        )

    def _failed(self, request: dict[str, Any], t0: float, error: str, *, sent: bool) -> ProbeAnswer:
        return ProbeAnswer(
            request=request,
            status=None,
            error=error,
            sent=sent,
            elapsed_s=time.monotonic() - t0,
            received_at_s=time.time(),
        )


async def _read_capped(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """At most MAX_BODY_BYTES of the body; whether there was more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"".join(chunks)[:MAX_BODY_BYTES], True
    return b"".join(chunks), False
