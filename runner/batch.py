"""One batch, end to end: ledger, money checks, provider (or simulator), scheduler.

This is the core that ``pixrun run`` calls, and the core of ``retry`` and ``resolve``.

Invariants:
- Nothing is sent before the manifest is valid, the ledger is locked, synced and
  recovered, the ledger is known to belong to this provider (a rehearsal's ledger never
  meets the real provider, nor the reverse), every output folder is proven writable with
  room for the videos to come, and the remaining plan fits the budget. Each refusal
  costs nothing.
- A rehearsal (``--simulate``) has its own ledger (``shots.sim.ledger.sqlite``) and
  output folder (``out/<name>.sim``) by default, and its simulator keeps its tasks in
  a state file beside that ledger, so a resumed rehearsal collects them.
- Done shots whose request changed are re-rendered (paid again) only when the person
  agreed (asked on a terminal) or said ``--rerender-changed``; otherwise they are held,
  said so, and the run ends with exit 1.
- The ledger is closed (every queued write committed) on every way out, including
  Ctrl-C and a refused key.
- A second Ctrl-C (or SIGTERM) ends the process at once with exit code 130; the ledger
  is consistent at every commit, so nothing is lost by that either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from runner.errors import (
    BudgetExceeded,
    ExitCode,
    LedgerError,
    RateLimited,
    TaskNotFound,
    TransientError,
    UsageError,
)
from runner.events import RunEvent, RunEventKind, RunObserver
from runner.ledger import META_PROVIDER, SIM_INFIX, Ledger, default_ledger_path, open_ledger
from runner.model import Manifest, ShotState
from runner.preflight import check_folders_writable, run_preflight
from runner.pricing import PriceTable, default_price_table
from runner.provider import Provider, ProviderConfig, TaskState
from runner.scheduler import RunResult, Scheduler, SchedulerOptions, StopReason
from runner.text import plural

#: the key the in-process simulator accepts (never a real key)
SIM_API_KEY = "pixrun-simulator-key"
#: a real render's typical time, the yardstick for scaling a rehearsal's clock
REAL_RENDER_S = 60.0
#: a ledger's first run with this many done shots whose videos are 64x64 (the
#: simulator's clips) and no recorded provider was a rehearsal (pixrun before 0.2)
SIM_CLIP_PX = 64


@dataclass(frozen=True)
class RunOverrides:
    """Command-line settings that win over the manifest's ``run`` section."""

    concurrency: int | None = None
    download_concurrency: int | None = None
    requests_per_s: float | None = None
    max_cost_ptc: Decimal | None = None
    poll_floor_s: float | None = None
    base_url: str | None = None
    #: first delay of the exponential back-off of retried calls
    backoff_base_s: float | None = None
    #: ProviderConfig fields (timeouts, paths, caps) for this run
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    #: how long a provider that never answered is given (tests on a fast clock)
    unreachable_grace_s: float | None = None
    #: how long a download that keeps failing is tried (tests on a fast clock)
    download_give_up_s: float | None = None


@dataclass(frozen=True)
class SimulatorSettings:
    """How ``--simulate`` renders: seconds per task (uniform between the two)."""

    render_time_s: tuple[float, float] = (1.0, 3.0)
    seed: int = 1


@dataclass
class BatchOutcome:
    result: RunResult
    ledger_path: Path
    output_dir: Path
    recovered_ambiguous: list[str]
    new_shots: int
    changed_shots: int
    simulated: bool = False
    #: done shots whose request changed and that were not re-rendered (exit 1)
    held_changed: tuple[str, ...] = ()
    #: shots whose file was already on disk and was adopted, nothing sent
    adopted: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunPreview:
    """What a run is about to spend, for the person to agree to (on a terminal)."""

    name: str
    simulated: bool
    #: shots the run will submit (and pay for), and what they cost (micro-PTC)
    to_submit: int
    to_submit_uptc: int
    #: of those, shots the price table cannot price (the budget cannot be checked)
    unpriced: int
    #: done shots whose request changed: re-rendering them pays again
    changed_done: tuple[str, ...]
    changed_done_uptc: int
    spent_uptc: int
    budget_uptc: int | None


@dataclass(frozen=True)
class Decision:
    """The person's answer to a :class:`RunPreview`."""

    go: bool
    #: re-render (and pay again for) the done shots whose request changed
    rerender_changed: bool


#: asks, on a terminal, whether to go ahead and whether to re-render changed done shots
Confirm = Callable[[RunPreview], Decision]


