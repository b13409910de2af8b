"""``pixrun validate``, ``pixrun plan`` and ``pixrun schema``: parse, call the core, exit."""

from __future__ import annotations

import asyncio
import csv
import sys
from decimal import Decimal
from pathlib import Path

import click
from rich.console import Console

from runner.cli.consoles import make_console
from runner.cli.options import (
    format_option,
    manifest_source,
    manifest_sources,
    max_cost_option,
    rules_option,
    sample_options,
    simulate_option,
)
from runner.cli.render import print_plan, print_problems, print_validation
from runner.cli.views import json_text
from runner.errors import ExitCode, UsageError
from runner.ledger import default_ledger_path
from runner.manifest import load_manifest, validate_files
from runner.manifest.contract import load_rules
from runner.manifest.schema import manifest_schema_json
from runner.money import from_uptc
from runner.plan import build_plan, check_plan_budget
from runner.pricing import load_price_table
from runner.sample import SampleSpec, cut
from runner.text import printable

COMMANDS: list[click.Command] = []


def _console(stderr: bool = False) -> Console:
    return make_console(stderr=stderr, soft_wrap=True)


_PATH = click.Path(path_type=Path, dir_okay=False)


@click.command("validate")
@click.argument("manifests", nargs=-1, required=True, type=_PATH)
@format_option(
    "text",
    "json",
    help_text="json: a list of problem objects (file, line, column, severity, shot_id, field, "
    "message, hint).",
)
@click.option("--no-image-check", is_flag=True, help="Do not open local images.")
@rules_option
@click.pass_context
def validate_cmd(
    ctx: click.Context,
    manifests: tuple[Path, ...],
    fmt: str,
    no_image_check: bool,
    rules: Path | None,
) -> None:
    """Check MANIFEST files without spending anything; every problem in one pass.

    '-' reads one manifest from standard input. Exit 0 when all are valid (warnings do
    not fail), 2 when any is not.
    """
    reports = validate_files(
        manifest_sources(manifests), check_images=not no_image_check, rules=load_rules(rules)
    )
    if fmt == "json":
        problems = [p.to_dict() for r in reports for p in r.problems]
        click.echo(json_text(problems, indent=2, ensure_ascii=False))
    else:
        print_validation(reports, _console(), _console(stderr=True))
    if not all(r.ok for r in reports):
        ctx.exit(ExitCode.INVALID)


@click.command("plan")
@click.argument("manifest", type=_PATH)
@format_option("table", "json", "csv")
@max_cost_option("Cost cap in PTC (overrides run.budget_ptc); exit 4 when the plan is above it.")
@click.option(
    "--prices",
    type=_PATH,
    help="Price table JSON (default: the packaged 302.AI rule, runner/data/prices.json).",
)
@click.option(
    "--ledger",
    type=_PATH,
    help="Ledger of earlier runs, to plan only what remains (default: beside the manifest).",
)
@simulate_option
@rules_option
@sample_options("Price only")
def plan_cmd(
    manifest: Path,
    fmt: str,
    max_cost: Decimal | None,
    prices: Path | None,
    ledger: Path | None,
    simulate: bool,
    rules: Path | None,
    only: tuple[str, ...],
    limit: int | None,
) -> None:
    """Show what MANIFEST will cost, grouped by mode, model, quality, duration and motion.

    Prices unknown to the price table (10 s) are shown as unknown, never as zero.
    Exit 4 when the plan is over the budget (run.budget_ptc or --max-cost), or when
    there is a budget and shots to submit have no price, as `pixrun run` would.
    '-' reads the manifest from standard input.
    """
    table = load_price_table(prices)
    loaded = load_manifest(manifest_source(manifest), price_table=table, rules=load_rules(rules))
    ledger_path = (
        ledger if ledger is not None else default_ledger_path(loaded.path, simulated=simulate)
    )
    if ledger is not None and not ledger_path.exists():
        raise UsageError(f"no ledger at {ledger}", hint="drop --ledger to plan from scratch")
    spec = SampleSpec(only=only, limit=limit)
    if spec.active:
        # the shots `pixrun run` with the same options would submit, and only those
        from runner.plan_status import ledger_sample

        known_at = ledger_path if ledger_path.exists() else None
        picked = asyncio.run(ledger_sample(loaded, spec, known_at))
        loaded = cut(loaded, picked)
        _console(stderr=True).print(picked.describe(), soft_wrap=True)
    if ledger_path.exists():
        # earlier runs: plan only what remains, and show what is done, in flight, ...
        from runner.plan_status import SPEND_LABELS, ledger_labels

        labels, spent_uptc, uploaded = asyncio.run(ledger_labels(loaded, ledger_path))
        plan = build_plan(
            loaded,
            max_cost_ptc=max_cost,
            status_by_shot=labels,
            spend_statuses=SPEND_LABELS,
            spent_ptc=from_uptc(spent_uptc),
            uploaded=uploaded,
        )
    else:
        plan = build_plan(loaded, max_cost_ptc=max_cost)
    if loaded.warnings:
        print_problems(loaded.warnings, _console(stderr=True))
    if fmt == "json":
        click.echo(json_text(plan.to_dict(), indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=plan.csv_columns(), lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}
            for row in plan.rows()
        )
    else:
        print_plan(plan, _console())
    check_plan_budget(plan)


@click.command("schema")
@rules_option
def schema_cmd(rules: Path | None) -> None:
    """Print the manifest JSON Schema (for editors: see the README).

    With --rules, the schema of manifests checked under that rules file.
    """
    click.echo(manifest_schema_json(load_rules(rules)), nl=False)


COMMANDS.extend([validate_cmd, plan_cmd, schema_cmd])
