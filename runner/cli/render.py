"""Turning core results into text for people: tables, problems, summaries."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from runner.errors import Problem
from runner.manifest import FileReport
from runner.plan import TO_SUBMIT, Plan, ptc_text


def print_problems(problems: Sequence[Problem], console: Console) -> None:
    for p in problems:
        where = p.location()
        who = f" shot {p.shot_id}" if p.shot_id else ""
        fld = f" {p.field_path}:" if p.field_path else ""
        colour = "red" if p.severity == "error" else "yellow"
        console.print(
            f"[bold]{escape(where)}[/]:[{colour}]{p.severity}[/]{escape(who)}{escape(fld)} "
            f"{escape(p.message)}"
        )
        if p.hint:
            console.print(f"    [dim]fix:[/] {escape(p.hint)}")


def print_plan(plan: Plan, console: Console) -> None:
    """The plan as a table grouped by what sets the price, then totals and budget."""
    from rich.table import Table

    extra = [s for s in plan.statuses if s != TO_SUBMIT] if len(plan.statuses) > 1 else []
    table = Table(title=f"Plan: {escape(plan.manifest_name)}", title_justify="left")
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
            g.model,
            g.quality,
            f"{g.duration_s} s",
            g.motion_mode,
            str(g.count),
            *(str(g.by_status.get(s, 0)) for s in extra),
            ptc_text(g.unit_price_ptc) or unknown,
            ptc_text(g.subtotal_ptc) or unknown,
        )
    console.print(table)
    total = (
        f"[bold]total: {ptc_text(plan.total_ptc)} {plan.currency}[/] for {plan.shot_count} shots"
    )
    console.print(total)
    if plan.unpriced_count:
        console.print(
            f"[yellow]{plan.unpriced_count} shot(s) have no published price[/] (shown as "
            "unknown, not counted in the total); edit the price table to price them"
        )
    if extra:
        if plan.spent_ptc:
            console.print(f"spent by earlier runs: {ptc_text(plan.spent_ptc)} {plan.currency}")
        console.print(
            f"still to pay for: {ptc_text(plan.remaining_ptc)} {plan.currency} "
            f"({plan.remaining_count} shots)"
        )
    print_budget(plan, console)


def print_budget(plan: Plan, console: Console) -> None:
    if plan.budget_ptc is None:
        return
    budget = f"{ptc_text(plan.budget_ptc)} {plan.currency}"
    if plan.fits:
        spare = ptc_text(plan.budget_ptc - plan.spent_ptc - plan.remaining_ptc)
        console.print(f"[green]fits the budget of {budget}[/] ({spare} {plan.currency} to spare)")
        if plan.remaining_unpriced:
            console.print(
                f"[yellow]but {plan.remaining_unpriced} unpriced shot(s) could add to the cost[/]"
            )
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
        notes = f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else ""
        if report.ok:
            console.print(
                f"[green]valid[/]: {escape(str(report.path))} ({report.shot_count} shots{notes})"
            )
        else:
            console.print(
                f"[red]invalid[/]: {escape(str(report.path))} "
                f"({errors} error{'s' if errors != 1 else ''}{notes})"
            )
