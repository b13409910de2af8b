"""The simulator's knobs. Every fault is off by default; one seed makes a run repeatable.

Invariants:
- Shares are probabilities in [0, 1]; times are seconds (fractions allowed).
- Money is :class:`~decimal.Decimal` PTC here and integer micro-PTC in the books.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from runner.errors import UsageError
from runner.pricing import PriceTable

#: called with (request body, request headers) before a generate is accepted; if it
#: raises, the simulator records a violation and answers 500
GenerateHook = Callable[[Mapping[str, Any], Mapping[str, str]], Awaitable[None]]

DIALECTS = ("pixverse", "gateway", "web")

#: every knob with a share, for validation and the CLI
SHARE_KNOBS = (
    "error_5xx_share",
    "rate_limit_share",
    "fail_first_attempt_share",
    "truncate_share",
    "lost_generate_share",
    "deleted_share",
    "forget_share",
    "permanent_error_share",
    "dead_url_share",
    "callback_lost_share",
    "callback_duplicate_share",
    "callback_forged_share",
)
#: the placeholder of the task id in ``fetch_path`` (in the path, or as a query value)
TASK_ID_PLACEHOLDER = "{task_id}"


@dataclass
class SimConfig:
    """How the simulated provider behaves (see ``pixrun sim --help`` for each knob)."""

    #: response family: "pixverse" (ErrCode/Resp, int ids), "gateway" (code/data) or
    #: "web" (PixVerse web app: ErrCode/Resp with video_id/video_status)
    dialect: str = "pixverse"
    #: the Bearer key the simulator accepts
    api_key: str = field(default="sim-key", repr=False)
    #: each render takes a uniform random time in [min, max] seconds
    render_time_s: tuple[float, float] = (1.0, 3.0)
    seed: int = 0
    #: share of generate/fetch calls answered 503
    error_5xx_share: float = 0.0
    #: share of generate/fetch calls answered 429 with ``Retry-After: retry_after_s``
    rate_limit_share: float = 0.0
    retry_after_s: float = 1.0
    #: refuse new tasks beyond this many renders in flight (429, ErrCode 500044)
    concurrency_limit: int | None = None
    #: account balance; None = unlimited. When a price does not fit: 402, ErrCode 500043
    balance_ptc: Decimal | None = None
    #: a prompt containing any of these (case-insensitive) ends moderated (status 7)
    moderated_words: tuple[str, ...] = ()
    #: a prompt containing any of these (case-insensitive) renders a file whose box
    #: chain is sound but whose moov mutagen cannot read (output.embed_metadata)
    untaggable_words: tuple[str, ...] = ()
    #: share of shots whose first task fails to render (status 8); later attempts render
    fail_first_attempt_share: float = 0.0
    #: download URLs expire this many seconds after the fetch that issued them
    url_ttl_s: float | None = None
    #: share of tasks whose first download is cut mid-body (Range resumes work)
    truncate_share: float = 0.0
    #: share of generates whose task is created and charged, then the answer is lost
    lost_generate_share: float = 0.0
    #: > 0: a "lost" answer is sent this late instead of dropped (client times out first)
    slow_generate_s: float = 0.0
    #: a generate with an Ai-trace-id seen before returns that task, uncharged
    dedupe_trace_id: bool = False
    generate_hook: GenerateHook | None = field(default=None, repr=False, compare=False)
    #: the price rule; None = the packaged table
    price_table: PriceTable | None = field(default=None, repr=False)
    #: charged when the table has no price (10 s); None = charge nothing, count it
    unknown_price_ptc: Decimal | None = None
    #: give back the charge of a failed or moderated render, like 302.AI's ``refund``
    refund_failed: bool = True
    generate_path: str = "/pix/generate"
    #: the task id in the path ("/pix/task/{task_id}/fetch") or a query value
    #: ("/pix/fetch?task_id={task_id}": routed on the path, the id read from task_id)
    fetch_path: str = "/pix/task/{task_id}/fetch"
    #: multipart upload of a local image (field ``file``), answered with its URL
    upload_path: str = "/302/upload-file"
    #: what an upload costs in micro-PTC; None = the price table's "upload_ptc", else 1000
    upload_price_uptc: int | None = None
    #: share of succeeded renders that report "deleted" (status 6) once the render ends
    deleted_share: float = 0.0
    #: share of tasks the provider forgets once created: every fetch says "no such task"
    forget_share: float = 0.0
    #: HTTP status of the "no such task" envelope (the provider sends 200)
    not_found_status: int = 200
    #: provider-level refusals (invalid, no credit, concurrency) come as HTTP 200 envelopes
    errors_in_200: bool = False
    #: an ErrCode that refuses a share of generates for good (e.g. 500054 moderation)
    permanent_error_code: int | None = None
    permanent_error_share: float = 0.0
    #: share of fetches whose video URL points at a host that refuses connections
    dead_url_share: float = 0.0
    #: every video URL points at a dead host (a download that never works)
    dead_urls_always: bool = False
    #: POST to a generate request's ``callback`` URL when its render ends
    callback: bool = False
    #: share of callbacks never sent
    callback_lost_share: float = 0.0
    #: seconds between a render's end and its callback
    callback_delay_s: float = 0.0
    #: share of callbacks sent twice
    callback_duplicate_share: float = 0.0
    #: share of tasks for which a forged callback is also sent, halfway through the
    #: render: to the right host, with a wrong secret or for an unknown task
    callback_forged_share: float = 0.0
    #: append every change to the books here and replay it on start (survives the
    #: process); the clock then defaults to wall time so renders end on time across runs
    state_path: Path | None = None
    #: seconds, monotonic (wall time with ``state_path``); tests may pass a fake clock
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise UsageError(
                f"unknown simulator dialect {self.dialect!r}", hint="use " + ", ".join(DIALECTS)
            )
        for name in SHARE_KNOBS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"{name} must be between 0 and 1, not {value}")
        low, high = self.render_time_s
        if low < 0 or high < low:
            raise UsageError(
                f"render_time_s must be (min, max) with 0 <= min <= max, not {self.render_time_s}"
            )
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise UsageError("concurrency_limit must be at least 1")
        if self.url_ttl_s is not None and self.url_ttl_s <= 0:
            raise UsageError("url_ttl_s must be greater than 0")
        if self.retry_after_s < 0 or self.slow_generate_s < 0 or self.callback_delay_s < 0:
            raise UsageError(
                "retry_after_s, slow_generate_s and callback_delay_s must not be negative"
            )
        self.balance_ptc = _money(self.balance_ptc, "balance_ptc")
        self.unknown_price_ptc = _money(self.unknown_price_ptc, "unknown_price_ptc")
        self.moderated_words = tuple(w.lower() for w in self.moderated_words if w.strip())
        self.untaggable_words = tuple(w.lower() for w in self.untaggable_words if w.strip())
        self._check_routes()
        self._check_provider_answers()
        if self.state_path is not None:
            self.state_path = Path(self.state_path)
            if self.clock is time.monotonic:
                # a render in flight when the process died must end on time after a restart
                self.clock = time.time

    def _check_routes(self) -> None:
        fetch_route(self.fetch_path)  # raises on a path without a task-id placeholder
        for name in ("generate_path", "upload_path"):
            if not getattr(self, name).startswith("/") or "?" in getattr(self, name):
                raise UsageError(
                    f"{name} must be a path starting with /, not {getattr(self, name)!r}"
                )

    def _check_provider_answers(self) -> None:
        if self.upload_price_uptc is not None and self.upload_price_uptc < 0:
            raise UsageError("upload_price_uptc must not be negative")
        if not 200 <= self.not_found_status <= 599:
            raise UsageError(
                f"not_found_status must be an HTTP status, not {self.not_found_status}"
            )
        if self.permanent_error_share > 0 and self.permanent_error_code is None:
            raise UsageError(
                "permanent_error_share needs permanent_error_code",
                hint="e.g. --permanent-error-code 500054",
            )
        if self.permanent_error_code is not None and self.permanent_error_code <= 0:
            raise UsageError("permanent_error_code must be a positive ErrCode")


def fetch_route(fetch_path: str) -> tuple[str, str | None]:
    """(route path, query parameter holding the task id or None) of a fetch path."""
    path, _, query = fetch_path.partition("?")
    if not path.startswith("/"):
        raise UsageError(f"fetch_path must start with /, not {fetch_path!r}")
    if not query:
        if TASK_ID_PLACEHOLDER not in path:
            raise UsageError(
                f"fetch_path {fetch_path!r} has no {TASK_ID_PLACEHOLDER} placeholder",
                hint="e.g. /pix/task/{task_id}/fetch or /pix/fetch?task_id={task_id}",
            )
        return path, None
    names = [name for name, value in parse_qsl(query) if value == TASK_ID_PLACEHOLDER]
    if len(names) != 1 or TASK_ID_PLACEHOLDER in path:
        raise UsageError(
            f"fetch_path {fetch_path!r} needs exactly one {TASK_ID_PLACEHOLDER}",
            hint="e.g. /pix/fetch?task_id={task_id}",
        )
    return path, names[0]


def _money(value: Any, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise UsageError(f"{name} must be a number of PTC, not {value!r}") from exc
    if not number.is_finite() or number < 0:
        raise UsageError(f"{name} must be a number of PTC >= 0, not {value!r}")
    return number
