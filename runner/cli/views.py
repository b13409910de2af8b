"""How a batch looks on a terminal: the progress board, status tables, report tables.

The live display of ``pixrun run`` and ``pixrun status`` draw the same :class:`Board`,
so a person sees one picture whether they watch the run or the ledger. Every text that
came from a manifest, the provider or the ledger goes through :func:`clean` before it is
shown: the API key is removed should any message ever echo it, and control characters
are dropped, so no escape sequence reaches the terminal (:func:`runner.text.printable`).
Texts that go into rich markup are escaped as well.

Size: about 460 lines of rendering (board, status, tables), one display vocabulary.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, OverflowMethod, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runner.ledger.queries import ReportRow, ShotIssue, StatusSummary
from runner.model import ShotState
from runner.money import format_ptc
from runner.report import STATE_LABELS
from runner.run.events import RunEventKind
from runner.text import duration_text as duration_text  # re-exported, like scrub
from runner.text import json_safe, plural, printable
from runner.text import scrub as scrub  # re-exported: the CLI modules import it from here

#: the groups a person follows, in lifecycle order, with the ledger states in each
STATE_GROUPS: tuple[tuple[str, tuple[ShotState, ...], str], ...] = (
    ("queued", (ShotState.PENDING,), "grey62"),
    ("rendering", (ShotState.SUBMITTING, ShotState.SUBMITTED), "cyan"),
    ("downloading", (ShotState.RENDERED, ShotState.DOWNLOADING), "blue"),
    ("done", (ShotState.DONE,), "green"),
    ("failed", (ShotState.FAILED, ShotState.MODERATED), "red"),
    ("parked", (ShotState.AMBIGUOUS,), "yellow"),
    ("abandoned", (ShotState.ABANDONED,), "grey50"),
)

STATE_STYLES: dict[ShotState, str] = {
    state: style for _, states, style in STATE_GROUPS for state in states
}

#: event kinds worth a line for a person (the rest happen once per shot, all the time)
NOTABLE: frozenset[RunEventKind] = frozenset(RunEventKind) - {
    RunEventKind.SUBMITTED,
    RunEventKind.RENDERED,
    RunEventKind.DONE,
}

EVENT_STYLES: dict[str, str] = {
    "failed": "red",
    "moderated": "magenta",
    "ambiguous": "yellow",
    "retry": "yellow",
    "throttled": "cyan",
    "url_refreshed": "cyan",
    "out_of_credit": "bold red",
    "budget_reached": "bold red",
    "provider_down": "red",
    "stopping": "bold yellow",
    "shot_failed": "red",
    "shot_ambiguous": "yellow",
    "run_started": "green",
    "run_ended": "green",
}


def json_text(data: object, **dumps: Any) -> str:
    """A JSON document for output: no API key, and (json.dumps escapes the C0 controls)
    the DEL and C1 ones escaped too, the same data."""
    return scrub(json_safe(json.dumps(data, **dumps)))


def clean(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` fit for a terminal or a plain log: no API key, no control character."""
    return scrub(printable(text, keep_newlines=keep_newlines))


def clean_text(text: Text) -> Text:
    """A rich :class:`Text` with :func:`clean` applied to every styled piece."""
    if clean(text.plain) == text.plain:
        return text
    offsets = sorted({o for span in text.spans for o in (span.start, span.end)})
    out = Text(style=text.style, justify=text.justify, no_wrap=text.no_wrap, end=text.end)
    for part in text.divide(offsets):
        piece = Text(clean(part.plain), style=part.style)
        for span in part.spans:
            piece.stylize(span.style)
        out.append_text(piece)
    return out


def group_counts(counts: Mapping[ShotState, int]) -> list[tuple[str, int, str]]:
    """Counts per group, as (label, count, style); abandoned only when there are some."""
    result = []
    for label, states, style in STATE_GROUPS:
        n = sum(counts.get(s, 0) for s in states)
        if label == "abandoned" and not n:
            continue
        result.append((label, n, style))
    return result


