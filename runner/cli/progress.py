"""What ``pixrun run`` shows while it works, and the summary it ends with.

Four displays of the same :class:`runner.run.events.RunObserver` stream, chosen by
:func:`make_observer`:

- ``live``: a rich board redrawn on every snapshot (a terminal only);
- ``plain``: one line per notable event and one progress line per interval, no
  animation, for cron, CI and ``nohup`` logs;
- ``json``: one JSON object per line for every event (and a progress object per
  interval): every line parses on its own;
- ``quiet``: nothing until the summary.

Invariants: an observer never raises into the scheduler (a display that breaks, say on
a closed pipe, goes silent; the run goes on), and every text it prints went through
:func:`runner.cli.views.clean` (JSON lines: :func:`runner.cli.views.scrub` and
:func:`runner.text.json_safe`), so neither the API key nor a terminal escape sequence
from a prompt or a provider message can reach a terminal or a log.

Size: about 520 lines: four displays of one event stream and the summary they end with.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shlex
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from runner.cli.views import (
    NOTABLE,
    STATE_STYLES,
    Board,
    BoardEvent,
    board_renderable,
    clean,
    clean_text,
    counts_text,
    duration_text,
    group_counts,
    json_text,
    rate_text,
    scrub,
)
from runner.errors import LedgerError
from runner.ledger import default_ledger_path
from runner.ledger.queries import ShotIssue
from runner.ledger.views import issues_of
from runner.model import ShotState
from runner.money import format_ptc
from runner.report import STATE_LABELS
from runner.run.events import RunEvent, RunSnapshot
from runner.stdin import is_stdin
from runner.text import plural

if TYPE_CHECKING:
    from runner.run.batch import BatchOutcome

__all__ = [
    "MODES",
    "Display",
    "JsonObserver",
    "LiveObserver",
    "PlainObserver",
    "QuietObserver",
    "make_observer",
    "render_summary",
]

MODES = ("live", "plain", "json", "quiet")

#: plain and JSON displays write a progress line this often (seconds of run time)
DEFAULT_INTERVAL_S = 30.0


def _elapsed(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _event_text(event: RunEvent) -> str:
    who = ""
    if event.shot_id:
        who = event.shot_id + (f" (attempt {event.attempt})" if event.attempt else "") + ": "
    return clean(who + event.message)


def progress_record(snap: RunSnapshot) -> dict[str, Any]:
    """A ``--json-logs`` progress record (one run's, or the total of many)."""
    return {
        "type": "progress",
        "elapsed_s": round(snap.elapsed_s, 3),
        "total": snap.total,
        "counts": {s.value: n for s, n in snap.counts.items() if n},
        "in_flight": snap.in_flight,
        "target_concurrency": snap.target_concurrency,
        "spent_uptc": snap.spent_uptc,
        "planned_uptc": snap.planned_uptc,
        "done_per_min": round(snap.done_per_s * 60, 3),
        "eta_s": None if snap.eta_s is None else round(snap.eta_s, 1),
    }


def event_record(event: RunEvent) -> dict[str, Any]:
    """A ``--json-logs`` event record (one run's, or one of many runs')."""
    return {
        "type": "event",
        "kind": event.kind.value,
        "shot_id": event.shot_id,
        "state": None if event.state is None else event.state.value,
        "task_id": event.task_id,
        "attempt": event.attempt,
        "elapsed_s": round(event.elapsed_s, 3),
        # scrubbed before encoding too: JSON escaping could hide a key from scrub()
        "message": scrub(event.message),
    }


def snapshot_board(title: str, snap: RunSnapshot, events: Sequence[BoardEvent]) -> Board:
    """The live board's figures from a run's snapshot (one run, or the total of many)."""
    return Board(
        title=title,
        total=snap.total,
        counts=snap.counts,
        in_flight=snap.in_flight,
        target_concurrency=snap.target_concurrency,
        spent_uptc=snap.spent_uptc,
        planned_uptc=snap.planned_uptc,
        done_per_min=snap.done_per_s * 60,
        eta_s=snap.eta_s,
        elapsed_s=snap.elapsed_s,
        events=tuple(events),
    )


def start_live(console: Console, renderable: RenderableType) -> Live:
    """A live board, redrawn only when told (no refresh thread), with stray prints
    routed above it."""
    live = Live(
        renderable,
        console=console,
        auto_refresh=False,
        transient=False,
        redirect_stdout=True,
        redirect_stderr=True,
    )
    live.start()
    return live


def stop_live(live: Live | None, renderable: Callable[[], RenderableType]) -> None:
    """Draw the board one last time and stop it (``None``: nothing to stop)."""
    if live is not None:
        with contextlib.suppress(Exception):  # the terminal may already be gone
            live.update(renderable(), refresh=True)
            live.stop()


class Display:
    """A :class:`RunObserver` that is also a context manager (start/stop drawing).

    Subclasses implement ``_event`` and ``_snapshot``; the public methods guard them so
    that a display failure never reaches the scheduler.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._broken = False

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def event(self, event: RunEvent) -> None:
        self._guard(self._event, event)

    def snapshot(self, snapshot: RunSnapshot) -> None:
        self._guard(self._snapshot, snapshot)

    def _guard(self, fn: Callable[[Any], None], arg: Any) -> None:
        if self._broken:
            return
        try:
            fn(arg)
        except Exception:  # the observer contract: a display must never stop a run
            self._broken = True

    def _event(self, event: RunEvent) -> None:
        pass

    def _snapshot(self, snapshot: RunSnapshot) -> None:
        pass

    def _line(self, text: str) -> None:
        # Straight to the file: no wrapping, no markup, one line per record.
        self.console.file.write(text + "\n")
        self.console.file.flush()


class QuietObserver(Display):
    """Shows nothing; the summary is printed after the run."""


class _PeriodicDisplay(Display):
    """A display that writes a progress record at most once per ``interval_s``."""

    def __init__(self, console: Console, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        super().__init__(console)
        self.interval_s = interval_s
        self._last_progress_s: float | None = None

    def _progress_due(self, snap: RunSnapshot) -> bool:
        last = self._last_progress_s
        if last is not None and snap.elapsed_s - last < self.interval_s:
            return False
        self._last_progress_s = snap.elapsed_s
        return True


class PlainObserver(_PeriodicDisplay):
    """Plain lines for logs: notable events as they happen, progress per interval."""

    def _event(self, event: RunEvent) -> None:
        if event.kind not in NOTABLE:
            return
        self._line(f"[{_elapsed(event.elapsed_s)}] {event.kind.value:<14} {_event_text(event)}")

    def _snapshot(self, snap: RunSnapshot) -> None:
        if not self._progress_due(snap):
            return
        self._line(f"[{_elapsed(snap.elapsed_s)}] {'progress':<14} {progress_line(snap)}")


def progress_line(snap: RunSnapshot) -> str:
    """One line that says where the run stands."""
    groups = ", ".join(f"{label} {n}" for label, n, _ in group_counts(snap.counts))
    done = snap.counts.get(ShotState.DONE, 0)
    return (
        f"{done}/{snap.total} done ({groups}); in flight {snap.in_flight}/"
        f"{snap.target_concurrency}; spent {format_ptc(snap.spent_uptc)}/"
        f"{format_ptc(snap.planned_uptc)} PTC; {rate_text(snap.done_per_s * 60)}; "
        f"ETA {duration_text(snap.eta_s)}"
    )


class JsonObserver(_PeriodicDisplay):
    """One JSON object per line: every event, and a progress record per interval."""

    def _emit(self, record: dict[str, Any]) -> None:
        record = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **record}
        self._line(json_text(record, ensure_ascii=False, separators=(",", ":")))

    def _event(self, event: RunEvent) -> None:
        self._emit(event_record(event))

    def _snapshot(self, snap: RunSnapshot) -> None:
        if not self._progress_due(snap):
            return
        self._emit(progress_record(snap))


class LiveObserver(Display):
    """The rich board, redrawn on every snapshot and (at most 4 times a second) on news."""

    def __init__(self, console: Console, *, title: str = "pixrun run", max_events: int = 6):
        super().__init__(console)
        self.title = title
        self._events: deque[BoardEvent] = deque(maxlen=max_events)
        self._snap: RunSnapshot | None = None
        self._live: Live | None = None
        self._last_draw = 0.0

    def __enter__(self) -> LiveObserver:
        self._live = start_live(self.console, self.renderable())
        return self

    def close(self) -> None:
        stop_live(self._live, self.renderable)
        self._live = None

    def board(self) -> Board:
        snap = self._snap
        if snap is None:
            return Board(self.title, 0, {}, 0, None, 0, 0, None, None, 0.0, tuple(self._events))
        return snapshot_board(self.title, snap, self._events)

    def renderable(self) -> RenderableType:
        return board_renderable(self.board())

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        if self._live is not None:
            self._live.update(self.renderable(), refresh=True)

    def _event(self, event: RunEvent) -> None:
        if event.kind not in NOTABLE:
            return
        self._events.append(
            BoardEvent(_elapsed(event.elapsed_s), event.kind.value, _event_text(event))
        )
        if time.monotonic() - self._last_draw >= 0.25:
            self._draw()

    def _snapshot(self, snapshot: RunSnapshot) -> None:
        self._snap = snapshot
        self._draw()


def make_observer(
    mode: str,
    console: Console,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    title: str = "pixrun run",
) -> Display:
    """The display for ``mode`` (live|plain|json|quiet). Use it as a context manager.

    ``live`` on a console that is not a terminal falls back to ``plain``: an animation
    in a log file is noise.
    """
    if mode == "live":
        if console.is_terminal:
            return LiveObserver(console, title=title)
        mode = "plain"
    if mode == "plain":
        return PlainObserver(console, interval_s=interval_s)
    if mode == "json":
        return JsonObserver(console, interval_s=interval_s)
    if mode == "quiet":
        return QuietObserver(console)
    raise ValueError(f"unknown display mode {mode!r}; expected one of {', '.join(MODES)}")


# -- the final summary ---------------------------------------------------------------------


def _load_issues(ledger_path: Path) -> tuple[list[ShotIssue], int, list[ShotIssue], int]:
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop()
        return [], 0, [], 0  # called from inside a loop: no second loop here

    return asyncio.run(issues_of(ledger_path, limit=10))


def _command(*words: str | Path) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def _issue_lines(issues: Sequence[ShotIssue]) -> list[Text]:
    width = max((len(i.shot_id) for i in issues), default=0)
    return [
        Text.assemble(
            "    ",
            (clean(issue.shot_id).ljust(width), "bold"),
            "  ",
            (STATE_LABELS[issue.state].ljust(9), STATE_STYLES.get(issue.state, "")),
            " ",
            clean(issue.message or issue.error_kind or ""),
        )
        for issue in issues
    ]


def render_summary(
    outcome: BatchOutcome,
    console: Console,
    *,
    manifest: Path,
    mode: str = "text",
    issues: tuple[list[ShotIssue], int, list[ShotIssue], int] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Print how the run ended: counts, money, time, where the files are, what to do next.

    ``mode="json"`` prints it as one JSON object (the last line of ``--json-logs``).
    Failed and parked shots are read from the ledger (read-only) unless ``issues``
    (as from :func:`failed_shots` and :func:`parked_shots`) is given.
    """
    result = outcome.result
    counts = result.counts
    if issues is None:
        issues = ([], 0, [], 0)
        needs_list = counts.get(ShotState.FAILED, 0) + counts.get(ShotState.MODERATED, 0)
        needs_list += counts.get(ShotState.AMBIGUOUS, 0)
        if needs_list:
            with contextlib.suppress(LedgerError):
                issues = _load_issues(outcome.ledger_path)
    if mode == "json":
        _summary_json(outcome, console, issues, extra or {})
        return
    for line in _summary_lines(outcome, manifest, issues):
        console.print(clean_text(line), soft_wrap=True)


def _summary_json(
    outcome: BatchOutcome,
    console: Console,
    issues: tuple[list[ShotIssue], int, list[ShotIssue], int],
    extra: dict[str, Any],
) -> None:
    result = outcome.result
    record = {
        "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "type": "summary",
        **extra,
        "exit_code": result.exit_code,
        "stop_reason": None if result.stop_reason is None else str(result.stop_reason.value),
        "message": None if result.message is None else scrub(result.message),
        "counts": {s.value: n for s, n in result.counts.items() if n},
        "spent_uptc": result.spent_uptc,
        "spent_ptc": format_ptc(result.spent_uptc),
        "elapsed_s": round(result.elapsed_s, 3),
        "output_dir": str(outcome.output_dir),
        "ledger": str(outcome.ledger_path),
        "failed": [i.shot_id for i in issues[0]],
        "parked": [i.shot_id for i in issues[2]],
        "simulated": outcome.simulated,
        "held_changed": list(outcome.held_changed),
        "adopted": len(outcome.adopted),
        "not_downloaded": result.not_downloaded,
        "sample": outcome.sample,
        "callbacks": dict(result.callbacks),
    }
    console.file.write(json_text(record, ensure_ascii=False) + "\n")
    console.file.flush()


#: which ``pixrun retry`` flag re-queues shots of which final state
_RETRY_FLAGS = (("--failed", ShotState.FAILED), ("--moderated", ShotState.MODERATED))


def _summary_lines(
    outcome: BatchOutcome,
    manifest: Path,
    issues: tuple[list[ShotIssue], int, list[ShotIssue], int],
) -> list[Text]:
    """One Text per line, printed unwrapped: a command must copy and paste whole."""
    result = outcome.result
    counts = result.counts
    total = sum(counts.values())
    failures, n_failed, parked, n_parked = issues
    n_failed = max(n_failed, counts.get(ShotState.FAILED, 0) + counts.get(ShotState.MODERATED, 0))
    n_parked = max(n_parked, counts.get(ShotState.AMBIGUOUS, 0))
    # every hint repeats the flags that pick this batch's ledger and provider
    extra: list[str | Path] = ["--simulate"] if outcome.simulated else []
    default = default_ledger_path(manifest, simulated=outcome.simulated)
    if outcome.ledger_path.resolve() != default.resolve():
        extra += ["--ledger", outcome.ledger_path]

    def command(*words: str | Path) -> tuple[str, str]:
        # a manifest from stdin ('-') would have to be fed again: only a rerun needs it,
        # the rest find the batch by --ledger (the default ledger differs from '-''s)
        target = [] if is_stdin(manifest) and words[0] != "run" else [manifest]
        return _command("pixrun", *words, *target, *extra), "bold"

    took = duration_text(result.elapsed_s)
    if result.stop_reason is None:
        head = Text.assemble(("run finished", "bold green"), f" in {took}")
    else:
        head = Text.assemble(
            ("run stopped", "bold yellow"), f" ({result.stop_reason.value}) after {took}"
        )
    lines = [head]
    if result.message:
        lines.append(Text(scrub(result.message), style="yellow"))
    lines.append(
        Text("  ") + counts_text(counts) + Text(f"  of {plural(total, 'shot')}", style="dim")
    )
    lines.append(Text.assemble(("  spent   ", "dim"), f"{format_ptc(result.spent_uptc)} PTC"))
    lines.append(Text.assemble(("  files   ", "dim"), str(outcome.output_dir)))
    lines.append(Text.assemble(("  ledger  ", "dim"), str(outcome.ledger_path)))
    if outcome.sample:
        lines.append(Text.assemble(("  ", "dim"), outcome.sample))
    if result.callbacks:
        seen = ", ".join(f"{n} {verdict}" for verdict, n in sorted(result.callbacks.items()))
        lines.append(Text.assemble(("  callbacks  ", "dim"), seen))
    if n_failed:
        lines.append(Text(f"{n_failed} failed", style="bold red"))
        lines += _issue_lines(failures)
        if n_failed > len(failures):
            lines.append(
                Text.assemble(
                    (f"    … and {n_failed - len(failures)} more: ", "dim"),
                    command("report", "--failed"),
                )
            )
        lines.append(
            Text.assemble(
                ("  → once the errors are dealt with, re-queue them: ", "dim"),
                command(
                    "retry",
                    *([f for f, s in _RETRY_FLAGS if counts.get(s)] or [_RETRY_FLAGS[0][0]]),
                ),
            )
        )
    if n_parked:
        lines.append(
            Text.assemble(
                (f"{n_parked} parked", "bold yellow"),
                (" (the request may have reached the provider and been charged)", "dim"),
            )
        )
        lines += _issue_lines(parked)
        lines.append(
            Text.assemble(
                ("  → found the task at the provider? ", "dim"),
                command("resolve", "SHOT", "--task-id", "ID"),
            )
        )
        lines.append(
            Text.assemble(
                ("  → otherwise re-queue them (may be charged twice): ", "dim"),
                command("retry", "--ambiguous"),
            )
        )
    if result.not_downloaded:
        # counted as "downloading" above: say why they are not done
        lines.append(
            Text.assemble(
                (f"{result.not_downloaded} not downloaded", "bold red"),
                (
                    ": the download kept failing; the render is paid for and its task id "
                    "kept, so a rerun downloads it through a fresh fetch, at no charge",
                    "dim",
                ),
            )
        )
    unfinished = sum(n for s, n in counts.items() if not s.is_final and s != ShotState.AMBIGUOUS)
    if unfinished:
        lines.append(
            Text.assemble(
                (f"{unfinished} not finished", "bold"),
                (": a rerun resumes them, nothing paid for is sent again: ", "dim"),
                command("run"),
            )
        )
    if outcome.adopted:
        lines.append(
            Text(
                f"{len(outcome.adopted)} adopted: their files and sidecars were already on "
                "disk and match (nothing sent)",
                style="dim",
            )
        )
    if outcome.held_changed:
        lines.append(
            Text.assemble(
                (f"{len(outcome.held_changed)} changed since done, not re-rendered", "bold"),
                (": their request changed; to re-render them (charged): ", "dim"),
                command("run", "--rerender-changed"),
            )
        )
    if counts.get(ShotState.DONE):
        lines.append(
            Text.assemble(("review the clips: ", "dim"), command("report", "--format", "html"))
        )
    return lines
