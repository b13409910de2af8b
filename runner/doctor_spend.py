"""``pixrun doctor --spend``: one cheapest real shot end to end, its raw answers kept.

The shot is text-to-video, v4.5, 360p, 5 s, normal motion: the cheapest request the
price table knows (0.1 PTC by runner/data/prices.json). It proves what the free checks
cannot: that a real task is created, that the fetch route follows it to the end, and
that its video downloads as an MP4. The raw answers go into a folder for a bug report.

Invariants:
- Exactly one generate request is sent, on a fresh connection, and never again: a lost
  answer is reported with its Ai-trace-id, not resent.
- Every answer is written to the folder (as JSON, the key redacted by the prober)
  before it is acted on: the generate answer, each fetch answer whose state differs
  from the last one kept, and the last one.
- The video goes through the adapter's own download code and is checked as an MP4.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from runner.errors import (
    AmbiguousSubmit,
    AuthRefused,
    ContractMismatch,
    DownloadCorrupt,
    ProviderError,
    RateLimited,
    TaskNotFound,
    TransientError,
    UsageError,
)
from runner.pricing import PriceTable, price_of
from runner.provider import Provider, ProviderConfig, TaskState, TaskStatus, mp4_problem
from runner.provider.dialects import parse_fetch, parse_generate
from runner.provider.probe import ProbeAnswer, Prober, Verdict, classify
from runner.provider.verdicts import Call

SPEND_REQUEST: dict[str, Any] = {
    "prompt": "pixrun doctor test shot: a paper boat drifts across a calm pond",
    "model": "v4.5",
    "quality": "360p",
    "duration": 5,
    "motion_mode": "normal",
}
SPEND_TIMEOUT_S = 600.0
#: polls start quickly (a fast provider is done in seconds) and slow down to this
FIRST_POLL_S = 0.25
MAX_POLL_S = 10.0
POLL_GROWTH = 1.5
VIDEO_NAME = "pixrun-doctor.mp4"

Progress = Callable[[str], None]


def spend_price_ptc(table: PriceTable | None = None) -> Decimal | None:
    """What the test shot costs by the price table."""
    return price_of(SPEND_REQUEST, table)


def spend_description() -> str:
    r = SPEND_REQUEST
    return f"text-to-video, {r['model']}, {r['quality']}, {r['duration']} s, {r['motion_mode']}"


def default_spend_dir(now_s: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_s))
    return Path(f"pixrun-doctor-{stamp}")


@dataclass(frozen=True)
class SpendResult:
    """The finished test shot."""

    folder: Path
    task_id: str
    trace_id: str
    video: Path
    size_bytes: int
    sha256: str
    elapsed_s: float
    polls: int
    #: the JSON files written (answers, summary)
    saved: tuple[Path, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "task_id": self.task_id,
            "trace_id": self.trace_id,
            "video": str(self.video),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "elapsed_s": round(self.elapsed_s, 1),
            "polls": self.polls,
            "saved": [str(p) for p in self.saved],
        }


class _Keeper:
    """Writes answers into the folder, numbered in the order they came."""

    def __init__(self, folder: Path, config: ProviderConfig) -> None:
        self.folder = folder
        self.redact = config.redact
        self.saved: list[Path] = []
        self._last: tuple[Any, ...] | None = None

    def keep(self, name: str, doc: dict[str, Any]) -> Path:
        path = self.folder / f"{len(self.saved) + 1:02d}-{name}.json"
        text = self.redact(json.dumps(doc, indent=2, ensure_ascii=False, default=str)) + "\n"
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.saved.append(path)
        return path

    def keep_if_new(self, name: str, answer: ProbeAnswer, signature: tuple[Any, ...]) -> None:
        if signature != self._last:
            self._last = signature
            self.keep(name, answer.to_dict())


async def spend_one_shot(
    config: ProviderConfig,
    folder: Path,
    *,
    on_progress: Progress,
    timeout_s: float = SPEND_TIMEOUT_S,
) -> SpendResult:
    """Generate the test shot (charged), follow it to the end, download and check it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create {folder}: {exc.strerror or exc}", hint="choose another --save-dir"
        ) from exc
    keeper = _Keeper(folder, config)
    trace_id = str(uuid.uuid4())
    t0 = time.monotonic()
    async with Prober(config) as prober:
        answer = await prober.post_json(config.generate_url(), SPEND_REQUEST, trace_id=trace_id)
        keeper.keep("generate", answer.to_dict())
        task_id = _task_id_of(answer, config, trace_id, folder)
        on_progress(f"task {task_id} accepted (Ai-trace-id {trace_id}); waiting for the render")
        state, last, polls = await _follow(prober, config, task_id, keeper, on_progress, timeout_s)
    keeper.keep(f"fetch-{state.status.value}", last.to_dict())
    assert state.video_url is not None  # _follow returns only a succeeded task
    on_progress(f"rendered after {time.monotonic() - t0:.0f} s; downloading")
    async with Provider(config) as provider:
        result = await provider.download(state.video_url, folder / VIDEO_NAME)
    problem = await asyncio.to_thread(mp4_problem, result.path)
    if problem is not None:
        raise DownloadCorrupt(f"the downloaded video {result.path} is not an MP4: {problem}")
    done = SpendResult(
        folder=folder,
        task_id=task_id,
        trace_id=trace_id,
        video=result.path,
        size_bytes=result.bytes,
        sha256=result.sha256,
        elapsed_s=time.monotonic() - t0,
        polls=polls,
        saved=tuple(keeper.saved),
    )
    summary = {"request": SPEND_REQUEST, "base_url": config.base_url, **done.to_dict()}
    keeper.keep("summary", summary)
    return replace(done, saved=tuple(keeper.saved))


