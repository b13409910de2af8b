"""The ledger's promises: schema and migrations, locking, invariants, query plans."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from shots import make_shot

from runner.errors import LedgerError, LedgerLocked, LedgerSchemaError
from runner.ledger import AttemptOutcome, EventKind, Ledger, open_ledger
from runner.ledger.classify import KnownShot, SyncAction, classify
from runner.ledger.migrations import LATEST_VERSION, MIGRATIONS
from runner.model import ShotState


def raw(path: Path) -> sqlite3.Connection:
    """A separate connection, as another process would see the file."""
    return sqlite3.connect(path)


async def test_fresh_ledger_is_migrated_wal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "b.ledger.sqlite"
    async with await open_ledger(path, writer=True):
        pass
    con = raw(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"shots", "attempts", "shot_versions", "events", "runs", "meta"} <= tables
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_each_migration_applies_from_the_previous_version(tmp_path: Path) -> None:
    # Build the ledger one released version at a time, as an old pixrun would have left
    # it, and let open_ledger take it the rest of the way.
    for start in range(LATEST_VERSION):
        path = tmp_path / f"v{start}.sqlite"
        con = raw(path)
        for number in range(start):
            con.executescript(MIGRATIONS[number])
        con.execute(f"PRAGMA user_version = {start}")
        if start:
            con.execute("PRAGMA application_id = 1346984018")
        con.commit()
        con.close()
        async with await open_ledger(path, writer=True) as ledger:
            await ledger.sync_manifest([make_shot("a")])
        assert raw(path).execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION


async def test_version_1_ledger_with_work_gains_a_private_trace_secret(tmp_path: Path) -> None:
    """Migration 2 on a ledger an earlier pixrun left mid-run: the work is kept, the
    attempt already sent keeps its trace id, and every ledger gets its own secret."""
    secrets = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.sqlite"
        con = raw(path)
        con.executescript(MIGRATIONS[0])
        con.execute("PRAGMA user_version = 1")
        con.execute("PRAGMA application_id = 1346984018")
        con.execute(
            "INSERT INTO shots (shot_id, seq, mode, prompt, request_json, request_hash, "
            "output_path, max_attempts, state, attempts, created_at, updated_at) "
            "VALUES ('hero', 0, 'text', 'p', '{}', 'h', 'hero.mp4', 3, 'submitting', 1, 0, 0)"
        )
        con.execute(
            "INSERT INTO attempts (shot_id, shot_version, attempt_no, trace_id, request_hash, "
            "sent_at, outcome) VALUES ('hero', 1, 1, 'old-trace-id', 'h', 0, 'sending')"
        )
        con.commit()
        con.close()
        async with await open_ledger(path, writer=True) as ledger:
            secrets.append(ledger.trace_secret)
        con = raw(path)
        assert con.execute("SELECT state FROM shots").fetchone() == ("submitting",)
        assert con.execute("SELECT trace_id, refunded_uptc FROM attempts").fetchone() == (
            "old-trace-id",
            None,
        )
        assert con.execute("SELECT COUNT(*) FROM uploads").fetchone() == (0,)
    assert len(secrets[0]) == 32 and secrets[0] != secrets[1]


async def test_newer_or_foreign_database_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    con = raw(newer)
    con.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(LedgerSchemaError, match=r"knows up to"):
        await open_ledger(newer, writer=True)
    foreign = tmp_path / "foreign.sqlite"
    con = raw(foreign)
    con.execute("CREATE TABLE x (a)")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with pytest.raises(LedgerSchemaError, match="not a pixrun ledger"):
        await open_ledger(foreign, writer=True)


async def test_reader_needs_an_existing_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger"):
        await open_ledger(tmp_path / "missing.sqlite", writer=False)


async def test_second_writer_is_refused_and_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "b.ledger.sqlite"
    async with await open_ledger(path, writer=True):
        with pytest.raises(LedgerLocked, match="another pixrun run"):
            await open_ledger(path, writer=True)
        # readers never need the lock
        async with await open_ledger(path, writer=False) as reader:
            assert await reader.counts_by_state() == {}
    # a holder killed with SIGKILL releases the lock (the kernel drops flocks)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import asyncio, sys
                from pathlib import Path
                from runner.ledger import open_ledger
                async def main():
                    await open_ledger(Path({str(path)!r}), writer=True)
                    print("locked", flush=True)
                    await asyncio.sleep(60)
                asyncio.run(main())
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LedgerLocked, match=f"pid {holder.pid}"):
            await open_ledger(path, writer=True)
        holder.kill()
        holder.wait(timeout=10)
        async with await open_ledger(path, writer=True):
            pass
    finally:
        holder.kill()


async def test_intent_is_durable_before_begin_attempt_returns(tmp_path: Path) -> None:
    path = tmp_path / "b.ledger.sqlite"
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.sync_manifest([make_shot("a"), make_shot("b")])
        await ledger.start_run()
        row = await ledger.get_shot("a")
        assert row is not None
        attempt_id = await ledger.begin_attempt(
            row, attempt_no=1, trace_id="trace-a-1", new_attempt=True
        )
        # another connection (another process) sees the intent at once
        con = raw(path)
        state = con.execute("SELECT state FROM shots WHERE shot_id='a'").fetchone()[0]
        outcome = con.execute(
            "SELECT outcome, trace_id FROM attempts WHERE attempt_id=?", (attempt_id,)
        ).fetchone()
        assert state == ShotState.SUBMITTING.value
        assert outcome == (AttemptOutcome.SENDING.value, "trace-a-1")
        await ledger.attempt_accepted("a", attempt_id, "task-1", 100_000, next_poll_at=0.0)
        assert con.execute("SELECT task_id, state FROM shots WHERE shot_id='a'").fetchone() == (
            "task-1",
            ShotState.SUBMITTED.value,
        )
        assert await ledger.spent_uptc() == 100_000


async def test_concurrent_writes_are_grouped_into_few_commits(tmp_path: Path) -> None:
    path = tmp_path / "b.ledger.sqlite"
    shots = [make_shot(f"s{i}") for i in range(200)]
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.sync_manifest(shots)
        await ledger.start_run()
        rows = [await ledger.get_shot(s.shot_id) for s in shots]
        before = ledger.commit_count
        await asyncio.gather(
            *(
                ledger.begin_attempt(r, attempt_no=1, trace_id=f"t{i}", new_attempt=True)
                for i, r in enumerate(rows)
                if r is not None
            )
        )
        commits = ledger.commit_count - before
        assert 1 <= commits < 50, commits
        counts = await ledger.counts_by_state()
        assert counts[ShotState.SUBMITTING] == 200


async def test_recover_parks_submitting_and_rewinds_downloading(tmp_path: Path) -> None:
    path = tmp_path / "b.ledger.sqlite"
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.sync_manifest([make_shot("a"), make_shot("b"), make_shot("c")])
        await ledger.start_run()
        a = await ledger.get_shot("a")
        assert a is not None
        await ledger.begin_attempt(a, attempt_no=1, trace_id="ta", new_attempt=True)
        await ledger.update_shot("b", {"state": ShotState.DOWNLOADING, "task_id": "tb"})
    async with await open_ledger(path, writer=True) as ledger:
        parked = await ledger.recover()
        assert parked == ["a"]
        counts = await ledger.counts_by_state()
        assert counts == {
            ShotState.AMBIGUOUS: 1,
            ShotState.RENDERED: 1,
            ShotState.PENDING: 1,
        }
        outcome = raw(path).execute("SELECT outcome FROM attempts WHERE shot_id='a'").fetchone()
        assert outcome[0] == AttemptOutcome.AMBIGUOUS.value


async def test_sync_detects_new_changed_unchanged_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "b.ledger.sqlite"
    async with await open_ledger(path, writer=True) as ledger:
        first = await ledger.sync_manifest([make_shot("a"), make_shot("b"), make_shot("c")])
        assert first.new == 3
        await ledger.update_shot("a", {"state": ShotState.DONE, "sha256": "x", "bytes": 10})
        second = await ledger.sync_manifest(
            [make_shot("a", prompt="a new prompt"), make_shot("b"), make_shot("d")]
        )
        assert (second.new, second.changed, second.unchanged, second.removed) == (
            1,
            ("a",),
            1,
            ("c",),
        )
        a = await ledger.get_shot("a")
        assert a is not None and a.version == 2 and a.state == ShotState.PENDING
        assert await ledger.output_owner("a.mp4") == ("a", "x", 1)
        # the dropped shot is no longer dispatched: abandoned
        pending = await ledger.next_pending(after_seq=-1, limit=10)
        assert [r.shot_id for r in pending] == ["a", "b", "d"]
        c = await ledger.get_shot("c")
        assert c is not None and c.state == ShotState.ABANDONED
        # back in the manifest (at a new place): pending again, nothing else touched
        third = await ledger.sync_manifest(
            [make_shot("c"), make_shot("a", prompt="a new prompt"), make_shot("b")]
        )
        assert (third.new, third.changed, third.unchanged) == (0, (), 3)
        pending = await ledger.next_pending(after_seq=-1, limit=10)
        assert [(r.shot_id, r.seq) for r in pending] == [("c", 0), ("a", 1), ("b", 2)]


async def test_a_reroll_survives_syncs_until_the_manifest_entry_changes(tmp_path: Path) -> None:
    path = tmp_path / "b.ledger.sqlite"
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.sync_manifest([make_shot("a")])
        await ledger.update_shot("a", {"state": ShotState.DONE, "sha256": "x", "bytes": 10})
        assert await ledger.reroll("a", 42) == 2
        a = await ledger.get_shot("a")
        assert a is not None and (a.version, a.state, a.request["seed"]) == (
            2,
            ShotState.PENDING,
            42,
        )
        assert await ledger.output_owner("a.mp4") == ("a", "x", 1)
        same = await ledger.sync_manifest([make_shot("a")])
        assert (same.changed, same.unchanged) == ((), 1)
        assert (await ledger.get_shot("a")).request["seed"] == 42  # type: ignore[union-attr]
        # a second re-roll derives from the manifest's request, not from the first's
        assert await ledger.reroll("a", 7) == 3
        assert (await ledger.sync_manifest([make_shot("a")])).changed == ()
        edited = await ledger.sync_manifest([make_shot("a", prompt="an edit")])
        assert edited.changed == ("a",)
        a = await ledger.get_shot("a")
        assert a is not None and a.version == 4 and "seed" not in a.request
        assert raw(path).execute(
            "SELECT seed_override, override_base_hash FROM shots"
        ).fetchall() == [(None, None)]


async def test_the_owner_of_a_file_is_the_last_version_that_left_one(tmp_path: Path) -> None:
    """Changed twice, the middle version never finished: the file at the output path
    is still version 1's, and a new version is placed over it as such."""
    path = tmp_path / "b.ledger.sqlite"
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.sync_manifest([make_shot("a")])
        await ledger.update_shot("a", {"state": ShotState.DONE, "sha256": "x", "bytes": 10})
        await ledger.sync_manifest([make_shot("a", prompt="second")])
        await ledger.update_shot("a", {"state": ShotState.FAILED})
        await ledger.sync_manifest([make_shot("a", prompt="third")])
        assert await ledger.output_owner("a.mp4") == ("a", "x", 1)


