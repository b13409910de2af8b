"""Read-only queries behind ``pixrun status``, ``pixrun report`` and the run summary.

Invariants:
- Nothing here writes. Every function works on a reader ledger (``open_ledger(path,
  writer=False)``) while a run writes the same file from another process: WAL gives
  each statement a consistent snapshot, and a status view may be one commit stale
  between two statements, never torn within one.
- Aggregates are computed in SQL; :func:`status_summary` loads no more rows than it
  shows, so it answers in well under a second on a 100,000-shot ledger.
- Every filtering query is served by an index (``tests/test_queries.py`` checks the
  plans); a full read of the shots table happens only for the unfiltered report, which
  reads every row anyway.
- ``sqlite3`` errors leave this module as :class:`runner.errors.LedgerError`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from runner.errors import LedgerError
from runner.ledger import SPENT_PARAMS, Ledger
from runner.ledger.query_rows import (
    EventRow,
    ReportRow,
    RunInfo,
    ShotIssue,
    StatusSummary,
    is_simulated,
)
from runner.model import FINAL_STATES, ShotState, duration_seconds

__all__ = [
    "EventRow",
    "Issues",
    "ReportRow",
    "RunInfo",
    "ShotIssue",
    "StatusSummary",
    "failed_and_parked",
    "is_simulated",
    "last_run",
    "recent_events",
    "report_rows",
    "status_summary",
]

#: throughput of a run in progress is measured over this trailing window
THROUGHPUT_WINDOW_S = 600.0

#: states that will still cost money if the run goes on: not yet charged
_TO_CHARGE = (ShotState.PENDING.value, ShotState.SUBMITTING.value)

#: states a run still has to work through (parked shots wait for the user instead)
_UNFINISHED = frozenset(ShotState) - FINAL_STATES - {ShotState.AMBIGUOUS}

_FAILED_STATES = (ShotState.FAILED, ShotState.MODERATED)
_PARKED_STATES = (ShotState.AMBIGUOUS,)

#: (failed shots shown, failed in all, parked shots shown, parked in all)
Issues = tuple[list[ShotIssue], int, list[ShotIssue], int]


async def _fetchall(ledger: Ledger, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    try:
        async with ledger.connection.execute(sql, params) as cur:
            return list(await cur.fetchall())
    except sqlite3.Error as exc:
        raise LedgerError(
            f"cannot read the ledger {ledger.path}: {exc}",
            hint="is it a pixrun ledger? 'sqlite3 LEDGER \"PRAGMA integrity_check\"' checks it",
        ) from exc


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


# -- pieces ------------------------------------------------------------------------------


async def uploaded_digests(ledger: Ledger) -> frozenset[str]:
    """Content digests of the local images this ledger has uploaded."""
    rows = await _fetchall(ledger, "SELECT sha256 FROM uploads")
    return frozenset(str(r[0]) for r in rows)


async def last_run(ledger: Ledger) -> RunInfo | None:
    rows = await _fetchall(
        ledger,
        "SELECT run_id, started_at, ended_at, pid, exit_code, summary FROM runs "
        "ORDER BY run_id DESC LIMIT 1",
    )
    if not rows:
        return None
    run_id, started_at, ended_at, pid, exit_code, summary_json = rows[0]
    summary: dict[str, Any] | None = None
    if summary_json:
        with contextlib.suppress(ValueError):
            loaded = json.loads(summary_json)
            summary = loaded if isinstance(loaded, dict) else None
    return RunInfo(
        run_id=int(run_id),
        started_at=float(started_at),
        ended_at=None if ended_at is None else float(ended_at),
        pid=int(pid),
        exit_code=None if exit_code is None else int(exit_code),
        summary=summary,
    )


async def _issues(ledger: Ledger, states: Sequence[ShotState], *, limit: int) -> list[ShotIssue]:
    """The first ``limit`` shots of the manifest in ``states``, in manifest order."""
    values = [s.value for s in states]
    rows = await _fetchall(
        ledger,
        "SELECT shot_id, state, attempts, task_id, error_kind, last_error, updated_at "
        f"FROM shots WHERE state IN ({_marks(values)}) AND in_manifest = 1 ORDER BY seq LIMIT ?",
        (*values, limit),
    )
    return [
        ShotIssue(
            shot_id=r[0],
            state=ShotState(r[1]),
            attempts=int(r[2]),
            task_id=r[3],
            error_kind=r[4],
            message=r[5],
            updated_at=float(r[6]),
        )
        for r in rows
    ]


async def _failed_and_parked(
    ledger: Ledger, counts: Mapping[ShotState, int], *, limit: int
) -> Issues:
    # the totals come from _tally's counts, which count the same rows (state, and
    # in_manifest = 1): no COUNT query of its own when a page is full
    failures = await _issues(ledger, _FAILED_STATES, limit=limit)
    parked = await _issues(ledger, _PARKED_STATES, limit=limit)
    return (
        failures,
        sum(counts.get(s, 0) for s in _FAILED_STATES),
        parked,
        sum(counts.get(s, 0) for s in _PARKED_STATES),
    )


async def failed_and_parked(ledger: Ledger, *, limit: int = 20) -> Issues:
    """The first ``limit`` failed or moderated shots and the first ``limit`` parked as
    ambiguous (manifest order), and how many of each there are."""
    counts, _ = await _tally(ledger)
    return await _failed_and_parked(ledger, counts, limit=limit)


async def recent_events(ledger: Ledger, *, limit: int = 8) -> list[EventRow]:
    """The latest events, oldest first."""
    rows = await _fetchall(
        ledger,
        "SELECT event_id, at, kind, shot_id, message FROM events ORDER BY event_id DESC LIMIT ?",
        (limit,),
    )
    return [
        EventRow(event_id=int(r[0]), at=float(r[1]), kind=r[2], shot_id=r[3], message=r[4])
        for r in reversed(rows)
    ]


async def _done_between(ledger: Ledger, start: float, end: float) -> int:
    rows = await _fetchall(
        ledger,
        "SELECT COUNT(*) FROM shots WHERE state = ? AND done_at >= ? AND done_at <= ?",
        (ShotState.DONE.value, start, end),
    )
    return int(rows[0][0])


def _throughput_window(run: RunInfo | None, now: float) -> tuple[float, float] | None:
    """Last 10 minutes of a run in progress; the whole of a finished one."""
    if run is None:
        return None
    if run.active:
        return max(run.started_at, now - THROUGHPUT_WINDOW_S), now
    end = run.ended_at if run.ended_at is not None else now
    return run.started_at, end


# -- the status view -----------------------------------------------------------------------


async def _tally(ledger: Ledger) -> tuple[dict[ShotState, int], Counter[str]]:
    """Shots of the manifest per state, and the sums the status shows: ``removed``,
    ``in_flight``, ``planned_uptc``, ``remaining_uptc``, ``unknown_price`` and
    ``unknown_price_remaining``."""
    # One pass over the state index; in_manifest and price come from the row.
    rows = await _fetchall(
        ledger,
        "SELECT state, "
        "COALESCE(SUM(in_manifest = 1), 0), "
        "COALESCE(SUM(in_manifest != 1), 0), "
        "COALESCE(SUM(CASE WHEN in_manifest = 1 THEN price_uptc END), 0), "
        "COALESCE(SUM(in_manifest = 1 AND price_uptc IS NULL), 0) "
        "FROM shots GROUP BY state",
    )
    counts: dict[ShotState, int] = {}
    sums: Counter[str] = Counter()
    for state_text, listed, dropped, price_uptc, unknown in rows:
        try:
            state = ShotState(state_text)
        except ValueError as exc:
            raise LedgerError(
                f"the ledger {ledger.path} holds an unknown shot state {state_text!r}",
                hint="it was written by a newer pixrun; upgrade pixrun",
            ) from exc
        counts[state] = int(listed)
        sums["removed"] += int(dropped)
        if state.at_provider:
            sums["in_flight"] += int(listed) + int(dropped)
        sums["planned_uptc"] += int(price_uptc)
        sums["unknown_price"] += int(unknown)
        if state.value in _TO_CHARGE:
            sums["remaining_uptc"] += int(price_uptc)
            sums["unknown_price_remaining"] += int(unknown)
    return counts, sums


async def status_summary(
    ledger: Ledger,
    *,
    now: float | None = None,
    issue_limit: int = 20,
    event_limit: int = 8,
) -> StatusSummary:
    """Everything ``pixrun status`` shows, aggregated in SQL."""
    now = time.time() if now is None else now
    counts, sums = await _tally(ledger)
    spent = await ledger.spent_uptc()
    run = await last_run(ledger)
    window = _throughput_window(run, now)
    done_in_window = 0
    window_s: float | None = None
    done_per_min: float | None = None
    if window is not None:
        window_s = max(0.0, window[1] - window[0])
        done_in_window = await _done_between(ledger, window[0], window[1])
        if window_s >= 1.0:
            done_per_min = done_in_window / (window_s / 60.0)
    unfinished = sum(n for s, n in counts.items() if s in _UNFINISHED)
    eta_s: float | None = None
    if done_per_min and run is not None and run.active:
        eta_s = unfinished / done_per_min * 60.0
    failures, failures_total, parked, parked_total = await _failed_and_parked(
        ledger, counts, limit=issue_limit
    )
    events = await recent_events(ledger, limit=event_limit)
    meta = await ledger.get_meta()
    return StatusSummary(
        total=sum(counts.values()),
        counts=counts,
        removed=sums["removed"],
        in_flight=sums["in_flight"],
        planned_uptc=sums["planned_uptc"],
        spent_uptc=spent,
        remaining_uptc=sums["remaining_uptc"],
        unknown_price=sums["unknown_price"],
        unknown_price_remaining=sums["unknown_price_remaining"],
        unfinished=unfinished,
        done_in_window=done_in_window,
        window_s=window_s,
        done_per_min=done_per_min,
        eta_s=eta_s,
        failures=failures,
        failures_total=failures_total,
        parked=parked,
        parked_total=parked_total,
        last_run=run,
        run_active=run is not None and run.active,
        recent_events=events,
        meta=meta,
        generated_at=now,
    )


# -- the report ------------------------------------------------------------------------------

_REPORT_SELECT = (
    "SELECT shot_id, version, mode, state, prompt, model, quality, duration, motion_mode, "
    "seed, attempts, price_uptc, "
    "(SELECT COALESCE(SUM(a.charged_uptc), 0) - COALESCE(SUM(a.refunded_uptc), 0) "
    "FROM attempts a "
    f" WHERE a.shot_id = shots.shot_id AND a.outcome IN ({_marks(SPENT_PARAMS)})), "
    "task_id, output_path, bytes, sha256, error_kind, last_error, poster_url, width, height, "
    "done_at FROM shots WHERE in_manifest = 1"
)


_REPORT_FIELDS = tuple(f.name for f in fields(ReportRow))


def _report_row(row: Sequence[Any]) -> ReportRow:
    # _REPORT_SELECT names its columns in ReportRow's field order
    values = dict(zip(_REPORT_FIELDS, row, strict=True))
    values["version"] = int(values["version"])
    values["state"] = ShotState(values["state"])
    values["duration"] = duration_seconds(values["duration"])
    values["attempts"] = int(values["attempts"])
    values["charged_uptc"] = int(values["charged_uptc"])
    return ReportRow(**values)


async def report_rows(
    ledger: Ledger, *, states: Iterable[ShotState | str] | None = None
) -> list[ReportRow]:
    """One row per shot of the manifest, in manifest order; ``states`` filters."""
    params: list[Any] = list(SPENT_PARAMS)
    sql = _REPORT_SELECT
    if states is not None:
        wanted = sorted({ShotState(s).value for s in states})
        if not wanted:
            return []
        sql += f" AND state IN ({_marks(wanted)})"
        params.extend(wanted)
    sql += " ORDER BY seq"
    rows = await _fetchall(ledger, sql, params)
    return [_report_row(r) for r in rows]
