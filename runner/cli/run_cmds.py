"""``pixrun run``, ``pixrun retry`` and ``pixrun resolve``: parse, call runner.run.batch, exit.

Size: about 530 lines, most of them option declarations of three commands that share
the provider settings; the work is in runner/run/.
"""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

# runner.run.batch (and with it aiohttp) is imported inside the commands that need it,
# so that `pixrun status` and friends start fast.
from runner import loops
from runner.cli.consoles import make_console
from runner.cli.notice import Notice, notify_options
from runner.cli.options import (
    callback_options,
    existing_ledger,
    format_option,
    ledger_option,
    manifest_loader,
    manifest_location,
    max_cost_option,
    option_table,
    optional_manifest_argument,
    provider_settings,
    rerun_command,
    rules_option,
    sample_options,
    sim_render_time_option,
    simulate_option,
)
from runner.cli.options import provider_options as _provider_options
from runner.cli.views import json_text
from runner.errors import ExitCode, UsageError
from runner.money import format_ptc
from runner.placement import keep_to_one_cpu
from runner.text import plural

if TYPE_CHECKING:
    from runner.run.preview import Decision, RunPreview

COMMANDS: list[click.Command] = []


def _ask(preview: RunPreview) -> Decision:
    """The questions a run asks on a terminal, with what they cost."""
    from runner.run.preview import Decision

    rerender = False
    if preview.changed_done:
        n = len(preview.changed_done)
        shown = ", ".join(preview.changed_done[:5]) + (" ..." if n > 5 else "")
        rerender = click.confirm(
            f"{plural(n, 'done shot')} changed since rendered ({shown}); "
            f"re-render them for {format_ptc(preview.changed_done_uptc)} PTC "
            "(the old files are kept as .v1)?",
            default=False,
        )
    count = preview.to_submit + (len(preview.changed_done) if rerender else 0)
    cost = preview.to_submit_uptc + (preview.changed_done_uptc if rerender else 0)
    where = " with the simulator (nothing is spent)" if preview.simulated else ""
    if preview.sample:
        click.echo(preview.sample)
    go = click.confirm(
        f"Submit {plural(count, 'shot')} of {preview.name!r} for {format_ptc(cost)} PTC{where}?",
        default=True,
    )
    return Decision(go=go, rerender_changed=rerender)


