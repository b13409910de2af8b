"""``pixrun status`` and ``pixrun report``: read the ledger, never write it.

Both work while a run is writing the same ledger from another process (they open it
read-only and take no lock). See runner/cli/__init__.py for the rules every command
follows.
"""

from __future__ import annotations

import asyncio
import io
import time
from contextlib import aclosing, nullcontext, suppress
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.rule import Rule
from rich.text import Text

from runner.cli.consoles import make_console, print_full
from runner.cli.options import (
    existing_ledger,
    format_option,
    ledger_option,
    optional_manifest_argument,
    rerun_command,
    simulate_option,
)
from runner.cli.views import (
    REHEARSAL_NOTE,
    clean,
    counts_text,
    json_text,
    report_table,
    scrub,
    status_dict,
    status_renderable,
)
from runner.errors import UsageError
from runner.fileio import PUBLIC_FILE_MODE, write_atomically
from runner.ledger.queries import ReportRow, StatusSummary
from runner.ledger.views import report_of, status_of, watch_status
from runner.model import ShotState
from runner.money import format_ptc
from runner.report import ContactSheetInfo, render_contact_sheet, to_csv, to_json
from runner.text import plural

COMMANDS: list[click.Command] = []

_STATE_CHOICES = [s.value for s in ShotState] + ["parked"]
_SHEET_NAME = "contact-sheet.html"


def _title(meta: dict[str, str], ledger_path: Path) -> str:
    name = meta.get("name")
    if name:
        return name
    stem = ledger_path.name
    for suffix in (".sqlite", ".ledger"):
        stem = stem.removesuffix(suffix)
    return stem


def _output_dir(meta: dict[str, str], ledger_path: Path) -> Path | None:
    """The run's output folder as recorded in the ledger (relative: to the manifest)."""
    value = meta.get("output_dir")
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        base = Path(meta["manifest"]).parent if meta.get("manifest") else ledger_path.parent
        path = base / path
    return path


def _resume(summary: StatusSummary, ledger_path: Path, manifest: Path | None) -> str:
    """The command that resumes this batch: a rehearsal's with --simulate (else the
    real provider would render it all again), and --ledger when it is not beside it."""
    if manifest is None and summary.meta.get("manifest"):
        manifest = Path(summary.meta["manifest"])
    return rerun_command(manifest, ledger_path, simulated=summary.simulated)


def _write_file(path: Path, text: str) -> None:
    """Write whole or not at all: a reader never sees half a report."""
    try:
        write_atomically(path, text.encode("utf-8"), mode=PUBLIC_FILE_MODE)
    except OSError as exc:
        raise UsageError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="choose another place with -o/--output",
        ) from exc


# -- status ------------------------------------------------------------------------------


async def _watch(
    path: Path,
    console: Console,
    fmt: str,
    interval_s: float,
    iterations: int | None,
    manifest: Path | None = None,
) -> None:
    live = fmt == "table" and console.is_terminal
    shown = 0
    async with aclosing(watch_status(path, interval_s)) as summaries:
        summary = await anext(summaries)  # the ledger opens (or fails) before any display
        title = _title(summary.meta, path)
        resume = _resume(summary, path, manifest)
        display_cm = Live(console=console, auto_refresh=False) if live else nullcontext(None)
        with display_cm as display:
            while True:
                if display is not None:
                    display.update(status_renderable(summary, title, resume=resume), refresh=True)
                elif fmt == "json":
                    click.echo(json_text(status_dict(summary), separators=(",", ":")))
                else:
                    console.print(Rule(time.strftime("%H:%M:%S"), style="dim"))
                    print_full(
                        console, status_renderable(summary, title, whole=True, resume=resume)
                    )
                shown += 1
                if iterations is not None and shown >= iterations:
                    return
                summary = await anext(summaries)


@click.command("status")
@click.argument("manifests", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@ledger_option
@simulate_option
@format_option("table", "json")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C (a run may be going on).")
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(0.1, None),
    default=2.0,
    show_default=True,
    metavar="S",
    help="Seconds between refreshes with --watch.",
)
@click.option("--iterations", type=click.IntRange(1, None), hidden=True)
def status_cmd(
    manifests: tuple[Path, ...],
    ledger: Path | None,
    simulate: bool,
    fmt: str,
    watch: bool,
    interval_s: float,
    iterations: int | None,
) -> None:
    """Where the batch stands: counts, money, throughput, failures and parked shots.

    Read-only: safe while `pixrun run` works on the same ledger in another process.
    Several manifests: each one's status, then the total.
    """
    if len(manifests) > 1:
        if ledger is not None or watch:
            raise UsageError("--ledger and --watch work on one manifest's ledger at a time")
        _status_several(manifests, simulate, fmt)
        return
    manifest = manifests[0] if manifests else None
    path = existing_ledger(manifest, ledger, simulated=simulate)
    console = make_console()
    if watch:
        with suppress(KeyboardInterrupt):  # Ctrl-C is the way to stop watching
            asyncio.run(_watch(path, console, fmt, interval_s, iterations, manifest))
        return
    summary = asyncio.run(status_of(path))
    title = _title(summary.meta, path)
    if fmt == "json":
        click.echo(json_text(status_dict(summary), indent=2))
    else:
        # a pipe or a file gets every failure's shot id and reason whole
        whole = not console.is_terminal
        resume = _resume(summary, path, manifest)
        print_full(console, status_renderable(summary, title, whole=whole, resume=resume))


