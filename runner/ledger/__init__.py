"""The ledger: one SQLite file per batch that records everything a run does.

All SQL of pixrun lives in this package. The scheduler calls the methods of
:class:`Ledger`; reports and status views call :mod:`runner.ledger.queries`.

Invariants (the promises every other module relies on):

1. **Intent before bytes.** A shot moves ``pending -> submitting`` together with a new
   ``attempts`` row (outcome ``sending``) in one committed transaction, and
   :meth:`Ledger.begin_attempt` returns only after that commit is durable. The
   scheduler sends no byte of a generate request before it returns.
2. **Task ids are committed the moment they are known.** :meth:`Ledger.attempt_accepted`
   returns only after the commit that stores the task id.
3. **A shot found in ``submitting`` when a run starts is ambiguous**: its request may
   have reached the provider and been charged. :meth:`Ledger.recover` parks it; nothing
   resubmits it without an explicit ``pixrun retry --ambiguous`` or ``pixrun resolve``.
4. **One writer.** A run holds an exclusive OS lock (``flock`` on ``<ledger>.lock``),
   which the kernel releases even on ``kill -9``. Readers (status, report, plan) never
   take it and never write.
5. **Durable and consistent at every commit.** WAL journal with ``synchronous=FULL``
   (asserted at open), ``BEGIN IMMEDIATE`` for every write transaction. Writes from many
   concurrent shots are grouped into one transaction by the write batcher, which only
   ever delays a commit, never reorders the writes of one shot.
6. **The API key is never written here.** Requests are stored as sent, without headers.

Money is stored as integer micro-PTC (``*_uptc``); times are unix seconds (REAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import aiosqlite

from runner.errors import LedgerError, LedgerLocked, LedgerSchemaError
from runner.ledger.migrations import LATEST_VERSION, MIGRATIONS
from runner.model import Shot, ShotState
from runner.money import to_uptc_or_none

__all__ = [
    "META_PROVIDER",
    "META_TRACE_SECRET",
    "SIM_INFIX",
    "AttemptOutcome",
    "EventKind",
    "Ledger",
    "ShotRow",
    "SyncResult",
    "default_ledger_path",
    "open_ledger",
]

_APP_ID = 0x50495852  # "PIXR": tells a pixrun ledger from any other SQLite file


class AttemptOutcome(str, Enum):
    """What became of one generate call."""

    SENDING = "sending"  #: committed before the request; the request may be on the wire
    ACCEPTED = "accepted"  #: the provider answered with a task id (charged)
    TRANSIENT = "transient"  #: 5xx or a connection failure before sending; retried
    RATE_LIMITED = "rate_limited"  #: 429 (rate or concurrency); retried later
    INVALID = "invalid"  #: the provider refused the parameters
    NO_CREDIT = "no_credit"  #: the account is empty
    AUTH = "auth"  #: the key was refused
    AMBIGUOUS = "ambiguous"  #: sent, no answer: may have been accepted and charged
    RESOLVED = "resolved"  #: an ambiguous attempt tied to a task id by the user
    MISMATCH = "mismatch"  #: an answer pixrun does not recognise (a wrong route): the run stopped


class EventKind(str, Enum):
    """Notable things that happened during a run (the ``events`` table)."""

    RUN_STARTED = "run_started"  #: a run took the ledger
    RUN_ENDED = "run_ended"  #: a run let it go
    SHOT_FAILED = "shot_failed"  #: a shot reached failed or moderated
    SHOT_AMBIGUOUS = "shot_ambiguous"  #: a shot was parked as ambiguous
    RETRY = "retry"  #: a render failed and the shot was re-queued
    THROTTLED = "throttled"  #: the provider limited rate or concurrency
    URL_REFRESHED = "url_refreshed"  #: an expired download URL was fetched again
    OUT_OF_CREDIT = "out_of_credit"  #: the account ran dry
    CHANGED = "changed"  #: a shot's request changed: a new version
    REQUEUED = "requeued"  #: the user re-queued a shot
    RESOLVED = "resolved"  #: the user tied a parked shot to a task id
    CONTRACT_MISMATCH = "contract_mismatch"  #: the provider answered unrecognisably: stopped
    PROVIDER_DOWN = "provider_down"  #: the provider stopped answering (once per outage)
    PROVIDER_BACK = "provider_back"  #: the provider answers again after an outage
    STALLED = "stalled"  #: nothing progressed for run.stall_timeout_s: stopped
    ADOPTED = "adopted"  #: a file already on disk was taken as the shot's output
    DOWNLOAD_FAILED = "download_failed"  #: a paid render could not be downloaded (kept)
    REROLLED = "rerolled"  #: the user asked for a new take with a fresh seed
    CALLBACK = "callback"  #: what a provider callback carried (size-capped), as a sample
    CALLBACKS_SILENT = "callbacks_silent"  #: callbacks stopped arriving: polling in full


#: columns a caller may set through ``update_shot``; anything else is a bug
_SHOT_COLUMNS = frozenset(
    {
        "state",
        "attempts",
        "task_id",
        "video_url",
        "poster_url",
        "seed",
        "width",
        "height",
        "bytes",
        "sha256",
        "poll_count",
        "next_poll_at",
        "not_before",
        "submitted_at",
        "rendered_at",
        "done_at",
        "error_kind",
        "last_error",
        "output_path",
    }
)

_ROW_COLUMNS = (
    "shot_id",
    "version",
    "seq",
    "mode",
    "request_json",
    "request_hash",
    "output_path",
    "price_uptc",
    "max_attempts",
    "state",
    "attempts",
    "task_id",
    "video_url",
    "poster_url",
    "seed",
    "poll_count",
    "next_poll_at",
    "not_before",
    "submitted_at",
    "rendered_at",
    "bytes",
    "sha256",
    "prompt",
    "error_kind",
)
_ROW_SELECT = "SELECT " + ", ".join(_ROW_COLUMNS) + " FROM shots"


@dataclass
class ShotRow:
    """A shot as the ledger knows it: what the scheduler works from."""

    shot_id: str
    version: int
    seq: int
    mode: str
    request_json: str
    request_hash: str
    output_path: str
    price_uptc: int | None
    max_attempts: int
    state: ShotState
    attempts: int
    task_id: str | None
    video_url: str | None
    poster_url: str | None
    seed: int | None
    poll_count: int
    next_poll_at: float | None
    not_before: float | None
    submitted_at: float | None
    rendered_at: float | None
    bytes: int | None
    sha256: str | None
    prompt: str
    error_kind: str | None

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> ShotRow:
        values = dict(zip(_ROW_COLUMNS, row, strict=True))
        values["state"] = ShotState(values["state"])
        return cls(**values)

    @functools.cached_property
    def request(self) -> Mapping[str, Any]:
        """The request body, decoded once per row (read-only: callers copy to change it)."""
        result: dict[str, Any] = json.loads(self.request_json)
        return result


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`Ledger.sync_manifest` found, comparing the manifest with the ledger."""

    new: int
    changed: tuple[str, ...]
    unchanged: int
    removed: tuple[str, ...]


