"""What ``pixrun status``, ``pixrun report`` and the end of ``pixrun run`` read from a
ledger, by its path: each opens the ledger read-only, asks :mod:`runner.ledger.queries`
and closes it, so the CLI only calls these and prints.

Invariant: nothing here writes or takes the run lock; every function is safe while a
run writes the same ledger from another process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path

from runner.ledger.opening import open_ledger
from runner.ledger.queries import (
    Issues,
    ReportRow,
    StatusSummary,
    failed_and_parked,
    last_run,
    report_rows,
    status_summary,
)
from runner.model import ShotState


async def status_of(path: Path) -> StatusSummary:
    """Where the batch of the ledger at ``path`` stands."""
    async with await open_ledger(path, writer=False) as ledger:
        return await status_summary(ledger)


async def watch_status(path: Path, interval_s: float) -> AsyncGenerator[StatusSummary, None]:
    """A status summary now, and again every ``interval_s`` seconds, for as long as the
    caller iterates (close the iterator, e.g. with ``contextlib.aclosing``, to stop)."""
    async with await open_ledger(path, writer=False) as ledger:
        while True:
            yield await status_summary(ledger)
            await asyncio.sleep(interval_s)


async def report_of(
    path: Path, states: Iterable[ShotState] | None
) -> tuple[list[ReportRow], StatusSummary]:
    """The report rows (only ``states``, if given) and the summary a report heads with."""
    async with await open_ledger(path, writer=False) as ledger:
        rows = await report_rows(ledger, states=states)
        summary = await status_summary(ledger, issue_limit=1, event_limit=0)
    return rows, summary


async def issues_of(path: Path, *, limit: int = 10) -> Issues:
    """The first ``limit`` failed and parked shots, and how many of each there are."""
    async with await open_ledger(path, writer=False) as ledger:
        return await failed_and_parked(ledger, limit=limit)


async def last_stop_of(path: Path) -> tuple[str, float] | None:
    """Why the ledger's last run stopped early, and when (epoch seconds) that run
    started; None when it ended without a stop, is still running, or there is no run
    yet. The start, not the end: a run stopped early still collects what is in flight
    for a while, and a file saved meanwhile is new text for the next run."""
    async with await open_ledger(path, writer=False) as ledger:
        run = await last_run(ledger)
    if run is None or run.ended_at is None or not run.summary:
        return None
    reason = run.summary.get("stop_reason")
    return (str(reason), run.started_at) if reason else None