async def test_requeue_keeps_trace_for_ambiguous_and_grants_attempts_to_failed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.ledger.sqlite"
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.sync_manifest([make_shot("a"), make_shot("b")])
        await ledger.update_shot("a", {"state": ShotState.AMBIGUOUS, "attempts": 1})
        await ledger.update_shot(
            "b", {"state": ShotState.FAILED, "attempts": 3, "error_kind": "render_failed"}
        )
        moved = await ledger.requeue(["a", "b"], "test", extra_attempts=2)
        assert moved == 2
        a = await ledger.get_shot("a")
        b = await ledger.get_shot("b")
        assert a is not None and b is not None
        assert (a.state, a.attempts, a.error_kind) == (
            ShotState.PENDING,
            1,
            "retry_same_attempt",
        )
        assert (b.state, b.attempts, b.max_attempts) == (ShotState.PENDING, 3, 5)


async def test_write_failure_stops_further_writes(tmp_path: Path) -> None:
    path = tmp_path / "b.ledger.sqlite"
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.sync_manifest([make_shot("a")])
        await ledger.start_run()
        # another connection holds the write lock past the busy timeout
        con = raw(path)
        con.execute("PRAGMA busy_timeout = 0")
        await ledger.connection.execute("PRAGMA busy_timeout = 50")
        con.execute("BEGIN IMMEDIATE")
        row = await ledger.get_shot("a")
        assert row is not None
        with pytest.raises(LedgerError, match="cannot write the ledger"):
            await ledger.begin_attempt(row, attempt_no=1, trace_id="t", new_attempt=True)
        con.rollback()
        with pytest.raises(LedgerError):
            await ledger.begin_attempt(row, attempt_no=1, trace_id="t", new_attempt=True)