#: what a ledger's work cost: accepted generates net of refunds, plus uploads
SPENT_SQL = (
    "SELECT (SELECT COALESCE(SUM(charged_uptc), 0) - COALESCE(SUM(refunded_uptc), 0) "
    "FROM attempts WHERE outcome IN (?, ?)) "
    "+ (SELECT COALESCE(SUM(charged_uptc), 0) FROM uploads)"
)
SPENT_PARAMS = (AttemptOutcome.ACCEPTED.value, AttemptOutcome.RESOLVED.value)

#: states whose output file exists (or is being written) under its recorded name
_HAS_FILE = frozenset({ShotState.DONE, ShotState.DOWNLOADING})


#: meta key: who the ledger's work was sent to, as JSON ``{"simulated": bool,
#: "base_url": str | None, "dialect": str | None}`` (see runner.run.batch)
META_PROVIDER = "provider"
#: meta key: the random secret every Ai-trace-id of this ledger derives from (hex)
META_TRACE_SECRET = "trace_secret"
#: a rehearsal's ledger and outputs carry this infix, so they never mix with real work
SIM_INFIX = ".sim"


def default_ledger_path(manifest_path: Path, *, simulated: bool = False) -> Path:
    """The ledger lives beside the manifest: ``shots.yaml`` -> ``shots.ledger.sqlite``;
    a rehearsal's (``--simulate``) is ``shots.sim.ledger.sqlite``."""
    infix = SIM_INFIX if simulated else ""
    return manifest_path.with_name(manifest_path.stem + infix + ".ledger.sqlite")


