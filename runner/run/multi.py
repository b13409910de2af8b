"""Several batches in one run (``pixrun run a.yaml b.yaml``, ``pixrun watch``): one
account's in-flight slots and call gate, shared by priority.

Invariants:
- Every manifest is loaded and validated by the caller before anything is sent; an
  invalid one never reaches this module, and a batch refused while it is prepared
  (its ledger locked, over its budget or the overall cap, another provider, declined)
  is reported as such, with nothing written for it, while the others run.
- All batches share one :class:`~runner.run.context.SharedFlow`: tasks in flight over
  all of them never exceed the pool's ceiling (``--concurrency``, else the largest
  ``run.concurrency`` among them), and no batch exceeds its own ``run.concurrency``.
- A free slot goes to the waiting batch ranked first: ``run.priority`` higher first,
  then in the order given (or found). A batch with no work left waits for no slot, so
  its slots move to the next batch as they free up: no tail between batches.
- Each batch keeps its own ledger, lock, outputs and ``run.budget_ptc``; the overall
  ``--max-cost`` caps what all their ledgers have spent together, earlier runs
  included, checked before the ledger is written (batches in rank order claim their
  plans) and again before every generate call. Each ledger counts once: a manifest
  that runs again in the same run (dropped again into a watched folder) replaces its
  earlier claim and tally, whose spending its ledger already holds.
- Ctrl-C stops every batch, those still to be prepared included (a second one ends
  the process, as for one batch). Every manifest's end is told exactly once (``on_end``),
  whatever ended it: finished, stopped, refused, or a defect in that batch alone
  (:class:`~runner.errors.BatchDefect`), which never stops the others.
- Batches that listen for callbacks on the same HOST:PORT (``--callback-listen`` or
  ``run.callback.listen``) share one receiver: a fixed port serves them all, each
  ledger on its own secret path.
- No two batches running together write the same file: one that would is refused
  before anything is written or sent for it (its renders would be paid for, then
  refused as output conflicts).
- A claim under the overall cap is given back when its batch is refused after claiming
  (nothing was sent), and shrinks to what its ledger spent when the batch ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.errors import (
    BatchDefect,
    BudgetExceeded,
    ExitCode,
    OutputsBusy,
    PixrunError,
    Problem,
)
from runner.model import Manifest
from runner.money import to_uptc_or_none, uptc_text
from runner.pricing import unpriced_under_budget
from runner.run.batch import BatchOutcome, _install_signals, prepared_batch
from runner.run.callbacks import ReceiverPool
from runner.run.context import SharedFlow
from runner.run.events import RunObserver
from runner.run.options import StopReason
from runner.run.preview import Confirm, RunPreview
from runner.run.scheduler import Scheduler
from runner.run.setup import RunOverrides, SimulatorSettings, ledger_path_for, output_dir_for
from runner.sample import SampleSpec

#: makes a batch's observer from its manifest (the CLI tags each line with the name)
ObserverFor = Callable[[Manifest], RunObserver]
#: told of each manifest as soon as it has ended (notifications); never raises
OnEnd = Callable[["BatchEnd"], Coroutine[Any, Any, None]]


@dataclass
class BatchEnd:
    """How one manifest of several ended: its outcome, or why it never ran."""

    path: Path
    name: str | None = None
    outcome: BatchOutcome | None = None
    #: refused before anything was sent (an invalid manifest, a locked ledger, ...)
    error: PixrunError | None = None
    #: every problem of an invalid manifest
    problems: tuple[Problem, ...] = ()
    #: the manifest's own ``run.notify`` URLs (none when it could not be read)
    notify: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        if self.outcome is not None:
            return self.outcome.result.exit_code
        return self.error.exit_code if self.error is not None else ExitCode.INVALID


def overall_exit_code(ends: list[BatchEnd]) -> int:
    """The exit code of a run of several manifests: 130 when interrupted, else the
    highest of theirs (0 only when every manifest was valid and finished clean; an
    invalid one that was skipped makes it at least 2)."""
    codes = [e.exit_code for e in ends]
    if ExitCode.INTERRUPTED in codes:
        return ExitCode.INTERRUPTED
    return max(codes, default=ExitCode.OK)


@dataclass
class BatchSettings:
    """What every batch of the run is given (the command line's settings)."""

    overrides: RunOverrides = field(default_factory=RunOverrides)
    simulate: SimulatorSettings | None = None
    cpu: int | None = None
    confirm: Confirm | None = None
    rerender_changed: bool = False
    check_space: bool = True
    #: where a manifest's ledger goes (None: beside it, as for one batch)
    ledger_for: Callable[[Path], Path | None] = lambda path: None
    #: --only/--limit, applied to each manifest (a pattern may match none of one's shots)
    sample: SampleSpec | None = None


def shared_flow_for(manifests: list[Manifest], settings: BatchSettings) -> SharedFlow:
    """The pool of the run: the command line's figures, else the largest of the
    manifests' (each batch stays within its own ``run.concurrency``)."""
    o = settings.overrides
    concurrency = o.concurrency or max((m.run.concurrency for m in manifests), default=1)
    rate = o.requests_per_s or max((m.run.requests_per_s for m in manifests), default=1.0)
    return SharedFlow(concurrency, rate, to_uptc_or_none(o.max_cost_ptc))


def rank_of(manifest: Manifest, order: int) -> tuple[int, int]:
    """Higher ``run.priority`` first, then the order given (or found)."""
    return (-manifest.run.priority, order)


class BatchSet:
    """Batches running together in one event loop on one :class:`SharedFlow`.

    :meth:`prepare` checks a batch and syncs its ledger (raising if it is refused);
    it runs once :meth:`go` is called (at once, if it already was).
    """

    def __init__(self, flow: SharedFlow, settings: BatchSettings, observer_for: ObserverFor):
        self.flow = flow
        self.settings = settings
        self._observer_for = observer_for
        self._go = asyncio.Event()
        self._stopping = False
        #: the plans claimed under the overall cap, per ledger (see :meth:`_claim`)
        self._claims: dict[Path, int] = {}
        #: one callback receiver per HOST:PORT, shared by the batches listening there
        self.receivers = ReceiverPool()
        #: each running batch's scheduler, by its manifest's path (Ctrl-C, withdraw)
        self._running: dict[Path, Scheduler] = {}
        #: the files each prepared batch writes: its output folder and the names in it
        self._outputs: dict[Path, tuple[str, Path, frozenset[str]]] = {}

    def go(self) -> None:
        self._go.set()

    def stop(self) -> None:
        """Stop every batch (Ctrl-C); one prepared later stops at once."""
        self._stopping = True
        self._go.set()
        for scheduler in list(self._running.values()):
            scheduler.request_stop(StopReason.INTERRUPTED, "interrupted: stopping")

    def withdraw(self, path: Path, message: str) -> None:
        """Stop submitting for the batch of the manifest at ``path`` (the tasks in
        flight are collected); nothing when it is not running."""
        scheduler = self._running.get(path)
        if scheduler is not None:
            scheduler.withdraw(message)

    def install_signals(self, on_stop: Callable[[], None] | None = None) -> Callable[[], None]:
        """Ctrl-C stops every batch, now and later; returns the remover."""

        def stopped() -> None:
            self._stopping = True
            if on_stop is not None:
                on_stop()

        return _install_signals(self._running.values(), stopped)

    async def prepare(
        self, manifest: Manifest, rank: tuple[int, int]
    ) -> asyncio.Task[BatchOutcome]:
        """Check and sync the batch of ``manifest``; the task that runs it once the set
        goes. Raises the errors of :mod:`runner.errors` (nothing sent, nothing kept)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._batch(manifest, rank, ready), name=manifest.name)
        try:
            await asyncio.shield(ready)
        except BaseException:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task  # its error is the one raised here
            raise
        return task

    async def _batch(
        self, manifest: Manifest, rank: tuple[int, int], ready: asyncio.Future[None]
    ) -> BatchOutcome:
        s = self.settings
        ledger = ledger_path_for(
            manifest.path, s.ledger_for(manifest.path), simulated=s.simulate is not None
        ).resolve()
        claimed_before = self._claims.get(ledger)
        try:
            self._check_outputs(manifest, ledger)
            async with prepared_batch(
                manifest,
                self._observer_for(manifest),
                ledger_path=s.ledger_for(manifest.path),
                # --max-cost is the overall cap here, not each batch's
                overrides=replace(s.overrides, max_cost_ptc=None),
                simulate=s.simulate,
                cpu=s.cpu,
                confirm=s.confirm,
                rerender_changed=s.rerender_changed,
                check_space=s.check_space,
                shared=self.flow,
                rank=rank,
                claim=functools.partial(self._claim, ledger),
                sample=s.sample,
                receivers=self.receivers,
            ) as batch:
                ready.set_result(None)
                self._outputs[ledger] = _outputs_of(manifest, s.simulate is not None)
                await self._go.wait()
                self._running[manifest.path] = batch.scheduler
                if self._stopping:
                    batch.scheduler.request_stop(StopReason.INTERRUPTED, "interrupted: stopping")
                try:
                    outcome = await batch.run()
                finally:
                    self._running.pop(manifest.path, None)
                if ledger in self._claims:
                    # what it did not spend (failures, a stop) is free for later drops
                    self._claims[ledger] = outcome.result.spent_uptc
                self._outputs.pop(ledger, None)
                return outcome
        except BaseException as exc:
            self._outputs.pop(ledger, None)
            if not ready.done():
                # refused after its claim (preflight, a callback port, ...): nothing was
                # sent for it, so its claim goes back to what it was
                if claimed_before is None:
                    self._claims.pop(ledger, None)
                else:
                    self._claims[ledger] = claimed_before
                if isinstance(exc, Exception):
                    ready.set_exception(exc)
                else:
                    ready.cancel()
            raise

    def _check_outputs(self, manifest: Manifest, ledger: Path) -> None:
        """Refuse a batch that would write a file another batch of the run writes: the
        second render would be paid for and then refused as an output conflict."""
        name, folder, files = _outputs_of(manifest, self.settings.simulate is not None)
        for other_ledger, (other, other_folder, other_files) in self._outputs.items():
            if other_ledger == ledger:
                continue
            both: frozenset[str] | set[str]
            if folder == other_folder:
                both = files & other_files
            elif other_folder.is_relative_to(folder):
                inside = other_folder.relative_to(folder).as_posix()
                both = files & {f"{inside}/{f}" for f in other_files}
            elif folder.is_relative_to(other_folder):
                inside = folder.relative_to(other_folder).as_posix()
                both = {f"{inside}/{f}" for f in files} & other_files
            else:
                continue
            if both:
                raise OutputsBusy(
                    f"{name} would write {len(both)} file(s) that {other} writes in this "
                    f"run (such as {folder / sorted(both)[0]})",
                    hint="give it another output.dir or output.filename (e.g. "
                    "'{name}/{shot_id}.mp4'), or run it after the other",
                )

    def _claim(self, ledger: Path, preview: RunPreview, rerender: bool) -> None:
        """The overall cap: this batch's plan after those prepared before it. A ledger
        that runs again (a manifest dropped again) replaces its earlier claim: its
        preview counts what it spent before."""
        cap = self.flow.budget_uptc
        if cap is None:
            return
        if preview.unpriced:
            raise unpriced_under_budget(preview.unpriced)
        need = preview.spent_uptc + preview.to_submit_uptc
        need += preview.changed_done_uptc if rerender else 0
        before = sum(n for path, n in self._claims.items() if path != ledger)
        if before + need > cap:
            raise BudgetExceeded(
                f"{preview.name!r} does not fit the overall cap: {uptc_text(need)} PTC spent "
                f"and to submit, after {uptc_text(before)} PTC of the manifests "
                f"before it, passes {uptc_text(cap)} PTC",
                hint="raise --max-cost, or run this manifest later",
            )
        self._claims[ledger] = need


def _outputs_of(manifest: Manifest, simulated: bool) -> tuple[str, Path, frozenset[str]]:
    """How messages name a batch (its file), its output folder (resolved) and its
    files' names in it."""
    folder = output_dir_for(manifest.output.dir, simulated=simulated).resolve()
    files = frozenset(s.output_relpath for s in manifest.shots)
    return manifest.path.name, folder, files


async def run_batches(
    manifests: list[Manifest],
    settings: BatchSettings,
    observer_for: ObserverFor,
    *,
    handle_signals: bool = True,
    on_end: OnEnd | None = None,
) -> list[BatchEnd]:
    """Run (or resume) several valid batches together; one :class:`BatchEnd` each, in
    the order given. Each is prepared in rank order before any sends. ``on_end`` is
    awaited for each batch as soon as it has ended (refused ones included), while the
    others go on; all of them have returned when this does."""
    flow = shared_flow_for(manifests, settings)
    batches = BatchSet(flow, settings, observer_for)
    ends = [BatchEnd(m.path, m.name, notify=m.run.notify) for m in manifests]
    tasks: dict[int, asyncio.Task[BatchOutcome]] = {}
    told: list[asyncio.Task[None]] = []

    def tell(end: BatchEnd) -> None:
        if on_end is not None:
            told.append(asyncio.create_task(on_end(end)))

    order = sorted(range(len(manifests)), key=lambda i: rank_of(manifests[i], i))

    async def finish(i: int, task: asyncio.Task[BatchOutcome]) -> None:
        try:
            ends[i].outcome = await task
        except PixrunError as exc:
            ends[i].error = exc
        except Exception as exc:  # a defect in one batch: told, and the others go on
            ends[i].error = BatchDefect.of(exc)
        tell(ends[i])

    # Ctrl-C from the first prepare on: a batch prepared after it is stopped at once,
    # and every manifest is still told how it ended
    remove = batches.install_signals() if handle_signals else (lambda: None)
    try:
        for i in order:
            try:
                tasks[i] = await batches.prepare(manifests[i], rank_of(manifests[i], i))
            except PixrunError as exc:
                ends[i].error = exc
                tell(ends[i])
            except Exception as exc:  # a defect while preparing one: the others go on
                ends[i].error = BatchDefect.of(exc)
                tell(ends[i])
        batches.go()
        # awaited together, so each batch's end is told as soon as it comes
        await asyncio.gather(*(finish(i, task) for i, task in tasks.items()))
    finally:
        try:
            if told:
                await asyncio.gather(*told, return_exceptions=True)
        finally:
            remove()
    return ends
