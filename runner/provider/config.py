"""Where the provider lives and how patiently we talk to it; the Ai-trace-id rule.

Invariants:
- The API key comes from the environment variable ``PIXRUN_API_KEY`` only, and never
  appears in a repr, a message or a log line (``repr=False``; see :func:`redact`).
- :func:`trace_id_for` is a pure function of (ledger secret, shot key, attempt): a
  retried submit of the same attempt carries the same ``Ai-trace-id``, so a provider
  that deduplicates on it cannot charge twice; and two ledgers (two people, or two
  projects with a shot of the same name) never send the same id, so such a provider
  never hands one of them the other's video.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import quote

from yarl import URL

from runner.errors import UsageError
from runner.provider.settings_file import saved_settings

ENV_API_KEY = "PIXRUN_API_KEY"
ENV_BASE_URL = "PIXRUN_BASE_URL"
DEFAULT_BASE_URL = "https://api.302.ai"

#: how local (``file://``) images are put into a request body: uploaded once through
#: 302's file upload and sent as its URL (what 302's own apps do), or inlined
IMAGE_ENCODINGS = ("upload", "data_uri", "base64")

_GIB = 1024**3


@dataclass(frozen=True)
class ProviderConfig:
    """Everything the adapter assumes about the endpoint; every field is overridable."""

    base_url: str
    api_key: str = field(repr=False)
    generate_path: str = "/pix/generate"
    #: ``{task_id}`` is replaced by the task id, URL-quoted (a query form such as
    #: ``/pix/fetch?task_id={task_id}`` works too)
    fetch_path: str = "/pix/task/{task_id}/fetch"
    #: 302's file upload: multipart field ``file``, answers ``{"code": 200, "data": url}``
    upload_path: str = "/302/upload-file"
    connect_timeout_s: float = 10
    #: longest silence while reading an answer (or a download)
    read_timeout_s: float = 60
    #: whole generate/fetch call, connect to last byte (downloads have no total cap)
    total_timeout_s: float = 120
    max_download_bytes: int = 2 * _GIB
    #: "upload" (one upload per distinct image per ledger; the request carries its
    #: URL), "data_uri" (``data:image/png;base64,...``) or "base64" (bare base64)
    image_encoding: str = "upload"
    #: connections kept open for fetch and download calls (generate never reuses one)
    max_connections: int = 64
    #: how many times a cut download is resumed (or restarted) before giving up
    download_resume_attempts: int = 4
    #: HTTP statuses on generate that mean "a gateway forwarded it and lost the answer":
    #: the task may exist, so they are ambiguous rather than transient
    ambiguous_generate_statuses: tuple[int, ...] = (504,)
    #: honour HTTP(S)_PROXY / NO_PROXY from the environment
    trust_env: bool = False

    def __post_init__(self) -> None:
        try:
            url = URL(self.base_url)
            host, _port = url.host, url.port  # yarl checks the port when it is read
        except ValueError as exc:
            raise UsageError(
                f"the provider base URL {self.base_url!r} is not a valid URL ({exc})",
                hint=f"set {ENV_BASE_URL} (or --base-url) to e.g. {DEFAULT_BASE_URL}",
            ) from exc
        if url.scheme not in ("http", "https") or not host or " " in host:
            raise UsageError(
                f"the provider base URL {self.base_url!r} is not an http(s) URL",
                hint=f"set {ENV_BASE_URL} (or --base-url) to e.g. {DEFAULT_BASE_URL}",
            )
        if self.image_encoding not in IMAGE_ENCODINGS:
            raise UsageError(
                f"unknown image encoding {self.image_encoding!r}",
                hint="use one of: " + ", ".join(IMAGE_ENCODINGS),
            )
        if "{task_id}" not in self.fetch_path:
            raise UsageError(
                f"the fetch path {self.fetch_path!r} has no {{task_id}} placeholder",
                hint="write it like /pix/task/{task_id}/fetch",
            )
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be greater than 0")

    @classmethod
    def from_env(cls, base_url: str | None = None, **overrides: Any) -> ProviderConfig:
        """The key from ``PIXRUN_API_KEY``; the base URL from the argument, the
        environment (``PIXRUN_BASE_URL``) or the 302.AI default, in that order; the
        settings file's table for that URL under ``overrides``."""
        key = os.environ.get(ENV_API_KEY, "").strip()
        if not key:
            raise UsageError(
                f"no API key: the environment variable {ENV_API_KEY} is not set",
                hint=f"export {ENV_API_KEY}=<your 302.AI key>, or rehearse with --simulate",
            )
        overrides = checked_settings(overrides)
        known = set(setting_kinds())
        url = base_url or os.environ.get(ENV_BASE_URL, "").strip() or DEFAULT_BASE_URL
        saved = saved_settings(url, known)  # what `pixrun doctor --save` kept; flags win
        settings = checked_settings({**saved, **overrides})
        return cls(base_url=url.rstrip("/"), api_key=key, **settings)

    def generate_url(self) -> str:
        return self.base_url.rstrip("/") + self.generate_path

    def upload_url(self) -> str:
        return self.base_url.rstrip("/") + self.upload_path

    def fetch_url(self, task_id: str) -> str:
        return self.url_of(self.fetch_path, task_id)

    def url_of(self, route: str, task_id: str | None = None) -> str:
        """The full URL of ``route`` (a path, with ``{task_id}`` filled in when given)."""
        path = route if task_id is None else route.replace("{task_id}", quote(task_id, safe=""))
        return self.base_url.rstrip("/") + path

    def redact(self, text: str) -> str:
        """``text`` with the API key blotted out, for anything we show or raise."""
        if self.api_key and len(self.api_key) >= 4:
            return text.replace(self.api_key, "[redacted]")
        return text


