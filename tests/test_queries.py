"""The read-only queries behind status and reports: numbers, plans, read-only-ness."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest
from shots import make_shot
from viewkit import HOSTILE_PROMPT, build_batch, mixed_specs

from runner.errors import LedgerError
from runner.ledger import Ledger, open_ledger
from runner.ledger.queries import report_rows, status_summary
from runner.model import ShotState


async def test_status_summary_counts_money_and_problems(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        s = await status_summary(ledger)
    assert s.total == 11
    assert s.counts[ShotState.DONE] == 4
    assert s.counts[ShotState.PENDING] == 2
    assert s.count(ShotState.FAILED, ShotState.MODERATED) == 2
    assert s.counts[ShotState.AMBIGUOUS] == 1
    assert s.in_flight == 2  # submitted + rendered
    # 11 shots, two without a price: 9 x 0.15 planned
    assert s.planned_uptc == 9 * 150_000
    assert s.unknown_price == 2
    # accepted generate calls: 4 done (one unpriced), moderated, failed, submitted, rendered
    assert s.spent_uptc == 7 * 150_000
    # what pending shots will cost: one priced, one not
    assert (s.remaining_uptc, s.unknown_price_remaining) == (150_000, 1)
    assert s.unfinished == 4  # pending x2, submitted, rendered
    assert [i.shot_id for i in s.failures] == ["blocked", "broken"]  # manifest order
    assert s.failures[0].message == "the prompt was refused by content moderation"
    assert s.failures[0].error_kind == "moderated"
    assert s.failures_total == 2
    assert [i.shot_id for i in s.parked] == ["lost-answer"] and s.parked_total == 1
    assert s.last_run is not None and s.last_run.run_id == 1
    assert s.meta["name"] == "demo"
    kinds = [e.kind for e in s.recent_events]
    assert kinds[0] == "run_started" and kinds.count("shot_failed") == 2


async def test_a_run_whose_process_is_gone_is_not_running(tmp_path: Path) -> None:
    # build_batch started run 1 in this process and never ended it: pid alive -> active
    batch = await build_batch(tmp_path)
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        live = await status_summary(ledger, now=time.time() + 60)
    assert live.run_active
    # 4 done within the first minute; 4 unfinished at 4/min -> about a minute to go
    assert live.done_per_min == pytest.approx(4.0, rel=0.05)
    assert live.eta_s == pytest.approx(60.0, rel=0.05)
    # the same run as left by a process that no longer exists (kill -9)
    con = sqlite3.connect(batch.ledger_path)
    con.execute("UPDATE runs SET pid = 2147480000")
    con.commit()
    con.close()
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        dead = await status_summary(ledger)
    assert not dead.run_active
    assert dead.eta_s is None  # nothing is running, so nothing will arrive


async def test_throughput_of_a_finished_run_covers_the_whole_run(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path, finish_run=True)
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        s = await status_summary(ledger)
        run = s.last_run
    assert run is not None and run.ended_at is not None and run.exit_code == 1
    assert not s.run_active
    assert s.done_in_window == 4
    assert s.window_s == pytest.approx(run.ended_at - run.started_at)


async def test_throughput_counts_only_the_last_ten_minutes_of_a_live_run(
    tmp_path: Path,
) -> None:
    batch = await build_batch(tmp_path)
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        later = await status_summary(ledger, now=time.time() + 3600)
    # an hour on, nothing was done in the trailing window
    assert later.window_s == pytest.approx(600.0)
    assert later.done_in_window == 0 and later.done_per_min == 0


async def test_shots_dropped_from_the_manifest_are_counted_apart(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    keep = [
        make_shot(s.shot_id, prompt=s.prompt, price_ptc=s.price_ptc, quality=s.quality)
        for s in mixed_specs()
        if s.shot_id not in ("queued-1", "in-render")
    ]
    async with await open_ledger(batch.ledger_path, writer=True) as ledger:
        await ledger.sync_manifest(keep)
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        s = await status_summary(ledger)
        rows = await report_rows(ledger)
    assert s.total == 9 and s.removed == 2
    assert s.in_flight == 2  # the dropped in-render shot is still collected
    assert "queued-1" not in {r.shot_id for r in rows}


async def test_report_rows_in_manifest_order_with_filters(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        rows = await report_rows(ledger)
        failed = await report_rows(ledger, states={ShotState.FAILED, ShotState.MODERATED})
        none = await report_rows(ledger, states=set())
    assert [r.shot_id for r in rows] == [s.shot_id for s in mixed_specs()]
    assert [r.shot_id for r in failed] == ["blocked", "broken"]
    assert none == []
    by_id = {r.shot_id: r for r in rows}
    done = by_id["dawn-lake"]
    assert done.state == ShotState.DONE and done.task_id == "400000"
    assert done.sha256 and done.bytes and done.width == 64 and done.seed == 1000
    assert done.model == "v4.5" and done.quality == "540p" and done.duration == 5
    assert done.charged_uptc == 150_000 and done.price_uptc == 150_000
    assert by_id["desert-wind"].price_uptc is None
    assert by_id["queued-1"].charged_uptc == 0 and by_id["queued-1"].attempts == 0
    assert by_id["fox-hare"].prompt == HOSTILE_PROMPT  # stored and returned as is
    assert by_id["broken"].error == "generation failed (status 8) three times"


async def test_spent_counts_accepted_and_resolved_not_ambiguous(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    async with await open_ledger(batch.ledger_path, writer=True) as ledger:
        await ledger.resolve("lost-answer", "777")  # the user found the task: it cost
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        assert await ledger.spent_uptc() == 8 * 150_000


async def test_status_reads_while_a_run_holds_the_ledger(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path, [])
    shots = [make_shot(f"s{i}") for i in range(5)]
    async with await open_ledger(batch.ledger_path, writer=True) as writer:
        await writer.sync_manifest(shots)
        await writer.start_run()
        async with await open_ledger(batch.ledger_path, writer=False) as reader:
            before = await status_summary(reader)
            assert before.counts[ShotState.PENDING] == 5 and before.run_active
            row = await writer.get_shot("s0")
            assert row is not None
            attempt = await writer.begin_attempt(row, attempt_no=1, trace_id="t", new_attempt=True)
            await writer.attempt_accepted("s0", attempt, "9", 100_000, time.time())
            after = await status_summary(reader)  # the same reader sees the new commit
            assert after.counts[ShotState.SUBMITTED] == 1 and after.spent_uptc == 100_000


async def test_a_broken_ledger_is_a_ledger_error(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path, [])
    con = sqlite3.connect(batch.ledger_path)
    con.execute("DROP TABLE attempts")
    con.commit()
    con.close()
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        with pytest.raises(LedgerError, match="cannot read the ledger"):
            await status_summary(ledger)


# -- query plans ---------------------------------------------------------------------------

_FULL_SCAN = re.compile(r"^SCAN (shots|attempts)\b(?! USING)")


async def _traced(ledger: Ledger, states: set[ShotState]) -> list[str]:
    statements: list[str] = []
    await ledger.connection.set_trace_callback(statements.append)
    await status_summary(ledger)
    await report_rows(ledger, states=states)
    await ledger.connection.set_trace_callback(None)
    return [s for s in statements if s.lstrip().upper().startswith("SELECT")]


def _plans(path: Path, statements: list[str]) -> dict[str, list[str]]:
    con = sqlite3.connect(path)
    try:
        return {sql: [r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql)] for sql in statements}
    finally:
        con.close()


def _has_outcome_index(path: Path) -> bool:
    con = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'attempts'"
            )
        ]
        return any(con.execute(f"PRAGMA index_info({n})").fetchone()[2] == "outcome" for n in names)
    finally:
        con.close()


async def test_status_and_filtered_report_queries_use_an_index(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        statements = await _traced(ledger, {ShotState.FAILED, ShotState.DONE})
    plans = _plans(batch.ledger_path, statements)
    assert len(plans) >= 8
    offenders = {
        sql: plan
        for sql, plan in plans.items()
        if any(_FULL_SCAN.match(line) for line in plan)
        and not ("FROM attempts" in sql and "outcome IN" in sql)  # next test
    }
    assert offenders == {}
    assert any("USING INDEX shots_by_state" in " ".join(p) for p in plans.values())


async def test_spent_query_uses_an_index_on_attempt_outcome(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    # migration 2 made it: CREATE INDEX attempts_by_outcome ON attempts (outcome, ...)
    assert _has_outcome_index(batch.ledger_path), "the ledger has no index on attempts.outcome"
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        statements: list[str] = []
        await ledger.connection.set_trace_callback(statements.append)
        await ledger.spent_uptc()
    plans = _plans(batch.ledger_path, statements)
    assert all(not _FULL_SCAN.match(line) for plan in plans.values() for line in plan), plans
