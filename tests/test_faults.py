"""The faults an overnight run meets: provider outage, a bad network path, a full disk,
a ledger that cannot be written. Each test fails if pixrun breaks the promise it names.

pixrun runs as a subprocess (``python -m runner run``) against a simulator in a
background thread; the checks read the ledger and the simulator's books.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from runkit import (
    Batch,
    Running,
    SimThread,
    assert_batch_sound,
    env_for,
    explain,
    in_state,
    net_charges,
    pixrun,
    query,
    run_args,
    run_pixrun,
    sha256_of,
    shot_of_trace,
    sim_tasks_by_intent,
    start,
    state_counts,
    states,
    wait_until,
    write_manifest,
)
from tcpproxy import Fault, ProxyThread

from runner.sim import SimulatorThread

#: a real-time outage, standing in for minutes: many times pixrun's whole retry budget
#: for one call at this back-off base (8 submit tries take at most 127 x 0.0001 s, about
#: 13 ms; 4 download tries less): the outage is ~50 times that. It starts counting once
#: the run has said the provider is down, so the run has met it whatever the machine's pace.
OUTAGE_S = 0.6
OUTAGE_BACKOFF = ("--backoff-base-s", "0.0001")
#: exponential back-off: an outage of 0.6 s costs each waiting submit ~13 tries (3 s: ~15),
#: where a retry loop without back-off would make thousands
MAX_REFUSED = 8 * 25


def _outage_events(ledger: Path) -> list[str]:
    """The kinds of the ledger's provider health events, in order."""
    sql = (
        "SELECT kind FROM events WHERE kind IN ('provider_down', 'provider_back') ORDER BY event_id"
    )
    return [kind for (kind,) in query(ledger, sql)]


def _outage(ledger: Path) -> None:
    """Keep the provider away until the run has logged it down, then ``OUTAGE_S`` more."""
    wait_until(
        lambda: "provider_down" in _outage_events(ledger),
        timeout_s=30,
        what="the run to log the provider down",
    )
    time.sleep(OUTAGE_S)


def _retry_ambiguous(batch: Batch, *extra: str) -> None:
    """``pixrun retry --ambiguous``: re-queue the parked shots (same trace ids). It needs
    no provider: the one it is given refuses connections."""
    args = ["retry", str(batch.manifest), "--ambiguous", *extra]
    done = pixrun(args, env_for("http://127.0.0.1:9"), cwd=batch.dir)
    assert done.returncode == 0, explain(done)


def _assert_complete(batch: Batch, sim: SimulatorThread) -> dict[str, Any]:
    """Every shot done, generated exactly once (and with an intent), its file the
    simulator's bytes, nothing else left in the output folder, the ledger sound."""
    assert state_counts(batch.ledger) == {"done": len(batch.ids)}
    stats = sim.stats()
    by_shot = sim_tasks_by_intent(batch.ledger, stats)
    assert {s: len(t) for s, t in by_shot.items()} == {sid: 1 for sid in batch.ids}
    assert_batch_sound(batch, stats, batch.ids)
    return stats


def _backlog(ledger: Path) -> int:
    """Shots rendered but not yet saved (wait_until retries while the ledger is created)."""
    sql = "SELECT COUNT(*) FROM shots WHERE state IN ('rendered', 'downloading')"
    return int(query(ledger, sql)[0][0])


