"""Bringing the ledger's shots in line with the manifest (:meth:`ManifestSync.sync_manifest`).

Invariants: a sync is one transaction; a shot at the provider (or mid-submit) is never
reset by it, so what is already paid for is collected first; a changed shot's earlier
version is archived with its file kept; a shot dropped from the manifest is never
dispatched again, and one that comes back is pending again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.ledger.batcher import Group, transaction
from runner.ledger.classify import KnownShot, SyncAction, classify
from runner.ledger.core import LedgerBase
from runner.ledger.rows import (
    HAS_FILE,
    RESET_RENDER,
    EventKind,
    Statement,
    SyncResult,
    archive_version,
    event_insert,
    shot_columns,
)
from runner.ledger.rows import now as _now
from runner.model import Shot, ShotState


@dataclass
class _SyncPlan:
    """What one sync will write, and what it found."""

    now: float
    #: full rows of new shots (one executemany)
    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    #: unchanged shots whose order, membership or output path moved
    moved: list[tuple[Any, ...]] = field(default_factory=list)
    #: new versions and dropped shots, in order
    statements: list[Statement] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    insert_columns: list[str] = field(default_factory=list)

    def groups(self) -> list[Group]:
        groups: list[Group] = []
        if self.inserts:
            marks = ", ".join("?" for _ in self.insert_columns)
            columns = ", ".join(self.insert_columns)
            groups.append((f"INSERT INTO shots ({columns}) VALUES ({marks})", self.inserts))
        if self.moved:
            groups.append(
                (
                    "UPDATE shots SET seq = ?, in_manifest = 1, output_path = ?, state = ? "
                    "WHERE shot_id = ?",
                    self.moved,
                )
            )
        groups.extend((sql, [params]) for sql, params in self.statements)
        return groups

    def result(self) -> SyncResult:
        return SyncResult(
            new=len(self.inserts),
            changed=tuple(self.changed),
            unchanged=self.unchanged,
            removed=tuple(self.removed),
        )

    def add_new(self, shot: Shot, seq: int) -> None:
        cols = shot_columns(shot)
        if not self.insert_columns:  # every shot sets the same columns, in the same order
            self.insert_columns = ["shot_id", "seq", *cols, "state", "created_at", "updated_at"]
        self.inserts.append(
            (shot.shot_id, seq, *cols.values(), ShotState.PENDING.value, self.now, self.now)
        )

    def keep(self, shot: Shot, seq: int, old: KnownShot, *, revive: bool) -> None:
        """An unchanged shot: follow the manifest's order, membership and output name;
        a revived (abandoned) one is pending again."""
        self.unchanged += 1
        # a file already written keeps its name; anything else follows the pattern
        output = old.output_path if old.state in HAS_FILE else shot.output_relpath
        if revive or old.seq != seq or not old.in_manifest or old.output_path != output:
            new_state = ShotState.PENDING if revive else old.state
            self.moved.append((seq, output, new_state.value, shot.shot_id))

    def new_version(self, shot: Shot, seq: int, old: KnownShot) -> None:
        """A changed shot starts again as pending; its earlier version is archived."""
        cols = shot_columns(shot)
        sets = ", ".join(f"{k} = ?" for k in cols)
        self.statements += [
            archive_version(self.now, shot.shot_id),
            (
                f"UPDATE shots SET {sets}, version = version + 1, seq = ?, in_manifest = 1, "
                f"state = 'pending', {RESET_RENDER}, "
                "seed_override = NULL, override_base_hash = NULL, updated_at = ? "
                "WHERE shot_id = ?",
                (*cols.values(), seq, self.now, shot.shot_id),
            ),
            event_insert(
                self.now,
                EventKind.CHANGED,
                shot.shot_id,
                f"request changed: now version {old.version + 1}",
            ),
        ]

    def drop(self, shot_id: str) -> None:
        """Dropped from the manifest: never dispatched again; a pending one is abandoned
        (a task already at the provider is still collected)."""
        self.removed.append(shot_id)
        self.statements.append(
            (
                "UPDATE shots SET in_manifest = 0, state = CASE WHEN state = ? THEN ? "
                "ELSE state END WHERE shot_id = ?",
                (ShotState.PENDING.value, ShotState.ABANDONED.value, shot_id),
            )
        )


def _plan_sync(
    shots: Sequence[Shot], known: Mapping[str, KnownShot], hold: frozenset[str], now: float
) -> _SyncPlan:
    plan = _SyncPlan(now=now)
    seen: set[str] = set()
    for seq, shot in enumerate(shots):
        seen.add(shot.shot_id)
        old = known.get(shot.shot_id)
        action = classify(shot.request_hash, old)
        if old is None:  # SyncAction.NEW
            plan.add_new(shot, seq)
        elif action in (SyncAction.KEEP, SyncAction.REVIVE):
            plan.keep(shot, seq, old, revive=action is SyncAction.REVIVE)
        else:
            plan.changed.append(shot.shot_id)
            if action is SyncAction.DEFERRED:
                continue  # collect what is already paid for; the change applies later
            if action is SyncAction.RERENDER and shot.shot_id in hold:
                continue  # a done shot the user did not agree to re-render (yet)
            plan.new_version(shot, seq, old)
    for shot_id in known:
        if shot_id not in seen:
            plan.drop(shot_id)
    return plan


class ManifestSync(LedgerBase):
    """The manifest sync of :class:`runner.ledger.Ledger`."""

    async def sync_manifest(
        self,
        shots: Sequence[Shot],
        *,
        hold: frozenset[str] = frozenset(),
        known: Mapping[str, KnownShot] | None = None,
    ) -> SyncResult:
        """Bring the shots table in line with the manifest, in one transaction.

        New shots are inserted as pending. A shot whose request changed becomes a new
        version: the old row is archived in ``shot_versions`` (its output file is kept)
        and the shot starts again as pending, unless it is at the provider right now,
        in which case it is left alone and reported as changed (its task is collected
        first). Shots no longer in the manifest are flagged ``in_manifest = 0`` and no
        longer dispatched (pending ones become abandoned; one that comes back is pending
        again); their task, if one is in flight, is still collected. A re-rolled shot
        (:meth:`reroll`) is unchanged while its manifest request is the one it re-rolled
        (``override_base_hash``); an edit of that request drops the re-roll's seed.
        :func:`runner.ledger.classify.classify` says which of these each shot is.

        ``known``: :meth:`known_shots` as the caller just read it (a run reads it once
        for its preview and this sync; it holds the run lock, so no one else writes).
        """
        if known is None:
            known = await self.known_shots()
        plan = _plan_sync(shots, known, hold, _now())
        await transaction(self._conn, self.path, plan.groups())
        return plan.result()

    async def known_shots(self) -> dict[str, KnownShot]:
        """Every shot the ledger has, as the sync compares it with the manifest (and as
        the run's preview and ``pixrun plan`` predict the sync)."""
        rows = await self._fetchall(
            "SELECT shot_id, request_hash, version, state, seq, in_manifest, output_path, "
            "override_base_hash FROM shots"
        )
        return {
            r[0]: KnownShot(r[1], int(r[2]), ShotState(r[3]), r[4], r[5], r[6], r[7]) for r in rows
        }
