"""``pixrun watch DIR``: a hot folder. Manifests dropped into DIR run together, as
several manifests of one run do (:mod:`runner.run.multi`), until Ctrl-C.

Layout of the folder::

    DIR/shots.yaml                   waiting or running (only files directly in DIR)
    DIR/done/shots.yaml              finished (every shot ended, or was held)
    DIR/rejected/shots.yaml          invalid, or refused before anything was sent
    DIR/rejected/shots.errors.txt    every problem, one per line
    DIR/ledgers/shots.ledger.sqlite  the batch's ledger (``shots.sim.ledger.sqlite``)

Invariants:
- A manifest's ledger lives in ``DIR/ledgers/`` under the manifest's file name, never
  beside the manifest: it stays put when the manifest moves to ``done/``, so a restart
  (the manifest still in DIR) resumes it, and the same file dropped again later finds
  it (its done shots are not paid for twice). Relative output folders are resolved
  against DIR, where the manifest is while it runs.
- A manifest dropped with its own ledger beside it (``pixrun run`` on it first, then
  both moved in) has that ledger moved into ``ledgers/`` before anything is sent for
  it, so the tasks it holds are collected, never bought again; while another process
  uses that ledger the manifest is held (told as stopped, until it is saved again or
  a new watch starts), and with a ledger at both places it is rejected (nothing is
  guessed).
- Only files directly in DIR whose name ends in ``.yaml`` or ``.yml`` count, never a
  hidden one or an editor's temp file (``.#x.yaml``, ``x.yaml~``, ``x.yaml.swp``, ...),
  and only once their size and mtime have not changed for ``stable_s``: a manifest
  still being written is never read.
- A manifest moves to ``done/`` only when its run ended without a stop (every shot
  reached a final state, or was held) and its file is as it was read: one written to
  while it ran (a writer that paused longer than ``stable_s``, an edit) stays in DIR
  and runs again with its new text once stable. One that stopped (Ctrl-C, budget, empty
  account, outage, the brake, a defect, ...) stays in DIR, and the next ``watch``
  resumes it through its ledger. The running ``watch`` does not start it again unless
  the file changes (a fixed manifest saved over it): a stop never turns into a loop of
  restarts, summaries and charges.
- Each manifest's end (done, stopped, rejected) is told to ``on_end`` (its
  notifications) as it comes, and every telling has returned before :meth:`run` does.
- A running manifest removed or moved out of DIR is withdrawn: its batch submits
  nothing more, collects the renders in flight (they are paid for) and ends; its
  ledger stays, so the file dropped again resumes it.
- A manifest that would write files a running one writes waits (in DIR) for that
  one to end, then starts: never rejected for it, never paid for twice.
- A manifest whose last run the failure-rate brake stopped is not started again as
  it is, by this ``watch`` or a later one (``--once`` under cron): only once its file
  is saved after that stop. A restart would pay for another window of failures.
- One ``watch`` per folder (an OS lock on ``ledgers/.watch.lock``): a second exits at
  once, touching nothing.
- A rejected manifest's ``.errors.txt`` lists every problem found (file:line, shot,
  field, message, fix), and nothing was sent for it.

Size: about 470 lines, one class: every rule about when a file in the folder may run,
wait or move reads the same record of what was seen and what ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from watchfiles import awatch

from runner.errors import (
    BatchDefect,
    BrakeHeld,
    CallbackPortBusy,
    LedgerError,
    LedgerLocked,
    LedgerOfAnotherBatch,
    ManifestError,
    OutputsBusy,
    PixrunError,
    Problem,
)
from runner.ledger import default_ledger_path, move_ledger
from runner.ledger.lock import RunLock
from runner.ledger.views import last_stop_of
from runner.model import Manifest
from runner.run.batch import BatchOutcome
from runner.run.context import SharedFlow
from runner.run.folder import DONE, LEDGERS, REJECTED, ledger_in
from runner.run.multi import BatchEnd, BatchSet, BatchSettings, ObserverFor, OnEnd, rank_of
from runner.run.options import StopReason
from runner.run.setup import sim_state_path

#: manifests are YAML files; anything else in DIR is left alone
SUFFIXES = (".yaml", ".yml")


def is_candidate(name: str) -> bool:
    """A manifest's file name, not a hidden file or an editor's temp file."""
    if name.startswith((".", "#", "~")):
        return False  # hidden, emacs lock (.#x) and autosave (#x#), office lock (~$x)
    return name.endswith(SUFFIXES)


@dataclass(frozen=True)
class News:
    """Something the hot folder did, for whoever watches it (the CLI prints it)."""

    #: "found", "adopted" (its ledger), "started", "done", "stopped", "changed",
    #: "withdrawn", "waiting", "rejected"
    kind: str
    path: Path
    message: str = ""


class HotFolder:
    """Watches one folder and runs what is dropped into it (see the module docstring)."""

    def __init__(
        self,
        folder: Path,
        flow: SharedFlow,
        settings: BatchSettings,
        observer_for: ObserverFor,
        load: Callable[[Path], Manifest],
        on_news: Callable[[News], None],
        *,
        stable_s: float = 1.0,
        on_end: OnEnd | None = None,
    ) -> None:
        self.folder = folder
        self.flow = flow
        settings = replace(
            settings, ledger_for=ledger_in(folder, simulated=settings.simulate is not None)
        )
        self.batches = BatchSet(flow, settings, observer_for)
        self.batches.go()
        self._load = load
        self._news = on_news
        self.stable_s = stable_s
        #: name -> (size, mtime_ns) and when that was first seen
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        #: each running batch's follower (see :meth:`_follow`) -> its manifest
        self._running: dict[asyncio.Task[None], Path] = {}
        #: stopped manifests left in the folder -> their (size, mtime_ns) then: not
        #: started again until the file changes (or the next ``watch``)
        self._held: dict[str, tuple[int, int]] = {}
        self._on_end = on_end
        self._telling: set[asyncio.Task[None]] = set()
        self._order = 0
        #: with --once: the manifests still to run before returning
        self._wanted: set[str] | None = None
        #: manifests waiting for a running one that writes the same files to end
        self._waiting: set[str] = set()
        #: running manifests whose file left the folder (withdrawn once)
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self.interrupted = False
        self.ends: list[BatchEnd] = []

    def stop(self) -> None:
        """Ctrl-C: stop watching and stop every batch (each resumes at the next start)."""
        self.interrupted = True
        self._stop.set()
        self._changed.set()
        self.batches.stop()

    async def run(self, *, once: bool = False) -> list[BatchEnd]:
        """Watch until :meth:`stop`; with ``once``, run what is in the folder now and
        return when it has ended."""
        for sub in (DONE, REJECTED, LEDGERS):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        # one watch per folder: a second one would move the first one's manifests to
        # rejected/ (their ledgers locked) while they render
        lock = RunLock.take(
            self.folder / LEDGERS / ".watch",
            held_by=f"another pixrun watch is watching {self.folder}",
        )
        try:
            return await self._run(once=once)
        finally:
            lock.release()

    async def _run(self, *, once: bool) -> list[BatchEnd]:
        watcher = asyncio.create_task(self._watch())
        self._wanted = wanted = set(self._names() or ()) if once else None
        try:
            while not self._stop.is_set():
                listed = self._names()
                if wanted is not None and listed is not None:
                    wanted &= set(listed)  # one removed or renamed meanwhile: not waited for
                self._withdraw_gone()
                for name in self._stable(wanted):
                    if self._stop.is_set():  # Ctrl-C: start nothing more
                        break
                    if wanted is not None:  # before it runs: a change puts it back
                        wanted.discard(name)
                    await self._start(self.folder / name)
                if once and not wanted and not self._running:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=self.stable_s / 2)
        finally:
            self._stop.set()
            for task in list(self._running):
                with contextlib.suppress(BaseException):
                    await task
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            # every end is told before watch returns (--once under cron: before it exits)
            while self._telling:
                await asyncio.gather(*self._telling, return_exceptions=True)
        return self.ends

    def _withdraw_gone(self) -> None:
        """A running manifest removed (or moved out) of the folder is withdrawn: its
        batch submits nothing more and collects what is in flight."""
        for path in self._running.values():
            # again each round until it took: a batch not yet registered ignores it, and
            # a batch already stopping keeps its first reason
            if _gone(path):
                self.batches.withdraw(
                    path, "its manifest left the watched folder: no more submissions"
                )

    def _end(self, end: BatchEnd) -> None:
        self.ends.append(end)
        if self._on_end is not None:
            telling = asyncio.create_task(self._on_end(end))
            self._telling.add(telling)
            telling.add_done_callback(self._telling.discard)

    async def _watch(self) -> None:
        """Wake the loop on every change in the folder (the scan decides what counts)."""
        async for _ in awatch(
            self.folder,
            stop_event=self._stop,
            recursive=False,
            debounce=50,
            step=20,
            rust_timeout=1000,
            watch_filter=lambda change, path: is_candidate(Path(path).name),
        ):
            self._changed.set()

    def _names(self) -> list[str] | None:
        """The candidates in the folder, by name; None when it cannot be read now (a
        hiccup forgets nothing: not what was seen, held or wanted)."""
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except OSError:
            return None
        return [e.name for e in entries if is_candidate(e.name) and e.is_file()]

    def _stable(self, wanted: set[str] | None) -> list[str]:
        """Names unchanged for ``stable_s`` and not running, in name order."""
        now = asyncio.get_running_loop().time()
        running = {p.name for p in self._running.values()}
        ready = []
        names = self._names()
        if names is None:
            return []
        for name in names:
            if name in running or (wanted is not None and name not in wanted):
                continue
            try:
                st = (self.folder / name).stat()
            except OSError:
                continue
            mark = (st.st_size, st.st_mtime_ns)
            if name in self._held:
                if self._held[name] == mark:
                    continue  # stopped and not changed since: left to resume later
                del self._held[name]  # edited (a fixed manifest): it counts again
            seen = self._seen.get(name)
            if seen is None or seen[0] != mark:
                if seen is None:
                    self._news(News("found", self.folder / name))
                self._seen[name] = (mark, now)
                continue
            if now - seen[1] >= self.stable_s:
                ready.append(name)
        for gone in set(self._seen) - set(names):
            del self._seen[gone]
        for gone in set(self._held) - set(names):
            del self._held[gone]
        return ready

    async def _start(self, path: Path) -> None:
        self._seen.pop(path.name, None)
        told_as: tuple[str | None, tuple[str, ...]] = (None, ())
        # the file as it is read: taken before reading, so a write during the read (a
        # writer that paused longer than stable_s) shows as a change when it ends
        loaded = _mark(path)
        try:
            if await asyncio.to_thread(self._bring_ledger, path):
                self._news(News("adopted", path, f"its own ledger, moved into {LEDGERS}/"))
            braked = await self._braked(path, loaded)
            if braked is not None:
                self._hold(path)
                self._news(News("stopped", path, braked.message))
                self.ends.append(BatchEnd(path, error=braked))  # exit 1; told when it stopped
                return
            manifest = self._load(path)
            told_as = (manifest.name, manifest.run.notify)
            self.flow.admit(manifest.run.concurrency, manifest.run.requests_per_s)
            self._order += 1
            task = await self.batches.prepare(manifest, rank_of(manifest, self._order))
        except ManifestError as exc:
            if _mark(path) != loaded:
                self._again(path.name)  # written to as it was read: read once stable
                return
            self._reject(path, exc, exc.problems)
            return
        except OutputsBusy as exc:
            # a running manifest writes the same files (one renamed in the folder, a
            # copy): it waits for that one to end, then counts again (no rejection)
            self._hold(path)
            self._waiting.add(path.name)
            self._again(path.name)
            self._news(News("waiting", path, exc.message))
            return
        except (LedgerLocked, CallbackPortBusy) as exc:
            # another process renders it (`pixrun run --ledger`), or holds the callback
            # port: not the manifest's fault, and never moved away to rejected/
            self._hold(path)
            self._news(News("stopped", path, f"{exc.message}: stays until it is saved again"))
            self._end(BatchEnd(path, told_as[0], error=exc, notify=told_as[1]))
            return
        except LedgerOfAnotherBatch as exc:
            # a file name keeps its ledger here: a new batch under an old file name
            # (tonight.yaml each night) needs a new file name; --force is not offered
            exc.hint = (
                f"give the file another name (the ledger of {path.name} in "
                f"{LEDGERS}/ is the earlier batch's), or keep that batch's name"
            )
            self._reject(path, exc, (), told_as)
            return
        except PixrunError as exc:
            self._reject(path, exc, (), told_as)
            return
        name, notify = manifest.name, manifest.run.notify
        follower = asyncio.create_task(self._follow(task, path, name, notify, loaded), name=name)
        self._running[follower] = path
        self._news(News("started", path, manifest.name))

    def _bring_ledger(self, path: Path) -> bool:
        """A manifest dropped with the ledger of an earlier run beside it (run on its own,
        then both moved in): that ledger moves into ``ledgers/``, so the tasks it holds
        are collected and its done shots kept, never paid for again. True if it moved;
        raises (the manifest is held or rejected, nothing sent) when it cannot."""
        target = self.batches.settings.ledger_for(path)
        simulated = self.batches.settings.simulate is not None
        beside = default_ledger_path(path, simulated=simulated)
        if target is None or not beside.is_file():
            return False
        move_ledger(beside, target)
        state = sim_state_path(beside)
        if state.is_file():  # a rehearsal's simulator keeps its tasks beside its ledger
            try:
                state.rename(sim_state_path(target))
            except OSError as exc:
                raise LedgerError(
                    f"cannot move {state} beside {target}: {exc.strerror or exc}",
                    hint="move it there by hand: the rehearsal's tasks are in it",
                ) from exc
        return True

    def _again(self, name: str) -> None:
        """The manifest counts again once it is stable; with ``--once`` it still runs
        before the watch exits (it waits, or its text changed while read or run)."""
        if self._wanted is not None:
            self._wanted.add(name)

    async def _braked(self, path: Path, loaded: tuple[int, int] | None) -> PixrunError | None:
        """Its last run was stopped by the failure-rate brake and the file has not been
        saved since that run started: running it as it is would pay for another window
        of failing renders (a cron'd ``watch --once`` would, every time). None
        otherwise; a fix saved while the braked run still collected counts as new."""
        ledger = self.batches.settings.ledger_for(path)
        if loaded is None or ledger is None or not ledger.is_file():
            return None
        try:
            stop = await last_stop_of(ledger)
        except PixrunError:
            return None  # the run itself says what is wrong with its ledger
        if stop is None or stop[0] != StopReason.BRAKE.value or loaded[1] / 1e9 > stop[1]:
            return None
        return BrakeHeld(
            "its last run was stopped by the failure-rate brake, and it has not been saved "
            "since: not started again as it is",
            hint=f"fix the manifest and save it (or 'touch {path}' to try it as it is); "
            "'pixrun status --ledger " + str(ledger) + "' shows the common error",
        )

    async def _follow(
        self,
        task: asyncio.Task[BatchOutcome],
        path: Path,
        name: str,
        notify: tuple[str, ...],
        loaded: tuple[int, int] | None,
    ) -> None:
        """Wait for one batch and deal with its end: moved to ``done/``, or left in the
        folder (held) when it stopped, and told either way. A manifest whose file
        changed while it ran (``loaded`` is its mark when read) is left to run again
        with its new text: it was not all done. A defect in one batch ends that batch
        only: the folder goes on."""
        try:
            try:
                outcome = await task
            except PixrunError as exc:
                end = BatchEnd(path, name, error=exc, notify=notify)
            except Exception as exc:  # a defect: told and reported, the others go on
                end = BatchEnd(path, name, error=BatchDefect.of(exc), notify=notify)
            else:
                end = BatchEnd(path, name, outcome=outcome, notify=notify)
            stop = None if end.outcome is None else end.outcome.result.stop_reason
            now = _mark(path)
            if now is not None and now != loaded:
                # written to while it ran (a slow writer, an edit): what ran may be only
                # part of it, so it stays and runs again once stable; its ledger keeps
                # what is done, and nothing is paid for twice
                self._news(News("changed", path, "changed while it ran: it runs again"))
                self._again(path.name)
            elif now is None and _gone(path):
                # removed or moved out while it ran: withdrawn (see _withdraw_gone)
                self._news(News("withdrawn", path, f"exit {end.exit_code}; its file left"))
            elif end.error is not None or stop is not None:
                self._hold(path)
                why = (
                    end.error.message
                    if end.error is not None
                    else f"{stop.value if stop else ''}: stays to resume"
                )
                self._news(News("stopped", path, why))
            else:
                end.path = _move(path, self.folder / DONE)
                self._news(News("done", end.path, f"exit {end.exit_code}"))
            self._end(end)
        finally:
            for name in self._waiting:  # those waiting for a batch to end: try again
                self._held.pop(name, None)
            self._waiting.clear()
            self._running.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._changed.set()

    def _hold(self, path: Path) -> None:
        """A stopped manifest stays in the folder for the next ``watch`` (or until it is
        edited); this one does not start it again and again."""
        with contextlib.suppress(OSError):
            st = path.stat()
            self._held[path.name] = (st.st_size, st.st_mtime_ns)

    def _reject(
        self,
        path: Path,
        exc: PixrunError,
        problems: list[Problem] | tuple[()],
        told_as: tuple[str | None, tuple[str, ...]] = (None, ()),
    ) -> None:
        name, notify = told_as
        end = BatchEnd(path, name, error=exc, problems=tuple(problems), notify=notify)
        target = self.folder / REJECTED
        lines = problem_lines(problems) if problems else []
        lines.append(f"{exc.message}" + (f" (fix: {exc.hint})" if exc.hint else ""))
        (target / f"{path.stem}.errors.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        end.path = _move(path, target)
        self._news(News("rejected", end.path, exc.message))
        self._end(end)


def problem_lines(problems: list[Problem] | tuple[Problem, ...]) -> list[str]:
    """Each problem on one line, as ``pixrun validate`` shows it (plus its fix)."""
    lines = []
    for p in problems:
        who = f" shot {p.shot_id}" if p.shot_id else ""
        fld = f" {p.field_path}:" if p.field_path else ""
        fix = f" (fix: {p.hint})" if p.hint else ""
        lines.append(f"{p.location()}:{p.severity}{who}{fld} {p.message}{fix}")
    return lines


def _gone(path: Path) -> bool:
    """The file is not there (a transient error reading the folder is not "gone": it
    must never withdraw a batch)."""
    try:
        return not path.is_file()
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _mark(path: Path) -> tuple[int, int] | None:
    """A file's (size, mtime_ns), None when it is not there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _move(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` (an earlier file of that name is replaced)."""
    target = folder / path.name
    with contextlib.suppress(FileNotFoundError):  # removed by hand meanwhile
        os.replace(path, target)
    return target
