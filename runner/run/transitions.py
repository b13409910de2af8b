"""The one writer of shot transitions.

Invariants:
- Every change of a shot's state or columns during a run goes through
  :class:`Transitions`, which in one call writes the ledger (one commit, with the
  ledger event when there is one), updates the in-memory row, moves the counts and
  emits the run event: memory, ledger and display cannot drift apart, and a ledger
  event and a run event about one change always carry the same message.
- The ledger is written first: if the commit fails, nothing in memory moves (the
  ledger error stops the run).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from runner.ledger import AttemptOutcome, EventKind, ShotRow
from runner.model import ErrorKind, ShotState
from runner.run.context import RunContext
from runner.run.events import RunEventKind

_ROW_FIELDS = frozenset(f.name for f in dataclasses.fields(ShotRow))


@dataclass(frozen=True)
class Note:
    """What a transition tells: a run event, and the ledger event of the same text."""

    #: None: a ledger event only
    run_kind: RunEventKind | None
    message: str
    ledger_kind: EventKind | None = None
    #: the run event's text when it differs from the ledger's (a prefix, say)
    shown: str | None = None


class Transitions:
    """Commits shot transitions for one run (see the module invariants)."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    async def commit(
        self,
        row: ShotRow,
        state: ShotState | None = None,
        note: Note | None = None,
        **fields: Any,
    ) -> None:
        """Move ``row`` to ``state`` (None: keep it) and set ``fields``, in one commit."""
        values = dict(fields)
        if state is not None:
            values["state"] = state
        await self._ctx.ledger.update_shot(row.shot_id, values, event=_ledger_event(note))
        self._apply(row, state, fields, note)

    def _apply(
        self, row: ShotRow, state: ShotState | None, fields: dict[str, Any], note: Note | None
    ) -> None:
        for name, value in fields.items():
            if name in _ROW_FIELDS:
                setattr(row, name, value.value if isinstance(value, ErrorKind) else value)
        if state is not None:
            before = row.state
            self._ctx.tally.move(row, state)
            if before == ShotState.SUBMITTED:
                self._render_ended(row, state, fields)
        self._tell(row, note)

    def _render_ended(self, row: ShotRow, state: ShotState, fields: dict[str, Any]) -> None:
        """A task's render ended (for the failure-rate brake): a video to collect, or a
        failure with no retry in this run. Retries and lost tasks are not counted."""
        if state in (ShotState.RENDERED, ShotState.DOWNLOADING):
            self._ctx.render_ended(None)
        elif state in (ShotState.FAILED, ShotState.MODERATED):
            self._ctx.render_ended(fields.get("last_error") or row.error_kind or state.value)

    def _tell(self, row: ShotRow, note: Note | None) -> None:
        if note is not None and note.run_kind is not None:
            self._ctx.emit(note.run_kind, note.shown or note.message, row)

    # -- the three writes of a generate call ----------------------------------------

    async def intent(self, row: ShotRow, attempt_no: int, trace_id: str, *, new: bool) -> int:
        """pending -> submitting, with the attempt row: committed before any byte is
        sent (the ledger's invariant 1). The attempt id."""
        attempt_id = await self._ctx.ledger.begin_attempt(
            row, attempt_no=attempt_no, trace_id=trace_id, new_attempt=new
        )
        row.attempts = attempt_no
        self._ctx.tally.move(row, ShotState.SUBMITTING)
        return attempt_id

    async def accepted(
        self, row: ShotRow, attempt_id: int, task_id: str, next_poll_at: float
    ) -> None:
        """submitting -> submitted, with the task id (the ledger's invariant 2)."""
        now = time.time()
        await self._ctx.ledger.attempt_accepted(
            row.shot_id, attempt_id, task_id, row.price_uptc, next_poll_at=next_poll_at
        )
        row.task_id, row.submitted_at, row.next_poll_at = task_id, now, next_poll_at
        row.poll_count, row.error_kind, row.video_url = 0, None, None
        self._ctx.tally.move(row, ShotState.SUBMITTED)
        self._ctx.emit(RunEventKind.SUBMITTED, f"accepted as task {task_id}", row)

    async def attempt_ended(
        self,
        row: ShotRow,
        attempt_id: int,
        outcome: AttemptOutcome,
        state: ShotState,
        kind: ErrorKind | None,
        *,
        message: str | None,
        http_status: int | None = None,
        not_before: float | None = None,
        note: Note | None = None,
        record_error: bool = True,
    ) -> None:
        """A generate call that made no task: close its attempt and move the shot
        (``record_error``: the message becomes the shot's last error)."""
        fields: dict[str, Any] = {"not_before": not_before, "error_kind": kind}
        if record_error:
            fields["last_error"] = message
        await self._ctx.ledger.attempt_finished(
            row.shot_id,
            attempt_id,
            outcome,
            message=message,
            http_status=http_status,
            shot_fields={**fields, "state": state},
            event=_ledger_event(note),
        )
        self._apply(row, state, fields, note)


def _ledger_event(note: Note | None) -> tuple[EventKind, str] | None:
    return (note.ledger_kind, note.message) if note and note.ledger_kind else None
