"""One batch, end to end: ledger, money checks, provider (or simulator), scheduler.

This is the core that ``pixrun run`` calls, and the core of ``retry`` and ``resolve``.

Invariants:
- Nothing is sent before the manifest is valid, the ledger is locked, synced and
  recovered, and the remaining plan fits the budget.
- The ledger is closed (every queued write committed) on every way out, including
  Ctrl-C and a refused key.
- A second Ctrl-C (or SIGTERM) ends the process at once with exit code 130; the ledger
  is consistent at every commit, so nothing is lost by that either.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from runner.ledger import Ledger, default_ledger_path, open_ledger
from runner.model import Manifest, ShotState
from runner.provider import Provider, ProviderConfig, TaskState
from runner.scheduler import RunResult, Scheduler, SchedulerOptions, StopReason

#: the key the in-process simulator accepts (never a real key)
SIM_API_KEY = "pixrun-simulator-key"


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


def ledger_path_for(manifest_path: Path, explicit: Path | None) -> Path:
    return explicit if explicit is not None else default_ledger_path(manifest_path)


def _to_uptc(value: Decimal | None) -> int | None:
    return None if value is None else int(value * 1_000_000)


@contextlib.asynccontextmanager
async def _provider_for(
    overrides: RunOverrides, simulate: SimulatorSettings | None
) -> AsyncIterator[Provider]:
    if simulate is None:
        config = ProviderConfig.from_env(
            base_url=overrides.base_url, **dict(overrides.provider_options)
        )
        async with Provider(config) as provider:
            yield provider
        return
    # Imported only here: the simulator is a separate room the real path never enters.
    from runner.sim import SimConfig, Simulator

    sim = Simulator(
        SimConfig(api_key=SIM_API_KEY, render_time_s=simulate.render_time_s, seed=simulate.seed)
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
    force: bool = False,
) -> BatchOutcome:
    """Run (or resume) a batch. Raises the errors of :mod:`runner.errors`.

    ``force``: take over a ledger that records another batch (:func:`check_ledger_owner`).

    ``cpu``: the one CPU the caller keeps this process's threads on, for the ledger's
    record (:func:`runner.placement.keep_to_one_cpu`); None when it does not.
    """
    overrides = overrides or RunOverrides()
    path = ledger_path_for(manifest.path, ledger_path)
    settings = manifest.run
    poll = settings.poll
    if overrides.poll_floor_s is not None:
        poll = replace(poll, min_interval_s=overrides.poll_floor_s)
    budget = overrides.max_cost_ptc if overrides.max_cost_ptc is not None else settings.budget_ptc
    options = SchedulerOptions(
        output_dir=manifest.output.dir,
        concurrency=overrides.concurrency or settings.concurrency,
        download_concurrency=overrides.download_concurrency or settings.download_concurrency,
        requests_per_s=overrides.requests_per_s or settings.requests_per_s,
        poll=poll,
        budget_uptc=_to_uptc(budget),
        sidecar=manifest.output.sidecar,
    )
    if overrides.backoff_base_s is not None:
        options = replace(options, backoff_base_s=overrides.backoff_base_s)
    if simulate is None and not os.environ.get("PIXRUN_API_KEY"):
        # checked before the ledger is touched, so a missing key changes nothing
        ProviderConfig.from_env(base_url=overrides.base_url)
    try:
        manifest.output.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the output folder {manifest.output.dir}: {exc.strerror}"
        ) from exc
    ledger = await open_ledger(path, writer=True)
    async with ledger:
        moved = check_ledger_owner(await ledger.get_meta(), manifest, path, force=force)
        if moved is not None:
            observer.event(RunEvent(RunEventKind.INFO, f"warning: {moved}"))
        await ledger.set_meta(
            {
                "manifest": str(manifest.path),
                "name": manifest.name,
                "output_dir": str(manifest.output.dir),
            }
        )
        sync = await ledger.sync_manifest(manifest.shots)
        planned_uptc = sum(_to_uptc(s.price_ptc) or 0 for s in manifest.shots)
        del manifest  # the ledger holds every shot now; keep memory flat at scale
        parked = await ledger.recover()
        await _check_budget(ledger, options.budget_uptc)
        async with _provider_for(overrides, simulate) as provider:
            await ledger.start_run(cpu=cpu)
            scheduler = Scheduler(ledger, provider, options, observer)
            remove = _install_signals(scheduler) if handle_signals else (lambda: None)
            try:
                result = await scheduler.run(planned_uptc=planned_uptc)
            finally:
                remove()
            with contextlib.suppress(LedgerError):
                await ledger.end_run(
                    result.exit_code,
                    {
                        "counts": {k.value: v for k, v in result.counts.items()},
                        "spent_uptc": result.spent_uptc,
                        "elapsed_s": round(result.elapsed_s, 3),
                        "calls": result.calls,
                        "stop_reason": result.stop_reason,
                    },
                )
    return BatchOutcome(
        result=result,
        ledger_path=path,
        output_dir=options.output_dir,
        recovered_ambiguous=parked,
        new_shots=sync.new,
        changed_shots=len(sync.changed),
    )


async def _check_budget(ledger: Ledger, budget_uptc: int | None) -> None:
    if budget_uptc is None:
        return
    count, remaining_uptc, unpriced = await ledger.remaining_cost()
    spent = await ledger.spent_uptc()
    if unpriced:
        raise BudgetExceeded(
            f"{unpriced} shot(s) to submit have no published price, so the budget cannot "
            "be checked",
            hint="add their price to the price table, or drop the budget "
            "(run.budget_ptc / --max-cost)",
        )
    if spent + remaining_uptc > budget_uptc:
        raise BudgetExceeded(
            f"the plan does not fit the budget: {spent / 1e6:g} PTC spent + "
            f"{remaining_uptc / 1e6:g} PTC for {count} shot(s) to submit = "
            f"{(spent + remaining_uptc) / 1e6:g} PTC > cap {budget_uptc / 1e6:g} PTC",
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
        async with _provider_for(overrides or RunOverrides(), None) as provider:
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
