"""What a user asks of a ledger between runs: re-queue, re-roll, resolve.

Invariant: a user action never loses paid work: a parked (ambiguous) shot is re-queued
repeating its last attempt (same Ai-trace-id), a shot with a rendered video is
downloaded again rather than generated again, and a re-rolled or resolved shot keeps its
earlier version archived.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from runner.errors import LedgerError
from runner.ledger.core import LedgerBase
from runner.ledger.rows import (
    RESET_RENDER,
    AttemptOutcome,
    EventKind,
    Statement,
    archive_version,
    event_insert,
    request_json,
)
from runner.ledger.rows import now as _now
from runner.model import ShotState

#: shot ids per ``IN (...)`` query: well under SQLite's bound-parameter limit (32,766
#: since 3.32; 999 before)
_IDS_PER_QUERY = 500


class UserActions(LedgerBase):
    """The user's actions on a ledger (see :class:`runner.ledger.Ledger`)."""

    async def requeue(
        self, shot_ids: Sequence[str], reason: str, *, extra_attempts: int = 3
    ) -> int:
        """Put shots back in the queue. Returns how many moved.

        - ambiguous shots go back to pending *repeating their last attempt*: the same
          Ai-trace-id is sent, so a provider that deduplicates on it will not charge
          twice;
        - shots that have a rendered video (an output conflict) go back to rendered:
          they are downloaded again, never generated again;
        - anything else (failed, moderated) gets ``extra_attempts`` more render attempts.
        Shots at the provider or done are left alone.
        """
        now = _now()
        statements: list[Statement] = []
        movable = (
            ShotState.AMBIGUOUS.value,
            ShotState.FAILED.value,
            ShotState.MODERATED.value,
            ShotState.ABANDONED.value,
            ShotState.PENDING.value,
        )
        wanted = list(dict.fromkeys(shot_ids))
        found: dict[str, tuple[str, str | None, str | None]] = {}
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            chunk = wanted[start : start + _IDS_PER_QUERY]
            marks = ", ".join("?" for _ in chunk)
            rows = await self._fetchall(
                f"SELECT shot_id, state, task_id, error_kind FROM shots WHERE shot_id IN ({marks})",
                chunk,
            )
            found.update((r[0], (r[1], r[2], r[3])) for r in rows)
        moved = 0
        # in the caller's order, so the events read in the order the user named shots
        for sid in wanted:
            if sid not in found:
                continue
            state, task_id, error_kind = found[sid]
            if state not in movable:
                continue
            moved += 1
            if state == ShotState.AMBIGUOUS.value:
                statements.append(
                    (
                        "UPDATE shots SET state = ?, error_kind = 'retry_same_attempt', "
                        "not_before = NULL, updated_at = ? WHERE shot_id = ?",
                        (ShotState.PENDING.value, now, sid),
                    )
                )
            elif task_id and error_kind in ("output_conflict", "download", "disk_full"):
                statements.append(
                    (
                        "UPDATE shots SET state = ?, error_kind = NULL, last_error = NULL, "
                        "updated_at = ? WHERE shot_id = ?",
                        (ShotState.RENDERED.value, now, sid),
                    )
                )
            else:
                statements.append(
                    (
                        "UPDATE shots SET state = ?, max_attempts = attempts + ?, "
                        "task_id = NULL, video_url = NULL, poll_count = 0, next_poll_at = NULL, "
                        "not_before = NULL, error_kind = NULL, last_error = NULL, updated_at = ? "
                        "WHERE shot_id = ?",
                        (ShotState.PENDING.value, extra_attempts, now, sid),
                    )
                )
            statements.append(event_insert(now, EventKind.REQUEUED, sid, reason))
        if statements:
            await self._write_now(statements)
        return moved

    async def reroll(self, shot_id: str, seed: int) -> int:
        """Make a finished shot a new version rendered with ``seed``; returns the version.

        The current version is archived (its file is kept, as for a changed shot), and
        the shot starts again as pending with ``seed`` in its request. The request hash
        becomes one derived from the manifest's hash (``override_base_hash``) and the
        seed, so the next sync keeps the re-roll while the manifest entry is unchanged.
        """
        rows = await self._fetchall(
            "SELECT version, request_json, request_hash, override_base_hash FROM shots "
            "WHERE shot_id = ?",
            (shot_id,),
        )
        if not rows:
            raise LedgerError(f"no shot {shot_id!r} in the ledger {self.path}")
        version, stored_json, request_hash, base_hash = rows[0]
        base_hash = base_hash or request_hash
        request = json.loads(stored_json)
        request["seed"] = seed
        derived = hashlib.sha256(f"{base_hash}:seed={seed}".encode()).hexdigest()
        now = _now()
        new_version = int(version) + 1
        await self._write_now(
            [
                archive_version(now, shot_id),
                (
                    "UPDATE shots SET version = ?, seed_override = ?, override_base_hash = ?, "
                    f"request_json = ?, request_hash = ?, state = ?, {RESET_RENDER}, "
                    "updated_at = ? WHERE shot_id = ?",
                    (
                        new_version,
                        seed,
                        base_hash,
                        request_json(request),
                        derived,
                        ShotState.PENDING.value,
                        now,
                        shot_id,
                    ),
                ),
                event_insert(
                    now,
                    EventKind.REROLLED,
                    shot_id,
                    f"re-rolled with seed {seed}: now version {new_version}",
                ),
            ]
        )
        return new_version

    async def resolve(self, shot_id: str, task_id: str) -> None:
        """Tie a parked shot to a task id found on the provider's side."""
        now = _now()
        await self._write_now(
            [
                (
                    "UPDATE attempts SET outcome = ?, task_id = ?, "
                    "charged_uptc = (SELECT price_uptc FROM shots WHERE shot_id = ?) "
                    "WHERE attempt_id = (SELECT MAX(attempt_id) FROM attempts WHERE shot_id = ?)",
                    (AttemptOutcome.RESOLVED.value, task_id, shot_id, shot_id),
                ),
                (
                    "UPDATE shots SET state = ?, task_id = ?, submitted_at = COALESCE("
                    "submitted_at, ?), next_poll_at = ?, poll_count = 0, error_kind = NULL, "
                    "last_error = NULL, updated_at = ? WHERE shot_id = ?",
                    (ShotState.SUBMITTED.value, task_id, now, now, now, shot_id),
                ),
                event_insert(now, EventKind.RESOLVED, shot_id, f"tied to task {task_id}"),
            ]
        )
