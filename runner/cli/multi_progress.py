"""What a run of several manifests shows: each manifest and the total, in the four
display modes of :mod:`runner.cli.progress`, and the summaries it ends with.

- ``live``: one row per manifest above the board of the total;
- ``plain``: every line tagged ``[name]``, and a ``total`` progress line per interval;
- ``json``: every record carries ``"manifest"`` (the manifest's path); progress
  records per manifest and one with ``"manifest": null`` for the total; the summaries
  of each manifest, then one ``"type": "total"`` record, the last line;
- ``quiet``: nothing until the summaries.

Invariants: as for one manifest, an observer never raises into a scheduler, and every
text printed went through :func:`runner.cli.views.clean` or :func:`scrub`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runner.cli.progress import (
    DEFAULT_INTERVAL_S,
    Display,
    event_record,
    progress_line,
    progress_record,
    render_summary,
    snapshot_board,
    start_live,
    stop_live,
)
from runner.cli.render import print_problems
from runner.cli.views import (
    NOTABLE,
    BoardEvent,
    board_renderable,
    clean,
    counts_text,
    json_text,
    scrub,
)
from runner.errors import Problem
from runner.model import Manifest, ShotState
from runner.money import format_ptc
from runner.run.events import RunEvent, RunObserver, RunSnapshot
from runner.text import plural

if TYPE_CHECKING:
    from runner.run.multi import BatchEnd


def _elapsed(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def total_snapshot(snaps: Sequence[RunSnapshot]) -> RunSnapshot:
    """The sum of the manifests' snapshots (the run's clock: the longest elapsed)."""
    counts: Counter[ShotState] = Counter()
    for snap in snaps:
        counts.update(snap.counts)
    rate = sum(s.done_per_s for s in snaps)
    remaining = sum(n for s, n in counts.items() if not s.is_final and s != ShotState.AMBIGUOUS)
    return RunSnapshot(
        total=sum(s.total for s in snaps),
        counts=dict(counts),
        in_flight=sum(s.in_flight for s in snaps),
        target_concurrency=max((s.target_concurrency for s in snaps), default=0),  # the pool's
        downloading=sum(s.downloading for s in snaps),
        spent_uptc=sum(s.spent_uptc for s in snaps),
        planned_uptc=sum(s.planned_uptc for s in snaps),
        elapsed_s=max((s.elapsed_s for s in snaps), default=0.0),
        done_per_s=rate,
        eta_s=remaining / rate if rate > 0 else None,
        fetch_calls=sum(s.fetch_calls for s in snaps),
        generate_calls=sum(s.generate_calls for s in snaps),
    )


class _Tagged:
    """One manifest's observer: forwards to the shared display with its key."""

    def __init__(self, display: MultiDisplay, key: str) -> None:
        self._display = display
        self._key = key

    def event(self, event: RunEvent) -> None:
        self._display.guarded(self._display.on_event, self._key, event)

    def snapshot(self, snapshot: RunSnapshot) -> None:
        self._display.guarded(self._display.on_snapshot, self._key, snapshot)


