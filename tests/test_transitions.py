"""The run's rooms, in milliseconds: the one transition writer, the submit table, the
money reservation. A real ledger on disk; no provider call is made."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from shots import make_shot

from runner.errors import (
    AmbiguousSubmit,
    AuthRefused,
    ConcurrencyLimited,
    ContractMismatch,
    InvalidRequest,
    OutOfCredit,
    RateLimited,
    TransientError,
)
from runner.ledger import AttemptOutcome, EventKind, open_ledger
from runner.model import ErrorKind, ShotState
from runner.provider import Provider, ProviderConfig
from runner.run.context import RunContext, Tally
from runner.run.events import RunEvent, RunEventKind, RunSnapshot
from runner.run.options import SchedulerOptions, StopReason
from runner.run.submit import OUTCOMES, outcome_for
from runner.run.transitions import Note, Transitions


class Recorder:
    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def event(self, event: RunEvent) -> None:
        self.events.append(event)

    def snapshot(self, snapshot: RunSnapshot) -> None:
        pass


async def test_one_commit_moves_ledger_row_counts_and_both_events_together(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.ledger.sqlite"
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.sync_manifest([make_shot("a"), make_shot("b")])
        provider = Provider(ProviderConfig(base_url="http://127.0.0.1:9", api_key="k"))
        recorder = Recorder()
        ctx = RunContext(ledger, provider, SchedulerOptions(output_dir=tmp_path), recorder)
        ctx.tally.start(await ledger.counts_by_state(), 0, 0)
        row = await ledger.get_shot("a")
        assert row is not None
        writer = Transitions(ctx)
        note = Note(RunEventKind.FAILED, "the render failed", EventKind.SHOT_FAILED)
        await writer.commit(
            row, ShotState.FAILED, note, error_kind=ErrorKind.RENDER_FAILED, last_error="boom"
        )
        await ledger.flush()
        # memory
        assert row.state is ShotState.FAILED and row.error_kind == "render_failed"
        assert ctx.tally.counts[ShotState.FAILED] == 1 and ctx.tally.counts[ShotState.PENDING] == 1
        # the run event and the ledger event say the same
        assert [(e.kind, e.message, e.shot_id) for e in recorder.events] == [
            (RunEventKind.FAILED, "the render failed", "a")
        ]
    con = sqlite3.connect(path)
    assert con.execute(
        "SELECT state, error_kind, last_error FROM shots WHERE shot_id='a'"
    ).fetchone() == (
        "failed",
        "render_failed",
        "boom",
    )
    assert con.execute(
        "SELECT kind, shot_id, message FROM events WHERE kind='shot_failed'"
    ).fetchall() == [("shot_failed", "a", "the render failed")]


async def test_a_commit_that_cannot_be_written_moves_nothing_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "t.ledger.sqlite"
    ledger = await open_ledger(path, writer=True)
    await ledger.sync_manifest([make_shot("a")])
    provider = Provider(ProviderConfig(base_url="http://127.0.0.1:9", api_key="k"))
    ctx = RunContext(ledger, provider, SchedulerOptions(output_dir=tmp_path), Recorder())
    ctx.tally.start(await ledger.counts_by_state(), 0, 0)
    row = await ledger.get_shot("a")
    assert row is not None
    with pytest.raises(ValueError):  # not a shot column: refused before any write
        await Transitions(ctx).commit(row, ShotState.DONE, no_such_column=1)
    assert row.state is ShotState.PENDING and ctx.tally.counts[ShotState.PENDING] == 1
    await ledger.flush()
    stored = await ledger.get_shot("a")  # nor in the ledger
    assert stored is not None and stored.state is ShotState.PENDING
    await ledger.close()


@pytest.mark.parametrize(
    ("error", "attempt", "state", "kind", "retry", "stop"),
    [
        (
            AuthRefused("k"),
            AttemptOutcome.AUTH,
            ShotState.PENDING,
            ErrorKind.AUTH,
            False,
            StopReason.AUTH,
        ),
        (
            OutOfCredit("m"),
            AttemptOutcome.NO_CREDIT,
            ShotState.PENDING,
            ErrorKind.NO_CREDIT,
            False,
            StopReason.OUT_OF_CREDIT,
        ),
        (
            RateLimited("r"),
            AttemptOutcome.RATE_LIMITED,
            ShotState.PENDING,
            ErrorKind.RATE_LIMITED,
            True,
            None,
        ),
        (
            ConcurrencyLimited("c"),
            AttemptOutcome.RATE_LIMITED,
            ShotState.PENDING,
            ErrorKind.RATE_LIMITED,
            True,
            None,
        ),
        (
            AmbiguousSubmit("a"),
            AttemptOutcome.AMBIGUOUS,
            ShotState.AMBIGUOUS,
            ErrorKind.AMBIGUOUS,
            False,
            None,
        ),
        (
            InvalidRequest("i"),
            AttemptOutcome.INVALID,
            ShotState.FAILED,
            ErrorKind.INVALID,
            False,
            None,
        ),
        (
            TransientError("t"),
            AttemptOutcome.TRANSIENT,
            ShotState.PENDING,
            ErrorKind.TRANSIENT,
            True,
            None,
        ),
        (
            ContractMismatch("x"),
            AttemptOutcome.MISMATCH,
            ShotState.PENDING,
            ErrorKind.TRANSIENT,
            False,
            StopReason.CONTRACT,
        ),
        (
            ContractMismatch("x", shot_charged=True),
            AttemptOutcome.AMBIGUOUS,
            ShotState.AMBIGUOUS,
            ErrorKind.AMBIGUOUS,
            False,
            StopReason.CONTRACT,
        ),
    ],
)
def test_the_submit_table_says_what_each_error_makes_of_a_shot(
    error: Exception,
    attempt: AttemptOutcome,
    state: ShotState,
    kind: ErrorKind,
    retry: bool,
    stop: StopReason | None,
) -> None:
    outcome = outcome_for(error)  # type: ignore[arg-type]
    assert (outcome.attempt, outcome.state, outcome.kind) == (attempt, state, kind)
    assert outcome.retry is retry and outcome.stop is stop


def test_no_outcome_fails_a_shot_for_the_providers_own_trouble() -> None:
    failing = {kind for kind, outcome in OUTCOMES if outcome.state is ShotState.FAILED}
    assert failing == {InvalidRequest}


def test_a_reservation_is_released_however_the_call_ends() -> None:
    tally = Tally(clock=lambda: 0.0)
    assert tally.budget_allows(100_000, 150_000)
    with pytest.raises(RuntimeError), tally.reserve(100_000):
        assert not tally.budget_allows(100_000, 150_000)
        raise RuntimeError("the call failed")
    assert tally.reserved_uptc == 0 and tally.budget_allows(100_000, 150_000)
