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
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypedDict, Unpack

from runner.errors import (
    ExitCode,
    LedgerError,
    PixrunError,
    UsageError,
)
from runner.ledger import META_PROVIDER, Ledger, open_ledger
from runner.ledger.callbacks import callback_secret
from runner.model import Manifest
from runner.money import to_uptc_or_none
from runner.provider import Provider
from runner.run.callbacks import CallbackEndpoint, CallbackHub, CallbackReceiver, ReceiverPool
from runner.run.context import SharedFlow
from runner.run.events import RunEvent, RunEventKind, RunObserver
from runner.run.guard import check_identity, check_ledger_owner, provider_identity
from runner.run.options import RunResult, StopReason, exit_code_for
from runner.run.preflight import check_folders_writable, output_folders, run_preflight
from runner.run.preview import Confirm, Decision, RunPreview, check_budget, preview_run
from runner.run.scheduler import Scheduler
from runner.run.setup import (
    RunOverrides,
    SimulatorSettings,
    callback_settings_for,
    ledger_path_for,
    output_dir_for,
    provider_for,
    real_config,
    refuse_a_watched_batch,
    scheduler_options,
)
from runner.sample import Sample, SampleSpec, cut, select_sample


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
    #: a sample run (--only/--limit): what it chose
    sample: str | None = None


def _install_signals(
    schedulers: Iterable[Scheduler], on_stop: Callable[[], None] | None = None
) -> Callable[[], None]:
    """Ctrl-C (or SIGTERM) stops every scheduler given; a second one ends the process.
    ``on_stop`` is called too (the hot folder stops watching)."""
    loop = asyncio.get_running_loop()
    hits = 0

    def on_signal() -> None:
        nonlocal hits
        hits += 1
        if hits > 1:
            os._exit(ExitCode.INTERRUPTED)  # the ledger is consistent at every commit
        for scheduler in schedulers:
            scheduler.request_stop(StopReason.INTERRUPTED, "interrupted: stopping")
        if on_stop is not None:
            on_stop()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove


class BatchOptions(TypedDict, total=False):
    """What :func:`run_batch` hands on to :func:`prepared_batch` as it is (the defaults
    are prepared_batch's, the meanings run_batch's docstring)."""

    ledger_path: Path | None
    overrides: RunOverrides | None
    simulate: SimulatorSettings | None
    cpu: int | None
    confirm: Confirm | None
    rerender_changed: bool
    switch_provider: bool
    force: bool
    check_space: bool
    sample: SampleSpec | None


async def run_batch(
    manifest: Manifest,
    observer: RunObserver,
    *,
    handle_signals: bool = True,
    **options: Unpack[BatchOptions],
) -> BatchOutcome:
    """Run (or resume) a batch. Raises the errors of :mod:`runner.errors`.

    ``confirm``: asks the person (a terminal) whether to go ahead; None never asks.
    Done shots whose request changed are re-rendered when ``confirm`` agreed or
    ``rerender_changed`` is set, and held otherwise. ``switch_provider`` lets a
    ledger move to another provider than the one it was created with. ``force``: take
    over a ledger that records another batch (:func:`check_ledger_owner`).
    ``cpu``: the one CPU the caller keeps this process's threads on, for the ledger's
    record (:func:`runner.placement.keep_to_one_cpu`); None when it does not.
    ``sample``: submit only these shots (``--only``/``--limit``, :mod:`runner.sample`);
    the rest is synced and stays pending.
    """
    async with prepared_batch(manifest, observer, **options) as ready:
        remove = _install_signals([ready.scheduler]) if handle_signals else (lambda: None)
        try:
            return await ready.run()
        finally:
            remove()