def ledger_path_for(manifest_path: Path, explicit: Path | None, *, simulated: bool = False) -> Path:
    if explicit is not None:
        return explicit
    return default_ledger_path(manifest_path, simulated=simulated)


def output_dir_for(output_dir: Path, *, simulated: bool) -> Path:
    """A rehearsal writes beside the real outputs, never into them: ``out/x.sim``."""
    return output_dir.with_name(output_dir.name + SIM_INFIX) if simulated else output_dir


def sim_state_path(ledger_path: Path) -> Path:
    """Where a rehearsal's in-process simulator keeps its tasks between runs."""
    return ledger_path.with_name(ledger_path.name + ".sim-state.jsonl")


def provider_identity(config: ProviderConfig | None) -> dict[str, Any]:
    """Who a ledger's work goes to: the simulator (any port) or a real base URL."""
    if config is None:
        return {"simulated": True, "base_url": None, "dialect": None}
    return {"simulated": False, "base_url": config.base_url, "dialect": None}


def scaled_for_simulator(
    options: SchedulerOptions, render_time_s: tuple[float, float]
) -> SchedulerOptions:
    """A rehearsal's clock: poll settings and time limits shrink with its render times
    (never grow), so a 3-shot rehearsal of 1 s renders does not wait 20 s."""
    factor = min(1.0, max(render_time_s[1], 0.05) / REAL_RENDER_S)
    poll = options.poll
    return replace(
        options,
        poll=replace(
            poll,
            initial_delay_s=poll.initial_delay_s * factor,
            min_interval_s=poll.min_interval_s * factor,
            max_interval_s=poll.max_interval_s * factor,
            timeout_s=max(poll.timeout_s * factor, 10 * render_time_s[1] + 10),
        ),
        stall_timeout_s=max(options.stall_timeout_s * factor, 10 * render_time_s[1] + 10),
        download_give_up_s=max(options.download_give_up_s * factor, 10.0),
        outage_timeout_s=max(options.outage_timeout_s * factor, 60.0),
        unreachable_grace_s=max(options.unreachable_grace_s * factor, 10.0),
    )


def _to_uptc(value: Decimal | None) -> int | None:
    return None if value is None else int(value * 1_000_000)


@contextlib.asynccontextmanager
async def _provider_for(
    overrides: RunOverrides,
    simulate: SimulatorSettings | None,
    config: ProviderConfig | None = None,
    ledger_path: Path | None = None,
) -> AsyncIterator[Provider]:
    """The provider a batch talks to: the real one (``config``, else from the
    environment), or an in-process simulator that keeps its tasks beside the rehearsal
    ledger (``ledger_path``), so a resumed rehearsal finds them."""
    if simulate is None:
        async with Provider(config or _real_config(overrides)) as provider:
            yield provider
        return
    # Imported only here: the simulator is a separate room the real path never enters.
    from runner.sim import SimConfig, Simulator

    sim = Simulator(
        SimConfig(
            api_key=SIM_API_KEY,
            render_time_s=simulate.render_time_s,
            seed=simulate.seed,
            state_path=None if ledger_path is None else sim_state_path(ledger_path),
        )
    )
    base_url = await sim.start()
    try:
        config = ProviderConfig(
            base_url=base_url, api_key=SIM_API_KEY, **dict(overrides.provider_options)
        )
        async with Provider(config) as provider:
            yield provider
    finally:
        await sim.stop()


def _install_signals(scheduler: Scheduler) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    hits = 0

    def on_signal() -> None:
        nonlocal hits
        hits += 1
        if hits > 1:
            os._exit(ExitCode.INTERRUPTED)  # the ledger is consistent at every commit
        scheduler.request_stop(StopReason.INTERRUPTED, "interrupted: stopping")

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove


async def run_batch(
    manifest: Manifest,
    observer: RunObserver,
    *,
    ledger_path: Path | None = None,
    overrides: RunOverrides | None = None,
    simulate: SimulatorSettings | None = None,
    handle_signals: bool = True,
    cpu: int | None = None,
    confirm: Confirm | None = None,
    rerender_changed: bool = False,
    switch_provider: bool = False,
    force: bool = False,
    check_space: bool = True,
) -> BatchOutcome:
    """Run (or resume) a batch. Raises the errors of :mod:`runner.errors`.

    ``confirm``: asks the person (a terminal) whether to go ahead; None never asks.
    Done shots whose request changed are re-rendered when ``confirm`` agreed or
    ``rerender_changed`` is set, and held otherwise. ``switch_provider`` lets a
    ledger move to another provider than the one it was created with. ``force``: take
    over a ledger that records another batch (:func:`check_ledger_owner`).
    ``cpu``: the one CPU the caller keeps this process's threads on, for the ledger's
    record (:func:`runner.placement.keep_to_one_cpu`); None when it does not.
    """
    overrides = overrides or RunOverrides()
    simulated = simulate is not None
    path = ledger_path_for(manifest.path, ledger_path, simulated=simulated)
    output_dir = output_dir_for(manifest.output.dir, simulated=simulated)
    options = _options(manifest, overrides, output_dir, simulate)
    # the provider's settings are checked before the ledger is touched: a missing key
    # or a malformed URL changes nothing
    config = None if simulate is not None else _real_config(overrides)
    identity = provider_identity(config)
    check_folders_writable([output_dir])
    created = not path.exists() or path.stat().st_size == 0
    ledger = await open_ledger(path, writer=True)
    try:
        async with ledger:
            await _check_identity(ledger, identity, switch_provider=switch_provider)
            moved = check_ledger_owner(await ledger.get_meta(), manifest, path, force=force)
            if moved is not None:
                observer.event(RunEvent(RunEventKind.INFO, f"warning: {moved}"))
            preview = await _preview(ledger, manifest, options.budget_uptc, simulated)
            changed_done = preview.changed_done
            _check_budget(preview, rerender=rerender_changed)
            decision = Decision(go=True, rerender_changed=rerender_changed)
            if confirm is not None:
                decision = confirm(preview)
            if not decision.go:
                raise Declined("declined: nothing was sent")
            rerender = decision.rerender_changed or rerender_changed
            _check_budget(preview, rerender=rerender)
            hold = frozenset() if rerender else frozenset(changed_done)
            await ledger.set_meta(
                {
                    "manifest": str(manifest.path),
                    "name": manifest.name,
                    "output_dir": str(output_dir),
                    META_PROVIDER: json.dumps(identity, sort_keys=True),
                }
            )
            sync = await ledger.sync_manifest(manifest.shots, hold=hold)
            planned_uptc = sum(_to_uptc(s.price_ptc) or 0 for s in manifest.shots)
            del manifest  # the ledger holds every shot now; keep memory flat at scale
            parked = await ledger.recover()
            checked = await run_preflight(
                ledger, output_dir, simulated=simulated, check_space=check_space
            )
            for shot_id in hold:
                observer.event(
                    RunEvent(
                        RunEventKind.CHANGED,
                        "its request changed since it was done: not re-rendered (run with "
                        "--rerender-changed to re-render it, charged)",
                        shot_id=shot_id,
                    )
                )
            async with _provider_for(overrides, simulate, config, path) as provider:
                await ledger.start_run(cpu=cpu)
                scheduler = Scheduler(ledger, provider, options, observer)
                remove = _install_signals(scheduler) if handle_signals else (lambda: None)
                try:
                    result = await scheduler.run(planned_uptc=planned_uptc)
                finally:
                    remove()
                if hold and result.exit_code == ExitCode.OK:
                    result.exit_code = ExitCode.SHOTS_FAILED
                with contextlib.suppress(LedgerError):
                    await ledger.end_run(
                        result.exit_code,
                        {
                            "counts": {k.value: v for k, v in result.counts.items()},
                            "spent_uptc": result.spent_uptc,
                            "elapsed_s": round(result.elapsed_s, 3),
                            "calls": result.calls,
                            "stop_reason": result.stop_reason,
                            "held_changed": len(hold),
                        },
                    )
    except Declined:
        if created:  # a question declined leaves no ledger behind
            _remove_ledger_files(path)
        raise
    return BatchOutcome(
        result=result,
        ledger_path=path,
        output_dir=output_dir,
        recovered_ambiguous=parked,
        new_shots=sync.new,
        changed_shots=len(sync.changed),
        simulated=simulated,
        held_changed=tuple(sorted(hold)),
        adopted=checked.adopted,
    )


