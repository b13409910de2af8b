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
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from runner.errors import AmbiguousSubmit, InvalidRequest, TransientError, UsageError
from runner.provider.config import ProviderConfig
from runner.provider.dialects import TaskState, parse_fetch, parse_generate
from runner.provider.download import DownloadResult, download_file
from runner.provider.images import encode_local_images

TRACE_HEADER = "Ai-trace-id"


class Provider:
    """An async client of the provider; use as ``async with Provider(config) as p``."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        #: HTTP requests made, by kind (downloads count each ranged resume)
        self.calls: dict[str, int] = {"generate": 0, "fetch": 0, "download": 0}
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for session in (self._pooled, self._fresh):
            if session is not None:
                await session.close()
        self._pooled = self._fresh = None

    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        """(pooled, fresh-per-request); created on first use, inside the running loop."""
        if self._pooled is None or self._fresh is None:
            self._pooled = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=self.config.trust_env,
            )
            self._fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.max_connections, force_close=True),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=self.config.trust_env,
            )
        return self._pooled, self._fresh

    def _api_headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.config.api_key}",
            "Accept": "application/json",
        }

    def _host(self) -> str:
        url = URL(self.config.base_url)
        return f"{url.host}:{url.port}" if url.port else str(url.host)

    async def generate(self, request: Mapping[str, Any], *, trace_id: str) -> str:
        """Submit one generation (charged); the provider's task id, as text."""
        body = await encode_local_images(request, self.config.image_encoding)
        try:
            payload = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"the request cannot be sent as JSON: {exc}") from exc
        headers = self._api_headers()
        headers["Content-Type"] = "application/json"
        headers[TRACE_HEADER] = trace_id
        _, fresh = self._sessions()
        self.calls["generate"] += 1
        try:
            async with fresh.post(
                self.config.generate_url(),
                data=payload,
                headers=headers,
                timeout=self._api_timeout,
                allow_redirects=False,
            ) as resp:
                status, resp_headers = resp.status, resp.headers
                raw = await resp.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransientError(
                f"generate: cannot connect to {self._host()} ({self._why(exc)}); nothing was sent",
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
            _decode(raw),
            redact=self.config.redact,
            ambiguous_statuses=self.config.ambiguous_generate_statuses,
        )

    def _ambiguous(self, exc: BaseException) -> AmbiguousSubmit:
        return AmbiguousSubmit(
            f"generate: the request was sent to {self._host()} but no answer came back "
            f"({self._why(exc)}); the task may exist and be charged",
            hint="the shot is parked; resolve it once the provider can be asked again",
        )

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"timed out: {type(exc).__name__}"
        text = self.config.redact(str(exc))
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    async def fetch(self, task_id: str) -> TaskState:
        """The task's current state (free, idempotent)."""
        pooled, _ = self._sessions()
        self.calls["fetch"] += 1
        try:
            async with pooled.get(
                self.config.fetch_url(task_id),
                headers=self._api_headers(),
                timeout=self._api_timeout,
                allow_redirects=False,
            ) as resp:
                status, resp_headers = resp.status, resp.headers
                raw = await resp.read()
        except aiohttp.InvalidURL as exc:
            raise UsageError(f"the fetch URL is not valid: {exc}") from exc
        except aiohttp.ClientResponseError as exc:
            raise TransientError(f"fetch {task_id}: {self._why(exc)}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"fetch {task_id}: {self._why(exc)}") from exc
        return parse_fetch(status, resp_headers, _decode(raw), task_id, redact=self.config.redact)

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        then: Callable[[DownloadResult], None] | None = None,
    ) -> DownloadResult:
        """Fetch a finished video into ``dest``; ``then`` runs in the same worker-thread
        trip, after the file is published (see runner/provider/download.py)."""
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
        )


def _decode(raw: bytes) -> Any:
    """JSON when it is JSON; otherwise the text, for messages."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