@click.command("run")
@click.argument(
    "manifests", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False)
)
@ledger_option
@click.option(
    "--simulate",
    is_flag=True,
    help="Rehearse against the built-in simulator on 127.0.0.1: nothing is spent. A "
    "rehearsal has its own ledger (NAME.sim.ledger.sqlite) and output folder (out/NAME.sim).",
)
@sim_render_time_option
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    help="Tasks in flight at the provider (overrides run.concurrency).",
)
@click.option(
    "--download-concurrency",
    type=click.IntRange(1, 1000),
    help="Downloads at once (overrides run.download_concurrency).",
)
@click.option(
    "--rate",
    "requests_per_s",
    type=click.FloatRange(0.01, None),
    help="Provider calls per second (overrides run.requests_per_s).",
)
@max_cost_option("Cost cap in PTC (overrides run.budget_ptc).")
@click.option(
    "--prices",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Price table JSON (default: the packaged 302.AI rule).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.0, None),
    metavar="S",
    help="Floor between two polls of a task (overrides run.poll.min_interval_s).",
)
@provider_settings
@option_table(
    {
        "--backoff-base-s": "First delay of retried calls (tests and benchmarks on a fast clock).",
        "--unreachable-grace-s": "How long a provider that never answered is given (tests on a "
        "fast clock).",
        "--download-give-up-s": "How long a download that keeps failing is tried (tests on a "
        "fast clock).",
    },
    type=click.FloatRange(0.0, None),
    hidden=True,
)
@click.option(
    "--pin-cpu",
    "--one-cpu",
    "pin_cpu",
    is_flag=True,
    help="Keep the run's threads on the CPU it starts on (off by default: the OS places "
    "them). On a busy machine it can save CPU per shot; see runner/placement.py.",
)
@click.option(
    "--all-cpus",
    is_flag=True,
    hidden=True,
    help="Deprecated, does nothing: leaving placement to the OS is now the default.",
)
@option_table(
    {
        "--rerender-changed": "Re-render (and pay again for) done shots whose request changed "
        "since they were done. Without it, and without a terminal to ask on, they are held and "
        "the run exits 1.",
        "--skip-space-check": "Do not refuse a run whose output disk looks too small for the "
        "videos to come (the estimate is low on purpose; use this when your videos are smaller "
        "still).",
        "--switch-provider": "Let this ledger move to another provider than the one it was made "
        "with (tasks in flight at the old one are parked if the new one does not know them).",
        "--force": "Use the --ledger given even though it records another batch (another "
        "manifest name): the ledger is taken over for this manifest.",
    },
    is_flag=True,
)
@callback_options
@notify_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final summary.")
@click.option("--json-logs", is_flag=True, help="One JSON object per event on stdout.")
@rules_option
@sample_options("Submit only")
def run_cmd(
    manifests: tuple[Path, ...],
    ledger: Path | None,
    simulate: bool,
    sim_render_time: tuple[float, float],
    concurrency: int | None,
    download_concurrency: int | None,
    requests_per_s: float | None,
    max_cost: Decimal | None,
    prices: Path | None,
    poll_interval: float | None,
    base_url: str | None,
    provider_options: tuple[str, ...],
    backoff_base_s: float | None,
    unreachable_grace_s: float | None,
    download_give_up_s: float | None,
    pin_cpu: bool,
    all_cpus: bool,
    rerender_changed: bool,
    skip_space_check: bool,
    switch_provider: bool,
    force: bool,
    callback_listen: str | None,
    callback_url: str | None,
    notify_urls: tuple[str, ...],
    on_finish: str | None,
    notify_backoff_s: float | None,
    notify_timeout_s: float | None,
    on_finish_timeout_s: float | None,
    yes: bool,
    quiet: bool,
    json_logs: bool,
    rules: Path | None,
    only: tuple[str, ...],
    limit: int | None,
) -> None:
    """Run (or resume) the batch of MANIFEST: submit, poll, download, record everything.

    A rerun resumes: done shots are skipped, tasks at the provider are collected, and
    nothing that may have been charged is sent again. --only/--limit render a sample
    first; the rest stays pending for a later run. '-' reads the manifest from standard
    input (piped in, nothing is asked: stdin is the manifest).

    Several manifests run together on one account: they share its in-flight slots
    and request rate (run.priority higher first, then in the order given), each with
    its own ledger, outputs, budget and notifications; --max-cost is then the cap over
    all of them, and --limit N takes the first N pending shots of each.
    """
    from runner.cli.progress import make_observer, render_summary
    from runner.run.batch import run_batch
    from runner.run.setup import RunOverrides, SimulatorSettings
    from runner.sample import SampleSpec

    # told when the run ends, whichever way it ends (runner/cli/notice.py)
    notice = Notice(
        manifest_location(manifests[0]) if len(manifests) == 1 else Path(),
        notify_urls,
        on_finish,
        backoff_base_s=notify_backoff_s,
        total_timeout_s=notify_timeout_s,
        command_timeout_s=on_finish_timeout_s,
    )
    console = make_console()
    # asked only on a terminal; the core asks after the budget check, before any write
    confirm = _ask if sys.stdin.isatty() and not yes and not json_logs else None
    mode = "json" if json_logs else "quiet" if quiet else "live" if console.is_terminal else "plain"
    overrides = RunOverrides(
        concurrency=concurrency,
        download_concurrency=download_concurrency,
        requests_per_s=requests_per_s,
        max_cost_ptc=max_cost,
        poll_floor_s=poll_interval,
        base_url=base_url,
        backoff_base_s=backoff_base_s,
        provider_options=_provider_options(provider_options),
        unreachable_grace_s=unreachable_grace_s,
        download_give_up_s=download_give_up_s,
        callback_listen=callback_listen,
        callback_url=callback_url,
    )
    sim = SimulatorSettings(render_time_s=sim_render_time) if simulate else None
    # opt-in, before the run starts its threads (they inherit it); see runner.placement.
    # --all-cpus (the old opt-out) is the default now and kept only for old scripts.
    del all_cpus
    cpu = keep_to_one_cpu() if pin_cpu else None
    if len(manifests) > 1:
        from runner.cli.multi_cmds import run_several

        if ledger is not None or force or switch_provider:
            raise UsageError(
                "--ledger, --force and --switch-provider name one batch's ledger: "
                "use them with one manifest"
            )
        code = run_several(
            list(manifests),
            notice=notice,
            sample=SampleSpec(only=only, limit=limit, each_may_miss=True),
            overrides=overrides,
            simulate=sim,
            confirm=confirm,
            mode=mode,
            console=console,
            prices=prices,
            rules=rules,
            rerender_changed=rerender_changed,
            check_space=not skip_space_check,
            cpu=cpu,
        )
        sys.exit(code)
    manifest = manifests[0]
    with notice.on_error():
        loaded = manifest_loader(prices, rules)(manifest)
    notice.add(loaded.name, loaded.run.notify)
    observer = make_observer(mode, console, title=f"pixrun run · {loaded.name}")
    batch = run_batch(
        loaded,
        observer,
        ledger_path=ledger,
        overrides=overrides,
        simulate=sim,
        cpu=cpu,
        confirm=confirm,
        rerender_changed=rerender_changed,
        switch_provider=switch_provider,
        check_space=not skip_space_check,
        force=force,
        sample=SampleSpec(only=only, limit=limit),
    )
    # the run keeps the shots in the ledger, not in memory: drop our reference so the
    # manifest can be freed once it is synced (flat memory at 100,000 shots)
    del loaded
    with notice.on_error(), observer:
        outcome = loops.run(batch)
    # with --json-logs the summary is the last JSON line, so a log pipeline sees the end
    render_summary(outcome, console, manifest=manifest, mode="json" if json_logs else "text")
    notice.send_outcome(outcome)
    sys.exit(outcome.result.exit_code)