def _now() -> float:
    return time.time()


def _shot_columns(shot: Shot) -> dict[str, Any]:
    req = shot.request
    duration = req.get("duration")
    return {
        "mode": shot.mode.value,
        "prompt": shot.prompt,
        "model": req.get("model"),
        "quality": req.get("quality"),
        "duration": None if duration is None else str(duration),
        "motion_mode": req.get("motion_mode"),
        "request_json": json.dumps(req, sort_keys=True, separators=(",", ":")),
        "request_hash": shot.request_hash,
        "output_path": shot.output_relpath,
        "price_uptc": to_uptc_or_none(shot.price_ptc),
        "max_attempts": shot.max_attempts,
    }


_Statement = tuple[str, Sequence[Any]]
#: (statements, the shot they concern or None, the caller's future)
_Call = tuple[list[_Statement], str | None, "asyncio.Future[None]"]


class _WriteBatcher:
    """Groups the writes of many concurrent shots into one ``BEGIN IMMEDIATE`` commit.

    Each submitted write is a list of ``(sql, params)`` and the shot it concerns; the
    statements of one call stay in order and in one transaction, and the calls about one
    shot stay in the order they were made. Calls about different shots may be
    interleaved, so that statements with the same SQL run as one ``executemany``: a few
    thread hops per commit instead of two per call. Callers await their own write's
    commit. A failed
    transaction fails every write in it with :class:`LedgerError`, and the batcher
    refuses further writes: the run must stop rather than send requests it could not
    record.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._queue: list[_Call] = []
        #: the batch being committed right now
        self._inflight: list[_Call] = []
        self._wakeup = asyncio.Event()
        self._failed: LedgerError | None = None
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.writes = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ledger-writer")

    async def write(self, statements: list[_Statement], key: str | None) -> None:
        if self._failed is not None:
            raise self._failed
        if self._task is None:
            self.start()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((statements, key, future))
        self._wakeup.set()
        # shield: a cancelled caller (Ctrl-C) must not tear a commit in half; the
        # write still lands, and the caller's cancellation proceeds after it.
        await asyncio.shield(future)

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._queue:
                continue
            batch, self._queue = self._queue, []
            self._inflight = batch
            try:
                await self._commit(batch)
            except LedgerError as exc:
                self._failed = exc
                for _, _, fut in batch + self._queue:
                    if not fut.done():
                        fut.set_exception(exc)
                self._queue = []
                return
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def _commit(self, batch: list[_Call]) -> None:
        conn = self._conn
        try:
            await conn.execute("BEGIN IMMEDIATE")
            for sql, rows in _grouped(batch):
                await conn.executemany(sql, rows)
            await conn.commit()
        except (sqlite3.Error, OSError, ValueError) as exc:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await conn.rollback()
            raise LedgerError(
                f"cannot write the ledger: {exc}",
                hint="check free disk space and permissions of the ledger's folder; "
                "a rerun resumes from the last commit",
            ) from exc
        self.commits += 1
        self.writes += len(batch)

    async def flush(self) -> None:
        """Wait until every write queued so far, and the batch being committed, landed
        (or failed), whether or not its caller is still waiting for it."""
        while self._failed is None and (
            waiting := [f for _, _, f in self._inflight + self._queue if not f.done()]
        ):
            self._wakeup.set()
            await asyncio.wait(waiting)

    async def close(self) -> None:
        if self._task is not None:
            # let queued writes, and the batch being committed, land before the
            # connection goes away: a commit cancelled half-way is rolled back
            await self.flush()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _grouped(batch: list[_Call]) -> list[tuple[str, list[Sequence[Any]]]]:
    """The batch's statements as ``(sql, rows)`` groups, in an order that keeps each
    call's statements in order and the calls about one shot in order.

    Calls go into rounds: the n-th call about a shot goes into round n, so no round
    holds two calls about the same shot and rounds run one after the other. Within a
    round, the i-th statements of every call run before the (i+1)-th, grouped by SQL.
    """
    rounds: list[list[list[_Statement]]] = []
    seen: dict[str, int] = {}
    for statements, key, _ in batch:
        index = 0
        if key is not None:
            index = seen.get(key, 0)
            seen[key] = index + 1
        while len(rounds) <= index:
            rounds.append([])
        rounds[index].append(statements)
    groups: list[tuple[str, list[Sequence[Any]]]] = []
    for calls in rounds:
        for position in range(max(len(c) for c in calls)):
            by_sql: dict[str, list[Sequence[Any]]] = {}
            for call in calls:
                if position < len(call):
                    sql, params = call[position]
                    by_sql.setdefault(sql, []).append(params)
            groups.extend(by_sql.items())
    return groups


class Ledger:
    """A batch's ledger. Create with :func:`open_ledger`; use as an async context manager."""

    def __init__(
        self,
        path: Path,
        conn: aiosqlite.Connection,
        *,
        writable: bool,
        lock_fd: int | None,
    ) -> None:
        self.path = path
        self._conn = conn
        self._writable = writable
        self._lock_fd = lock_fd
        self._batcher = _WriteBatcher(conn) if writable else None
        self._next_attempt_id = 1
        self._run_id: int | None = None
        self._trace_secret: bytes | None = None

    # -- life cycle ------------------------------------------------------------------

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    @property
    def connection(self) -> aiosqlite.Connection:
        """For :mod:`runner.ledger.queries` only."""
        return self._conn

    @property
    def trace_secret(self) -> bytes:
        """The ledger's private secret for Ai-trace-ids (writers only; created by
        migration 2 and never changed, so a retried attempt repeats its id)."""
        if self._trace_secret is None:
            raise LedgerError("the ledger's trace secret was not loaded (open it as a writer)")
        return self._trace_secret

    async def load_trace_secret(self) -> None:
        rows = await self._fetchall("SELECT value FROM meta WHERE key = ?", (META_TRACE_SECRET,))
        if not rows:
            raise LedgerSchemaError(f"the ledger {self.path} has no trace secret")
        self._trace_secret = bytes.fromhex(str(rows[0][0]))

    @property
    def commit_count(self) -> int:
        return 0 if self._batcher is None else self._batcher.commits

    async def flush(self) -> None:
        """Wait for every write queued so far, including those of cancelled callers."""
        if self._batcher is not None:
            await self._batcher.flush()

    # -- low-level helpers -----------------------------------------------------------

    async def _write(self, statements: list[_Statement], key: str | None = None) -> None:
        """Queue a write about the shot ``key`` (None: about no shot) and await its commit."""
        if self._batcher is None:
            raise LedgerError("this ledger was opened read-only")
        await self._batcher.write(statements, key)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            # one call on the connection's thread: a batched write on the same
            # connection cannot run between a SELECT's first and last row (that makes
            # SQLite's results undefined)
            return list(await self._conn.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the ledger {self.path}: {exc}") from exc

    async def _write_now(self, sql_statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """A direct transaction, for set-up work before the batcher runs."""
        conn = self._conn
        try:
            await conn.execute("BEGIN IMMEDIATE")
            for sql, params in sql_statements:
                await conn.execute(sql, params)
            await conn.commit()
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                await conn.rollback()
            raise LedgerError(f"cannot write the ledger {self.path}: {exc}") from exc

    # -- metadata --------------------------------------------------------------------

    async def get_meta(self) -> dict[str, str]:
        rows = await self._fetchall("SELECT key, value FROM meta")
        return {k: v for k, v in rows}

    async def set_meta(self, values: Mapping[str, str]) -> None:
        await self._write_now(
            (
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (k, v),
            )
            for k, v in values.items()
        )

    # -- manifest sync and recovery --------------------------------------------------

    async def known_shots(self) -> dict[str, tuple[ShotState, str, str | None]]:
        """Every shot the ledger knows: ``id -> (state, request hash, the manifest hash a
        re-roll was made from)``, to preview what a sync of the manifest would do."""
        rows = await self._fetchall(
            "SELECT shot_id, state, request_hash, override_base_hash FROM shots"
        )
        return {r[0]: (ShotState(r[1]), r[2], r[3]) for r in rows}

    async def sync_manifest(
        self, shots: Sequence[Shot], *, hold: frozenset[str] = frozenset()
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
        """
        known = {
            row[0]: (row[1], row[2], ShotState(row[3]), row[4], row[5], row[6], row[7])
            for row in await self._fetchall(
                "SELECT shot_id, request_hash, version, state, seq, in_manifest, output_path, "
                "override_base_hash FROM shots"
            )
        }
        now = _now()
        inserts: list[tuple[Any, ...]] = []
        changed: list[str] = []
        statements: list[tuple[str, Sequence[Any]]] = []
        #: unchanged shots whose order, membership or output path moved
        moved: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        unchanged = 0
        for seq, shot in enumerate(shots):
            seen.add(shot.shot_id)
            old = known.get(shot.shot_id)
            if old is None:
                cols = _shot_columns(shot)
                inserts.append(
                    (shot.shot_id, seq, *cols.values(), ShotState.PENDING.value, now, now)
                )
                continue
            old_hash, version, state, old_seq, in_manifest, old_output, rerolled_from = old
            # a re-rolled shot stays re-rolled while its manifest entry is what it re-rolled
            if shot.request_hash in (old_hash, rerolled_from):
                unchanged += 1
                # a file already written keeps its name; anything else follows the pattern
                output = old_output if state in _HAS_FILE else shot.output_relpath
                revived = state == ShotState.ABANDONED
                if revived or old_seq != seq or not in_manifest or old_output != output:
                    new_state = ShotState.PENDING if revived else state
                    moved.append((seq, output, new_state.value, shot.shot_id))
                continue
            changed.append(shot.shot_id)
            if state.at_provider or state == ShotState.SUBMITTING:
                continue  # collect what is already paid for; the change applies later
            if shot.shot_id in hold:
                continue  # a done shot the user did not agree to re-render (yet)
            statements.append(
                (
                    "INSERT OR REPLACE INTO shot_versions (shot_id, version, request_json, "
                    "request_hash, state, task_id, output_path, bytes, sha256, archived_at) "
                    "SELECT shot_id, version, request_json, request_hash, state, task_id, "
                    "output_path, bytes, sha256, ? FROM shots WHERE shot_id = ?",
                    (now, shot.shot_id),
                )
            )
            cols = _shot_columns(shot)
            sets = ", ".join(f"{k} = ?" for k in cols)
            statements.append(
                (
                    f"UPDATE shots SET {sets}, version = version + 1, seq = ?, in_manifest = 1, "
                    "state = 'pending', attempts = 0, task_id = NULL, video_url = NULL, "
                    "poster_url = NULL, seed = NULL, width = NULL, height = NULL, "
                    "bytes = NULL, sha256 = NULL, poll_count = 0, next_poll_at = NULL, "
                    "not_before = NULL, submitted_at = NULL, rendered_at = NULL, "
                    "done_at = NULL, error_kind = NULL, last_error = NULL, "
                    "seed_override = NULL, override_base_hash = NULL, updated_at = ? "
                    "WHERE shot_id = ?",
                    (*cols.values(), seq, now, shot.shot_id),
                )
            )
            statements.append(
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (
                        now,
                        EventKind.CHANGED.value,
                        shot.shot_id,
                        f"request changed: now version {version + 1}",
                    ),
                )
            )
        removed = [sid for sid in known if sid not in seen]
        for sid in removed:
            # dropped from the manifest: never dispatched again; a pending one is
            # abandoned (a task already at the provider is still collected)
            statements.append(
                (
                    "UPDATE shots SET in_manifest = 0, state = CASE WHEN state = ? THEN ? "
                    "ELSE state END WHERE shot_id = ?",
                    (ShotState.PENDING.value, ShotState.ABANDONED.value, sid),
                )
            )
        conn = self._conn
        try:
            await conn.execute("BEGIN IMMEDIATE")
            if inserts:
                columns = [
                    "shot_id",
                    "seq",
                    *_shot_columns(shots[0]).keys(),
                    "state",
                    "created_at",
                    "updated_at",
                ]
                marks = ", ".join("?" for _ in columns)
                await conn.executemany(
                    f"INSERT INTO shots ({', '.join(columns)}) VALUES ({marks})", inserts
                )
            if moved:
                await conn.executemany(
                    "UPDATE shots SET seq = ?, in_manifest = 1, output_path = ?, state = ? "
                    "WHERE shot_id = ?",
                    moved,
                )
            for sql, params in statements:
                await conn.execute(sql, params)
            await conn.commit()
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                await conn.rollback()
            raise LedgerError(f"cannot write the ledger {self.path}: {exc}") from exc
        return SyncResult(
            new=len(inserts), changed=tuple(changed), unchanged=unchanged, removed=tuple(removed)
        )

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
        statements: list[tuple[str, Sequence[Any]]] = []
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
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (
                        now,
                        EventKind.SHOT_AMBIGUOUS.value,
                        sid,
                        "found in submitting after an interrupted run: parked",
                    ),
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

    # -- run bookkeeping -------------------------------------------------------------

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
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (
                        _now(),
                        EventKind.RUN_ENDED.value,
                        None,
                        f"run {self._run_id} ended with exit code {exit_code}",
                    ),
                ),
            ]
        )

    async def add_event(self, kind: EventKind, shot_id: str | None, message: str) -> None:
        await self._write(
            [
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (_now(), kind.value, shot_id, message),
                )
            ]
        )

    # -- reads the scheduler needs ---------------------------------------------------

    async def next_pending(self, *, after_seq: int, limit: int) -> list[ShotRow]:
        """Pending shots of the manifest in manifest order, after ``after_seq``."""
        rows = await self._fetchall(
            f"{_ROW_SELECT} WHERE state = ? AND seq > ? AND in_manifest = 1 ORDER BY seq LIMIT ?",
            (ShotState.PENDING.value, after_seq, limit),
        )
        return [ShotRow.from_tuple(r) for r in rows]

    async def shots_in(self, states: Iterable[ShotState]) -> list[ShotRow]:
        """Every shot in the given states (used at start-up to resume work)."""
        states = list(states)
        marks = ", ".join("?" for _ in states)
        rows = await self._fetchall(
            f"{_ROW_SELECT} WHERE state IN ({marks}) ORDER BY seq", [s.value for s in states]
        )
        return [ShotRow.from_tuple(r) for r in rows]

    async def get_shot(self, shot_id: str) -> ShotRow | None:
        rows = await self._fetchall(f"{_ROW_SELECT} WHERE shot_id = ?", (shot_id,))
        return ShotRow.from_tuple(rows[0]) if rows else None

    async def counts_by_state(self) -> dict[ShotState, int]:
        rows = await self._fetchall("SELECT state, COUNT(*) FROM shots GROUP BY state")
        return {ShotState(s): int(n) for s, n in rows}

    async def spent_uptc(self) -> int:
        """What this ledger's work cost so far: accepted generate calls net of what the
        provider refunded, plus uploads (ambiguous calls are not included)."""
        rows = await self._fetchall(SPENT_SQL, SPENT_PARAMS)
        return int(rows[0][0])

    async def record_task_cost(
        self, shot_id: str, task_id: str, *, refunded: bool | None, points: str | None
    ) -> None:
        """What the provider says a task finally cost: its cost figure, and a refund
        (the whole charge) of a failed render."""
        statements: list[_Statement] = []
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

    async def done_outputs(self) -> list[tuple[str, str, int | None]]:
        """``(shot_id, output_path, bytes)`` of every done shot of the manifest, for
        verification (a shot dropped from the manifest is not downloaded again)."""
        rows = await self._fetchall(
            "SELECT shot_id, output_path, bytes FROM shots WHERE state = ? AND in_manifest = 1",
            (ShotState.DONE.value,),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def looks_simulated(self, clip_px: int) -> bool:
        """An older ledger without a recorded provider was a rehearsal when its done
        videos are the simulator's ``clip_px`` square clips."""
        rows = await self._fetchall(
            "SELECT COUNT(*) FROM shots WHERE state = ? AND width = ? AND height = ?",
            (ShotState.DONE.value, clip_px, clip_px),
        )
        return int(rows[0][0]) > 0

    async def never_sent(self) -> list[tuple[str, int, str, str]]:
        """``(shot id, version, output path, request hash)`` of the manifest's shots this
        ledger never sent: a file already at their output may be adoptable."""
        rows = await self._fetchall(
            "SELECT shot_id, version, output_path, request_hash FROM shots "
            "WHERE state = ? AND attempts = 0 AND in_manifest = 1 ORDER BY seq",
            (ShotState.PENDING.value,),
        )
        return [(str(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]

    async def adopt(self, adopted: Sequence[Mapping[str, Any]]) -> None:
        """Take files already on disk as these shots' outputs (done, nothing sent):
        each mapping has shot_id, task_id, seed, bytes, sha256, done_at."""
        now = _now()
        statements: list[_Statement] = []
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
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (
                        now,
                        EventKind.ADOPTED.value,
                        item["shot_id"],
                        "its file and sidecar were already on disk and match: adopted, "
                        "nothing sent",
                    ),
                )
            )
        if statements:
            await self._write_now(statements)

    async def bytes_to_come(self) -> list[tuple[str | None, str | None, int]]:
        """``(quality, duration, count)`` of the shots whose video is still to be saved."""
        states = (
            ShotState.PENDING.value,
            ShotState.SUBMITTED.value,
            ShotState.RENDERED.value,
            ShotState.DOWNLOADING.value,
        )
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

    # -- writes the scheduler makes --------------------------------------------------

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
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                "UPDATE attempts SET outcome = ?, finished_at = ?, http_status = ?, message = ? "
                "WHERE attempt_id = ?",
                (outcome.value, now, http_status, message, attempt_id),
            ),
            self._update_sql(shot_id, shot_fields, now),
        ]
        if event is not None:
            statements.append(
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (now, event[0].value, shot_id, event[1]),
                )
            )
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
            statements.append(
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (now, event[0].value, shot_id, event[1]),
                )
            )
        await self._write(statements, shot_id)

    @staticmethod
    def _update_sql(
        shot_id: str, fields: Mapping[str, Any], now: float
    ) -> tuple[str, Sequence[Any]]:
        unknown = set(fields) - _SHOT_COLUMNS
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

    # -- user actions (retry, resolve) -----------------------------------------------

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
        statements: list[tuple[str, Sequence[Any]]] = []
        movable = (
            ShotState.AMBIGUOUS.value,
            ShotState.FAILED.value,
            ShotState.MODERATED.value,
            ShotState.ABANDONED.value,
            ShotState.PENDING.value,
        )
        rows = []
        for sid in shot_ids:
            rows.extend(
                await self._fetchall(
                    "SELECT shot_id, state, task_id, error_kind FROM shots WHERE shot_id = ?",
                    (sid,),
                )
            )
        moved = 0
        for sid, state, task_id, error_kind in rows:
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
            statements.append(
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (now, EventKind.REQUEUED.value, sid, reason),
                )
            )
        if statements:
            await self._write_now(statements)
        return moved

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
        version, request_json, request_hash, base_hash = rows[0]
        base_hash = base_hash or request_hash
        request = json.loads(request_json)
        request["seed"] = seed
        derived = hashlib.sha256(f"{base_hash}:seed={seed}".encode()).hexdigest()
        now = _now()
        new_version = int(version) + 1
        await self._write_now(
            [
                (
                    "INSERT OR REPLACE INTO shot_versions (shot_id, version, request_json, "
                    "request_hash, state, task_id, output_path, bytes, sha256, archived_at) "
                    "SELECT shot_id, version, request_json, request_hash, state, task_id, "
                    "output_path, bytes, sha256, ? FROM shots WHERE shot_id = ?",
                    (now, shot_id),
                ),
                (
                    "UPDATE shots SET version = ?, seed_override = ?, override_base_hash = ?, "
                    "request_json = ?, request_hash = ?, state = ?, attempts = 0, "
                    "task_id = NULL, video_url = NULL, poster_url = NULL, seed = NULL, "
                    "width = NULL, height = NULL, bytes = NULL, sha256 = NULL, poll_count = 0, "
                    "next_poll_at = NULL, not_before = NULL, submitted_at = NULL, "
                    "rendered_at = NULL, done_at = NULL, error_kind = NULL, last_error = NULL, "
                    "updated_at = ? WHERE shot_id = ?",
                    (
                        new_version,
                        seed,
                        base_hash,
                        json.dumps(request, sort_keys=True, separators=(",", ":")),
                        derived,
                        ShotState.PENDING.value,
                        now,
                        shot_id,
                    ),
                ),
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (
                        now,
                        EventKind.REROLLED.value,
                        shot_id,
                        f"re-rolled with seed {seed}: now version {new_version}",
                    ),
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
                (
                    "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
                    (now, EventKind.RESOLVED.value, shot_id, f"tied to task {task_id}"),
                ),
            ]
        )