def counts_text(counts: Mapping[ShotState, int]) -> Text:
    """``queued 2 · rendering 1 · ...`` with each count in its group's colour."""
    text = Text()
    for i, (label, n, style) in enumerate(group_counts(counts)):
        if i:
            text.append(" · ", style="dim")
        text.append(f"{label} ", style="dim")
        text.append(str(n), style=f"bold {style}" if n else "dim")
    return text


def rate_text(per_min: float | None) -> str:
    if per_min is None:
        return "–"
    return f"{per_min:.1f}/min" if per_min < 100 else f"{per_min:.0f}/min"


@dataclass(frozen=True)
class BoardEvent:
    """One line of the board's event list."""

    when: str
    kind: str
    text: str


@dataclass(frozen=True)
class Board:
    """What the progress board shows; built from a run's snapshot or from the ledger."""

    title: str
    total: int
    counts: Mapping[ShotState, int]
    in_flight: int
    target_concurrency: int | None
    spent_uptc: int
    planned_uptc: int
    done_per_min: float | None
    eta_s: float | None
    elapsed_s: float | None
    events: Sequence[BoardEvent] = ()
    unknown_price: int = 0


def board_renderable(board: Board, *, whole: bool = False) -> RenderableType:
    """The board; ``whole``: event messages wrap rather than end in an ellipsis (for a
    pipe or a file, where nobody can widen the window to read the rest)."""
    done = board.counts.get(ShotState.DONE, 0)
    total = max(board.total, 0)
    pct = 100.0 * done / total if total else 0.0
    bar = Table.grid(padding=(0, 2))
    bar.add_column(ratio=1)
    bar.add_column(justify="right", no_wrap=True)
    bar.add_row(
        ProgressBar(
            total=total or 1, completed=done, complete_style="green", finished_style="bold green"
        ),
        Text.from_markup(
            f"[bold]{done}[/]/{total} done  [dim]{pct:3.0f}%[/]  "
            f"ETA [bold]{duration_text(board.eta_s)}[/]"
        ),
    )
    counts = counts_text(board.counts)
    target = "" if board.target_concurrency is None else f"/{board.target_concurrency}"
    unknown = f" [yellow](+{board.unknown_price} unpriced)[/]" if board.unknown_price else ""
    elapsed = (
        "" if board.elapsed_s is None else f"  [dim]elapsed[/] {duration_text(board.elapsed_s)}"
    )
    stats = Text.from_markup(
        f"[dim]in flight[/] [bold]{board.in_flight}{target}[/]  "
        f"[dim]spent[/] [bold]{format_ptc(board.spent_uptc)}[/]/"
        f"{format_ptc(board.planned_uptc)} PTC{unknown}  "
        f"[dim]rate[/] [bold]{rate_text(board.done_per_min)}[/]{elapsed}"
    )
    parts: list[RenderableType] = [bar, counts, stats]
    if board.events:
        events = Table.grid(padding=(0, 1))
        # rich shrinks only wrapping columns: the message column gives way, and its
        # one-line text ends in an ellipsis
        events.add_column(style="dim", no_wrap=True, min_width=8)
        events.add_column(no_wrap=True, min_width=14)
        events.add_column()
        for ev in board.events:
            events.add_row(
                ev.when,
                Text(clean(ev.kind), style=EVENT_STYLES.get(ev.kind, "")),
                Text(clean(ev.text), overflow="fold")
                if whole
                else Text(clean(ev.text), overflow="ellipsis", no_wrap=True),
            )
        parts.append(Text(""))
        parts.append(events)
    return Panel(
        Group(*parts),
        title=escape(clean(board.title)),
        title_align="left",
        border_style="grey62",
        padding=(0, 1),
    )


# -- status ------------------------------------------------------------------------------


def _clock(at: float) -> str:
    return dt.datetime.fromtimestamp(at).strftime("%H:%M:%S")


def _run_line(summary: StatusSummary, resume: str) -> Text:
    run = summary.last_run
    if run is None:
        return Text("no run yet: 'pixrun run MANIFEST' starts one", style="dim")
    started = dt.datetime.fromtimestamp(run.started_at).strftime("%Y-%m-%d %H:%M")
    if summary.run_active:
        took = duration_text(summary.generated_at - run.started_at)
        return Text.from_markup(
            f"run {run.run_id} [bold green]running[/] (pid {run.pid}), started {started}, "
            f"{took} ago"
        )
    if run.ended_at is None:
        return Text.from_markup(
            f"run {run.run_id} started {started} [bold yellow]stopped without finishing[/] "
            f"(killed or crashed): '{escape(resume)}' resumes it"
        )
    took = duration_text(run.ended_at - run.started_at)
    return Text.from_markup(
        f"run {run.run_id} started {started}, took {took}, exit code {run.exit_code}"
    )