@click.command("retry")
@optional_manifest_argument
@ledger_option
@simulate_option
@click.option("--failed", is_flag=True, help="Re-queue every failed shot.")
@click.option(
    "--moderated",
    is_flag=True,
    help="Re-queue every shot refused by moderation (edit its prompt first, or it is "
    "likely refused again).",
)
@click.option(
    "--ambiguous",
    is_flag=True,
    help="Re-queue parked shots (their request may already have been charged).",
)
@click.option("--shot", "shots", multiple=True, metavar="ID", help="Re-queue this shot.")
@click.option(
    "--new-seed",
    is_flag=True,
    help="With --shot: render the shot again with a fresh random seed, as a new version "
    "(a done shot's file is kept as NAME.v1.mp4). Costs a new render.",
)
@click.option(
    "--attempts",
    default=3,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Render attempts granted to each re-queued failed shot.",
)
@format_option(
    "text",
    "json",
    help_text="json: one object on stdout (action, ledger, simulated, counts or the "
    "re-rolled shots, next); warnings still go to stderr.",
)
def retry_cmd(
    manifest: Path | None,
    ledger: Path | None,
    failed: bool,
    moderated: bool,
    ambiguous: bool,
    shots: tuple[str, ...],
    new_seed: bool,
    attempts: int,
    simulate: bool,
    fmt: str,
) -> None:
    """Re-queue failed, moderated, parked or named shots for the next `pixrun run`,
    or re-roll named shots with a fresh seed (--new-seed)."""
    path = existing_ledger(manifest, ledger, simulated=simulate)
    again = rerun_command(manifest, path, simulated=simulate)
    if new_seed:
        if not shots or failed or moderated or ambiguous:
            raise UsageError(
                "--new-seed re-rolls the shots named with --shot ID, and only those",
                hint="pixrun retry --shot ID --new-seed",
            )
        _reroll(path, list(shots), fmt=fmt, simulate=simulate, again=again)
        return
    if not (failed or moderated or ambiguous or shots):
        raise UsageError("say what to re-queue: --failed, --moderated, --ambiguous or --shot ID")
    from runner.run.commands import requeue_shots

    moved, parked = asyncio.run(
        requeue_shots(
            path,
            failed=failed,
            moderated=moderated,
            ambiguous=ambiguous,
            shot_ids=list(shots),
            extra_attempts=attempts,
        )
    )
    out = make_console(stderr=True)
    if parked:
        out.print(
            f"[yellow]warning:[/] {plural(parked, 're-queued shot')} "
            f"{'was' if parked == 1 else 'were'} parked as ambiguous: their "
            "earlier request may have been accepted and charged, so a rerun may pay twice. "
            "The same Ai-trace-id is sent again, so a provider that deduplicates on it "
            "will not charge twice. If you find the task on the provider's side, use "
            "'pixrun resolve SHOT --task-id ID' instead."
        )
    if fmt == "json":
        _echo_json(
            {
                "action": "requeue",
                "ledger": str(path),
                "simulated": simulate,
                "requeued": moved,
                "parked_requeued": parked,
                "next": again,
            }
        )
        return
    click.echo(
        f"re-queued {plural(moved, 'shot')}; run '{again}' to submit "
        f"{'it' if moved == 1 else 'them'}"
    )


