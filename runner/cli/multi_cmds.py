"""``pixrun run a.yaml b.yaml ...`` (called by ``run``) and ``pixrun watch DIR``:
parse, call runner.run.multi / runner.run.watch, print, exit.

Exit codes of several manifests: 130 when interrupted, else the highest of theirs
(an invalid manifest counts 2, and the others still run); 0 only when every manifest
was valid and finished clean.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from runner import loops
from runner.cli.consoles import make_console
from runner.cli.multi_progress import MultiDisplay, render_summaries
from runner.cli.notice import Notice, notify_options
from runner.cli.options import (
    callback_options,
    check_one_stdin,
    manifest_label,
    manifest_loader,
    manifest_location,
    max_cost_option,
    provider_settings,
    rules_option,
    sim_render_time_option,
)
from runner.cli.views import clean
from runner.errors import ExitCode, ManifestError, PixrunError, UsageError
from runner.model import Manifest

if TYPE_CHECKING:
    from runner.run.multi import BatchEnd, OnEnd
    from runner.run.preview import Confirm
    from runner.run.setup import RunOverrides, SimulatorSettings
    from runner.run.watch import News
    from runner.sample import SampleSpec

COMMANDS: list[click.Command] = []


def _teller(notice: Notice) -> OnEnd:
    """Tells of each manifest's end: its own run.notify, plus --notify/--on-finish."""

    async def tell(end: BatchEnd) -> None:
        try:
            one = notice.like(manifest_location(end.path))
            one.add(end.name or one.name, end.notify)
            await one.tell_end(end)
        except Exception as exc:  # never silent, never fatal: the run's outcome stands
            from runner.cli import err_console  # late: --no-color remakes it

            err_console.print(
                f"[yellow]warning:[/] {escape(clean(str(end.path)))}: its summary was not "
                f"sent ({escape(clean(type(exc).__name__ + ': ' + str(exc)))})"
            )

    return tell


