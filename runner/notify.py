"""Telling someone a run has ended: one JSON summary POSTed to each notify URL
(``run.notify``, ``--notify``), and the same JSON on the stdin of an ``--on-finish``
command.

Invariants:
- A notification never changes the run's exit code and never raises: every failure
  (refused, timed out, a non-2xx answer, a command that fails or hangs) comes back as a
  :class:`Delivery`, for the caller to report once.
- Time-bounded: a URL is tried at most ``NotifyPolicy.attempts`` times, with doubling
  pauses, all within ``total_timeout_s``; an on-finish command is killed (with its
  process group) after ``command_timeout_s``. The URLs and the command are served at
  once, so the slowest bound is the bound of all.
- The API key is never in a summary: every string in it (paths, messages, the manifest
  name) goes through :func:`runner.text.scrub` before it is encoded, and the on-finish
  command does not inherit the key's environment variable.
- Every notify URL is checked (:func:`notify_url_fault`) where it is read, the manifest
  loader and the CLI option, before anything is sent to the provider.
- A summary carries an ``id``, the same on every try of every target: a receiver that
  got a try whose answer was lost can drop the repeat.
- The on-finish command is split with :func:`shlex.split` and started without a shell.
  The summary travels on stdin only, never on the command line, so nothing in it (a
  prompt, a provider's message) can be run; a pipeline is written ``sh -c '...'``.

Callers (one run, or one manifest of many): ``await summarise(outcome, ...)`` or
:func:`error_summary`, then ``await deliver(summary, urls, on_finish=...)``.

Size: about 490 lines, one module: the summary and its delivery share one policy
(bounds, scrubbing) and neither is used without the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runner import __version__
from runner.model import ShotState
from runner.money import format_ptc
from runner.text import SECRET_ENV, duration_text, json_safe, scrub

if TYPE_CHECKING:
    import aiohttp

    from runner.ledger.query_rows import ShotIssue
    from runner.run.batch import BatchOutcome

__all__ = [
    "MAX_FAILED_LISTED",
    "Delivery",
    "NotifyPolicy",
    "command_fault",
    "deliver",
    "encode_summary",
    "error_summary",
    "notify_url_fault",
    "run_summary",
    "summarise",
]

#: failed shots listed in a summary, each with its error; ``failed_total`` counts all
MAX_FAILED_LISTED = 20
#: of those, how many the human-readable ``text`` names
_FAILED_IN_TEXT = 5
_FAILED_STATES = (ShotState.FAILED, ShotState.MODERATED)
#: answers worth another try; any other non-2xx (404, 400, 401...) will not change
_RETRY_STATUSES = frozenset({408, 425, 429})
_STDERR_FD = 2


@dataclass(frozen=True)
class NotifyPolicy:
    """How hard a notify URL is tried, and how long an on-finish command may take."""

    attempts: int = 4
    #: pause after the first failed try; doubled after each further one (1, 2, 4 s)
    backoff_base_s: float = 1.0
    #: one try, connect to answer
    attempt_timeout_s: float = 10.0
    #: every try and pause of one URL together
    total_timeout_s: float = 30.0
    command_timeout_s: float = 60.0


@dataclass(frozen=True)
class Delivery:
    """How one target fared. ``target`` names it for people without its secrets: a
    URL's host (a webhook's path is often its password), or the command's program."""

    target: str
    ok: bool
    attempts: int
    error: str | None = None
    kind: str = "url"  #: "url" or "command"


# -- checking what the person wrote ----------------------------------------------------


def notify_url_fault(url: str) -> str | None:
    """What is wrong with ``url`` as a notify address, or None when it will do."""
    if any(c.isspace() for c in url):
        return "contains a space"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "names no host"
    return None


