"""The writes a run makes: its own bookkeeping, crash recovery, and every step of a
shot's life from the intent to submit to the file on disk.

Invariants 1 and 2 of :mod:`runner.ledger` are kept here: :meth:`RunWrites.begin_attempt`
and :meth:`RunWrites.attempt_accepted` return only after their commit. Writes about one
shot go through the batcher keyed by that shot, so they land in the order made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from runner.ledger.core import LedgerBase
from runner.ledger.rows import (
    SHOT_COLUMNS,
    AttemptOutcome,
    EventKind,
    ShotRow,
    Statement,
    event_insert,
)
from runner.ledger.rows import now as _now
from runner.model import ShotState


class RunWrites(LedgerBase):
    """Writes a run makes (see :class:`runner.ledger.Ledger`)."""

    async def recover(self) -> list[str]:
        """Repair what a crashed run left behind; returns the shots parked as ambiguous.

        ``submitting`` means the intent was committed and the request may have been
        sent: park as ambiguous (invariant 3). ``downloading`` means a download was cut:
        back to ``rendered`` (the temporary file is discarded by the downloader).
        """
        now = _now()
        parked = [
            r[0]
            for r in await self._fetchall(
                "SELECT shot_id FROM shots WHERE state = ?", (ShotState.SUBMITTING.value,)
            )
        ]
        statements: list[Statement] = []
        for sid in parked:
            statements.append(
                (
                    "UPDATE shots SET state = ?, error_kind = 'ambiguous', last_error = ?, "
                    "updated_at = ? WHERE shot_id = ?",
                    (
                        ShotState.AMBIGUOUS.value,
                        "the run stopped after recording the intent to submit; the request may "
                        "have reached the provider and been charged",
                        now,
                        sid,
                    ),
                )
            )
            statements.append(
                (
                    "UPDATE attempts SET outcome = ?, finished_at = ? "
                    "WHERE shot_id = ? AND outcome = ?",
                    (AttemptOutcome.AMBIGUOUS.value, now, sid, AttemptOutcome.SENDING.value),
                )
            )
            statements.append(
                event_insert(
                    now,
                    EventKind.SHOT_AMBIGUOUS,
                    sid,
                    "found in submitting after an interrupted run: parked",
                )
            )
        statements.append(
            (
                "UPDATE shots SET state = ?, updated_at = ? WHERE state = ?",
                (ShotState.RENDERED.value, now, ShotState.DOWNLOADING.value),
            )
        )
        await self._write_now(statements)
        return parked

    async def start_run(self, *, cpu: int | None = None) -> int:
        """Record a run taking the ledger; ``cpu``: the one CPU its threads are kept on
        (see runner.placement), noted in the ``run_started`` event."""
        now = _now()
        rows = await self._fetchall("SELECT COALESCE(MAX(attempt_id), 0) FROM attempts")
        self._next_attempt_id = int(rows[0][0]) + 1
        await self._write_now(
            [("INSERT INTO runs (started_at, pid) VALUES (?, ?)", (now, os.getpid()))]
        )
        rows = await self._fetchall("SELECT MAX(run_id) FROM runs")
        self._run_id = int(rows[0][0])
        where = f" (threads kept on CPU {cpu})" if cpu is not None else ""
        await self.add_event(EventKind.RUN_STARTED, None, f"run {self._run_id} started{where}")
        return self._run_id

    async def end_run(self, exit_code: int, summary: Mapping[str, Any]) -> None:
        if self._run_id is None:
            return
        await self._write(
            [
                (
                    "UPDATE runs SET ended_at = ?, exit_code = ?, summary = ? WHERE run_id = ?",
                    (_now(), exit_code, json.dumps(dict(summary), default=str), self._run_id),
                ),
                event_insert(
                    _now(),
                    EventKind.RUN_ENDED,
                    None,
                    f"run {self._run_id} ended with exit code {exit_code}",
                ),
            ]
        )

    async def add_event(self, kind: EventKind, shot_id: str | None, message: str) -> None:
        await self._write([event_insert(_now(), kind, shot_id, message)])

    async def begin_attempt(
        self,
        shot: ShotRow,
        *,
        attempt_no: int,
        trace_id: str,
        new_attempt: bool,
    ) -> int:
        """Commit the intent to submit (invariant 1); returns the attempt id.

        ``new_attempt`` is False when this call repeats a call of the same render
        attempt (after a transient error): same trace id, same attempt number.
        """
        now = _now()
        attempt_id = self._next_attempt_id
        self._next_attempt_id += 1
        await self._write(
            [
                (
                    "UPDATE shots SET state = ?, attempts = ?, updated_at = ? WHERE shot_id = ?",
                    (ShotState.SUBMITTING.value, attempt_no, now, shot.shot_id),
                ),
                (
                    "INSERT INTO attempts (attempt_id, shot_id, shot_version, attempt_no, "
                    "trace_id, request_hash, sent_at, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        attempt_id,
                        shot.shot_id,
                        shot.version,
                        attempt_no,
                        trace_id,
                        shot.request_hash,
                        now,
                        AttemptOutcome.SENDING.value,
                    ),
                ),
            ],
            shot.shot_id,
        )
        return attempt_id

    async def attempt_accepted(
        self,
        shot_id: str,
        attempt_id: int,
        task_id: str,
        charged_uptc: int | None,
        next_poll_at: float,
    ) -> None:
        """Commit the task id (invariant 2)."""
        now = _now()
        await self._write(
            [
                (
                    "UPDATE attempts SET outcome = ?, task_id = ?, finished_at = ?, "
                    "charged_uptc = ? WHERE attempt_id = ?",
                    (AttemptOutcome.ACCEPTED.value, task_id, now, charged_uptc, attempt_id),
                ),
                (
                    "UPDATE shots SET state = ?, task_id = ?, submitted_at = ?, poll_count = 0, "
                    "next_poll_at = ?, video_url = NULL, error_kind = NULL, last_error = NULL, "
                    "updated_at = ? WHERE shot_id = ?",
                    (ShotState.SUBMITTED.value, task_id, now, next_poll_at, now, shot_id),
                ),
            ],
            shot_id,
        )

    async def attempt_finished(
        self,
        shot_id: str,
        attempt_id: int,
        outcome: AttemptOutcome,
        *,
        message: str | None,
        http_status: int | None,
        shot_fields: Mapping[str, Any],
        event: tuple[EventKind, str] | None = None,
    ) -> None:
        """Close an attempt that produced no task, and move its shot in one commit."""
        now = _now()
        statements: list[Statement] = [
            (
                "UPDATE attempts SET outcome = ?, finished_at = ?, http_status = ?, message = ? "
                "WHERE attempt_id = ?",
                (outcome.value, now, http_status, message, attempt_id),
            ),
            self._update_sql(shot_id, shot_fields, now),
        ]
        if event is not None:
            statements.append(event_insert(now, event[0], shot_id, event[1]))
        await self._write(statements, shot_id)

    async def update_shot(
        self,
        shot_id: str,
        fields: Mapping[str, Any],
        *,
        event: tuple[EventKind, str] | None = None,
    ) -> None:
        """Set some of a shot's columns (and optionally log an event) in one commit."""
        now = _now()
        statements = [self._update_sql(shot_id, fields, now)]
        if event is not None:
            statements.append(event_insert(now, event[0], shot_id, event[1]))
        await self._write(statements, shot_id)

    @staticmethod
    def _update_sql(shot_id: str, fields: Mapping[str, Any], now: float) -> Statement:
        unknown = set(fields) - SHOT_COLUMNS
        if unknown:
            raise ValueError(f"not a settable shot column: {sorted(unknown)}")
        # sorted: the same set of columns always makes the same SQL text, so the
        # batcher can group them into one executemany
        keys = sorted(fields)
        values = [fields[k].value if isinstance(fields[k], Enum) else fields[k] for k in keys]
        sets = ", ".join(f"{k} = ?" for k in keys)
        return (
            f"UPDATE shots SET {sets}, updated_at = ? WHERE shot_id = ?",
            (*values, now, shot_id),
        )

    async def record_task_cost(
        self, shot_id: str, task_id: str, *, refunded: bool | None, points: str | None
    ) -> None:
        """What the provider says a task finally cost: its cost figure, and a refund
        (the whole charge) of a failed render."""
        statements: list[Statement] = []
        if points is not None:
            statements.append(
                (
                    "UPDATE attempts SET points = ? WHERE shot_id = ? AND task_id = ?",
                    (points, shot_id, task_id),
                )
            )
        if refunded:
            statements.append(
                (
                    "UPDATE attempts SET refunded_uptc = charged_uptc "
                    "WHERE shot_id = ? AND task_id = ? AND refunded_uptc IS NULL",
                    (shot_id, task_id),
                )
            )
        if statements:
            await self._write(statements, shot_id)

    async def record_upload(
        self, sha256: str, url: str, size_bytes: int, charged_uptc: int | None
    ) -> None:
        """Commit an upload (before any generate that uses its URL is sent)."""
        await self._write(
            [
                (
                    "INSERT OR REPLACE INTO uploads (sha256, url, bytes, charged_uptc, "
                    "uploaded_at) VALUES (?, ?, ?, ?, ?)",
                    (sha256, url, size_bytes, charged_uptc, _now()),
                )
            ]
        )

    async def version_moved_aside(self, shot_id: str, version: int, output_path: str) -> None:
        """An archived version's file (and sidecar) now lives at ``output_path``."""
        await self._write(
            [
                (
                    "UPDATE shot_versions SET output_path = ? WHERE shot_id = ? AND version = ?",
                    (output_path, shot_id, version),
                )
            ],
            shot_id,
        )

    async def adopt(self, adopted: Sequence[Mapping[str, Any]]) -> None:
        """Take files already on disk as these shots' outputs (done, nothing sent):
        each mapping has shot_id, task_id, seed, bytes, sha256, done_at."""
        now = _now()
        statements: list[Statement] = []
        for item in adopted:
            statements.append(
                (
                    "UPDATE shots SET state = ?, task_id = ?, seed = ?, bytes = ?, sha256 = ?, "
                    "done_at = ?, error_kind = NULL, last_error = NULL, updated_at = ? "
                    "WHERE shot_id = ? AND state = ?",
                    (
                        ShotState.DONE.value,
                        item["task_id"],
                        item["seed"],
                        item["bytes"],
                        item["sha256"],
                        item["done_at"],
                        now,
                        item["shot_id"],
                        ShotState.PENDING.value,
                    ),
                )
            )
            statements.append(
                event_insert(
                    now,
                    EventKind.ADOPTED,
                    item["shot_id"],
                    "its file and sidecar were already on disk and match: adopted, nothing sent",
                )
            )
        if statements:
            await self._write_now(statements)