def _options(
    manifest: Manifest,
    overrides: RunOverrides,
    output_dir: Path,
    simulate: SimulatorSettings | None,
) -> SchedulerOptions:
    settings = manifest.run
    poll = settings.poll
    if overrides.poll_floor_s is not None:
        poll = replace(poll, min_interval_s=overrides.poll_floor_s)
    budget = overrides.max_cost_ptc if overrides.max_cost_ptc is not None else settings.budget_ptc
    table = manifest_price_table(manifest)
    options = SchedulerOptions(
        output_dir=output_dir,
        concurrency=overrides.concurrency or settings.concurrency,
        download_concurrency=overrides.download_concurrency or settings.download_concurrency,
        requests_per_s=overrides.requests_per_s or settings.requests_per_s,
        poll=poll,
        budget_uptc=_to_uptc(budget),
        sidecar=manifest.output.sidecar,
        upload_price_uptc=_to_uptc(table.upload_ptc) or 0,
        stall_timeout_s=settings.stall_timeout_s,
        outage_timeout_s=settings.outage_timeout_s,
    )
    if simulate is not None:
        options = scaled_for_simulator(options, simulate.render_time_s)
    if overrides.backoff_base_s is not None:
        options = replace(options, backoff_base_s=overrides.backoff_base_s)
    if overrides.unreachable_grace_s is not None:
        options = replace(options, unreachable_grace_s=overrides.unreachable_grace_s)
    if overrides.download_give_up_s is not None:
        options = replace(options, download_give_up_s=overrides.download_give_up_s)
    return options


def manifest_price_table(manifest: Manifest) -> PriceTable:
    table = manifest.price_table
    return table if isinstance(table, PriceTable) else default_price_table()


def _real_config(overrides: RunOverrides) -> ProviderConfig:
    return ProviderConfig.from_env(base_url=overrides.base_url, **dict(overrides.provider_options))


class Declined(UsageError):
    """The person said no at the confirmation: nothing was sent (exit 1, as an abort)."""

    exit_code = ExitCode.SHOTS_FAILED


def _remove_ledger_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        with contextlib.suppress(OSError):
            path.with_name(path.name + suffix).unlink()


async def _check_identity(
    ledger: Ledger, identity: dict[str, Any], *, switch_provider: bool
) -> None:
    """A ledger's work goes to one provider: a rehearsal's never meets the real one."""
    meta = await ledger.get_meta()
    raw = meta.get(META_PROVIDER)
    if raw is None:
        if meta.get("name") is None:
            return  # a new ledger: this run's provider becomes its own
        recorded = {"simulated": await ledger.looks_simulated(SIM_CLIP_PX), "base_url": None}
        if not recorded["simulated"]:
            return  # an earlier pixrun's real ledger: it stays with this provider
    else:
        try:
            recorded = json.loads(raw)
        except ValueError:
            recorded = {}
    same = bool(recorded.get("simulated")) == identity["simulated"] and (
        identity["simulated"] or recorded.get("base_url") in (None, identity["base_url"])
    )
    if same or switch_provider:
        return
    if recorded.get("simulated"):
        raise UsageError(
            f"the ledger {ledger.path} holds a rehearsal (--simulate): its shots were "
            "rendered by the simulator, and running it against the real provider would "
            "deliver the simulator's clips or pay twice",
            hint="resume the rehearsal with --simulate; a real run uses its own ledger "
            "(drop --ledger), or --switch-provider to take this ledger over on purpose",
        )
    if identity["simulated"]:
        raise UsageError(
            f"the ledger {ledger.path} holds real work (sent to {recorded.get('base_url')}); "
            "a rehearsal must not write into it",
            hint="drop --ledger: --simulate uses its own ledger (NAME.sim.ledger.sqlite)",
        )
    raise UsageError(
        f"the ledger {ledger.path} holds work sent to {recorded.get('base_url')}, not to "
        f"{identity['base_url']}: that provider does not know its tasks",
        hint="use the same --base-url / PIXRUN_BASE_URL, another ledger, or "
        "--switch-provider (tasks in flight at the old provider will be parked)",
    )


async def _preview(
    ledger: Ledger, manifest: Manifest, budget_uptc: int | None, simulated: bool
) -> RunPreview:
    """What syncing the manifest and running would submit, before anything is written."""
    known = await ledger.known_shots()
    to_submit = to_submit_uptc = unpriced = 0
    changed_done: list[str] = []
    changed_done_uptc = 0
    for shot in manifest.shots:
        price = _to_uptc(shot.price_ptc)
        entry = known.get(shot.shot_id)
        if entry is None:
            submits = True
        else:
            state, digest, rerolled_from = entry
            same = shot.request_hash in (digest, rerolled_from)
            if not same and state == ShotState.DONE:
                changed_done.append(shot.shot_id)
                changed_done_uptc += price or 0
                continue
            if same:
                submits = state in (ShotState.PENDING, ShotState.ABANDONED)
            else:
                submits = not (state.at_provider or state == ShotState.SUBMITTING)
        if submits:
            to_submit += 1
            to_submit_uptc += price or 0
            unpriced += price is None
    return RunPreview(
        name=manifest.name,
        simulated=simulated,
        to_submit=to_submit,
        to_submit_uptc=to_submit_uptc,
        unpriced=unpriced,
        changed_done=tuple(changed_done),
        changed_done_uptc=changed_done_uptc,
        spent_uptc=await ledger.spent_uptc(),
        budget_uptc=budget_uptc,
    )