@dataclass
class ReadyBatch:
    """A batch with everything checked and its ledger synced: :meth:`run` sends."""

    scheduler: Scheduler
    ledger: Ledger
    provider: Provider
    identity: dict[str, str]
    #: done shots whose request changed, held unasked (not the sample's outside ones)
    held: frozenset[str]
    #: shots a sample (--only/--limit) leaves pending for a later run
    pending_later: int
    has_callbacks: bool
    planned_uptc: int
    outcome: BatchOutcome

    async def run(self) -> BatchOutcome:
        """Run the scheduler and record how the run ended in the ledger."""
        ledger, provider, held = self.ledger, self.provider, self.held
        result = await self.scheduler.run(planned_uptc=self.planned_uptc)
        identity = self.identity
        if provider.dialect is not None and provider.dialect != identity["dialect"]:
            # the response family the provider answered in, for `status` and for
            # whoever compares ledgers (it is detected, never configured)
            identity = {**identity, "dialect": provider.dialect}
            with contextlib.suppress(LedgerError):  # a ledger that failed: told below
                await ledger.set_meta({META_PROVIDER: json.dumps(identity, sort_keys=True)})
        # held changes are work the person still has to agree to: not a clean run
        result.exit_code = exit_code_for(
            result.stop_reason,
            result.counts,
            held_changed=len(held),
            pending_later=self.pending_later,
        )
        with contextlib.suppress(LedgerError):
            await ledger.end_run(
                result.exit_code,
                {
                    "counts": {k.value: v for k, v in result.counts.items()},
                    "spent_uptc": result.spent_uptc,
                    "elapsed_s": round(result.elapsed_s, 3),
                    "calls": result.calls,
                    "stop_reason": result.stop_reason,
                    "held_changed": len(held),
                    **({"callbacks": result.callbacks} if self.has_callbacks else {}),
                },
            )
        self.outcome.result = result
        return self.outcome