def run_several(
    paths: list[Path],
    *,
    notice: Notice,
    sample: SampleSpec,
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
    """Validate every manifest, run the valid ones together, print; the exit code.
    Each manifest's end is told (``notice``) as soon as it comes."""
    from runner.run.multi import BatchEnd, BatchSettings, overall_exit_code, run_batches
    from runner.sample import unmatched

    err = make_console(stderr=True, soft_wrap=True)
    check_one_stdin(paths)
    load = manifest_loader(prices, rules)
    manifests: list[Manifest] = []
    ends: dict[int, BatchEnd] = {}
    for i, path in enumerate(paths):
        try:
            manifests.append(load(path))
        except ManifestError as exc:
            ends[i] = BatchEnd(path, error=exc, problems=tuple(exc.problems))
        except PixrunError as exc:
            ends[i] = BatchEnd(path, error=exc)
    refusal: UsageError | None = None
    if len({m.path.resolve() for m in manifests}) < len(manifests):
        refusal = UsageError("a manifest is given twice: give each once")
    missed = unmatched(sample, (s.shot_id for m in manifests for s in m.shots))
    if missed and manifests:
        refusal = UsageError(
            f"--only {missed[0]!r} matches no shot of any manifest given",
            hint="give a shot id or a glob over ids (e.g. 's0*')",
        )
    if refusal is None and simulate is None:
        # a missing key or a bad address: one error for the command, not one per manifest
        from runner.run.setup import real_config

        try:
            real_config(overrides)
        except UsageError as exc:
            refusal = exc
    if refusal is not None:
        # nothing runs: each manifest is told so, as one refused on its own would be
        refused = [BatchEnd(m.path, m.name, error=refusal, notify=m.run.notify) for m in manifests]
        told = [*ends.values(), *refused]

        async def tell_all() -> None:
            await asyncio.gather(*(_teller(notice)(end) for end in told))

        loops.run(tell_all())
        raise refusal
    for _, end in sorted(ends.items()):
        if mode != "json":
            err.print(
                Text.assemble(
                    ("skipped", "bold red"),
                    f": {clean(manifest_label(end.path))}: "
                    f"{clean(end.error.message if end.error else '')}"
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
        sample=sample if sample.active else None,
    )
    display = MultiDisplay(mode, console)

    tell = _teller(notice)

    async def main(valid: list[Manifest]) -> list[BatchEnd]:
        # the invalid ones are told at once, while the others run
        told = [asyncio.create_task(tell(ends[i])) for i in sorted(ends)]
        try:
            if not valid:
                return []
            return await run_batches(valid, settings, display.observer_for, on_end=tell)
        finally:
            await asyncio.gather(*told, return_exceptions=True)

    with display:
        ran = loops.run(main(manifests))
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
@sim_render_time_option
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
@max_cost_option("Cap over all the manifests' ledgers together (each keeps its run.budget_ptc).")
@click.option(
    "--stable-s",
    type=click.FloatRange(0.0, None),
    default=1.0,
    show_default=True,
    metavar="S",
    help="A dropped file counts once its size and time have not changed for this long.",
)
@provider_settings
@callback_options
@click.option(
    "--prices",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Price table JSON (default: the packaged 302.AI rule).",
)
@notify_options
@click.option("--quiet", "-q", is_flag=True, help="Print only what the folder does.")
@click.option("--json-logs", is_flag=True, help="One JSON object per event on stdout.")
@rules_option
def watch_cmd(
    folder: Path,
    once: bool,
    simulate: bool,
    sim_render_time: tuple[float, float],
    concurrency: int | None,
    requests_per_s: float | None,
    max_cost: Decimal | None,
    stable_s: float,
    base_url: str | None,
    provider_options: tuple[str, ...],
    callback_listen: str | None,
    callback_url: str | None,
    prices: Path | None,
    notify_urls: tuple[str, ...],
    on_finish: str | None,
    notify_backoff_s: float | None,
    notify_timeout_s: float | None,
    on_finish_timeout_s: float | None,
    quiet: bool,
    json_logs: bool,
    rules: Path | None,
) -> None:
    """Run every manifest dropped into FOLDER, together, until Ctrl-C.

    Finished manifests move to FOLDER/done/, invalid ones to FOLDER/rejected/ with
    NAME.errors.txt beside them. Ledgers live in FOLDER/ledgers/, so a restart resumes
    whatever was in flight and a manifest dropped again finds its ledger. Each
    manifest's end is told to its run.notify URLs and to --notify/--on-finish.
    """
    from runner.cli.options import provider_options as parse_provider_options
    from runner.money import to_uptc_or_none
    from runner.run.callbacks import callback_endpoint, check_can_listen
    from runner.run.context import SharedFlow
    from runner.run.multi import BatchSettings, overall_exit_code
    from runner.run.setup import RunOverrides, SimulatorSettings, real_config
    from runner.run.watch import HotFolder

    console = make_console()
    err = make_console(stderr=True, soft_wrap=True)
    notice = Notice(
        folder,
        notify_urls,
        on_finish,
        backoff_base_s=notify_backoff_s,
        total_timeout_s=notify_timeout_s,
        command_timeout_s=on_finish_timeout_s,
    )
    mode = "json" if json_logs else "quiet" if quiet else "live" if console.is_terminal else "plain"
    overrides = RunOverrides(
        concurrency=concurrency,
        requests_per_s=requests_per_s,
        base_url=base_url,
        provider_options=parse_provider_options(provider_options),
        callback_listen=callback_listen,
        callback_url=callback_url,
    )
    # what the command line gets wrong (no key, a bad base URL, provider setting or
    # callback address) is refused now: never blamed on each manifest dropped, which
    # would move them all to rejected/
    if callback_listen is not None or callback_url is not None:
        endpoint = callback_endpoint(
            callback_listen, callback_url, hint="add --callback-listen HOST:PORT"
        )
        if endpoint is not None:
            check_can_listen(endpoint)
    sim = SimulatorSettings(render_time_s=sim_render_time) if simulate else None
    if sim is None:
        # a missing key or a malformed address is the command's fault, not any manifest's:
        # exit 2 now, before a manifest dropped into the folder is rejected for it
        real_config(overrides)
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
            manifest_loader(prices, rules),
            on_news,
            stable_s=stable_s,
            on_end=_teller(notice),
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