def _task_id_of(answer: ProbeAnswer, config: ProviderConfig, trace_id: str, folder: Path) -> str:
    """The task id of the generate answer, or the error it stands for."""
    where = f"the raw answer is in {folder}"
    if answer.status is None:
        if not answer.sent:
            raise TransientError(f"generate: {answer.error}; nothing was sent, nothing charged")
        raise AmbiguousSubmit(
            f"generate: {answer.error}: the task may exist and be charged (Ai-trace-id {trace_id})",
            hint=f"look for it in the 302.AI dashboard before trying again; {where}",
        )
    if classify(answer) is Verdict.ROUTE_LEVEL:
        raise ContractMismatch(
            f"the generate route answered in a way pixrun does not recognise "
            f"({answer.summary()}); a task may have been created (Ai-trace-id {trace_id})",
            shot_charged=True,
            hint=where,
        )
    try:
        # read as a run reads it: the same statuses mean "the task may exist"
        return parse_generate(
            answer.status,
            answer.headers,
            answer.body,
            redact=config.redact,
            ambiguous_statuses=config.ambiguous_generate_statuses,
            call=Call("POST", config.generate_url()),
        )
    except ProviderError as exc:
        exc.hint = f"{exc.hint}; {where}" if exc.hint else where
        raise


async def _follow(
    prober: Prober,
    config: ProviderConfig,
    task_id: str,
    keeper: _Keeper,
    on_progress: Progress,
    timeout_s: float,
) -> tuple[TaskState, ProbeAnswer, int]:
    """Poll the fetch route until the task is done: (state, its answer, polls)."""
    t0 = time.monotonic()
    delay_s = FIRST_POLL_S
    polls = 0
    while True:
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * POLL_GROWTH, MAX_POLL_S)
        answer = await prober.get(config.fetch_url(task_id))
        polls += 1
        verdict = classify(answer)
        try:
            state = _read_fetch(answer, verdict, config, task_id)
        except ProviderError:
            keeper.keep(f"fetch-{verdict.value}", answer.to_dict())
            raise
        label = state.status.value if state is not None else verdict.value
        if state is None or state.status is not TaskStatus.SUCCEEDED:
            keeper.keep_if_new(f"fetch-{label}", answer, (answer.status, verdict, label))
        elapsed_s = time.monotonic() - t0
        on_progress(f"{elapsed_s:5.0f} s  poll {polls}: {label}")
        if state is not None and state.status is TaskStatus.SUCCEEDED:
            return state, answer, polls
        if state is not None and state.status in (TaskStatus.FAILED, TaskStatus.MODERATED):
            raise ProviderError(
                f"the test shot (task {task_id}) ended {label}: {state.message or 'no reason'}",
                hint=f"the raw answers are in {keeper.folder}",
            )
        if elapsed_s > timeout_s:
            keeper.keep(f"fetch-last-{label}", answer.to_dict())
            raise TransientError(
                f"task {task_id} did not finish within {timeout_s / 60:.0f} minutes "
                f"(last: {label})",
                hint=f"the raw answers are in {keeper.folder}",
            )


def _read_fetch(
    answer: ProbeAnswer, verdict: Verdict, config: ProviderConfig, task_id: str
) -> TaskState | None:
    """The task's state, None while there is none to read yet (keep polling), or the
    error that ends the test."""
    if verdict is Verdict.ROUTE_LEVEL:
        raise ContractMismatch(
            f"the fetch route answered in a way pixrun does not recognise "
            f"({answer.summary()}); task {task_id} was created and charged",
            hint="pixrun doctor (without --spend) looks for the fetch route",
        )
    if verdict is Verdict.KEY_REFUSED:
        raise AuthRefused(f"the key was refused while following task {task_id}")
    if verdict in (Verdict.NO_ANSWER, Verdict.INCONCLUSIVE):
        return None
    try:
        return parse_fetch(
            answer.status or 0,
            answer.headers,
            answer.body,
            task_id,
            redact=config.redact,
            call=Call("GET", config.fetch_url(task_id)),
        )
    except (TaskNotFound, TransientError, RateLimited):
        # a fresh task may take a moment to be visible; the timeout decides
        return None
    except ContractMismatch as exc:
        # doctor keeps no ledger: the run's "a rerun collects every task" would not
        # hold here; name the task that was paid for instead
        raise ContractMismatch(
            f"{exc.message} Task {task_id} was created and charged; doctor keeps no "
            "ledger, so note its id to find it in the 302.AI dashboard",
            status=exc.status,
            hint="report the raw answers kept in the --spend folder; 'pixrun doctor' "
            "(without --spend) checks the fetch route",
        ) from None