def trace_id_for(shot_key: str, attempt: int, *, secret: bytes) -> str:
    """The ``Ai-trace-id`` of one attempt of one shot: a UUIDv8 (RFC 9562 custom layout).

    The top 96 bits (less the version and variant bits) come from HMAC-SHA256 of the
    shot key (shot id and version) under the ledger's random ``secret``; the low 32 bits
    are the attempt number. The same ledger, shot and attempt always give the same id;
    attempts of one shot share a recognisable prefix; without the secret an id can be
    neither predicted nor reproduced by anyone else.
    """
    if not 0 <= attempt < 2**32:
        raise ValueError(f"attempt {attempt} out of range")
    if len(secret) < 16:
        raise ValueError("the trace secret must be at least 16 bytes")
    mac = hmac.new(secret, shot_key.encode("utf-8"), hashlib.sha256).digest()[:16]
    digest = int.from_bytes(mac, "big")
    value = (digest & ~((1 << 32) - 1)) | attempt
    value &= ~(0xF << 76)
    value |= 0x8 << 76  # version 8
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC 4122/9562 variant
    return str(uuid.UUID(int=value))


#: what a setting's text may say for a yes/no setting
_BOOLS = {"true": True, "yes": True, "on": True, "1": True}
_BOOLS.update({"false": False, "no": False, "off": False, "0": False})


def setting_kinds() -> dict[str, str]:
    """The settings a run may give the adapter, with their types (as annotated)."""
    return {f.name: str(f.type) for f in fields(ProviderConfig) if f.name not in _NOT_SETTINGS}


_NOT_SETTINGS = frozenset({"base_url", "api_key"})


def checked_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """Adapter settings (``--provider-option KEY=VALUE``) with their names checked and
    their values made the setting's type: ``trust_env=false`` is False (never the
    truthy text ``"false"``), ``read_timeout_s=abc`` a UsageError naming the setting,
    never a TypeError deep in a run. Raises UsageError."""
    kinds = setting_kinds()
    unknown = sorted(set(options) - set(kinds))
    if unknown:
        raise UsageError(
            f"unknown provider setting(s): {', '.join(unknown)}",
            hint="known: " + ", ".join(sorted(kinds)),
        )
    return {key: _as_kind(key, kinds[key], value) for key, value in options.items()}


def _as_kind(key: str, kind: str, value: Any) -> Any:
    text = str(value).strip()
    try:
        if kind == "str":
            return text
        if kind == "bool":
            if isinstance(value, bool):
                return value
            return _BOOLS[text.lower()]
        if isinstance(value, bool):
            raise ValueError(value)
        if kind == "float":
            number = float(text)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(value)
            return number
        if kind == "int":
            return int(text)
        if kind.startswith("tuple[int"):
            items = value if isinstance(value, (list, tuple)) else text.split(",")
            return tuple(int(str(item).strip()) for item in items)
    except (ValueError, KeyError) as exc:
        what = {"bool": "true or false", "float": "a number", "int": "a whole number"}
        expected = what.get(kind, "whole numbers, comma-separated")
        raise UsageError(f"provider setting {key}={text!r}: expected {expected}") from exc
    return value