def status_board(summary: StatusSummary, title: str) -> Board:
    return Board(
        title=title,
        total=summary.total,
        counts=summary.counts,
        in_flight=summary.in_flight,
        target_concurrency=None,
        spent_uptc=summary.spent_uptc,
        planned_uptc=summary.planned_uptc,
        done_per_min=summary.done_per_min,
        eta_s=summary.eta_s,
        elapsed_s=(
            summary.generated_at - summary.last_run.started_at
            if summary.last_run is not None and summary.run_active
            else None
        ),
        events=[
            BoardEvent(
                _clock(e.at), e.kind, f"{e.shot_id}: {e.message}" if e.shot_id else e.message
            )
            for e in summary.recent_events
        ],
        unknown_price=summary.unknown_price,
    )


def _issue_table(title: str, issues: Sequence[ShotIssue], total: int) -> Table:
    table = Table(
        title=f"{title} ({total})",
        title_justify="left",
        title_style="bold",
        show_edge=False,
        pad_edge=False,
        expand=False,
    )
    table.add_column("shot", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("reason", overflow="fold")
    for issue in issues:
        reason = issue.message or ""
        if issue.error_kind:
            reason = f"[{issue.error_kind}] {reason}"
        table.add_row(
            Text(clean(issue.shot_id)),
            Text(STATE_LABELS[issue.state], style=STATE_STYLES.get(issue.state, "")),
            str(issue.attempts),
            Text(clean(reason)),
        )
    if total > len(issues):
        table.caption = f"… and {total - len(issues)} more: 'pixrun report --failed' lists all"
    return table


#: how every table view marks a ledger whose work went to the simulator
REHEARSAL_NOTE = "rehearsal: simulated provider, nothing was spent"


def status_renderable(
    summary: StatusSummary, title: str, *, whole: bool = False, resume: str = "pixrun run"
) -> Group:
    """``pixrun status``; ``whole``: for a pipe or a file (see :func:`board_renderable`;
    print it with :func:`runner.cli.consoles.print_full` for the tables). ``resume``: the
    command that resumes this batch, with its --simulate and --ledger."""
    parts: list[RenderableType] = []
    if summary.simulated:
        parts.append(Text(REHEARSAL_NOTE, style="bold magenta"))
    parts += [
        board_renderable(status_board(summary, title), whole=whole),
        _run_line(summary, resume),
    ]
    remaining = format_ptc(summary.remaining_uptc)
    unknown = (
        f" (+{summary.unknown_price_remaining} without a known price)"
        if summary.unknown_price_remaining
        else ""
    )
    parts.append(
        Text.from_markup(
            f"[dim]still to submit:[/] {plural(summary.count(ShotState.PENDING), 'shot')}, "
            f"about {remaining} PTC{unknown}"
            + (
                f"   [dim]removed from the manifest:[/] {summary.removed}"
                if summary.removed
                else ""
            )
        )
    )
    if summary.failures_total:
        parts.append(Text(""))
        parts.append(_issue_table("failed", summary.failures, summary.failures_total))
    if summary.parked_total:
        parts.append(Text(""))
        parts.append(
            _issue_table("parked (may have been charged)", summary.parked, summary.parked_total)
        )
    return Group(*parts)


def _issue_dict(issue: ShotIssue) -> dict[str, Any]:
    return {
        "shot_id": issue.shot_id,
        "state": issue.state.value,
        "attempts": issue.attempts,
        "task_id": issue.task_id,
        "error_kind": issue.error_kind,
        "message": None if issue.message is None else scrub(issue.message),
    }


def status_dict(summary: StatusSummary) -> dict[str, Any]:
    """``pixrun status --format json``: plain values; money both as micro-PTC and PTC."""
    run = summary.last_run
    return {
        "simulated": summary.simulated,
        "total": summary.total,
        "counts": {s.value: summary.counts.get(s, 0) for s in ShotState},
        "groups": {label: n for label, n, _ in group_counts(summary.counts)},
        "removed_from_manifest": summary.removed,
        "in_flight": summary.in_flight,
        "planned_uptc": summary.planned_uptc,
        "planned_ptc": format_ptc(summary.planned_uptc),
        "spent_uptc": summary.spent_uptc,
        "spent_ptc": format_ptc(summary.spent_uptc),
        "remaining_uptc": summary.remaining_uptc,
        "remaining_ptc": format_ptc(summary.remaining_uptc),
        "unknown_price": summary.unknown_price,
        "unknown_price_remaining": summary.unknown_price_remaining,
        "unfinished": summary.unfinished,
        "throughput": {
            "done": summary.done_in_window,
            "window_s": summary.window_s,
            "done_per_min": summary.done_per_min,
        },
        "eta_s": summary.eta_s,
        "failures": [_issue_dict(i) for i in summary.failures],
        "failures_total": summary.failures_total,
        "parked": [_issue_dict(i) for i in summary.parked],
        "parked_total": summary.parked_total,
        "last_run": None
        if run is None
        else {
            "run_id": run.run_id,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "pid": run.pid,
            "exit_code": run.exit_code,
            "active": summary.run_active,
        },
        "recent_events": [
            {"at": e.at, "kind": e.kind, "shot_id": e.shot_id, "message": scrub(e.message)}
            for e in summary.recent_events
        ],
        "output_dir": summary.meta.get("output_dir"),
        "generated_at": summary.generated_at,
    }


# -- report table --------------------------------------------------------------------------


def report_table(
    rows: Sequence[ReportRow],
    *,
    width: int = 200,
    simulated: bool = False,
    whole: bool = False,
) -> Table:
    """A table for people: fewer columns on a narrow terminal; csv/json have them all.

    ``simulated``: the ledger's work went to the simulator; the title says so.
    ``whole`` (a pipe or a file): every column, every value in full, whatever the
    width; print it with :func:`runner.cli.consoles.print_full`.
    """
    wide = whole or width >= 120
    # rich shrinks only wrapping columns; the one-line prompt gets what the rest leave
    prompt_w = 48 if wide else max(10, min(48, (width - 45) // 2))
    cut: OverflowMethod = "fold" if whole else "ellipsis"

    def cap(limit: int) -> int | None:
        return None if whole else limit

    table = Table(
        show_edge=False,
        pad_edge=False,
        header_style="bold",
        title=REHEARSAL_NOTE if simulated else None,
        title_justify="left",
        title_style="bold magenta",
    )
    table.add_column("shot", no_wrap=True, overflow=cut, max_width=cap(24 if wide else 16))
    table.add_column("state", no_wrap=True, min_width=9)
    table.add_column("prompt", overflow=cut, no_wrap=True, max_width=cap(prompt_w))
    if wide:
        table.add_column("settings", overflow="fold", min_width=10)
        table.add_column("seed", justify="right", no_wrap=True)
    if wide:
        table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("price", justify="right", no_wrap=True)
    if wide:
        table.add_column("task", no_wrap=True, overflow=cut, max_width=cap(14))
    table.add_column("file / error", overflow="fold", min_width=16, max_width=cap(48))
    for r in rows:
        if r.state == ShotState.DONE:
            result = Text(clean(r.output_path))
        else:
            result = Text(clean(r.error or ""), style="red")
        cells: list[RenderableType] = [
            Text(clean(r.shot_id)),
            Text(STATE_LABELS[r.state], style=STATE_STYLES.get(r.state, "")),
            Text(clean(r.prompt)),
        ]
        if wide:
            settings = [r.model, r.quality, f"{r.duration}s" if r.duration else None, r.motion_mode]
            cells += [
                Text(clean(" ".join(t for t in settings if t))),
                "" if r.seed is None else str(r.seed),
            ]
        if wide:
            cells.append(str(r.attempts))
        cells.append(format_ptc(r.price_uptc))
        if wide:
            cells.append(Text(clean(r.task_id or "")))
        cells.append(result)
        table.add_row(*cells)
    return table