def _echo_json(data: dict[str, Any]) -> None:
    """``--format json`` of retry and resolve: one document, scrubbed as all JSON output."""
    click.echo(json_text(data, indent=2, ensure_ascii=False))


def _reroll(path: Path, shots: list[str], *, fmt: str, simulate: bool, again: str) -> None:
    from runner.run.commands import reroll_shots

    made = asyncio.run(reroll_shots(path, shots))
    total_uptc = sum(r.price_uptc for r in made if r.price_uptc is not None)
    unpriced = sum(1 for r in made if r.price_uptc is None)
    if fmt == "json":
        _echo_json(
            {
                "action": "reroll",
                "ledger": str(path),
                "simulated": simulate,
                "rerolled": [
                    {
                        "shot_id": r.shot_id,
                        "seed": r.seed,
                        "version": r.version,
                        "price_uptc": r.price_uptc,
                        "price_ptc": None if r.price_uptc is None else format_ptc(r.price_uptc),
                    }
                    for r in made
                ],
                "total_uptc": total_uptc,
                "total_ptc": format_ptc(total_uptc),
                "unpriced": unpriced,
                "next": again,
            }
        )
        return
    for r in made:
        cost = "an unpublished price" if r.price_uptc is None else f"{format_ptc(r.price_uptc)} PTC"
        click.echo(f"{r.shot_id}: new seed {r.seed}, version {r.version}; re-render costs {cost}")
    total = f"{format_ptc(total_uptc)} PTC"
    if unpriced:
        total += f" plus {plural(unpriced, 'shot')} at an unpublished price"
    click.echo(
        f"re-rolled {plural(len(made), 'shot')} for {total}; run '{again}' to render them "
        "(the current files are kept as older versions)"
    )


@click.command("resolve")
@click.argument("shot_id")
@optional_manifest_argument
@click.option("--task-id", required=True, help="The provider's task id for this shot.")
@ledger_option
@simulate_option
@provider_settings
@format_option(
    "text",
    "json",
    help_text="json: one object on stdout (shot_id, task_id, ledger, simulated, next).",
)
def resolve_cmd(
    shot_id: str,
    manifest: Path | None,
    task_id: str,
    ledger: Path | None,
    simulate: bool,
    base_url: str | None,
    provider_options: tuple[str, ...],
    fmt: str,
) -> None:
    """Tie a parked shot to a task id found on the provider's side (no new charge).

    The task is checked first with one free fetch: it must exist, belong to no other
    shot of the ledger, and its prompt (and seed, when the shot sets one) must be the
    shot's, as far as the provider's answer tells. The key comes from PIXRUN_API_KEY.
    """
    from runner.run.commands import resolve_shot
    from runner.run.setup import RunOverrides, SimulatorSettings

    path = existing_ledger(manifest, ledger, simulated=simulate)
    overrides = RunOverrides(
        base_url=base_url, provider_options=_provider_options(provider_options)
    )
    sim = SimulatorSettings() if simulate else None
    asyncio.run(resolve_shot(path, shot_id, task_id, overrides, simulate=sim))
    again = rerun_command(manifest, path, simulated=simulate)
    if fmt == "json":
        _echo_json(
            {
                "shot_id": shot_id,
                "task_id": task_id.strip(),
                "ledger": str(path),
                "simulated": simulate,
                "next": again,
            }
        )
    else:
        click.echo(f"shot {shot_id} now follows task {task_id.strip()}; '{again}' collects it")
    sys.exit(ExitCode.OK)


COMMANDS.extend([run_cmd, retry_cmd, resolve_cmd])