# -- opening ---------------------------------------------------------------------------


def _take_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LedgerError(
            f"cannot create the ledger lock {lock_path}: {exc.strerror}",
            hint="the ledger's folder must be writable",
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = os.pread(fd, 32, 0).decode().strip()
        os.close(fd)
        raise LedgerLocked(
            f"another pixrun run is using the ledger {path}"
            + (f" (pid {holder})" if holder else ""),
            hint="wait for it to finish, or watch it with 'pixrun status --watch'",
        ) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


async def _pragma_int(conn: aiosqlite.Connection, sql: str) -> int:
    async with conn.execute(sql) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _schema_version(conn: aiosqlite.Connection, path: Path) -> int:
    """The ledger's schema version; refuses any other SQLite file before it is touched.

    A pixrun ledger carries pixrun's application id from its first migration on. Version
    0 is a new (empty) file only if it holds no table: an SQLite file of some other
    program has user_version 0 too, and must never be migrated in place.
    """
    version = await _pragma_int(conn, "PRAGMA user_version")
    app_id = await _pragma_int(conn, "PRAGMA application_id")
    if version > LATEST_VERSION:
        raise LedgerSchemaError(
            f"the ledger {path} has schema version {version}; this pixrun knows up to "
            f"{LATEST_VERSION}",
            hint="upgrade pixrun",
        )
    foreign = app_id not in (0, _APP_ID) or (version > 0 and app_id != _APP_ID)
    if not foreign and version == 0:
        foreign = await _pragma_int(conn, "SELECT COUNT(*) FROM sqlite_master") > 0
    if foreign:
        raise LedgerSchemaError(
            f"{path} is an SQLite file, but not a pixrun ledger",
            hint="point --ledger at this batch's ledger, or at a new file",
        )
    return version


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    version = await _schema_version(conn, path)
    for number in range(version, LATEST_VERSION):
        # executescript commits first, so one script holds BEGIN .. COMMIT itself
        await conn.executescript(
            "BEGIN IMMEDIATE;\n"
            + MIGRATIONS[number]
            + f"\nPRAGMA user_version = {number + 1};\nPRAGMA application_id = {_APP_ID};"
            "\nCOMMIT;"
        )


async def open_ledger(path: Path, *, writer: bool) -> Ledger:
    """Open (and create or migrate, for a writer) the ledger at ``path``.

    A writer takes the run lock (:class:`LedgerLocked` if another run holds it).
    A reader never writes, never migrates, and fails clearly on a missing ledger.
    """
    path = path.resolve()
    if not writer and not path.exists():
        raise LedgerError(
            f"no ledger at {path}",
            hint="run 'pixrun run MANIFEST' first, or point at one with --ledger PATH",
        )
    lock_fd = _take_lock(path) if writer else None
    try:
        conn = await aiosqlite.connect(str(path), isolation_level=None)
    except (sqlite3.Error, OSError) as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        if writer:
            # before WAL mode, which would rewrite another program's file header
            await _schema_version(conn, path)
            async with conn.execute("PRAGMA journal_mode = WAL") as cur:
                row = await cur.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise LedgerError(f"cannot put the ledger {path} in WAL mode")
            await conn.execute("PRAGMA synchronous = FULL")
            async with conn.execute("PRAGMA synchronous") as cur:
                row = await cur.fetchone()
            if row is None or int(row[0]) != 2:  # 2 == FULL
                raise LedgerError(f"cannot set synchronous=FULL on the ledger {path}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await _migrate(conn, path)
        else:
            await conn.execute("PRAGMA query_only = 1")
            async with conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            if version == 0:
                raise LedgerSchemaError(f"{path} is not a pixrun ledger (or is empty)")
            if version > LATEST_VERSION:
                raise LedgerSchemaError(
                    f"the ledger {path} is newer (schema {version}) than this pixrun",
                    hint="upgrade pixrun",
                )
    except (sqlite3.Error, OSError) as exc:
        await conn.close()
        if lock_fd is not None:
            os.close(lock_fd)
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
    except LedgerError:
        await conn.close()
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    ledger = Ledger(path, conn, writable=writer, lock_fd=lock_fd)
    if writer:
        try:
            await ledger.load_trace_secret()
        except LedgerError:
            await ledger.close()
            raise
    return ledger
