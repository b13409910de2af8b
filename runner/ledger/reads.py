"""The reads of :class:`runner.ledger.Ledger`: what the scheduler and the run's set-up
work from (rows to dispatch, counts, money, owners of task ids and output paths).

Invariant: nothing here writes; every read is one call on the connection's thread, so a
batched write cannot land between a SELECT's first and last row.
"""

from __future__ import annotations

from collections.abc import Iterable

from runner.ledger.core import LedgerBase
from runner.ledger.rows import ROW_SELECT, SPENT_PARAMS, SPENT_SQL, EventKind, ShotRow
from runner.model import ShotState

#: the provider accepted the shot's task and its video is not saved yet (state values)
_TASK_OUT = (
    ShotState.SUBMITTED.value,
    ShotState.RENDERED.value,
    ShotState.DOWNLOADING.value,
)


class LedgerReads(LedgerBase):
    """Reads of the ledger (see :class:`runner.ledger.Ledger`)."""

    async def next_pending(self, *, after_seq: int, limit: int) -> list[ShotRow]:
        """Pending shots of the manifest in manifest order, after ``after_seq``."""
        rows = await self._fetchall(
            f"{ROW_SELECT} WHERE state = ? AND seq > ? AND in_manifest = 1 ORDER BY seq LIMIT ?",
            (ShotState.PENDING.value, after_seq, limit),
        )
        return [ShotRow.from_tuple(r) for r in rows]

    async def shots_in(self, states: Iterable[ShotState]) -> list[ShotRow]:
        """Every shot in the given states (used at start-up to resume work)."""
        states = list(states)
        marks = ", ".join("?" for _ in states)
        rows = await self._fetchall(
            f"{ROW_SELECT} WHERE state IN ({marks}) ORDER BY seq", [s.value for s in states]
        )
        return [ShotRow.from_tuple(r) for r in rows]

    async def get_shot(self, shot_id: str) -> ShotRow | None:
        rows = await self._fetchall(f"{ROW_SELECT} WHERE shot_id = ?", (shot_id,))
        return ShotRow.from_tuple(rows[0]) if rows else None

    async def unproven_fetch_route(self) -> str | None:
        """The fetch route an earlier run caught saying "no such task" for a task it
        had just accepted, unless a fetch found a task after that (None)."""
        rows = await self._fetchall(
            "SELECT kind, message FROM events WHERE kind IN (?, ?) ORDER BY event_id DESC LIMIT 1",
            (EventKind.ROUTE_UNPROVEN.value, EventKind.ROUTE_PROVEN.value),
        )
        if rows and rows[0][0] == EventKind.ROUTE_UNPROVEN.value:
            return str(rows[0][1])
        return None

    async def counts_by_state(self) -> dict[ShotState, int]:
        """The run's shots by state: the manifest's, and those dropped from it whose task
        the run still collects (submitted, rendered, downloading). A dropped shot that
        failed or is done is the manifest's business no more: it never makes a run exit
        1, nor counts among its shots. One pass over the state index."""
        collected = (ShotState.SUBMITTING.value, *_TASK_OUT)
        rows = await self._fetchall(
            "SELECT state, SUM(in_manifest = 1 OR state IN (?, ?, ?, ?)) FROM shots GROUP BY state",
            collected,
        )
        return {ShotState(s): int(n) for s, n in rows if n}

    async def spent_uptc(self) -> int:
        """What this ledger's work cost so far: accepted generate calls net of what the
        provider refunded, plus uploads (ambiguous calls are not included)."""
        rows = await self._fetchall(SPENT_SQL, SPENT_PARAMS)
        return int(rows[0][0])

    async def remaining_cost(self) -> tuple[int, int, int]:
        """``(count, priced_uptc, unpriced)`` of the pending shots of the manifest."""
        rows = await self._fetchall(
            "SELECT COUNT(*), COALESCE(SUM(price_uptc), 0), "
            "SUM(CASE WHEN price_uptc IS NULL THEN 1 ELSE 0 END) "
            "FROM shots WHERE state = ? AND in_manifest = 1",
            (ShotState.PENDING.value,),
        )
        n, total, unpriced = rows[0]
        return int(n), int(total), int(unpriced or 0)

    async def shot_ids_in(self, states: Iterable[ShotState]) -> list[str]:
        states = list(states)
        marks = ", ".join("?" for _ in states)
        rows = await self._fetchall(
            f"SELECT shot_id FROM shots WHERE state IN ({marks}) ORDER BY seq",
            [s.value for s in states],
        )
        return [r[0] for r in rows]

    async def done_outputs(self) -> list[tuple[str, str, int | None]]:
        """``(shot_id, output_path, bytes)`` of every done shot of the manifest, for
        verification (a shot dropped from the manifest is not downloaded again)."""
        rows = await self._fetchall(
            "SELECT shot_id, output_path, bytes FROM shots WHERE state = ? AND in_manifest = 1",
            (ShotState.DONE.value,),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def never_sent(self) -> list[tuple[str, int, str, str]]:
        """``(shot id, version, output path, request hash)`` of the manifest's shots this
        ledger never sent: a file already at their output may be adoptable."""
        rows = await self._fetchall(
            "SELECT shot_id, version, output_path, request_hash FROM shots "
            "WHERE state = ? AND attempts = 0 AND in_manifest = 1 ORDER BY seq",
            (ShotState.PENDING.value,),
        )
        return [(str(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]

    async def looks_simulated(self, clip_px: int) -> bool:
        """An older ledger without a recorded provider was a rehearsal when its done
        videos are the simulator's ``clip_px`` square clips."""
        rows = await self._fetchall(
            "SELECT COUNT(*) FROM shots WHERE state = ? AND width = ? AND height = ?",
            (ShotState.DONE.value, clip_px, clip_px),
        )
        return int(rows[0][0]) > 0

    async def bytes_to_come(self) -> list[tuple[str | None, str | None, int]]:
        """``(quality, duration, count)`` of the shots whose video is still to be saved."""
        states = (ShotState.PENDING.value, *_TASK_OUT)
        rows = await self._fetchall(
            "SELECT quality, duration, COUNT(*) FROM shots WHERE in_manifest = 1 AND state IN "
            "(?, ?, ?, ?) GROUP BY quality, duration",
            states,
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def upload_url(self, sha256: str) -> str | None:
        """Where an image of this content was uploaded for this ledger, if it was."""
        rows = await self._fetchall("SELECT url FROM uploads WHERE sha256 = ?", (sha256,))
        return str(rows[0][0]) if rows else None

    async def sent_trace_id(self, shot_id: str, version: int, attempt_no: int) -> str | None:
        """The Ai-trace-id an attempt was last sent with, so a repeat of that attempt
        sends it again (even one sent before this ledger had a trace secret)."""
        rows = await self._fetchall(
            "SELECT trace_id FROM attempts WHERE shot_id = ? AND shot_version = ? "
            "AND attempt_no = ? ORDER BY attempt_id DESC LIMIT 1",
            (shot_id, version, attempt_no),
        )
        return str(rows[0][0]) if rows else None

    async def output_owner(self, output_path: str) -> tuple[str, str | None, int] | None:
        """Which shot owns a relative output path through an archived version that
        left a file there: ``(shot_id, that version's sha256, version)``.

        Versions that never finished a file (sha256 NULL) are skipped: a new version
        that failed, then changed again, must not hide the file of the one before it.
        """
        rows = await self._fetchall(
            "SELECT shot_id, sha256, version FROM shot_versions WHERE output_path = ? "
            "AND sha256 IS NOT NULL ORDER BY archived_at DESC LIMIT 1",
            (output_path,),
        )
        return (rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    async def task_owner(self, task_id: str) -> str | None:
        """The shot this ledger ties ``task_id`` to (its current task or any attempt's)."""
        rows = await self._fetchall(
            "SELECT shot_id FROM shots WHERE task_id = ? "
            "UNION SELECT shot_id FROM attempts WHERE task_id = ? LIMIT 1",
            (task_id, task_id),
        )
        return str(rows[0][0]) if rows else None

    async def in_manifest(self, shot_id: str) -> bool:
        """Whether the shot is in the manifest of the last sync (dispatched at all)."""
        rows = await self._fetchall("SELECT in_manifest FROM shots WHERE shot_id = ?", (shot_id,))
        return bool(rows and rows[0][0])