class MultiDisplay(Display):
    """Several manifests' event streams on one console (see the module docstring)."""

    def __init__(
        self, mode: str, console: Console, *, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        super().__init__(console)
        if mode == "live" and not console.is_terminal:
            mode = "plain"
        self.mode = mode
        self.interval_s = interval_s
        #: manifest path (as given) -> name, in the order added
        self.names: dict[str, str] = {}
        self.snaps: dict[str, RunSnapshot] = {}
        self._last_progress: dict[str | None, float] = {}
        self._events: deque[BoardEvent] = deque(maxlen=6)
        self._live: Live | None = None
        self._last_draw = 0.0

    # -- observers -----------------------------------------------------------------------

    def observer_for(self, manifest: Manifest) -> RunObserver:
        key = str(manifest.path)
        self.names[key] = manifest.name
        return _Tagged(self, key)

    def guarded(self, fn: Any, key: str, arg: Any) -> None:
        if self._broken:
            return
        try:
            fn(key, arg)
        except Exception:  # the observer contract: a display must never stop a run
            self._broken = True

    def __enter__(self) -> MultiDisplay:
        if self.mode == "live":
            self._live = start_live(self.console, self.renderable())
        return self

    def close(self) -> None:
        stop_live(self._live, self.renderable)
        self._live = None

    # -- events and snapshots -------------------------------------------------------------

    def on_event(self, key: str, event: RunEvent) -> None:
        name = self.names.get(key, key)
        if self.mode == "json":
            self.json_record(key, event_record(event))
            return
        if event.kind not in NOTABLE:
            return
        who = f"{event.shot_id}: " if event.shot_id else ""
        text = clean(f"[{name}] {who}{event.message}")
        if self.mode == "plain":
            self._line(f"[{_elapsed(event.elapsed_s)}] {event.kind.value:<14} {text}")
        elif self.mode == "live":
            self._events.append(BoardEvent(_elapsed(event.elapsed_s), event.kind.value, text))
            if time.monotonic() - self._last_draw >= 0.25:
                self._draw()

    def on_snapshot(self, key: str, snap: RunSnapshot) -> None:
        self.snaps[key] = snap
        if self.mode == "live":
            if time.monotonic() - self._last_draw >= 0.2:
                self._draw()
            return
        if self.mode not in ("plain", "json"):
            return
        now = time.monotonic()
        for who, shown in ((key, snap), (None, self.total())):
            last = self._last_progress.get(who)
            if last is not None and now - last < self.interval_s:
                continue
            self._last_progress[who] = now
            if self.mode == "plain":
                label = "total" if who is None else self.names.get(who, who)
                self._line(
                    f"[{_elapsed(shown.elapsed_s)}] {'progress':<14} "
                    f"[{clean(label)}] {progress_line(shown)}"
                )
            else:
                self.json_record(who, progress_record(shown))

    def total(self) -> RunSnapshot:
        return total_snapshot(list(self.snaps.values()))

    def json_record(self, key: str | None, record: dict[str, Any]) -> None:
        stamped = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "manifest": key,
            **record,
        }
        self._line(json_text(stamped, ensure_ascii=False, separators=(",", ":")))

    # -- the live board ---------------------------------------------------------------

    def renderable(self) -> RenderableType:
        table = Table(box=None, padding=(0, 2), show_edge=False)
        for header, justify in (
            ("manifest", "left"),
            ("done", "right"),
            ("in flight", "right"),
            ("spent PTC", "right"),
            ("", "left"),
        ):
            table.add_column(header, justify=justify, no_wrap=header != "")  # type: ignore[arg-type]
        for key, name in self.names.items():
            snap = self.snaps.get(key)
            if snap is None:
                table.add_row(clean(name), "", "", "", Text("waiting", style="dim"))
                continue
            done = snap.counts.get(ShotState.DONE, 0)
            table.add_row(
                clean(name),
                f"{done}/{snap.total}",
                str(snap.in_flight),
                format_ptc(snap.spent_uptc),
                counts_text(snap.counts),
            )
        total = self.total()
        title = f"pixrun run · {plural(len(self.names), 'manifest')}"
        board = snapshot_board(title, total, self._events)
        return Group(table, board_renderable(board))

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        if self._live is not None:
            self._live.update(self.renderable(), refresh=True)


# -- the summaries -------------------------------------------------------------------------


def render_summaries(
    ends: Sequence[BatchEnd], console: Console, err: Console, *, json_mode: bool, exit_code: int
) -> None:
    """Each manifest's summary (or why it did not run), then the total."""
    counts: Counter[ShotState] = Counter()
    spent = 0
    for end in ends:
        if end.outcome is not None:
            counts.update(end.outcome.result.counts)
            spent += end.outcome.result.spent_uptc
            if not json_mode:
                console.print(Text(f"== {clean(str(end.path))}", style="bold"), soft_wrap=True)
            render_summary(
                end.outcome,
                console,
                manifest=end.path,
                mode="json" if json_mode else "text",
                extra={"manifest": str(end.path)},
            )
            continue
        message = end.error.message if end.error is not None else "invalid"
        if json_mode:
            _json_line(
                console,
                {
                    "type": "summary",
                    "manifest": str(end.path),
                    "exit_code": end.exit_code,
                    "skipped": True,
                    "message": scrub(message),
                    "problems": [_problem_record(p) for p in end.problems],
                },
            )
            continue
        console.print(Text(f"== {clean(str(end.path))}", style="bold"), soft_wrap=True)
        print_problems(end.problems, err)
        hint = f" ({clean(end.error.hint)})" if end.error is not None and end.error.hint else ""
        # a refusal before spending says so itself: say it once
        told = "nothing was sent" in message.lower()
        tail = "" if told else "; nothing was sent for it"
        console.print(
            Text.assemble(("skipped", "bold red"), f": {clean(message)}{tail}{hint}"),
            soft_wrap=True,
        )
    ran = sum(1 for e in ends if e.outcome is not None)
    skipped = len(ends) - ran
    if json_mode:
        _json_line(
            console,
            {
                "type": "total",
                "manifests": len(ends),
                "ran": ran,
                "skipped": skipped,
                "exit_code": exit_code,
                "counts": {s.value: n for s, n in counts.items() if n},
                "spent_uptc": spent,
                "spent_ptc": format_ptc(spent),
            },
        )
        return
    line = Text.assemble(
        ("total", "bold"),
        f" of {plural(len(ends), 'manifest')}"
        + (f" ({skipped} skipped)" if skipped else "")
        + ": ",
    )
    console.print(line + counts_text(counts), soft_wrap=True)
    console.print(
        Text.assemble(("  spent   ", "dim"), f"{format_ptc(spent)} PTC  "),
        Text.assemble(("exit code ", "dim"), str(exit_code)),
    )


def _problem_record(problem: Problem) -> dict[str, Any]:
    return {
        "where": problem.location(),
        "severity": problem.severity,
        "shot_id": problem.shot_id,
        "field": problem.field_path,
        "message": scrub(problem.message),
    }


def _json_line(console: Console, record: dict[str, Any]) -> None:
    stamped = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **record}
    console.file.write(json_text(stamped, ensure_ascii=False) + "\n")
    console.file.flush()