def command_fault(command: str) -> str | None:
    """What is wrong with ``command`` as an on-finish command, or None."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"cannot be split into words ({exc})"
    return None if argv else "is empty"


# -- the summary -----------------------------------------------------------------------


async def summarise(
    outcome: BatchOutcome,
    *,
    manifest_name: str,
    manifest_path: Path | str,
    notification_id: str | None = None,
) -> dict[str, Any]:
    """:func:`run_summary` of ``outcome``, with its failed shots read from its ledger
    (read-only; a ledger that cannot be read gives a summary without them)."""
    from runner.errors import LedgerError
    from runner.ledger.views import issues_of

    failures: list[ShotIssue] = []
    failed_total = sum(outcome.result.counts.get(s, 0) for s in _FAILED_STATES)
    if failed_total:
        with contextlib.suppress(LedgerError):
            failures, failed_total, _, _ = await issues_of(
                outcome.ledger_path, limit=MAX_FAILED_LISTED
            )
    return run_summary(
        outcome,
        manifest_name=manifest_name,
        manifest_path=manifest_path,
        failures=failures,
        failed_total=failed_total,
        notification_id=notification_id,
    )


def run_summary(
    outcome: BatchOutcome,
    *,
    manifest_name: str,
    manifest_path: Path | str,
    failures: Sequence[ShotIssue] = (),
    failed_total: int | None = None,
    notification_id: str | None = None,
) -> dict[str, Any]:
    """The summary of a run that ended (finished, or stopped early for any
    :class:`~runner.run.options.StopReason`), scrubbed of the API key."""
    result = outcome.result
    counts = {s.value: result.counts.get(s, 0) for s in ShotState}
    if failed_total is None:
        failed_total = sum(result.counts.get(s, 0) for s in _FAILED_STATES)
    stop = None if result.stop_reason is None else str(result.stop_reason.value)
    if stop is not None:
        status = "stopped"
    elif result.exit_code == 0:
        status = "ok"
    else:
        status = "incomplete"
    summary = _envelope(
        status=status,
        manifest_name=manifest_name,
        manifest_path=manifest_path,
        exit_code=result.exit_code,
        elapsed_s=result.elapsed_s,
        notification_id=notification_id,
    )
    summary.update(
        {
            "stop_reason": stop,
            "message": result.message,
            "simulated": outcome.simulated,
            "total": sum(counts.values()),
            "counts": counts,
            "spent_uptc": result.spent_uptc,
            "spent_ptc": format_ptc(result.spent_uptc),
            "output_dir": os.path.abspath(outcome.output_dir),
            "ledger": os.path.abspath(outcome.ledger_path),
            "failed_total": max(failed_total, len(failures)),
            "failed": [_failure(f) for f in failures[:MAX_FAILED_LISTED]],
            "parked_total": counts[ShotState.AMBIGUOUS.value],
            "held_changed": len(outcome.held_changed),
        }
    )
    summary["text"] = _text(summary)
    return _scrubbed_dict(summary)


def error_summary(
    exc: BaseException,
    *,
    manifest_name: str,
    manifest_path: Path | str,
    exit_code: int,
    elapsed_s: float,
    notification_id: str | None = None,
) -> dict[str, Any]:
    """The summary of a run that ended on an error before or outside the scheduler (an
    invalid manifest, a plan over budget, a locked ledger...), scrubbed of the API key."""
    summary = _envelope(
        status="error",
        manifest_name=manifest_name,
        manifest_path=manifest_path,
        exit_code=exit_code,
        elapsed_s=elapsed_s,
        notification_id=notification_id,
    )
    hint = getattr(exc, "hint", None)
    summary.update(
        {
            "stop_reason": None,
            "message": str(exc),
            "error": {"kind": type(exc).__name__, "message": str(exc), "hint": hint},
        }
    )
    summary["text"] = _text(summary)
    return _scrubbed_dict(summary)


def encode_summary(summary: Mapping[str, Any]) -> bytes:
    """The JSON body sent to every target: UTF-8, no API key (scrubbed once more here,
    whoever built the summary)."""
    return json_safe(json.dumps(_scrubbed_dict(summary), ensure_ascii=False)).encode("utf-8")


def _envelope(
    *,
    status: str,
    manifest_name: str,
    manifest_path: Path | str,
    exit_code: int,
    elapsed_s: float,
    notification_id: str | None,
) -> dict[str, Any]:
    ended = dt.datetime.now(dt.UTC)
    return {
        "text": "",  # first in the document, filled in last
        "id": notification_id or uuid.uuid4().hex,
        "type": "pixrun.run_ended",
        "status": status,
        "manifest": {"name": manifest_name, "path": os.path.abspath(manifest_path)},
        "exit_code": exit_code,
        "elapsed_s": round(elapsed_s, 3),
        "started_at": (ended - dt.timedelta(seconds=elapsed_s)).isoformat(timespec="seconds"),
        "ended_at": ended.isoformat(timespec="seconds"),
        "host": socket.gethostname(),  # a studio may run several machines overnight
        "pixrun_version": __version__,
    }


def _failure(issue: ShotIssue) -> dict[str, Any]:
    return {
        "shot_id": issue.shot_id,
        "state": issue.state.value,
        "error_kind": issue.error_kind,
        "error": issue.message,
        "attempts": issue.attempts,
        "task_id": issue.task_id,
    }


def _scrubbed_dict(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {scrub(str(k)): _scrubbed(v) for k, v in summary.items()}


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {scrub(str(k)): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v) for v in value]
    return value


_VERDICTS = {
    "ok": "finished",
    "incomplete": "finished with problems",
    "stopped": "stopped early",
    "error": "did not run",
}


def _text(summary: Mapping[str, Any]) -> str:
    """A few plain lines a chat webhook shows as they are (Slack, Discord's /slack
    route, ntfy-style receivers): what, how it ended, money, time, where, what failed."""
    name = summary["manifest"]["name"]
    verdict = _VERDICTS[summary["status"]]
    if summary.get("stop_reason"):
        verdict += f" ({summary['stop_reason']})"
    first = f"pixrun: {name!r} {verdict}, exit {summary['exit_code']}"
    if summary.get("simulated"):
        first += " (simulated)"
    lines = [first]
    if "counts" in summary:
        counts = summary["counts"]
        done = counts[ShotState.DONE.value]
        parts = [f"{done}/{summary['total']} done"]
        if summary["failed_total"]:
            parts.append(f"{summary['failed_total']} failed")
        if summary["parked_total"]:
            parts.append(f"{summary['parked_total']} parked")
        unfinished = summary["total"] - done - summary["failed_total"] - summary["parked_total"]
        unfinished -= counts[ShotState.ABANDONED.value]
        if unfinished:
            parts.append(f"{unfinished} not finished")
        parts += [f"{summary['spent_ptc']} PTC", duration_text(summary["elapsed_s"])]
        lines.append(", ".join(parts))
    if summary.get("message"):
        lines.append(str(summary["message"]))
    if "output_dir" in summary:
        lines.append(f"output: {summary['output_dir']}")
    failed = summary.get("failed") or []
    if failed:
        shown = [f"{f['shot_id']} ({f['error'] or f['error_kind'] or f['state']})" for f in failed]
        more = summary["failed_total"] - min(len(shown), _FAILED_IN_TEXT)
        tail = f", and {more} more" if more > 0 else ""
        lines.append("failed: " + "; ".join(shown[:_FAILED_IN_TEXT]) + tail)
    return "\n".join(lines)


# -- sending ---------------------------------------------------------------------------


async def deliver(
    summary: Mapping[str, Any],
    urls: Sequence[str],
    *,
    on_finish: str | None = None,
    policy: NotifyPolicy | None = None,
) -> list[Delivery]:
    """POST ``summary`` to every URL and feed it to ``on_finish``, all at once; one
    :class:`Delivery` per target, in that order. Never raises (see the module)."""
    policy = policy or NotifyPolicy()
    body = encode_summary(summary)
    jobs = []
    session = None
    if urls:
        import aiohttp

        session = aiohttp.ClientSession(headers={"User-Agent": f"pixrun/{__version__}"})
    try:
        if session is not None:
            jobs += [_post(session, url, body, policy) for url in urls]
        if on_finish is not None:
            jobs.append(_run_command(on_finish, body, policy))
        return list(await asyncio.gather(*jobs))
    finally:
        if session is not None:
            await session.close()


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, policy: NotifyPolicy
) -> Delivery:
    target = urlsplit(url).hostname or "?"
    tries = 0
    error = "no answer"
    try:
        async with asyncio.timeout(policy.total_timeout_s):
            while tries < policy.attempts:
                tries += 1
                error = "no answer"  # what is said if the bound ends this try
                failure = await _post_once(session, url, body, policy)
                if failure is None:
                    return Delivery(target, True, tries)
                error, again = failure
                if not again or tries >= policy.attempts:
                    break
                await asyncio.sleep(policy.backoff_base_s * 2 ** (tries - 1))
    except TimeoutError:
        error = f"gave up after {policy.total_timeout_s:g} s ({error})"
    return Delivery(target, False, tries, scrub(_without_path(error, url)))


def _without_path(text: str, url: str) -> str:
    """``text`` (an aiohttp message may quote the URL) without the URL's path and query:
    a webhook's path is often its password, and stderr ends up in logs."""
    parts = urlsplit(url)
    secret = parts.path + (f"?{parts.query}" if parts.query else "")
    for piece in (secret, parts.path):
        if len(piece) > 1:
            text = text.replace(piece, "/...")
    return text


