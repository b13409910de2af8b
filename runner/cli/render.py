"""Turning core results into text for people: tables, problems, summaries.

Texts from a manifest reach the terminal through :func:`runner.cli.views.clean`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from runner.cli.consoles import print_full
from runner.cli.views import clean
from runner.errors import Problem
from runner.manifest import FileReport
from runner.money import ptc_text
from runner.plan import TO_SUBMIT, Plan
from runner.text import plural


def _safe(text: str) -> str:
    """Manifest text for rich markup: no control characters, no markup."""
    return escape(clean(text))


def print_problems(problems: Sequence[Problem], console: Console) -> None:
    for p in problems:
        where = p.location()
        who = f" shot {p.shot_id}" if p.shot_id else ""
        fld = f" {p.field_path}:" if p.field_path else ""
        colour = "red" if p.severity == "error" else "yellow"
        console.print(
            f"[bold]{_safe(where)}[/]:[{colour}]{p.severity}[/]{_safe(who)}{_safe(fld)} "
            f"{_safe(p.message)}"
        )
        if p.hint:
            console.print(f"    [dim]fix:[/] {_safe(p.hint)}")


def print_plan(plan: Plan, console: Console) -> None:
    """The plan as a table grouped by what sets the price, then totals and budget."""
    from rich.table import Table

    extra = [s for s in plan.statuses if s != TO_SUBMIT] if len(plan.statuses) > 1 else []
    table = Table(title=f"Plan: {_safe(plan.manifest_name)}", title_justify="left")
    for header in ("mode", "model", "quality", "duration", "motion"):
        table.add_column(header)
    table.add_column("shots", justify="right")
    for status in extra:
        table.add_column(status.replace("_", " "), justify="right")
    table.add_column(f"unit {plan.currency}", justify="right")
    table.add_column(f"subtotal {plan.currency}", justify="right")
    for g in plan.groups:
        unknown = "[yellow]unknown[/]"
        table.add_row(
            g.mode.value,
            _safe(g.model),
            _safe(g.quality),
            f"{g.duration_s} s",
            _safe(g.motion_mode),
            str(g.count),
            *(str(g.by_status.get(s, 0)) for s in extra),
            ptc_text(g.unit_price_ptc) or unknown,
            ptc_text(g.subtotal_ptc) or unknown,
        )
    print_full(console, table)
    total = (
        f"[bold]total: {ptc_text(plan.total_ptc)} {plan.currency}[/] for "
        f"{plural(plan.shot_count, 'shot')}"
    )
    console.print(total)
    if plan.unpriced_count:
        have = "has" if plan.unpriced_count == 1 else "have"
        console.print(
            f"[yellow]{plural(plan.unpriced_count, 'shot')} {have} no published price[/] "
            "(shown as unknown, not counted in the total); edit the price table to price them"
        )
    if plan.uploads_to_make:
        unit = ptc_text(plan.upload_unit_ptc) or "[yellow]unknown[/]"
        console.print(
            f"uploads: {plural(plan.uploads_to_make, 'local image')} to upload once each, "
            f"{unit} {plan.currency} each = {ptc_text(plan.uploads_ptc)} {plan.currency} "
            "(counted in what is still to pay)"
        )
    if extra:
        if plan.spent_ptc:
            console.print(f"spent by earlier runs: {ptc_text(plan.spent_ptc)} {plan.currency}")
        console.print(
            f"still to pay for: {ptc_text(plan.remaining_ptc)} {plan.currency} "
            f"({plural(plan.remaining_count, 'shot')})"
        )
    print_budget(plan, console)


def print_budget(plan: Plan, console: Console) -> None:
    if plan.budget_ptc is None:
        return
    budget = f"{ptc_text(plan.budget_ptc)} {plan.currency}"
    if plan.remaining_unpriced:
        # the command stops with the reason (exit 4), as `pixrun run` would
        console.print(f"[bold red]the budget of {budget} cannot be checked[/]")
    elif plan.fits:
        spare = ptc_text(plan.budget_ptc - plan.spent_ptc - plan.remaining_ptc)
        console.print(f"[green]fits the budget of {budget}[/] ({spare} {plan.currency} to spare)")
    else:
        console.print(
            f"[bold red]over the budget of {budget} by {ptc_text(plan.over_by_ptc)} "
            f"{plan.currency}[/]"
        )


def print_validation(reports: Sequence[FileReport], console: Console, err: Console) -> None:
    """Problems to ``err``, one summary line per file to ``console``."""
    for report in reports:
        print_problems(report.problems, err)
    for report in reports:
        errors = sum(1 for p in report.problems if p.severity == "error")
        warnings = len(report.problems) - errors
        notes = f", {plural(warnings, 'warning')}" if warnings else ""
        path = _safe(report.label)
        if report.ok:
            console.print(f"[green]valid[/]: {path} ({plural(report.shot_count, 'shot')}{notes})")
        else:
            console.print(f"[red]invalid[/]: {path} ({plural(errors, 'error')}{notes})")
