"""Opening a ledger: the run lock, the durability settings, the schema and migrations.

Invariants: a writer holds the run lock before it touches the file, refuses any SQLite
file that is not a pixrun ledger before changing a byte of it, and asserts WAL with
``synchronous=FULL``; a reader never writes, never migrates and takes no lock.
:func:`move_ledger` moves a ledger only under its run lock, and only once its WAL is
checkpointed into the file and no reader holds it: the one file that moves is the
whole ledger, so a crash during the move leaves it whole at one of the two names.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import aiosqlite

from runner.errors import LedgerError, LedgerLocked, LedgerSchemaError
from runner.ledger.ledger import Ledger
from runner.ledger.lock import RunLock, lock_path_of
from runner.ledger.migrations import LATEST_VERSION, MIGRATIONS
from runner.ledger.rows import SIM_INFIX

APP_ID = 0x50495852  # "PIXR": tells a pixrun ledger from any other SQLite file


def default_ledger_path(manifest_path: Path, *, simulated: bool = False) -> Path:
    """The ledger lives beside the manifest: ``shots.yaml`` -> ``shots.ledger.sqlite``;
    a rehearsal's (``--simulate``) is ``shots.sim.ledger.sqlite``."""
    infix = SIM_INFIX if simulated else ""
    return manifest_path.with_name(manifest_path.stem + infix + ".ledger.sqlite")


def move_ledger(source: Path, target: Path) -> None:
    """Move the pixrun ledger ``source`` to ``target`` (a name no file has yet).

    Raises :class:`LedgerLocked` while a run or a reader uses it, :class:`LedgerError`
    when ``target`` exists, ``source`` is not a pixrun ledger, or the move fails; in
    each case nothing has moved.
    """
    if target.exists():
        raise LedgerError(
            f"two ledgers for one batch: {source} and {target}",
            hint=f"keep the one that holds this batch's work and remove the other ({target} "
            "is where it is looked for)",
        )
    lock = RunLock.take(source)
    try:
        _checkpoint_whole(source)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
        except OSError as exc:
            raise LedgerError(
                f"cannot move the ledger {source} to {target}: {exc.strerror or exc}",
                hint="both folders must be writable and on one filesystem",
            ) from exc
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                # empty once checkpointed; SQLite makes them afresh at the new name
                source.with_name(source.name + suffix).unlink()
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            lock_path_of(source).unlink()


def _checkpoint_whole(path: Path) -> None:
    """Fold the ledger's WAL into its file, refusing anything but a pixrun ledger and
    a ledger some reader still holds (its WAL could not be emptied)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        try:
            (app_id,) = conn.execute("PRAGMA application_id").fetchone()
            if app_id != APP_ID:
                raise LedgerSchemaError(
                    f"{path} is not a pixrun ledger",
                    hint="move it away: only a pixrun ledger is taken over",
                )
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise LedgerError(
            f"cannot read the ledger {path}: {exc}", hint="check the file and its folder"
        ) from exc
    if busy:
        raise LedgerLocked(
            f"the ledger {path} is being read by another process",
            hint="close 'pixrun status --watch' (or whatever reads it) and try again",
        )


async def _pragma_int(conn: aiosqlite.Connection, sql: str) -> int:
    async with conn.execute(sql) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def schema_version(conn: aiosqlite.Connection, path: Path) -> int:
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
    foreign = app_id not in (0, APP_ID) or (version > 0 and app_id != APP_ID)
    if not foreign and version == 0:
        foreign = await _pragma_int(conn, "SELECT COUNT(*) FROM sqlite_master") > 0
    if foreign:
        raise LedgerSchemaError(
            f"{path} is an SQLite file, but not a pixrun ledger",
            hint="point --ledger at this batch's ledger, or at a new file",
        )
    return version


async def migrate(conn: aiosqlite.Connection, path: Path) -> None:
    version = await schema_version(conn, path)
    for number in range(version, LATEST_VERSION):
        # executescript commits first, so one script holds BEGIN .. COMMIT itself
        await conn.executescript(
            "BEGIN IMMEDIATE;\n"
            + MIGRATIONS[number]
            + f"\nPRAGMA user_version = {number + 1};\nPRAGMA application_id = {APP_ID};"
            "\nCOMMIT;"
        )


async def _prepare_writer(conn: aiosqlite.Connection, path: Path) -> None:
    # the schema check comes before WAL mode, which would rewrite another program's
    # file header
    await schema_version(conn, path)
    async with conn.execute("PRAGMA journal_mode = WAL") as cur:
        row = await cur.fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise LedgerError(f"cannot put the ledger {path} in WAL mode")
    await conn.execute("PRAGMA synchronous = FULL")
    if await _pragma_int(conn, "PRAGMA synchronous") != 2:  # 2 == FULL
        raise LedgerError(f"cannot set synchronous=FULL on the ledger {path}")
    await conn.execute("PRAGMA foreign_keys = ON")
    await migrate(conn, path)


async def _prepare_reader(conn: aiosqlite.Connection, path: Path) -> None:
    await conn.execute("PRAGMA query_only = 1")
    version = await _pragma_int(conn, "PRAGMA user_version")
    if version == 0:
        raise LedgerSchemaError(f"{path} is not a pixrun ledger (or is empty)")
    if version > LATEST_VERSION:
        raise LedgerSchemaError(
            f"the ledger {path} is newer (schema {version}) than this pixrun",
            hint="upgrade pixrun",
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
    lock = RunLock.take(path) if writer else None
    conn: aiosqlite.Connection | None = None
    try:
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
            await conn.execute("PRAGMA busy_timeout = 5000")
            await (_prepare_writer if writer else _prepare_reader)(conn, path)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
    except LedgerError:
        if conn is not None:
            await conn.close()
        if lock is not None:
            lock.release()
        raise
    ledger = Ledger(path, conn, writable=writer, lock=lock)
    if writer:
        try:
            await ledger.load_trace_secret()
        except LedgerError:
            await ledger.close()
            raise
    return ledger