async def _post_once(
    session: aiohttp.ClientSession, url: str, body: bytes, policy: NotifyPolicy
) -> tuple[str, bool] | None:
    """None when delivered; else what went wrong and whether another try may help."""
    import aiohttp

    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=policy.attempt_timeout_s),
        ) as response:
            if 200 <= response.status < 300:
                return None
            again = response.status >= 500 or response.status in _RETRY_STATUSES
            return f"HTTP {response.status}", again
    except TimeoutError:
        return f"no answer within {policy.attempt_timeout_s:g} s", True
    except aiohttp.ClientError as exc:
        return f"{type(exc).__name__}: {exc}", True


async def _run_command(command: str, body: bytes, policy: NotifyPolicy) -> Delivery:
    """``command`` with ``body`` on stdin; its output goes to our stderr (stdout may be
    a JSON log), its environment lacks the API key."""
    argv = shlex.split(command)
    target = argv[0] if argv else command
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=_STDERR_FD,
            env=env,
            start_new_session=True,  # its own process group: a timeout ends all of it
        )
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Delivery(target, False, 1, scrub(f"could not start: {reason}"), kind="command")
    try:
        async with asyncio.timeout(policy.command_timeout_s):
            await proc.communicate(body)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        error = f"still running after {policy.command_timeout_s:g} s: killed"
        return Delivery(target, False, 1, error, kind="command")
    except asyncio.CancelledError:  # Ctrl-C while it runs: it is not left behind
        _kill_group(proc)
        raise
    if proc.returncode == 0:
        return Delivery(target, True, 1, kind="command")
    code = proc.returncode or 0
    error = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
    return Delivery(target, False, 1, error, kind="command")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sys.platform == "win32":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