def _check_budget(preview: RunPreview, *, rerender: bool) -> None:
    budget_uptc = preview.budget_uptc
    if budget_uptc is None:
        return
    if preview.unpriced:
        raise BudgetExceeded(
            f"{plural(preview.unpriced, 'shot')} to submit "
            f"{'has' if preview.unpriced == 1 else 'have'} no published price, so the budget "
            "cannot be checked",
            hint="add their price to the price table, or drop the budget "
            "(run.budget_ptc / --max-cost)",
        )
    spent = preview.spent_uptc
    remaining = preview.to_submit_uptc + (preview.changed_done_uptc if rerender else 0)
    count = preview.to_submit + (len(preview.changed_done) if rerender else 0)
    if spent + remaining > budget_uptc:
        raise BudgetExceeded(
            f"the plan does not fit the budget: {spent / 1e6:g} PTC spent + "
            f"{remaining / 1e6:g} PTC for {plural(count, 'shot')} to submit = "
            f"{(spent + remaining) / 1e6:g} PTC > cap {budget_uptc / 1e6:g} PTC",
            hint="raise the cap (run.budget_ptc or --max-cost) or remove shots",
        )


# -- retry and resolve --------------------------------------------------------------

#: a re-roll's seeds are drawn from the range PixVerse accepts
SEED_MAX = 2_147_483_647
#: what a re-roll may start from: a finished shot, never one that may be at the provider
_REROLLABLE = (ShotState.DONE, ShotState.FAILED, ShotState.MODERATED)


@dataclass(frozen=True)
class Reroll:
    """A shot re-rolled by ``pixrun retry --new-seed``."""

    shot_id: str
    seed: int
    version: int
    #: what its re-render costs; None when the price is not published
    price_uptc: int | None


async def requeue_shots(
    ledger_path: Path,
    *,
    failed: bool,
    ambiguous: bool,
    shot_ids: list[str],
    extra_attempts: int,
    moderated: bool = False,
) -> tuple[int, int]:
    """Re-queue shots. Returns ``(moved, of which ambiguous)``."""
    async with await open_ledger(ledger_path, writer=True) as ledger:
        chosen: list[str] = list(shot_ids)
        if failed:
            chosen += await ledger.shot_ids_in([ShotState.FAILED])
        if moderated:
            chosen += await ledger.shot_ids_in([ShotState.MODERATED])
        if ambiguous:
            chosen += await ledger.shot_ids_in([ShotState.AMBIGUOUS])
        for sid in shot_ids:
            if await ledger.get_shot(sid) is None:
                raise UsageError(f"no shot {sid!r} in the ledger {ledger_path}")
        parked = set(await ledger.shot_ids_in([ShotState.AMBIGUOUS]))
        unique = list(dict.fromkeys(chosen))
        moved = await ledger.requeue(
            unique, "re-queued by pixrun retry", extra_attempts=extra_attempts
        )
        return moved, sum(1 for s in unique if s in parked)


async def reroll_shots(ledger_path: Path, shot_ids: list[str]) -> list[Reroll]:
    """Give each shot a fresh random seed as a new version (the old file is kept);
    the next ``pixrun run`` renders it. All are checked before any is changed."""
    async with await open_ledger(ledger_path, writer=True) as ledger:
        rows = []
        for sid in dict.fromkeys(shot_ids):
            row = await ledger.get_shot(sid)
            if row is None:
                raise UsageError(f"no shot {sid!r} in the ledger {ledger_path}")
            if row.state not in _REROLLABLE:
                raise UsageError(
                    f"shot {sid} is {row.state.value}; only a done, failed or moderated shot "
                    "can be re-rolled",
                    hint="let 'pixrun run' finish it first (a parked shot: 'pixrun resolve' "
                    "or 'pixrun retry --ambiguous')",
                )
            if not await ledger.in_manifest(sid):
                raise UsageError(
                    f"shot {sid} is no longer in the manifest, so no run would render it",
                    hint="put it back in the manifest, then re-roll it",
                )
            rows.append(row)
        made = []
        for row in rows:
            seed = secrets.randbelow(SEED_MAX + 1)
            version = await ledger.reroll(row.shot_id, seed)
            made.append(Reroll(row.shot_id, seed, version, row.price_uptc))
        return made