async def _every_ledger_statement(path: Path) -> list[str]:
    """Every statement the Ledger's methods send, as SQLite ran it (parameters bound)."""
    statements: list[str] = []
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.connection.set_trace_callback(statements.append)
        await ledger.sync_manifest([make_shot(f"s{i}") for i in range(50)])
        await ledger.start_run()
        row = await ledger.get_shot("s0")
        assert row is not None
        attempt = await ledger.begin_attempt(row, attempt_no=1, trace_id="t0", new_attempt=True)
        await ledger.attempt_accepted("s0", attempt, "task-0", 100, next_poll_at=0.0)
        await ledger.record_task_cost("s0", "task-0", refunded=True, points="1")
        row = await ledger.get_shot("s1")
        assert row is not None
        attempt = await ledger.begin_attempt(row, attempt_no=1, trace_id="t1", new_attempt=True)
        await ledger.attempt_finished(
            "s1",
            attempt,
            AttemptOutcome.INVALID,
            message="no",
            http_status=400,
            shot_fields={"state": ShotState.FAILED},
            event=(EventKind.SHOT_FAILED, "no"),
        )
        await ledger.update_shot("s0", {"state": ShotState.DONE}, event=(EventKind.RETRY, "x"))
        await ledger.record_upload("d" * 64, "https://x/y.png", 10, 1000)
        await ledger.version_moved_aside("s0", 1, "s0.v1.mp4")
        await ledger.adopt([])
        await ledger.next_pending(after_seq=-1, limit=10)
        await ledger.shots_in([ShotState.SUBMITTED, ShotState.RENDERED])
        await ledger.counts_by_state()
        await ledger.spent_uptc()
        await ledger.remaining_cost()
        await ledger.shot_ids_in([ShotState.FAILED])
        await ledger.done_outputs()
        await ledger.never_sent()
        await ledger.looks_simulated(64)
        await ledger.bytes_to_come()
        await ledger.upload_url("d" * 64)
        await ledger.sent_trace_id("s0", 1, 1)
        await ledger.output_owner("s0.mp4")
        await ledger.task_owner("task-0")
        await ledger.in_manifest("s0")
        await ledger.requeue(["s1"], "again")
        await ledger.reroll("s0", 7)
        await ledger.resolve("s2", "task-2")
        await ledger.recover()
        await ledger.add_event(EventKind.THROTTLED, None, "slow")
        await ledger.end_run(0, {})
        await ledger.connection.set_trace_callback(None)
    return statements


