"""What every part of :class:`runner.ledger.Ledger` stands on: the connection, the run
lock it holds, reading, the two ways of writing, and the ``meta`` table.

Invariants: a reader ledger never writes (it has no batcher; ``_write`` refuses), and
closing the ledger lets queued writes land before the connection and the lock go.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from runner.errors import LedgerError, LedgerSchemaError
from runner.ledger.batcher import WriteBatcher, one_by_one, transaction
from runner.ledger.lock import RunLock
from runner.ledger.rows import META_TRACE_SECRET, Statement


class LedgerBase:
    """The connection and the low-level helpers; see :class:`runner.ledger.Ledger`."""

    def __init__(
        self,
        path: Path,
        conn: aiosqlite.Connection,
        *,
        writable: bool,
        lock: RunLock | None,
    ) -> None:
        self.path = path
        self._conn = conn
        self._writable = writable
        self._lock = lock
        self._batcher = WriteBatcher(conn, path) if writable else None
        self._next_attempt_id = 1
        self._run_id: int | None = None
        self._trace_secret: bytes | None = None

    # -- life cycle ------------------------------------------------------------------

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self._conn.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
        self._trace_secret = bytes.fromhex(await self.meta_value(META_TRACE_SECRET, "trace secret"))

    @property
    def commit_count(self) -> int:
        return 0 if self._batcher is None else self._batcher.commits

    async def flush(self) -> None:
        """Wait for every write queued so far, including those of cancelled callers."""
        if self._batcher is not None:
            await self._batcher.flush()

    # -- low-level helpers -----------------------------------------------------------

    async def _write(self, statements: list[Statement], key: str | None = None) -> None:
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

    async def _write_now(self, statements: Iterable[Statement]) -> None:
        """A direct transaction, for set-up work and user actions (no batcher)."""
        await transaction(self._conn, self.path, one_by_one(statements))

    # -- metadata --------------------------------------------------------------------

    async def meta_value(self, key: str, what: str) -> str:
        """One ``meta`` value a migration made (``what`` names it in the error if missing)."""
        rows = await self._fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            raise LedgerSchemaError(f"the ledger {self.path} has no {what}")
        return str(rows[0][0])

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