def test_provider_outage_is_waited_out_and_nothing_fails(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """The provider goes away mid-run and comes back on the same port: pixrun backs off,
    keeps polling the tasks it knows, and completes; no shot is marked failed.

    The outage starts while tasks are rendering and finished videos wait to be
    downloaded (downloads are slowed by the proxy), so polls and downloads meet it, and
    submits too when a slot frees up in it (not every run: the back-off of refused
    submits is proven by the next test). Only a generate that was on the wire at the
    very moment the server went down may be parked (its answer was lost); once re-queued,
    the provider's trace-id dedupe completes it without a second charge.
    """
    n = 40
    sim = sim_thread(render_time_s=(0.05, 0.3), seed=3, dedupe_trace_id=True)
    slow_videos = Fault(media_latency_s=0.05)
    with ProxyThread("127.0.0.1", sim.port, lambda kind, rng: slow_videos) as proxy:
        batch = write_manifest(tmp_path, n, concurrency=8, download_concurrency=1)
        ledger = batch.ledger
        runner = start(
            run_args(batch, *OUTAGE_BACKOFF), env_for(proxy.base_url), cwd=tmp_path, tag="outage"
        )
        wait_until(
            lambda: _backlog(ledger) >= 3 and sim.stats(with_tasks=False)["in_flight"] >= 4,
            timeout_s=30,
            what="renders in flight and videos waiting to be downloaded",
        )
        before_ids = {t["task_id"] for t in sim.stats()["tasks"]}
        proxy.stop_listening()  # connection refused, as from a host that is down
        sim.stop_server()
        stopped_at = time.time()
        _outage(ledger)
        back_at = time.time()
        sim.start_server()
        proxy.start_listening()
        runner.wait(120)
        said = explain(runner)

        counts = state_counts(ledger)
        assert counts.get("failed", 0) == 0 and counts.get("moderated", 0) == 0, said
        parked = in_state(ledger, "ambiguous")
        assert counts["done"] + len(parked) == n, (counts, said)
        assert runner.proc.returncode == (1 if parked else 0), said
        # only requests already on the wire when the server went down may be parked:
        # anything sent during the outage was refused at connect time (nothing sent)
        for shot_id, sent_at in query(
            ledger, "SELECT shot_id, sent_at FROM attempts WHERE outcome = 'ambiguous'"
        ):
            assert sent_at <= stopped_at, f"{shot_id} parked for a request sent in the outage"
        # submits refused in the outage (if any) were retried with back-off, not in a storm
        refused = query(
            ledger,
            "SELECT COUNT(*) FROM attempts WHERE outcome = 'transient' AND sent_at BETWEEN ? AND ?",
            (stopped_at, back_at),
        )[0][0]
        assert refused <= MAX_REFUSED, f"{refused} generate calls in a {OUTAGE_S} s outage"
        # the one outage is logged once each way, not once per failed call
        assert _outage_events(ledger) == ["provider_down", "provider_back"], said

        if parked:  # re-queue the lost answers: the same trace id is sent, deduplicated
            _retry_ambiguous(batch)
            # through the same proxy: the ledger knows its provider by its address
            run_pixrun(batch, proxy.base_url, check=True)

    stats = _assert_complete(batch, sim)
    assert net_charges(stats) == {sid: 1 for sid in batch.ids}  # none refunded either
    # the tasks the provider held before the outage were collected, not generated again
    collected = {r[0] for r in query(ledger, "SELECT task_id FROM shots WHERE state='done'")}
    assert before_ids <= collected


def test_provider_down_when_the_run_starts_is_waited_out(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Every submit is refused at connect time for a while (nothing was sent): pixrun
    backs off instead of giving up on shots, parks nothing, and completes once the
    provider is back."""
    sim = sim_thread(render_time_s=(0.02, 0.1), seed=13)
    sim.stop_server()
    batch = write_manifest(tmp_path, 24, concurrency=8)
    runner = start(
        run_args(batch, *OUTAGE_BACKOFF), env_for(sim.base_url), cwd=tmp_path, tag="down"
    )
    _outage(batch.ledger)
    sim.start_server()
    assert runner.wait(120) == 0, explain(runner)
    refused = query(batch.ledger, "SELECT COUNT(*) FROM attempts WHERE outcome = 'transient'")[0][0]
    assert 0 < refused <= MAX_REFUSED, refused  # it met the outage, and backed off
    _assert_complete(batch, sim)


class FlakyPath:
    """Latency everywhere; resets and stalls in both directions on a share of connections.

    On a generate connection (one request each) a cut lands inside the request (the
    provider never sees it whole) or inside the answer (the task exists, pixrun never
    hears of it). Fetch and download connections are pooled, so their cuts land anywhere
    in a stream of many calls. The first connections of each kind meet every fault once,
    so every run exercises all of them; after that the faults are drawn at random.
    """

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def __call__(self, kind: str, rng: random.Random) -> Fault:
        generate = kind == "generate"
        head_bytes = 200 if generate else 4000  # a cut inside the request (stream)
        answer_bytes = 150 if generate else 8000  # a cut inside the answer (stream)
        faults = [
            Fault(reset_up_after=rng.randrange(0, head_bytes)),
            Fault(reset_down_after=rng.randrange(0, answer_bytes)),
            Fault(stall_up_after=rng.randrange(0, head_bytes)),
            Fault(stall_down_after=rng.randrange(0, answer_bytes)),
        ]
        clean = Fault(latency_s=rng.uniform(0.0, 0.03))
        index = self.seen[kind]
        self.seen[kind] += 1
        if generate and index < 2 * len(faults):  # clean, fault, clean, fault, ...
            return faults[index // 2] if index % 2 else clean
        if not generate and index < len(faults):
            return faults[index]
        r = rng.random()
        share = 0.05 if generate else 0.08  # per fault: 20% or 32% of connections
        return faults[int(r / share)] if r < share * len(faults) else clean


def test_flaky_network_path_parks_only_generates_cut_after_sending(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Through a proxy that delays, stalls and resets connections in both directions,
    every shot completes exactly once, and the shots parked as ambiguous are exactly
    those whose generate request went out and whose answer never came back whole.

    The proxy's records say, per generate connection, whether the provider received the
    whole request and whether pixrun received the whole answer; the simulator's books
    say what was charged.
    """
    sim = sim_thread(render_time_s=(0.02, 0.1), seed=11, dedupe_trace_id=True)
    with ProxyThread("127.0.0.1", sim.port, FlakyPath(), seed=5) as proxy:
        batch = write_manifest(tmp_path, 40, concurrency=8)
        ledger = batch.ledger
        # a streak of lost answers stops submitting (by design): run until nothing is left
        for _ in range(6):
            proc = run_pixrun(batch, proxy.base_url)
            assert proc.returncode in (0, 1), explain(proc)
            if all(s in ("done", "ambiguous") for s in states(ledger).values()):
                break
        counts = state_counts(ledger)
        assert set(counts) <= {"done", "ambiguous"}, (counts, explain(proc))

        generates = [r for r in proxy.records() if r.kind == "generate"]
        assert all(r.trace_id for r in generates), "the proxy lost track of a generate"
        unanswered = {r.trace_id for r in generates if not r.response_delivered}
        reached = {r.trace_id for r in generates if r.request_forwarded}
        assert unanswered, "the proxy cut no generate: the test proves nothing"
        parked = dict(
            query(ledger, "SELECT trace_id, shot_id FROM attempts WHERE outcome = 'ambiguous'")
        )
        # the only ambiguous shots are those whose generate was cut after it was sent,
        # and every such shot was parked rather than sent again
        assert set(parked) == unanswered
        assert set(parked.values()) == in_state(ledger, "ambiguous")

        stats = sim.stats()
        charged_traces = {t["trace_id"] for t in stats["tasks"]}
        # an answer cut on its way back: the task exists (charged once, not again);
        # a request cut on its way out: the provider never saw it, nothing was charged
        for trace in unanswered:
            assert (trace in charged_traces) == (trace in reached), trace
        by_shot = sim_tasks_by_intent(ledger, stats)
        for shot_id, tasks in by_shot.items():
            assert len(tasks) == 1, f"{shot_id} was generated {len(tasks)} times"

        # re-queue the parked shots: their trace ids are sent again and deduplicated
        _retry_ambiguous(batch)
        proxy.set_policy(lambda kind, rng: Fault(latency_s=0.005))
        run_pixrun(batch, proxy.base_url, check=True)
        _assert_complete(batch, sim)
        cuts = {r.cut for r in proxy.records() if r.cut}
        assert {"reset_up", "reset_down", "stall_up", "stall_down"} <= cuts, cuts


# -- a full disk -------------------------------------------------------------------------

PAGE_BYTES = 4096


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    """``tmpfs(name, size_bytes)``: a small tmpfs mounted under tmp_path (unmounted after).

    Skips the test, saying why, where mounting is not permitted (it needs root with
    CAP_SYS_ADMIN, as in CI containers run with --privileged or on a dev box).
    """
    mounted: list[Path] = []

    def mount(name: str, size_bytes: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount(8) here: cannot make a small file system to fill")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs ({done.stderr.strip() or done.returncode}): mounting "
                "needs root with CAP_SYS_ADMIN"
            )
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path, leave_bytes: int) -> Path:
    """Fill the file system of ``directory`` until only ``leave_bytes`` are free."""
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    filler = directory / "filler.bin"
    block = b"\0" * 65536
    remaining = max(0, free - leave_bytes)
    with filler.open("wb", buffering=0) as fh:
        while remaining > 0:
            try:
                remaining -= fh.write(block[: min(len(block), remaining)])
            except OSError as exc:  # someone else is writing there too: full is full
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


#: pixrun with the disk of its outputs "filling up" after a byte budget: the download
#: seam raises ENOSPC exactly as a full file system does (fault injection, no mount)
_INJECT_DISK_FULL = """
import errno, io, os, sys
import runner.outputs as outputs
budget = [int(os.environ["FAULT_DISK_BYTES"])]
class Filling(io.FileIO):
    def write(self, data):
        budget[0] -= len(data)
        if budget[0] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)
outputs.open_part = lambda path: io.BufferedWriter(Filling(path, "w"))
from runner.cli import main
sys.argv[0] = "pixrun"
main()
"""


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
def test_disk_full_while_downloading_stops_cleanly_and_a_rerun_finishes(
    tmp_path: Path, tmpfs: Callable[[str, int], Path], sim_thread: SimThread, how: str
) -> None:
    """The disk fills mid-run: no partial file is left under a final name, the shot that
    hit it stays collectable (rendered), pixrun stops with exit 1 and says the disk is
    full, and a rerun after space is freed finishes it without generating it again."""
    n = 30
    sim = sim_thread(render_time_s=(0.02, 0.1), seed=21)
    if how == "tmpfs":
        out_dir = tmpfs("disk", 64 * PAGE_BYTES) / "out"
        out_dir.mkdir()
        # room for a few videos and their sidecars (a page each), then ENOSPC
        filler: Path | None = _fill(out_dir.parent, leave_bytes=9 * PAGE_BYTES)
        batch = write_manifest(tmp_path, n, concurrency=4, output_dir=out_dir)
        # the simulator's clips are tiny: past the check of room for real videos
        first = run_pixrun(batch, sim.base_url, "--skip-space-check")
    else:
        filler = None
        batch = write_manifest(tmp_path, n, concurrency=4)
        first = pixrun(
            run_args(batch),
            {**env_for(sim.base_url), "FAULT_DISK_BYTES": str(5 * 982 + 500)},
            cwd=tmp_path,
            entry=("-c", _INJECT_DISK_FULL),
        )
    ledger, out_dir = batch.ledger, batch.out
    said = explain(first)
    assert first.returncode == 1, said
    text = (first.stdout + first.stderr).lower()
    assert "disk is full" in text and "free space" in text, said
    assert "traceback" not in text, said

    rows = query(ledger, "SELECT shot_id, state, error_kind, task_id, output_path FROM shots")
    by_state = Counter(r[1] for r in rows)
    assert by_state.get("failed", 0) == 0 and by_state.get("ambiguous", 0) == 0, by_state
    full = [r for r in rows if r[2] == "disk_full"]
    assert full, (by_state, said)
    assert all(r[1] == "rendered" for r in full), full  # collectable
    assert by_state.get("pending", 0) > 0, "pixrun did not stop submitting"
    stats = sim.stats()
    served = {t["task_id"]: t["sha256"] for t in stats["tasks"]}
    for shot_id, state, _, task_id, relpath in rows:
        target = out_dir / relpath
        if state != "done" and target.exists():
            # only a complete, verified video ever carries a final name
            assert sha256_of(target) == served[task_id], f"{shot_id}: a bad file under its name"
    for path in out_dir.rglob("*"):
        assert not path.name.startswith("."), f"temporary file left behind: {path}"
    collectable = {r[0]: r[3] for r in rows if r[1] == "rendered"}
    generated = stats["charges"]["count"]

    if filler is not None:
        filler.unlink()  # space is freed (a tmpfs of 256 KiB: for tiny clips only)
    run_pixrun(batch, sim.base_url, *(("--skip-space-check",) if filler else ()), check=True)
    stats = _assert_complete(batch, sim)
    after = dict(query(ledger, "SELECT shot_id, task_id FROM shots"))
    # the rendered shots were collected from their task, never generated again
    assert {s: after[s] for s in collectable} == collectable
    assert stats["charges"]["count"] == generated + by_state.get("pending", 0)


# -- a ledger that cannot be written ---------------------------------------------------


class GenerateLog:
    """A generate hook: the wall-clock time and trace id of every generate received."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []

    async def __call__(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        self.seen.append((time.time(), headers.get("Ai-trace-id", "")))

    def after(self, moment: float) -> list[str]:
        return [trace for at, trace in list(self.seen) if at > moment]


def _assert_stopped_sending(log: GenerateLog, ledger: Path, since: float, said: str) -> None:
    """Nothing was sent after the ledger failed, and nothing ever went out without its
    intent committed first."""
    # a request whose intent committed just before may still be on its way (a few ms)
    late = log.after(since + 0.3)
    assert not late, f"{len(late)} generate request(s) sent after the ledger failed\n{said}"
    intents = set(shot_of_trace(ledger))
    assert {trace for _, trace in log.seen} <= intents, "a generate went out without an intent"


def _outcome(runner: Running, *, timeout_s: float) -> tuple[str, str, str]:
    """The run's output and its explanation; a run that does not stop is killed (and
    then judged)."""
    try:
        runner.wait(timeout_s)
    except subprocess.TimeoutExpired:
        runner.kill()
        return *runner.output(), f"{explain(runner)}\n[killed: still running {timeout_s} s]"
    return *runner.output(), explain(runner)


def _finish(batch: Batch, sim: SimulatorThread) -> None:
    """Re-queue what the failure left parked (the provider dedupes trace ids) and rerun."""
    where = ("--ledger", str(batch.ledger))
    rerun = run_pixrun(batch, sim.base_url, *where)  # parks what was left submitting
    if in_state(batch.ledger, "ambiguous"):
        _retry_ambiguous(batch, *where)
        rerun = run_pixrun(batch, sim.base_url, *where)
    assert rerun.returncode == 0, explain(rerun)
    _assert_complete(batch, sim)


def test_read_only_ledger_folder_refuses_to_start(
    tmp_path: Path, tmpfs: Callable[[str, int], Path], sim_thread: SimThread
) -> None:
    """A ledger whose folder cannot be written: exit 2 with a clear message before a
    single request is sent, for a new ledger and for one a previous run left; once the
    folder is writable again, a rerun completes."""
    log = GenerateLog()
    sim = sim_thread(render_time_s=(0.01, 0.03), generate_hook=log)
    folder = tmpfs("ledgers", 256 * PAGE_BYTES)
    ledger = folder / "batch.ledger.sqlite"
    where = ("--ledger", str(ledger))
    batch = write_manifest(tmp_path, 10, concurrency=8, ledger=ledger)

    def remount(mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)

    remount("ro")
    first = run_pixrun(batch, sim.base_url, *where)
    said = explain(first)
    assert first.returncode == 2, said
    assert "ledger" in first.stderr and "read-only" in first.stderr.lower(), said
    assert "Traceback" not in first.stderr, said
    assert sim.stats(with_tasks=False)["calls"].get("generate", 0) == 0
    assert not ledger.exists()

    remount("rw")
    run_pixrun(batch, sim.base_url, *where, check=True)
    # the batch grows; the folder of the existing ledger turns read-only
    batch = write_manifest(tmp_path, 15, concurrency=8, ledger=ledger)
    remount("ro")
    again = run_pixrun(batch, sim.base_url, *where)
    said = explain(again)
    assert again.returncode == 2, said
    assert "read-only" in again.stderr.lower() and "Traceback" not in again.stderr, said
    assert len(log.seen) == 10, "a request was sent with a read-only ledger"
    remount("rw")
    run_pixrun(batch, sim.base_url, *where, check=True)
    assert len(log.seen) == 15
    _assert_complete(batch, sim)


def _take_write_lock(ledger: Path) -> sqlite3.Connection:
    """Another process's write lock on the ledger (BEGIN EXCLUSIVE), held until closed."""
    con = sqlite3.connect(ledger, timeout=30, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    return con


def test_ledger_locked_by_another_process_mid_run_stops_sending(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Another process holds the ledger's write lock mid-run, longer than pixrun's busy
    timeout (5 s, real time): pixrun stops (exit 1, says why) without sending another
    generate request; once the lock is gone, a rerun completes."""
    log = GenerateLog()
    sim = sim_thread(render_time_s=(0.05, 0.2), seed=31, generate_hook=log, dedupe_trace_id=True)
    batch = write_manifest(tmp_path, 40, concurrency=4)
    runner = start(run_args(batch), env_for(sim.base_url), cwd=tmp_path, tag="locked")
    wait_until(lambda: len(log.seen) >= 8, timeout_s=30, what="the run to get going")
    con = _take_write_lock(batch.ledger)
    locked_at = time.time()
    assert len(log.seen) < len(batch.ids), "the run was over before the lock: proves nothing"
    try:
        out, err, said = _outcome(runner, timeout_s=20)
    finally:
        con.rollback()
        con.close()
    _assert_stopped_sending(log, batch.ledger, locked_at, said)
    assert runner.proc.returncode == 1, said
    assert "cannot write the ledger" in out + err and "locked" in out + err, said
    assert "Traceback" not in err, said
    _finish(batch, sim)


def test_ledger_disk_full_mid_run_stops_sending(
    tmp_path: Path, tmpfs: Callable[[str, int], Path], sim_thread: SimThread
) -> None:
    """The ledger's file system fills mid-run (commits fail with an I/O error): pixrun
    stops (exit 1, says why) without sending another generate request; once space is
    freed, a rerun completes."""
    log = GenerateLog()
    sim = sim_thread(render_time_s=(0.05, 0.2), seed=41, generate_hook=log, dedupe_trace_id=True)
    folder = tmpfs("ledgers", 4 * 1024 * 1024)
    batch = write_manifest(tmp_path, 40, concurrency=4, ledger=folder / "batch.ledger.sqlite")
    args = run_args(batch, "--ledger", str(batch.ledger))
    runner = start(args, env_for(sim.base_url), cwd=tmp_path, tag="full")
    wait_until(lambda: len(log.seen) >= 8, timeout_s=30, what="the run to get going")
    filler = _fill(folder, leave_bytes=0)
    full_at = time.time()
    assert len(log.seen) < len(batch.ids), "the run was over before the disk filled: proves nothing"
    out, err, said = _outcome(runner, timeout_s=20)
    _assert_stopped_sending(log, batch.ledger, full_at, said)
    assert runner.proc.returncode == 1, said
    assert "cannot write the ledger" in out + err and "full" in out + err, said
    assert "Traceback" not in err, said
    filler.unlink()
    _finish(batch, sim)


def test_an_output_disk_that_is_read_only_or_too_small_is_refused_before_spending(
    tmp_path: Path, tmpfs: Callable[[str, int], Path], sim_thread: SimThread
) -> None:
    """Checked before the first generate: the output folder is created and written (a
    probe file), and the disk has room for the videos to come (a low estimate of real
    videos). Either refusal exits 2 with nothing sent."""
    sim = sim_thread()
    disk = tmpfs("small", 256 * PAGE_BYTES)
    batch = write_manifest(tmp_path, 20, output_dir=disk / "out")
    small = run_pixrun(batch, sim.base_url)
    said = explain(small)
    assert small.returncode == 2 and "GB free" in small.stderr, said
    assert "nothing was sent" in " ".join(small.stderr.split()), said
    assert sim.stats()["calls"].get("generate", 0) == 0
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        read_only = run_pixrun(batch, sim.base_url, "--skip-space-check")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    said = explain(read_only)
    assert read_only.returncode == 2 and "cannot be written" in read_only.stderr, said
    assert "Traceback" not in read_only.stderr, said
    assert sim.stats()["calls"].get("generate", 0) == 0