#: known: attempts has no index on task_id, so task_owner (``pixrun resolve``, once per
#: command) reads every attempt; an index needs a schema migration (left to its own change)
_KNOWN_ATTEMPTS_SCAN = "UNION SELECT shot_id FROM attempts WHERE task_id = 'task-0' LIMIT 1"

#: tables small enough to read whole: a handful of settings, one row per uploaded image
_SMALL_TABLES = ("meta", "uploads")


async def test_every_runner_query_uses_an_index(tmp_path: Path) -> None:
    """Every statement the Ledger sends that picks rows (WHERE) is served by an index;
    only the manifest sync and its preview read every shot, having to compare each."""
    path = tmp_path / "b.ledger.sqlite"
    statements = await _every_ledger_statement(path)
    con = raw(path)
    checked = 0
    for sql in dict.fromkeys(statements):
        if "WHERE" not in sql.upper() or sql.upper().startswith(("BEGIN", "PRAGMA")):
            continue
        if sql.endswith(_KNOWN_ATTEMPTS_SCAN):
            continue
        plan = [r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql)]
        table_steps = [
            step
            for step in plan
            if step.startswith(("SCAN", "SEARCH"))
            and step.split()[1] not in _SMALL_TABLES
            and step != "SCAN CONSTANT ROW"
        ]
        checked += 1
        # every step reads through an index: no full scan of a table
        assert all("INDEX" in step or "PRIMARY KEY" in step for step in table_steps), (sql, plan)
    assert checked >= 25, checked


async def test_ledger_never_stores_the_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = "sk-MARKER-never-store-me"
    monkeypatch.setenv("PIXRUN_API_KEY", marker)
    path = tmp_path / "b.ledger.sqlite"
    ledger: Ledger
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.sync_manifest([make_shot("a")])
        await ledger.start_run()
        await ledger.end_run(0, {"ok": True})
    # every file the ledger left: the database, and any journal or lock file beside it
    files = sorted(tmp_path.iterdir())
    assert path in files
    for file in files:
        assert marker.encode() not in file.read_bytes(), file


