"""``pixrun run a.yaml b.yaml ...`` (called by ``run``) and ``pixrun watch DIR``:
parse, call runner.run.multi / runner.run.watch, print, exit.

Exit codes of several manifests: 130 when interrupted, else the highest of theirs
(an invalid manifest counts 2, and the others still run); 0 only when every manifest
was valid and finished clean.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.text import Text

from runner import loops
from runner.cli.multi_progress import MultiDisplay, render_summaries
from runner.cli.options import PTC, rules_option
from runner.cli.views import clean
from runner.errors import ExitCode, ManifestError, PixrunError, UsageError
from runner.manifest import load_manifest
from runner.manifest.contract import load_rules
from runner.model import Manifest
from runner.pricing import load_price_table

if TYPE_CHECKING:
    from runner.run.multi import BatchEnd
    from runner.run.preview import Confirm
    from runner.run.setup import RunOverrides, SimulatorSettings
    from runner.run.watch import News

COMMANDS: list[click.Command] = []


def _loader(prices: Path | None, rules: Path | None) -> Callable[[Path], Manifest]:
    table = load_price_table(prices) if prices else None
    loaded_rules = load_rules(rules)

    def load(path: Path) -> Manifest:
        if not path.exists():
            raise UsageError(f"no manifest at {path}")
        return load_manifest(path, price_table=table, rules=loaded_rules)

    return load


def run_several(
    paths: list[Path],
    *,
    overrides: RunOverrides,
    simulate: SimulatorSettings | None,
    confirm: Confirm | None,
    mode: str,
    console: Console,
    prices: Path | None,
    rules: Path | None,
    rerender_changed: bool,
    check_space: bool,
    cpu: int | None,
) -> int:
    """Validate every manifest, run the valid ones together, print; the exit code."""
    from runner.run.multi import BatchEnd, BatchSettings, overall_exit_code, run_batches

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    load = _loader(prices, rules)
    manifests: list[Manifest] = []
    ends: dict[int, BatchEnd] = {}
    for i, path in enumerate(paths):
        try:
            manifests.append(load(path))
        except ManifestError as exc:
            ends[i] = BatchEnd(path, error=exc, problems=tuple(exc.problems))
        except PixrunError as exc:
            ends[i] = BatchEnd(path, error=exc)
    if len({m.path.resolve() for m in manifests}) < len(manifests):
        raise UsageError("a manifest is given twice: give each once")
    for _, end in sorted(ends.items()):
        if mode != "json":
            err.print(
                Text.assemble(
                    ("skipped", "bold red"),
                    f": {clean(str(end.path))}: {clean(end.error.message if end.error else '')}"
                    " (the others run; see the summary)",
                ),
            )
    settings = BatchSettings(
        overrides=overrides,
        simulate=simulate,
        cpu=cpu,
        confirm=confirm,
        rerender_changed=rerender_changed,
        check_space=check_space,
    )
    display = MultiDisplay(mode, console)
    ran: list[BatchEnd] = []
    if manifests:
        with display:
            ran = loops.run(run_batches(manifests, settings, display.observer_for))
    del manifests
    by_path = iter(ran)
    all_ends = [ends[i] if i in ends else next(by_path) for i in range(len(paths))]
    code = overall_exit_code(all_ends)
    render_summaries(all_ends, console, err, json_mode=mode == "json", exit_code=code)
    return code


@click.command("watch")
@click.argument(
    "folder", type=click.Path(path_type=Path, file_okay=False, exists=True, writable=True)
)
@click.option(
    "--once",
    is_flag=True,
    help="Run the manifests in the folder now, then exit (for cron) instead of watching.",
)
@click.option(
    "--simulate",
    is_flag=True,
    help="Rehearse every manifest against the built-in simulator: nothing is spent.",
)
@click.option(
    "--sim-render-time",
    default="1,3",
    show_default=True,
    metavar="MIN,MAX",
    help="With --simulate: render time in seconds, uniform between MIN and MAX.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    help="The account's tasks in flight, over all manifests (default: the largest "
    "run.concurrency of the manifests found).",
)
@click.option(
    "--rate",
    "requests_per_s",
    type=click.FloatRange(0.01, None),
    help="Provider calls per second, over all manifests (default: the largest "
    "run.requests_per_s found).",
)
@click.option(
    "--max-cost",
    metavar="PTC",
    type=PTC,
    help="Cap over all the manifests' ledgers together (each keeps its run.budget_ptc).",
)
@click.option(
    "--stable-s",
    type=click.FloatRange(0.0, None),
    default=1.0,
    show_default=True,
    metavar="S",
    help="A dropped file counts once its size and time have not changed for this long.",
)
@click.option("--base-url", help="Provider base URL (default: $PIXRUN_BASE_URL or api.302.ai).")
@click.option(
    "--prices",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Price table JSON (default: the packaged 302.AI rule).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only what the folder does.")
@click.option("--json-logs", is_flag=True, help="One JSON object per event on stdout.")
@rules_option
def watch_cmd(
    folder: Path,
    once: bool,
    simulate: bool,
    sim_render_time: str,
    concurrency: int | None,
    requests_per_s: float | None,
    max_cost: Decimal | None,
    stable_s: float,
    base_url: str | None,
    prices: Path | None,
    quiet: bool,
    json_logs: bool,
    rules: Path | None,
) -> None:
    """Run every manifest dropped into FOLDER, together, until Ctrl-C.

    Finished manifests move to FOLDER/done/, invalid ones to FOLDER/rejected/ with
    NAME.errors.txt beside them. Ledgers live in FOLDER/ledgers/, so a restart resumes
    whatever was in flight and a manifest dropped again finds its ledger.
    """
    from runner.cli.run_cmds import _render_range
    from runner.money import to_uptc_or_none
    from runner.run.context import SharedFlow
    from runner.run.multi import BatchSettings, overall_exit_code
    from runner.run.setup import RunOverrides, SimulatorSettings
    from runner.run.watch import HotFolder

    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    mode = "json" if json_logs else "quiet" if quiet else "live" if console.is_terminal else "plain"
    overrides = RunOverrides(
        concurrency=concurrency, requests_per_s=requests_per_s, base_url=base_url
    )
    sim = SimulatorSettings(render_time_s=_render_range(sim_render_time)) if simulate else None
    settings = BatchSettings(overrides=overrides, simulate=sim)
    display = MultiDisplay(mode, console)

    def on_news(news: News) -> None:
        if mode == "json":
            display.guarded(
                lambda key, n: display.json_record(
                    str(n.path), {"type": "folder", "kind": n.kind, "message": n.message}
                ),
                "",
                news,
            )
            return
        detail = f" ({clean(news.message)})" if news.message else ""
        err.print(f"{news.kind}: {clean(str(news.path))}{detail}")

    async def main() -> tuple[list[BatchEnd], bool]:
        # the pool grows to the largest figures of the manifests found, unless given
        flow = SharedFlow(concurrency or 1, requests_per_s or 0.01, to_uptc_or_none(max_cost))
        flow.grow_slots, flow.grow_rate = concurrency is None, requests_per_s is None
        hot = HotFolder(
            folder,
            flow,
            replace(settings),
            display.observer_for,
            _loader(prices, rules),
            on_news,
            stable_s=stable_s,
        )
        remove = hot.batches.install_signals(hot.stop)
        try:
            return await hot.run(once=once), hot.interrupted
        finally:
            remove()

    if not once and mode != "json":
        err.print(f"watching {clean(str(folder))} for manifests (Ctrl-C stops)")
    with display:
        ends, interrupted = loops.run(main())
    if ends:
        render_summaries(
            ends, console, err, json_mode=mode == "json", exit_code=overall_exit_code(ends)
        )
    sys.exit(ExitCode.INTERRUPTED if interrupted else overall_exit_code(ends))


COMMANDS.append(watch_cmd)