async def resolve_shot(
    ledger_path: Path,
    shot_id: str,
    task_id: str,
    overrides: RunOverrides | None = None,
    *,
    simulate: SimulatorSettings | None = None,
) -> None:
    """Tie a shot to a task found on the provider's side, once the task is verified:
    no other shot of the ledger has it, the provider knows it (one free fetch), and
    what the answer says of its prompt and seed matches the shot's request."""
    task_id = task_id.strip()
    if not task_id:
        raise UsageError("the task id is empty")
    async with await open_ledger(ledger_path, writer=True) as ledger:
        row = await ledger.get_shot(shot_id)
        if row is None:
            raise UsageError(f"no shot {shot_id!r} in the ledger {ledger_path}")
        if row.state not in (ShotState.AMBIGUOUS, ShotState.PENDING, ShotState.FAILED):
            raise UsageError(
                f"shot {shot_id} is {row.state.value}; only a parked (ambiguous), pending or "
                "failed shot can be tied to a task id"
            )
        owner = await ledger.task_owner(task_id)
        if owner is not None and owner != shot_id:
            raise UsageError(
                f"task {task_id} already belongs to shot {owner} in this ledger",
                hint="check the task id: each task renders one shot",
            )
        # a rehearsal's tasks live in its simulator's state file beside the ledger
        async with _provider_for(
            overrides or RunOverrides(), simulate, None, ledger_path
        ) as provider:
            state = await _fetch_for_resolve(provider, task_id)
        mismatch = _request_mismatch(row.request, state)
        if mismatch:
            raise UsageError(
                f"task {task_id} is not shot {shot_id}'s: its {mismatch}; nothing was written",
                hint="find the task whose prompt and seed are this shot's",
            )
        await ledger.resolve(shot_id, task_id)


async def _fetch_for_resolve(provider: Provider, task_id: str) -> TaskState:
    try:
        state = await provider.fetch(task_id)
    except TaskNotFound as exc:
        raise UsageError(
            f"the provider does not know task {task_id}; nothing was written",
            hint="check the task id on the provider's side",
        ) from exc
    except (TransientError, RateLimited) as exc:
        raise UsageError(
            f"cannot check task {task_id} with the provider ({exc}); nothing was written",
            hint="try again once the provider answers",
        ) from exc
    if state.task_id != task_id:
        raise UsageError(
            f"asked about task {task_id}, the provider answered about task "
            f"{state.task_id}; nothing was written",
            hint="check the task id, and the fetch route (--provider-option fetch_path=...)",
        )
    return state


def _request_mismatch(request: Mapping[str, Any], state: TaskState) -> str | None:
    """What in the fetch answer contradicts the shot's request (None: nothing known
    does). Only what the answer carries is compared; a seed only if the request set one."""
    prompt = request.get("prompt")
    if state.prompt is not None and state.prompt != prompt:
        return f"prompt is {state.prompt!r}, the shot's is {prompt!r}"
    seed = request.get("seed")
    if isinstance(seed, int) and state.seed is not None and state.seed != seed:
        return f"seed is {state.seed}, the shot's is {seed}"
    return None


# -- whose ledger -----------------------------------------------------------------------


def check_ledger_owner(
    meta: Mapping[str, str], manifest: Manifest, ledger_path: Path, *, force: bool
) -> str | None:
    """Refuse a ledger that records another batch (its ``meta`` names another manifest
    name) unless ``force``; returns a warning when only the manifest's path moved."""
    name, where = meta.get("name"), meta.get("manifest")
    if name is not None and name != manifest.name and not force:
        raise UsageError(
            f"the ledger {ledger_path} belongs to the batch {name!r} ({where}), not to "
            f"{manifest.name!r} ({manifest.path})",
            hint="point --ledger at this batch's own ledger (or leave it out), or pass "
            "--force to take this ledger over for this manifest",
        )
    if name == manifest.name and where and Path(where).resolve() != manifest.path.resolve():
        return (
            f"the ledger {ledger_path} was last used with the manifest at {where}; "
            f"continuing with {manifest.path} (same batch name {name!r})"
        )
    return None
