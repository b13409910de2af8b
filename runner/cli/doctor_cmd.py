"""``pixrun doctor``: parse, call runner.doctor (and runner.doctor_spend), draw, exit."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runner.cli.consoles import make_console, print_full
from runner.cli.options import format_option, provider_options
from runner.cli.views import json_text
from runner.doctor import DoctorReport, diagnose
from runner.doctor_spend import (
    SpendResult,
    default_spend_dir,
    spend_description,
    spend_one_shot,
    spend_price_ptc,
)
from runner.errors import ExitCode, PixrunError, UsageError
from runner.provider import ProviderConfig
from runner.provider.settings_file import save_settings

COMMANDS: list[click.Command] = []

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}
#: the table's width when output is not a terminal (a log, a pipe)
_PLAIN_WIDTH = 140


def _folders(manifest: Path | None) -> tuple[Path, Path]:
    """(output folder, ledger folder): the manifest's, or the current folder."""
    if manifest is None:
        return Path.cwd(), Path.cwd()
    from runner.cli.options import manifest_source
    from runner.ledger import default_ledger_path
    from runner.manifest import load_manifest

    loaded = load_manifest(manifest_source(manifest), check_images=False)
    return loaded.output.dir, default_ledger_path(loaded.path).parent


def _confirm_spend(yes: bool, console: Console) -> None:
    price = spend_price_ptc()
    shown = f"{price} PTC" if price is not None else "an unknown price"
    text = (
        f"--spend creates one real task at the provider ({spend_description()}), "
        f"charged {shown} by the price table"
    )
    if yes:
        console.print(f"[bold]{escape(text)}.[/]")
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{text}: confirm with --yes", hint="pixrun doctor --spend --yes")
    click.confirm(f"{text}. Go ahead?", abort=True, err=True)


def _table(report: DoctorReport) -> Table:
    table = Table(header_style="bold", show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("details", overflow="fold", ratio=3)
    table.add_column("fix", overflow="fold", ratio=2)
    for check in report.checks:
        style = _STYLE[check.outcome.value]
        table.add_row(
            check.name,
            f"[{style}]{check.outcome.value}[/]",
            escape(check.found),
            escape(check.fix),
        )
    return table


@click.command("doctor")
@click.argument("manifest", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--base-url", help="Provider base URL (default: $PIXRUN_BASE_URL or api.302.ai).")
@click.option(
    "--provider-option",
    "provider_option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Provider adapter setting, e.g. fetch_path=/pix/fetch/{task_id} (repeatable).",
)
@format_option("table", "json", help_text="A table, or one JSON document (with the raw answers).")
@click.option(
    "--save",
    is_flag=True,
    help="Keep the routes found to work in the settings file, for later commands "
    "($PIXRUN_CONFIG, else config.toml in the user config folder, e.g. ~/.config/pixrun).",
)
@click.option(
    "--spend",
    is_flag=True,
    help="Also run one cheapest real shot end to end (charged: 0.1 PTC) and keep its "
    "raw answers for a bug report.",
)
@click.option("--yes", "-y", is_flag=True, help="With --spend: do not ask for confirmation.")
@click.option(
    "--save-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="With --spend: where the video and the raw answers go "
    "(default: ./pixrun-doctor-<UTC time>).",
)
@click.option(
    "--callback-listen",
    metavar="HOST:PORT",
    help="Also start the callback receiver here briefly and check it is reachable.",
)
@click.option(
    "--callback-url",
    metavar="URL",
    help="With --callback-listen: the receiver's public address to check "
    "(default http://HOST:PORT).",
)
def doctor_cmd(
    manifest: Path | None,
    base_url: str | None,
    provider_option_pairs: tuple[str, ...],
    fmt: str,
    save: bool,
    spend: bool,
    yes: bool,
    save_dir: Path | None,
    callback_listen: str | None,
    callback_url: str | None,
) -> None:
    """Check the key, the provider's routes and this machine; free unless --spend.

    Finds the fetch route among the plausible ones, proves the generate route with a
    request the provider must refuse, and checks disk space, the ledger's folder and
    the clock (of MANIFEST's folders when given). Exit codes: 0 all good (warnings
    allowed), 3 the key was refused, 5 the configured routes do not match the
    provider, 2 a machine-side problem or bad usage.
    """
    options = provider_options(provider_option_pairs)
    out = make_console()
    err = make_console(stderr=True, soft_wrap=True)
    if not out.is_terminal:
        out.width = _PLAIN_WIDTH
    config = ProviderConfig.from_env(base_url, **options)
    output_dir, ledger_dir = _folders(manifest)
    if spend:
        _confirm_spend(yes, err)
    from runner.run.callbacks import callback_endpoint

    receiver = callback_endpoint(
        callback_listen,
        callback_url,
        hint="pixrun doctor --callback-listen 0.0.0.0:8787 --callback-url URL",
    )
    report = asyncio.run(diagnose(config, output_dir=output_dir, ledger_dir=ledger_dir))
    if receiver is not None:
        from runner.doctor_callback import check_callback_receiver

        report = report.with_check(asyncio.run(check_callback_receiver(*receiver)))
    saved_to: Path | None = None
    if save and report.working:
        saved_to = save_settings(config.base_url, report.working)
        report = report.with_saved(report.working, saved_to)
        # what follows (--spend) takes the routes just saved, as later commands will
        config = ProviderConfig.from_env(base_url, **options)
    doc: dict[str, Any] = report.to_dict()
    if saved_to is not None:
        doc["saved"] = {"file": str(saved_to), "settings": dict(report.working)}
    if fmt == "table":
        _print_report(out, report, saved_to, save)
    problem = report.problem()
    if problem is None and spend:
        problem = _spend(
            config, save_dir or default_spend_dir(), doc, out if fmt == "table" else None, err
        )
    if fmt == "json":
        click.echo(json_text(doc, indent=2, ensure_ascii=False))
    if problem is not None:
        raise problem
    if fmt == "table" and not spend:
        out.print("free: no task was created, nothing was charged")
    sys.exit(ExitCode.OK)


def _print_report(out: Console, report: DoctorReport, saved_to: Path | None, save: bool) -> None:
    out.print(f"[bold]pixrun doctor[/] · {escape(report.base_url)}")
    print_full(out, _table(report))
    if saved_to is not None:
        kept = ", ".join(f"{k}={v}" for k, v in report.working.items())
        out.print(f"saved {escape(kept)} to {escape(str(saved_to))}")
    elif save:
        out.print("nothing saved: no route was proven to work")


def _spend(
    config: ProviderConfig, folder: Path, doc: dict[str, Any], out: Console | None, err: Console
) -> PixrunError | None:
    """Run the test shot into ``doc["spend"]``; the error it ended with, if any."""
    try:
        result = asyncio.run(
            spend_one_shot(config, folder, on_progress=lambda line: err.print(escape(line)))
        )
    except PixrunError as exc:
        doc["spend"] = {"error": str(exc), "folder": str(folder)}
        return exc
    doc["spend"] = result.to_dict()
    if out is not None:
        _print_spend(out, result)
    return None


def _print_spend(out: Console, result: SpendResult) -> None:
    out.print(
        f"--spend: task {escape(result.task_id)} rendered and downloaded in "
        f"{result.elapsed_s:.0f} s: {escape(str(result.video))} "
        f"({result.size_bytes} bytes, a complete MP4)"
    )
    out.print(f"the raw answers (key redacted) are in {escape(str(result.folder))}/")


COMMANDS.append(doctor_cmd)