def _status_several(manifests: tuple[Path, ...], simulate: bool, fmt: str) -> None:
    """``pixrun status a.yaml b.yaml``: each batch, then the total (counts and money)."""
    from collections import Counter

    found: list[tuple[Path, Path]] = []
    #: manifests without a ledger yet (not started, or queued in a watched folder): said
    #: beside the others; the command fails only when none has one
    unstarted: list[tuple[Path, UsageError]] = []
    for m in manifests:
        try:
            found.append((m, existing_ledger(m, None, simulated=simulate)))
        except UsageError as exc:
            unstarted.append((m, exc))
    if not found:
        raise unstarted[0][1]
    manifests = tuple(m for m, _ in found)
    paths = [p for _, p in found]
    summaries = [asyncio.run(status_of(p)) for p in paths]
    counts: Counter[ShotState] = Counter()
    for summary in summaries:
        counts.update(summary.counts)
    spent = sum(s.spent_uptc for s in summaries)
    total = sum(s.total for s in summaries)
    if fmt == "json":
        record = {
            "manifests": [
                {"manifest": str(m), **status_dict(s)}
                for m, s in zip(manifests, summaries, strict=True)
            ],
            "not_started": [
                {"manifest": str(m), "message": why.message, "hint": why.hint}
                for m, why in unstarted
            ],
            "total": {
                "total": total,
                "counts": {s.value: counts.get(s, 0) for s in ShotState},
                "spent_uptc": spent,
            },
        }
        click.echo(json_text(record, indent=2))
        return
    console = Console(highlight=False)
    for manifest, path, summary in zip(manifests, paths, summaries, strict=True):
        resume = _resume(summary, path, manifest)
        console.print(status_renderable(summary, _title(summary.meta, path), resume=resume))
    for manifest, missing in unstarted:
        console.print(
            Text.assemble(
                (clean(str(manifest)), "bold"), f": not started ({clean(missing.message)})"
            ),
            soft_wrap=True,
        )
    console.print(
        Text.assemble(("total", "bold"), f" of {plural(len(manifests), 'manifest')}: ")
        + counts_text(counts)
        + Text(f"  of {plural(total, 'shot')}; spent {format_ptc(spent)} PTC"),
        soft_wrap=True,
    )


# -- report ------------------------------------------------------------------------------


def _states(state: tuple[str, ...], failed: bool) -> set[ShotState] | None:
    if not state and not failed:
        return None
    chosen = {ShotState.AMBIGUOUS if s == "parked" else ShotState(s) for s in state}
    if failed:
        chosen |= {ShotState.FAILED, ShotState.MODERATED}
    return chosen


@click.command("report")
@optional_manifest_argument
@ledger_option
@simulate_option
@format_option("table", "csv", "json", "html")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write here instead of standard output (html: default beside the outputs).",
)
@click.option(
    "--state",
    "state",
    multiple=True,
    type=click.Choice(_STATE_CHOICES),
    help="Only shots in this state (repeatable).",
)
@click.option("--failed", is_flag=True, help="Only failed and moderated shots.")
def report_cmd(
    manifest: Path | None,
    ledger: Path | None,
    simulate: bool,
    fmt: str,
    output: Path | None,
    state: tuple[str, ...],
    failed: bool,
) -> None:
    """One row per shot (table, csv, json), or the HTML contact sheet of every clip."""
    path = existing_ledger(manifest, ledger, simulated=simulate)
    rows, summary = asyncio.run(report_of(path, _states(state, failed)))
    out_dir = _output_dir(summary.meta, path)
    if fmt == "html":
        target = _write_sheet(rows, summary, path, out_dir, output)
        click.echo(f"contact sheet of {plural(len(rows), 'shot')}: {target.resolve().as_uri()}")
        return
    if fmt == "table" and output is None:
        console = make_console()
        if rows:
            whole = not console.is_terminal  # a pipe: every column, every value in full
            table = report_table(
                rows, width=console.width, simulated=summary.simulated, whole=whole
            )
            print_full(console, table)
        else:
            if summary.simulated:
                console.print(REHEARSAL_NOTE)
            console.print("no shots match")
        return
    text = scrub(_report_text(rows, fmt, out_dir, simulated=summary.simulated))
    if output is None:
        click.echo(text, nl=False)
    else:
        _write_file(output, text)
        click.echo(f"wrote {plural(len(rows), 'shot')} to {clean(str(output))}", err=True)


def _report_text(rows: list[ReportRow], fmt: str, out_dir: Path | None, *, simulated: bool) -> str:
    if fmt == "csv":
        return to_csv(rows, output_dir=out_dir)
    if fmt == "json":
        return to_json(rows, output_dir=out_dir) + "\n"
    # a file: no colours, every value in full (never a terminal, whatever FORCE_COLOR says)
    text = io.StringIO()
    console = Console(file=text, force_terminal=False, color_system=None)
    print_full(console, report_table(rows, simulated=simulated, whole=True))
    return text.getvalue()


def _write_sheet(
    rows: list[ReportRow],
    summary: StatusSummary,
    ledger_path: Path,
    out_dir: Path | None,
    output: Path | None,
) -> Path:
    """Write the contact sheet: at ``output``, else beside the outputs or the ledger."""
    if output is not None:
        target = output
    elif out_dir is not None and out_dir.is_dir():
        target = out_dir / _SHEET_NAME
    else:
        target = ledger_path.with_name(f"{_title({}, ledger_path)}.{_SHEET_NAME}")
    info = ContactSheetInfo(
        title=_title(summary.meta, ledger_path),
        planned_uptc=summary.planned_uptc,
        spent_uptc=summary.spent_uptc,
        generated_at=time.time(),
        simulated=summary.simulated,
    )
    text = render_contact_sheet(
        rows, html_path=target, output_dir=out_dir or ledger_path.parent, info=info
    )
    _write_file(target, scrub(text))
    return target


COMMANDS.extend([status_cmd, report_cmd])
