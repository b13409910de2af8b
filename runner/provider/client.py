"""The one place pixrun talks HTTP to the video provider.

Invariants:
- Every generate goes out on a fresh connection (its own connector with
  ``force_close=True``), so "nothing was sent" and "sent, answer lost" can be told apart:
  a failure while connecting (refused, unreachable, connect timeout) raises
  :class:`~runner.errors.TransientError`; any failure after the connection was made
  (reset, server disconnect, read or total timeout, unreadable answer) raises
  :class:`~runner.errors.AmbiguousSubmit`, because the request may have been received.
  aiohttp never retries a POST by itself (it only replays idempotent methods on a
  reused connection), so one ``generate`` call is at most one request on the wire.
- Fetch and download share one pooled session; fetch is idempotent and any transport
  failure is transient.
- The API key is sent only to the provider's API (never with downloads), and never
  appears in an exception message or a repr. aiohttp's response errors carry the
  request headers in their repr, so they are not chained into ours.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from runner.errors import AmbiguousSubmit, InvalidRequest, TransientError, UsageError
from runner.outputs import DownloadResult, Prepare
from runner.provider.config import ProviderConfig
from runner.provider.dialects import TaskState, parse_fetch, parse_generate, parse_upload
from runner.provider.download import download_file
from runner.provider.images import encode_local_images, has_local_images
from runner.provider.verdicts import Call, read_envelope

TRACE_HEADER = "Ai-trace-id"


def api_headers(config: ProviderConfig) -> dict[str, str]:
    """The headers every API call carries (the doctor's probes too)."""
    return {"Authorization": f"Bearer {config.api_key}", "Accept": "application/json"}


def describe_exc(config: ProviderConfig, exc: BaseException) -> str:
    """A transport error in words, key redacted. aiohttp's response errors carry the
    request headers in their repr, so only str() is used."""
    if isinstance(exc, TimeoutError):
        return f"timed out: {type(exc).__name__}"
    text = config.redact(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def api_session(config: ProviderConfig, *, force_close: bool) -> aiohttp.ClientSession:
    """A session for the provider's API: no cookies, proxies only when configured;
    ``force_close``: a fresh connection per request (see the module invariants)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.max_connections, force_close=force_close),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=config.trust_env,
    )


class ClosesOnExit:
    """The exit of an ``async with`` block is :meth:`close`, whatever ended the block:
    a client's sessions never outlive the block that opened them."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Provider(ClosesOnExit):
    """An async client of the provider; use as ``async with Provider(config) as p``."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        #: HTTP requests made, by kind (downloads count each ranged resume)
        self.calls: dict[str, int] = {"generate": 0, "fetch": 0, "download": 0, "upload": 0}
        #: answers (any HTTP status) the API sent: 0 means it was never reached
        self.answers = 0
        #: the response family the API answered in (pixverse or gateway), once seen
        self.dialect: str | None = None
        self._pooled: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None
        self._api_timeout = aiohttp.ClientTimeout(
            total=config.total_timeout_s,
            sock_connect=config.connect_timeout_s,
            sock_read=config.read_timeout_s,
        )
        self._download_timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=config.connect_timeout_s,
            sock_read=config.read_timeout_s,
        )

    def __repr__(self) -> str:
        return f"Provider(base_url={self.config.base_url!r})"

    async def __aenter__(self) -> Provider:
        self._sessions()
        return self

    async def close(self) -> None:
        for session in (self._pooled, self._fresh):
            if session is not None:
                await session.close()
        self._pooled = self._fresh = None

    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        """(pooled, fresh-per-request); created on first use, inside the running loop."""
        if self._pooled is None or self._fresh is None:
            self._pooled = api_session(self.config, force_close=False)
            self._fresh = api_session(self.config, force_close=True)
        return self._pooled, self._fresh

    def _host(self) -> str:
        url = URL(self.config.base_url)
        return f"{url.host}:{url.port}" if url.port else str(url.host)

    async def generate(self, request: Mapping[str, Any], *, trace_id: str) -> str:
        """Submit one generation (charged); the provider's task id, as text."""
        if self.config.image_encoding == "upload" and has_local_images(request):
            # the caller uploads first (runner.run.uploads): never inline bytes by accident
            raise InvalidRequest("a local image was not uploaded before the generate request")
        body = await encode_local_images(request, self.config.image_encoding)
        try:
            payload = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"the request cannot be sent as JSON: {exc}") from exc
        headers = api_headers(self.config)
        headers["Content-Type"] = "application/json"
        headers[TRACE_HEADER] = trace_id
        _, fresh = self._sessions()
        self.calls["generate"] += 1
        try:
            status, resp_headers, raw = await self._exchange(
                fresh, "POST", self.config.generate_url(), headers, data=payload
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransientError(
                f"generate: cannot connect to {self._host()} "
                f"({describe_exc(self.config, exc)}); nothing was sent",
                hint="check the network and PIXRUN_BASE_URL",
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise UsageError(f"the generate URL is not valid: {exc}") from exc
        except aiohttp.ClientResponseError as exc:
            raise self._ambiguous(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._ambiguous(exc) from exc
        return parse_generate(
            status,
            resp_headers,
            self._note_dialect(_decode(raw)),
            redact=self.config.redact,
            ambiguous_statuses=self.config.ambiguous_generate_statuses,
            call=Call("POST", self.config.generate_url()),
        )

    def _note_dialect(self, body: Any) -> Any:
        envelope = read_envelope(body)
        if envelope.provider:
            self.dialect = envelope.dialect
        return body

    def _ambiguous(self, exc: BaseException) -> AmbiguousSubmit:
        return AmbiguousSubmit(
            f"generate: the request was sent to {self._host()} but no answer came back "
            f"({describe_exc(self.config, exc)}); the task may exist and be charged",
            hint="the shot is parked; resolve it once the provider can be asked again",
        )

    async def fetch(self, task_id: str) -> TaskState:
        """The task's current state (free, idempotent)."""
        self.calls["fetch"] += 1
        url = self.config.fetch_url(task_id)
        status, headers, body = await self._pooled_call("GET", url, f"fetch {task_id}")
        return parse_fetch(
            status, headers, body, task_id, redact=self.config.redact, call=Call("GET", url)
        )

    async def upload(self, path: Path, data: bytes) -> str:
        """Upload one local image (``data``, read from ``path``); the URL the provider
        keeps it at. Charged (about 0.001 PTC), idempotent in effect: a repeat costs
        another upload, never a render."""
        self.calls["upload"] += 1
        url = self.config.upload_url()
        form = aiohttp.FormData()
        form.add_field("file", data, filename=path.name, content_type=_image_type(path))
        status, headers, body = await self._pooled_call(
            "POST", url, f"upload {path.name}", data=form
        )
        return parse_upload(
            status, headers, body, redact=self.config.redact, call=Call("POST", url)
        )

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        headers: Mapping[str, str],
        **kw: Any,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One API request and its whole answer, counted in ``answers``. Redirects are
        not followed: on the API a redirect means a wrong URL (see verdicts)."""
        async with session.request(
            method, url, headers=headers, timeout=self._api_timeout, allow_redirects=False, **kw
        ) as resp:
            self.answers += 1
            return resp.status, resp.headers, await resp.read()

    async def _pooled_call(
        self, method: str, url: str, what: str, **kw: Any
    ) -> tuple[int, Mapping[str, str], Any]:
        """One API call on the pooled session: ``(status, headers, decoded body)``. Any
        transport failure is transient: these calls are safe to repeat."""
        pooled, _ = self._sessions()
        try:
            status, headers, raw = await self._exchange(
                pooled, method, url, api_headers(self.config), **kw
            )
        except aiohttp.InvalidURL as exc:
            raise UsageError(f"the URL of {what} is not valid: {exc}") from exc
        except aiohttp.ClientResponseError as exc:
            raise TransientError(f"{what}: {describe_exc(self.config, exc)}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"{what}: {describe_exc(self.config, exc)}") from exc
        return status, headers, self._note_dialect(_decode(raw))

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        then: Callable[[DownloadResult], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        prepare: Prepare | None = None,
    ) -> DownloadResult:
        """Fetch a finished video into ``dest``; ``prepare`` reworks the temporary file
        before it is published (embedded tags) and ``then`` runs after, both in the same
        worker-thread trip (see runner/provider/download.py); ``on_bytes`` hears of
        every chunk received (progress, for the run's watchdog)."""
        pooled, _ = self._sessions()

        def count() -> None:
            self.calls["download"] += 1

        return await download_file(
            pooled,
            url,
            dest,
            max_bytes=self.config.max_download_bytes,
            resume_attempts=self.config.download_resume_attempts,
            timeout=self._download_timeout,
            on_request=count,
            then=then,
            on_bytes=on_bytes,
            prepare=prepare,
        )


def _image_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _decode(raw: bytes) -> Any:
    """JSON when it is JSON; otherwise the text, for messages."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