def test_grouped_writes_keep_each_shots_order() -> None:
    """Batching may interleave shots, never reorder the writes about one shot."""
    from runner.ledger.batcher import grouped as _grouped

    def call(shot: str | None, *sqls: str) -> tuple[list[tuple[str, tuple[str, ...]]], Any, Any]:
        return ([(sql, (shot or "-", sql)) for sql in sqls], shot, None)

    batch = [
        call("a", "UPDATE shots", "INSERT attempts"),
        call("b", "UPDATE shots", "INSERT attempts"),
        call("a", "UPDATE attempts", "UPDATE shots"),
        call(None, "INSERT events"),
        call("c", "UPDATE shots"),
    ]
    groups = _grouped(batch)  # type: ignore[arg-type]
    # the same SQL of different shots runs as one executemany
    assert groups[0] == (
        "UPDATE shots",
        [("a", "UPDATE shots"), ("b", "UPDATE shots"), ("c", "UPDATE shots")],
    )
    flat = [(row[0], sql) for sql, rows in groups for row in rows]
    assert len(flat) == 8
    for shot in ("a", "b", "c"):
        mine = [sql for who, sql in flat if who == shot]
        expected = [sql for stmts, key, _ in batch if key == shot for sql, _ in stmts]
        assert mine == expected, shot
    assert len(groups) < len(flat)


def _known(state: ShotState, *, rerolled_from: str | None = None) -> KnownShot:
    return KnownShot("h-ledger", 1, state, 0, 1, "out/a.mp4", rerolled_from)


@pytest.mark.parametrize(
    ("request_hash", "known", "action"),
    [
        ("h-new", None, SyncAction.NEW),
        ("h-ledger", _known(ShotState.DONE), SyncAction.KEEP),
        ("h-ledger", _known(ShotState.FAILED), SyncAction.KEEP),
        ("h-ledger", _known(ShotState.SUBMITTING), SyncAction.KEEP),
        ("h-ledger", _known(ShotState.ABANDONED), SyncAction.REVIVE),
        ("h-base", _known(ShotState.DONE, rerolled_from="h-base"), SyncAction.KEEP),
        ("h-edit", _known(ShotState.DONE, rerolled_from="h-base"), SyncAction.RERENDER),
        ("h-edit", _known(ShotState.PENDING), SyncAction.NEW_VERSION),
        ("h-edit", _known(ShotState.FAILED), SyncAction.NEW_VERSION),
        ("h-edit", _known(ShotState.ABANDONED), SyncAction.NEW_VERSION),
        ("h-edit", _known(ShotState.AMBIGUOUS), SyncAction.NEW_VERSION),
        ("h-edit", _known(ShotState.SUBMITTING), SyncAction.DEFERRED),
        ("h-edit", _known(ShotState.SUBMITTED), SyncAction.DEFERRED),
        ("h-edit", _known(ShotState.DOWNLOADING), SyncAction.DEFERRED),
    ],
)
def test_classify_says_what_the_sync_does(
    request_hash: str, known: KnownShot | None, action: SyncAction
) -> None:
    assert classify(request_hash, known) is action


async def test_the_sync_does_what_classify_says(tmp_path: Path) -> None:
    """One ledger with a shot in each case; the sync's result and rows follow classify."""
    async with await open_ledger(tmp_path / "b.ledger.sqlite", writer=True) as ledger:
        await ledger.sync_manifest([make_shot(s) for s in "abcdef"])
        await ledger.sync_manifest([make_shot(s) for s in "abcde"])  # f: abandoned
        for sid, state in {"b": ShotState.DONE, "c": ShotState.SUBMITTED}.items():
            await ledger.update_shot(sid, {"state": state})
        shots = [
            make_shot("a"),  # pending, unchanged: kept
            make_shot("b", prompt="edited"),  # done, changed: held (hold) or re-rendered
            make_shot("c", prompt="edited"),  # at the provider, changed: deferred
            make_shot("d", prompt="edited"),  # pending, changed: a new version
            make_shot("f"),  # abandoned, unchanged: revived
            make_shot("g"),  # new
        ]
        known = await ledger.known_shots()
        actions = {s.shot_id: classify(s.request_hash, known.get(s.shot_id)) for s in shots}
        assert actions == {
            "a": SyncAction.KEEP,
            "b": SyncAction.RERENDER,
            "c": SyncAction.DEFERRED,
            "d": SyncAction.NEW_VERSION,
            "f": SyncAction.REVIVE,
            "g": SyncAction.NEW,
        }
        result = await ledger.sync_manifest(shots, hold=frozenset({"b"}), known=known)
        assert result.new == 1 and result.unchanged == 2 and result.removed == ("e",)
        assert result.changed == ("b", "c", "d")
        rows = {sid: await ledger.get_shot(sid) for sid in "abcdfg"}
        got = {sid: (row.state, row.version) for sid, row in rows.items() if row is not None}
        assert got == {
            "a": (ShotState.PENDING, 1),
            "b": (ShotState.DONE, 1),
            "c": (ShotState.SUBMITTED, 1),
            "d": (ShotState.PENDING, 2),
            "f": (ShotState.PENDING, 1),
            "g": (ShotState.PENDING, 1),
        }
