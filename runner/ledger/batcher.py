"""Every write transaction of the ledger, and the batcher that groups concurrent ones.

Invariants: every write goes through :func:`transaction` (``BEGIN IMMEDIATE``, then
commit, or rollback and :class:`LedgerError`); the batcher only ever delays a commit,
never reorders the writes about one shot, and after one failed transaction refuses
every further write (a run must stop rather than send requests it could not record).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from runner.errors import LedgerError
from runner.ledger.rows import Statement

#: (statements, the shot they concern or None, the caller's future)
Call = tuple[list[Statement], str | None, "asyncio.Future[None]"]
#: one SQL text and the parameter rows it runs with (one ``executemany``)
Group = tuple[str, Sequence[Sequence[Any]]]


async def transaction(conn: aiosqlite.Connection, path: Path, groups: Iterable[Group]) -> None:
    """Run ``groups`` in one ``BEGIN IMMEDIATE`` transaction: all of it lands, or none."""
    try:
        await conn.execute("BEGIN IMMEDIATE")
        for sql, rows in groups:
            await conn.executemany(sql, rows)
        await conn.commit()
    except (sqlite3.Error, OSError, ValueError) as exc:
        # ValueError: aiosqlite's answer once the connection is closed
        with contextlib.suppress(sqlite3.Error, ValueError):
            await conn.rollback()
        raise LedgerError(
            f"cannot write the ledger {path}: {exc}",
            hint="check free disk space and permissions of the ledger's folder; "
            "a rerun resumes from the last commit",
        ) from exc


def one_by_one(statements: Iterable[Statement]) -> list[Group]:
    """Statements as groups of one, in order."""
    return [(sql, [params]) for sql, params in statements]


class WriteBatcher:
    """Groups the writes of many concurrent shots into one ``BEGIN IMMEDIATE`` commit.

    Each submitted write is a list of ``(sql, params)`` and the shot it concerns; the
    statements of one call stay in order and in one transaction, and the calls about one
    shot stay in the order they were made. Calls about different shots may be
    interleaved, so that statements with the same SQL run as one ``executemany``: a few
    thread hops per commit instead of two per call. Callers await their own write's
    commit. A failed transaction fails every write in it with :class:`LedgerError`, and
    the batcher refuses further writes.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._queue: list[Call] = []
        #: the batch being committed right now
        self._inflight: list[Call] = []
        self._wakeup = asyncio.Event()
        self._failed: LedgerError | None = None
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ledger-writer")

    async def write(self, statements: list[Statement], key: str | None) -> None:
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
                await transaction(self._conn, self._path, grouped(batch))
            except LedgerError as exc:
                self._failed = exc
                for _, _, fut in batch + self._queue:
                    if not fut.done():
                        fut.set_exception(exc)
                self._queue = []
                return
            self.commits += 1
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

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


def grouped(batch: list[Call]) -> list[Group]:
    """The batch's statements as ``(sql, rows)`` groups, in an order that keeps each
    call's statements in order and the calls about one shot in order.

    Calls go into rounds: the n-th call about a shot goes into round n, so no round
    holds two calls about the same shot and rounds run one after the other. Within a
    round, the i-th statements of every call run before the (i+1)-th, grouped by SQL.
    """
    rounds: list[list[list[Statement]]] = []
    seen: dict[str, int] = {}
    for statements, key, _ in batch:
        index = 0
        if key is not None:
            index = seen.get(key, 0)
            seen[key] = index + 1
        while len(rounds) <= index:
            rounds.append([])
        rounds[index].append(statements)
    groups: list[Group] = []
    for calls in rounds:
        for position in range(max(len(c) for c in calls)):
            by_sql: dict[str, list[Sequence[Any]]] = {}
            for call in calls:
                if position < len(call):
                    sql, params = call[position]
                    by_sql.setdefault(sql, []).append(params)
            groups.extend(by_sql.items())
    return groups