@contextlib.asynccontextmanager
async def prepared_batch(
    manifest: Manifest,
    observer: RunObserver,
    *,
    ledger_path: Path | None = None,
    overrides: RunOverrides | None = None,
    simulate: SimulatorSettings | None = None,
    cpu: int | None = None,
    confirm: Confirm | None = None,
    rerender_changed: bool = False,
    switch_provider: bool = False,
    force: bool = False,
    check_space: bool = True,
    shared: SharedFlow | None = None,
    rank: tuple[int, int] = (0, 0),
    claim: Callable[[RunPreview, bool], None] | None = None,
    sample: SampleSpec | None = None,
    receivers: ReceiverPool | None = None,
) -> AsyncIterator[ReadyBatch]:
    """Every check of :func:`run_batch` and the ledger's sync, then a batch ready to run
    (its ledger locked, its provider open) until the block ends. Raises the errors of
    :mod:`runner.errors`, before anything is written or sent.

    ``shared``/``rank``: one batch of several in one run (:mod:`runner.run.multi`).
    ``sample``: submit only these shots (``--only``/``--limit``, :mod:`runner.sample`).
    ``receivers``: the run's callback receivers, shared by the batches that listen on
    the same HOST:PORT (one open port serves them all).
    ``claim(preview, rerender)``: called after the budget check, before the ledger is
    written; it may refuse (raise) for the whole run's sake (the overall cost cap).
    """
    overrides = overrides or RunOverrides()
    simulated = simulate is not None
    path = ledger_path_for(manifest.path, ledger_path, simulated=simulated)
    if ledger_path is None:
        refuse_a_watched_batch(manifest.path, path, simulated=simulated)
    output_dir = output_dir_for(manifest.output.dir, simulated=simulated)
    options = scheduler_options(manifest, overrides, output_dir, simulate)
    callback = callback_settings_for(manifest, overrides)
    if callback is not None and simulate is not None:
        simulate = replace(simulate, callbacks=True)  # a rehearsal calls back too
    # the provider's settings are checked before the ledger is touched: a missing key
    # or a malformed URL changes nothing
    config = None if simulate is not None else real_config(overrides)
    identity = provider_identity(config)
    # every folder the outputs go to (a filename pattern can make subfolders)
    check_folders_writable(output_folders(output_dir, (s.output_relpath for s in manifest.shots)))
    created = not path.exists() or path.stat().st_size == 0
    ledger = await open_ledger(path, writer=True)
    synced = False
    try:
        async with ledger:
            identity = await check_identity(ledger, identity, switch_provider=switch_provider)
            moved = check_ledger_owner(await ledger.get_meta(), manifest, path, force=force)
            if moved is not None:
                observer.event(RunEvent(RunEventKind.INFO, f"warning: {moved}"))
            # one read of the shots for the preview and the sync: this run holds the
            # lock, and nothing between the two writes a shot
            known = await ledger.known_shots()
            picked: Sample | None = None
            if sample is not None and sample.active:
                picked = select_sample(manifest.shots, sample, known, name=manifest.name)
                options = replace(options, submit_only=picked.ids)
                observer.event(RunEvent(RunEventKind.INFO, picked.describe()))
            # a sample is priced, asked about and budgeted on its own shots only
            chosen = manifest if picked is None else cut(manifest, picked)
            preview = await preview_run(ledger, chosen, known, options.budget_uptc, simulated)
            if picked is not None:
                preview = replace(preview, sample=picked.describe())
            changed_done = preview.changed_done
            check_budget(preview, rerender=rerender_changed)
            decision = Decision(go=True, rerender_changed=rerender_changed)
            if confirm is not None:
                decision = confirm(preview)
            if not decision.go:
                raise Declined("declined: nothing was sent")
            rerender = decision.rerender_changed or rerender_changed
            check_budget(preview, rerender=rerender)
            if claim is not None:
                claim(preview, rerender)
            held = frozenset() if rerender else frozenset(changed_done)
            # changed done shots outside a sample stay as they are, unasked and untold
            hold = held | (picked.changed_done_outside if picked is not None else frozenset())
            await ledger.set_meta(
                {
                    "manifest": str(manifest.path),
                    "name": manifest.name,
                    "output_dir": str(output_dir),
                    META_PROVIDER: json.dumps(identity, sort_keys=True),
                }
            )
            sync = await ledger.sync_manifest(manifest.shots, hold=hold, known=known)
            synced = True
            planned_uptc = sum(to_uptc_or_none(s.price_ptc) or 0 for s in chosen.shots)
            del manifest, known, chosen  # the ledger holds every shot now: flat memory at scale
            parked = await ledger.recover()
            made_by = {"simulated": identity["simulated"], "base_url": identity["base_url"]}
            options = replace(options, provider=made_by)
            checked = await run_preflight(
                ledger, output_dir, simulated=simulated, check_space=check_space, provider=made_by
            )
            for shot_id in held:
                observer.event(
                    RunEvent(
                        RunEventKind.CHANGED,
                        "its request changed since it was done: not re-rendered (run with "
                        "--rerender-changed to re-render it, charged)",
                        shot_id=shot_id,
                    )
                )
            async with (
                provider_for(overrides, simulate, config, path) as provider,
                _receiver(ledger, callback, receivers) as hub,
            ):
                await ledger.start_run(cpu=cpu)
                scheduler = Scheduler(
                    ledger, provider, options, observer, hub, shared=shared, rank=rank
                )
                yield ReadyBatch(
                    scheduler=scheduler,
                    ledger=ledger,
                    provider=provider,
                    identity=identity,
                    held=held,
                    pending_later=0 if picked is None else picked.left_pending,
                    has_callbacks=hub is not None,
                    planned_uptc=planned_uptc,
                    outcome=BatchOutcome(
                        result=RunResult(
                            exit_code=ExitCode.OK,
                            stop_reason=None,
                            message=None,
                            counts={},
                            spent_uptc=0,
                            elapsed_s=0.0,
                            calls={},
                            ledger_commits=0,
                        ),
                        ledger_path=path,
                        output_dir=output_dir,
                        recovered_ambiguous=parked,
                        new_shots=sync.new,
                        changed_shots=len(sync.changed),
                        simulated=simulated,
                        held_changed=tuple(sorted(held)),
                        adopted=checked.adopted,
                        sample=None if picked is None else picked.describe(),
                    ),
                )
    except PixrunError:
        # refused before anything was written (declined, over budget, another provider):
        # a ledger this run created is removed again, so nothing is left behind
        if created and not synced:
            _remove_ledger_files(path)
        raise


@contextlib.asynccontextmanager
async def _receiver(
    ledger: Ledger, callback: CallbackEndpoint | None, pool: ReceiverPool | None = None
) -> AsyncIterator[CallbackHub | None]:
    """The callback receiver for the run, stopped on every way out; None without. In a
    ``pool``, a receiver already on the same HOST:PORT serves this batch too."""
    if callback is None:
        yield None
        return
    hub = CallbackHub(await callback_secret(ledger), callback.url or "")
    if pool is not None:
        async with pool.serving(hub, callback.host, callback.port):
            yield hub
        return
    async with CallbackReceiver(hub, callback.host, callback.port):
        yield hub


class Declined(UsageError):
    """The person said no at the confirmation: nothing was sent (exit 1, as an abort)."""

    exit_code = ExitCode.SHOTS_FAILED


def _remove_ledger_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        with contextlib.suppress(OSError):
            path.with_name(path.name + suffix).unlink()
