"""Ordinary mistakes cost nothing: rehearsals never mix with real work, a lost ledger
or a dead download host never buys a shot twice, nothing hangs without a word.

Each test runs pixrun as a real process; "the real provider" is a simulator thread
whose books prove what reached it.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from runkit import (
    SimThread,
    assert_files_match,
    env_for,
    explain,
    flat,
    free_port,
    generate_calls,
    in_state,
    ledger_task_ids,
    pixrun,
    query,
    run_args,
    run_pixrun,
    sha256_of,
    sim_tasks,
    start,
    state_counts,
    states,
    wait_until,
    write_manifest,
)

from runner.ledger import default_ledger_path

SIMULATE = ("--simulate", "--sim-render-time", "0.02,0.1")


def _rehearse(batch_dir: Path, manifest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["run", str(manifest), "--quiet", "--yes", "--backoff-base-s", "0.01", *SIMULATE]
    return pixrun([*args, *extra], env_for(None, key=None), cwd=batch_dir)


def _rehearse_ok(batch_dir: Path, manifest: Path) -> Path:
    """A rehearsal that must finish (exit 0); returns its ledger, at pixrun's default."""
    rehearsal = _rehearse(batch_dir, manifest)
    assert rehearsal.returncode == 0, explain(rehearsal)
    return default_ledger_path(manifest, simulated=True)


def _lose_ledger(ledger: Path) -> None:
    """The ledger is gone with its WAL, shared memory and lock, as a user deletes it."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)


def test_a_rehearsal_then_the_real_run_delivers_the_providers_files(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 4)
    sim_ledger = _rehearse_ok(tmp_path, batch.manifest)
    assert sim_ledger == tmp_path / "batch.sim.ledger.sqlite"  # the documented name
    assert sim_ledger.exists() and not batch.ledger.exists()
    rehearsed = tmp_path / "out.sim"
    assert sorted(p.name for p in rehearsed.glob("*.mp4")) == [f"{s}.mp4" for s in batch.ids]
    assert not batch.out.exists() or not any(batch.out.iterdir())

    run_pixrun(batch, sim.base_url, check=True)
    stats = sim.stats()
    assert sorted(sim_tasks(stats)) == batch.ids  # every shot rendered at the provider
    assert_files_match(batch, stats, batch.ids)
    # the real ledger is the real provider's alone; the rehearsal's clips stay apart
    assert query(batch.ledger, "SELECT COUNT(*) FROM attempts")[0][0] == len(batch.ids)
    assert sorted(p.name for p in rehearsed.glob("*.mp4")) == [f"{s}.mp4" for s in batch.ids]
    status = pixrun(
        ["status", str(batch.manifest), "--simulate", "--format", "json"],
        env_for(None),
        cwd=tmp_path,
    )
    assert json.loads(status.stdout)["simulated"] is True, explain(status)


def test_a_rehearsal_ledger_never_meets_the_real_provider(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    sim_ledger = _rehearse_ok(tmp_path, batch.manifest)
    real = run_pixrun(batch, sim.base_url, "--ledger", str(sim_ledger))
    said = explain(real)
    assert real.returncode == 2 and "rehearsal" in real.stderr and "--simulate" in real.stderr, said
    assert generate_calls(sim) == 0
    # and a real ledger never takes a rehearsal
    run_pixrun(batch, sim.base_url, check=True)
    mixed = _rehearse(tmp_path, batch.manifest, "--ledger", str(batch.ledger))
    assert mixed.returncode == 2 and "real work" in mixed.stderr, explain(mixed)
    # nor does resolve tie a rehearsal's shot to a real task, or a real one through the
    # simulator (which would leave its state file beside the real ledger)
    env = env_for(sim.base_url)
    (real_task,) = sim_tasks(sim.stats())["s01"]
    for ledger in (sim_ledger, batch.ledger):
        requeued = pixrun(
            ["retry", "--shot", "s01", "--new-seed", "--ledger", str(ledger)], env, cwd=tmp_path
        )
        assert requeued.returncode == 0, explain(requeued)
    tie = ["resolve", "s01", "--task-id", real_task["task_id"]]
    crossed = pixrun([*tie, "--ledger", str(sim_ledger)], env, cwd=tmp_path)
    assert crossed.returncode == 2 and "rehearsal" in crossed.stderr, explain(crossed)
    assert in_state(sim_ledger, "pending") == {"s01"}
    crossed = pixrun([*tie, "--ledger", str(batch.ledger), "--simulate"], env, cwd=tmp_path)
    assert crossed.returncode == 2 and "real work" in crossed.stderr, explain(crossed)
    assert not batch.ledger.with_name(batch.ledger.name + ".sim-state.jsonl").exists()


def test_an_interrupted_rehearsal_resumes_without_paying_twice(tmp_path: Path) -> None:
    """Killed mid-render, the rehearsal's simulator died with it; resumed with
    --simulate, the state file beside the ledger still knows every task: collected,
    never generated again. The printed resume command keeps --simulate."""
    batch = write_manifest(tmp_path, 6, concurrency=6)
    args = [
        "run",
        str(batch.manifest),
        "--quiet",
        "--yes",
        "--simulate",
        "--sim-render-time",
        "3,3",
    ]
    env = env_for(None, key=None, crash_at="after_task_committed:6")
    crashed = pixrun(args, env, cwd=tmp_path)
    assert crashed.returncode != 0
    sim_ledger = default_ledger_path(batch.manifest, simulated=True)
    submitted = in_state(sim_ledger, "submitted")
    assert len(submitted) == 6, explain(crashed)
    state_file = sim_ledger.with_name(sim_ledger.name + ".sim-state.jsonl")
    assert state_file.exists()
    # status tells the crashed rehearsal's resume command with --simulate: without it,
    # the real provider would render (and charge) every shot
    status = pixrun(["status", str(batch.manifest), "--simulate"], env_for(None), cwd=tmp_path)
    assert f"'pixrun run {batch.manifest} --simulate' resumes it" in flat(status.stdout), (
        status.stdout
    )
    resumed = _rehearse(tmp_path, batch.manifest)
    assert resumed.returncode == 0, explain(resumed)
    assert set(states(sim_ledger).values()) == {"done"}
    tasks = query(sim_ledger, "SELECT shot_id, COUNT(*) FROM attempts GROUP BY shot_id")
    assert all(n == 1 for _, n in tasks), tasks  # one generate per shot, over both runs
    # the state file (records labelled "t") holds each task once: those the ledger tied
    records = [json.loads(line) for line in state_file.read_text().splitlines() if line]
    logged = [str(r["task_id"]) for r in records if r.get("t") == "task"]
    assert len(logged) == len(set(logged)) == 6, records
    assert set(logged) == ledger_task_ids(sim_ledger)


def test_an_uncreatable_output_folder_exits_2_with_nothing_sent(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    batch = write_manifest(tmp_path, 3, output_dir=blocker / "out")
    done = run_pixrun(batch, sim.base_url)
    said = explain(done)
    assert done.returncode == 2, said
    assert "output folder" in done.stderr and "nothing was sent" in flat(done.stderr), said
    assert generate_calls(sim) == 0


def test_an_uncreatable_output_folder_of_the_second_manifest_is_told_once(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Two manifests, the second's output folder uncreatable: the first runs, nothing
    is sent for the second, and its line says so once (not "nothing was sent ...;
    nothing was sent for it")."""
    sim = sim_thread()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    good = write_manifest(tmp_path / "good", 2, name="good")
    bad = write_manifest(tmp_path / "bad", 2, name="bad", output_dir=blocker / "out")
    args = run_args(good, output="")
    args.insert(2, str(bad.manifest))
    done = pixrun(args, env_for(sim.base_url), cwd=tmp_path)
    said = explain(done)
    assert done.returncode == 2, said
    assert sorted(sim_tasks(sim.stats())) == good.ids, said  # nothing for the bad one
    skipped = [line for line in done.stdout.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].count("nothing was sent") == 1, said


def test_a_lost_ledger_adopts_every_file_and_sends_nothing(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 5)
    run_pixrun(batch, sim.base_url, check=True)
    before = generate_calls(sim)
    _lose_ledger(batch.ledger)
    run_pixrun(batch, sim.base_url, check=True)
    assert generate_calls(sim) == before
    assert set(states(batch.ledger).values()) == {"done"}
    adopted = query(batch.ledger, "SELECT COUNT(*) FROM events WHERE kind = 'adopted'")[0][0]
    assert adopted == 5
    assert_files_match(batch, sim.stats(), batch.ids)


def test_a_lost_ledger_never_adopts_another_providers_or_a_rehearsals_files(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """The README's rehearsal against a standalone simulator, then the real provider
    refuses the ledger; deleting it (the hint's "another ledger") must not make the
    simulator's clips the deliverables. Nor may a rehearsal's clips copied over."""
    rehearsal_host, real = sim_thread(), sim_thread()
    batch = write_manifest(tmp_path, 3)
    run_pixrun(batch, rehearsal_host.base_url, check=True)
    _lose_ledger(batch.ledger)
    again = run_pixrun(batch, real.base_url)
    assert again.returncode == 2, explain(again)
    assert rehearsal_host.base_url in again.stderr and "s01.mp4" in again.stderr
    assert generate_calls(real) == 0
    # a rehearsal's clips put where the real ones go are refused the same way
    _rehearse_ok(tmp_path, batch.manifest)
    for clip in (tmp_path / "out.sim").iterdir():
        (batch.out / clip.name).write_bytes(clip.read_bytes())
    _lose_ledger(batch.ledger)
    copied = run_pixrun(batch, real.base_url)
    assert copied.returncode == 2 and "simulator" in copied.stderr, explain(copied)
    assert generate_calls(real) == 0


def test_a_lost_ledger_after_a_reroll_says_the_file_is_a_reroll(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """A re-rolled take's request is not in the manifest: a lost ledger's rerun cannot
    adopt it, and refuses before spending, saying what the file is (not "foreign")."""
    sim = sim_thread()
    batch = write_manifest(tmp_path, 2)
    assert run_pixrun(batch, sim.base_url).returncode == 0
    env, cwd = env_for(sim.base_url), tmp_path
    reroll = pixrun(["retry", str(batch.manifest), "--shot", "s01", "--new-seed"], env, cwd=cwd)
    assert reroll.returncode == 0, explain(reroll)
    assert run_pixrun(batch, sim.base_url).returncode == 0
    _lose_ledger(batch.ledger)
    before = generate_calls(sim)
    again = run_pixrun(batch, sim.base_url)
    said = explain(again)
    assert again.returncode == 2 and generate_calls(sim) == before, said
    assert "1 output file already exists" in flat(again.stderr), said
    assert "s01.mp4 (shot s01, its version 2 (a re-roll" in flat(again.stderr), said


def test_a_foreign_file_at_an_output_is_refused_before_spending(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    batch.out.mkdir(parents=True)
    theirs = b"someone else's video"
    (batch.out / "s01.mp4").write_bytes(theirs)
    done = run_pixrun(batch, sim.base_url)
    assert done.returncode == 2 and "s01.mp4" in done.stderr, explain(done)
    assert generate_calls(sim) == 0
    # the user's file is left as it was, and nothing was written beside it
    assert (batch.out / "s01.mp4").read_bytes() == theirs
    assert [p.name for p in batch.out.iterdir()] == ["s01.mp4"]


def _edit_quality(batch_manifest: Path, quality: str) -> None:
    doc = yaml.safe_load(batch_manifest.read_text())
    doc["defaults"]["quality"] = quality
    batch_manifest.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_changed_done_shots_are_not_rebought_without_consent(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """A global edit of a default after the batch is done: without a terminal the run
    holds the changed shots (exit 1, said, in --json-logs too) and sends nothing; with
    --rerender-changed it re-renders them and keeps the old files as .v1."""
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    run_pixrun(batch, sim.base_url, check=True)
    old = {sid: sha256_of(batch.out / f"{sid}.mp4") for sid in batch.ids}
    _edit_quality(batch.manifest, "540p")
    held = pixrun(run_args(batch, output="--json-logs"), env_for(sim.base_url), cwd=tmp_path)
    assert held.returncode == 1, explain(held)
    assert sim.stats()["accepted_tasks"] == 3
    records = [json.loads(line) for line in held.stdout.splitlines() if line.startswith("{")]
    changed = [r for r in records if r.get("kind") == "changed"]
    assert sorted(r["shot_id"] for r in changed) == batch.ids, held.stdout
    summary = records[-1]
    assert summary["type"] == "summary" and sorted(summary["held_changed"]) == batch.ids
    assert set(states(batch.ledger).values()) == {"done"}

    run_pixrun(batch, sim.base_url, "--rerender-changed", check=True)
    stats = sim.stats()
    assert stats["accepted_tasks"] == 6
    assert_files_match(batch, stats, batch.ids)  # the new renders, at the usual names
    for sid in batch.ids:
        aside = sha256_of(batch.out / f"{sid}.v1.mp4")
        assert aside == old[sid], f"{sid}.v1.mp4 is not the old video"
        assert aside != sha256_of(batch.out / f"{sid}.mp4"), f"{sid}: the old video is kept"


def test_a_typod_provider_address_fails_fast_with_exit_2(tmp_path: Path) -> None:
    port = free_port()  # a port nothing listens on
    batch = write_manifest(tmp_path, 2)
    t0 = time.monotonic()
    done = pixrun(
        run_args(batch, "--unreachable-grace-s", "1"),
        env_for(f"http://127.0.0.1:{port}"),
        cwd=tmp_path,
    )
    took_s = time.monotonic() - t0
    said = explain(done)
    assert done.returncode == 2, said
    assert f"127.0.0.1:{port}" in flat(done.stdout) and took_s < 30, said
    assert set(states(batch.ledger).values()) == {"pending"}


def test_a_run_where_nothing_moves_stops_and_says_what_was_stuck(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Every call throttled for longer than the stall limit: the watchdog stops the run
    (exit 1), says what was waiting, and everything stays resumable."""
    sim = sim_thread(rate_limit_share=1.0, retry_after_s=600)
    batch = write_manifest(tmp_path, 3)
    doc = yaml.safe_load(batch.manifest.read_text())
    doc["run"]["stall_timeout_s"] = 1.5
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    t0 = time.monotonic()
    done = run_pixrun(batch, sim.base_url)
    said = explain(done)
    assert done.returncode == 1 and time.monotonic() - t0 < 30, said
    assert "nothing progressed" in flat(done.stdout) and "pending" in flat(done.stdout), said
    assert "last error: throttled" in flat(done.stdout), said  # what held them back
    stalled = query(batch.ledger, "SELECT COUNT(*) FROM events WHERE kind = 'stalled'")[0][0]
    assert stalled == 1
    assert not in_state(batch.ledger, "failed")


def _run_on_a_terminal(
    args: list[str], env: dict[str, str], cwd: Path, answers: str
) -> tuple[int, str]:
    """pixrun with a pseudo-terminal as stdin and stdout; ``answers`` typed at prompts."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=cwd,
        close_fds=True,
    )
    os.close(slave)
    out = b""
    typed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if not typed and b"?" in out:
                os.write(master, answers.encode())
                typed = True
        elif proc.poll() is not None:
            break
    code = proc.wait(30)
    os.close(master)
    return code, out.decode(errors="replace")


def test_declining_on_a_terminal_leaves_no_ledger_and_the_budget_is_checked_first(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 2)
    args = ["run", str(batch.manifest)]
    code, out = _run_on_a_terminal(args, env_for(sim.base_url), tmp_path, "n\n")
    assert code == 1 and "Submit 2 shots" in out and "0.2" in out, out
    assert not batch.ledger.exists() and not Path(str(batch.ledger) + ".lock").exists()
    assert generate_calls(sim) == 0
    over = ["run", str(batch.manifest), "--max-cost", "0.1"]
    code, out = _run_on_a_terminal(over, env_for(sim.base_url), tmp_path, "y\n")
    assert code == 4 and "Submit" not in out, out
    assert generate_calls(sim) == 0


# -- no silent stalls: download hosts that refuse -------------------------------------------


def test_a_deleted_clip_of_a_rehearsal_comes_back_through_a_fresh_fetch(tmp_path: Path) -> None:
    """The repro that hung forever: a rehearsal, one clip deleted, rerun. The stored URL
    points at the previous run's simulator (gone): the download refreshes its URL with a
    free fetch, and the state file's simulator still knows the task."""
    batch = write_manifest(tmp_path, 3)
    sim_ledger = _rehearse_ok(tmp_path, batch.manifest)
    clip = tmp_path / "out.sim" / "s01.mp4"
    recorded = query(sim_ledger, "SELECT sha256 FROM shots WHERE shot_id = 's01'")[0][0]
    clip.unlink()
    t0 = time.monotonic()
    again = _rehearse(tmp_path, batch.manifest)
    assert again.returncode == 0, explain(again)
    assert time.monotonic() - t0 < 30
    assert sha256_of(clip) == recorded
    assert query(sim_ledger, "SELECT COUNT(*) FROM attempts")[0][0] == 3  # nothing generated
    refreshed = query(sim_ledger, "SELECT COUNT(*) FROM events WHERE kind = 'url_refreshed'")
    assert refreshed[0][0] >= 1


def test_download_hosts_that_refuse_get_fresh_urls_and_nothing_is_generated_again(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(dead_url_share=0.5, seed=4)
    batch = write_manifest(tmp_path, 8)
    run_pixrun(batch, sim.base_url, check=True)
    stats = sim.stats()
    assert all(len(t) == 1 for t in sim_tasks(stats).values())
    assert_files_match(batch, stats, batch.ids)
    refreshed = query(batch.ledger, "SELECT COUNT(*) FROM events WHERE kind = 'url_refreshed'")
    assert refreshed[0][0] >= 1


def test_a_download_that_never_works_ends_the_shot_in_time_and_a_rerun_fetches_it_free(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(dead_urls_always=True)
    batch = write_manifest(tmp_path, 2)
    t0 = time.monotonic()
    first = run_pixrun(batch, sim.base_url, "--download-give-up-s", "2")
    took_s = time.monotonic() - t0
    said = explain(first)
    assert first.returncode == 1 and took_s < 30, said
    rows = query(batch.ledger, "SELECT state, error_kind, task_id, video_url FROM shots")
    assert all(r[0] == "rendered" and r[1] == "download" and r[2] and r[3] is None for r in rows)
    # counted as "downloading", the summary says why they are not done and what a rerun does
    assert "2 not downloaded" in flat(first.stdout) and "no charge" in flat(first.stdout), said
    sim.simulator.config.dead_urls_always = False  # the CDN is back
    run_pixrun(batch, sim.base_url, check=True)
    stats = sim.stats()
    assert stats["accepted_tasks"] == 2  # collected, never generated again
    assert_files_match(batch, stats, batch.ids)
    # the rerun's fresh fetch is the normal way to collect them, not a failed download
    refreshed = query(
        batch.ledger,
        "SELECT message FROM events WHERE kind = 'url_refreshed' ORDER BY event_id DESC LIMIT 2",
    )
    assert all("download failed" not in m for (m,) in refreshed), refreshed


def _events_of(ledger: Path, kind: str) -> int:
    return int(query(ledger, "SELECT COUNT(*) FROM events WHERE kind = ?", (kind,))[0][0])


def test_a_download_host_that_is_down_is_not_waited_out_shot_by_shot(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Five shots given up on in a row, none downloaded between: the host is down. Each
    later shot gets only its tries up to one fresh URL, not the full give-up time (two
    minutes each, by default: hours for a big batch); said once."""
    sim = sim_thread(dead_urls_always=True)
    batch = write_manifest(tmp_path, 8, concurrency=8, download_concurrency=1)
    # half a second of tries (about six) for a shot; three when the host is down
    first = run_pixrun(batch, sim.base_url, "--download-give-up-s", "0.5")
    said = explain(first)
    assert first.returncode == 1, said
    rows = query(batch.ledger, "SELECT state, error_kind, last_error FROM shots ORDER BY seq")
    assert all(r[0] == "rendered" and r[1] == "download" for r in rows), said
    quick = [r[2] for r in rows if "while downloads keep failing" in r[2]]
    assert len(quick) == 3, rows  # the sixth to eighth, one at a time
    assert all(m.startswith("the download failed 3 times") for m in quick), quick
    assert _events_of(batch.ledger, "downloads_down") == 1
    assert _events_of(batch.ledger, "downloads_back") == 0


def test_downloads_that_work_again_end_the_quick_give_ups(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """The host comes back while the breaker is open: the next shot's fresh URL works,
    that is said once, and every later shot is downloaded; a rerun collects the shots
    given up on, for free."""
    sim = sim_thread(dead_urls_always=True)
    batch = write_manifest(tmp_path, 14, concurrency=14, download_concurrency=1)
    # slow enough tries that the shots after the breaker opens take seconds in all
    args = run_args(batch, "--download-give-up-s", "0.3", "--backoff-base-s", "0.2")
    running = start(args, env_for(sim.base_url), cwd=tmp_path, tag="run")
    wait_until(
        lambda: batch.ledger.exists() and _events_of(batch.ledger, "downloads_down") == 1,
        what="downloads said to be down",
    )
    sim.simulator.config.dead_urls_always = False  # the host is back
    code = running.wait(120)
    counts = state_counts(batch.ledger)
    assert code == 1 and counts["done"] >= 1 and counts["rendered"] >= 5, counts
    assert _events_of(batch.ledger, "downloads_back") == 1
    run_pixrun(batch, sim.base_url, check=True)
    stats = sim.stats()
    assert stats["accepted_tasks"] == 14  # collected, never generated again
    assert_files_match(batch, stats, batch.ids)


def test_a_failed_shot_dropped_from_the_manifest_no_longer_fails_the_run(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """The moderated shot is taken out of the manifest: the next run is clean (exit 0),
    counts only the manifest's shots, and sends nothing."""
    sim = sim_thread(moderated_words=("forbidden",))
    batch = write_manifest(tmp_path, 3, scenes={"s01": "a forbidden scene"})
    first = run_pixrun(batch, sim.base_url)
    assert first.returncode == 1 and in_state(batch.ledger, "moderated") == {"s01"}
    doc = yaml.safe_load(batch.manifest.read_text())
    doc["shots"] = [s for s in doc["shots"] if s["id"] != "s01"]
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    before = generate_calls(sim)
    again = run_pixrun(batch, sim.base_url)
    said = explain(again)
    assert again.returncode == 0, said
    assert "done 2" in flat(again.stdout) and "of 2 shots" in flat(again.stdout), said
    assert "failed 0" in flat(again.stdout) and "1 failed" not in flat(again.stdout), said
    assert generate_calls(sim) == before


# -- errors inside HTTP 200 envelopes --------------------------------------------------------


def test_a_permanent_error_in_a_200_envelope_fails_the_shot_at_once(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(errors_in_200=True, permanent_error_code=500054, permanent_error_share=1.0)
    batch = write_manifest(tmp_path, 2)
    t0 = time.monotonic()
    done = run_pixrun(batch, sim.base_url)
    assert done.returncode == 1 and time.monotonic() - t0 < 20, explain(done)
    rows = query(batch.ledger, "SELECT state, error_kind FROM shots")
    assert rows == [("failed", "invalid")] * 2
    assert query(batch.ledger, "SELECT COUNT(*) FROM attempts")[0][0] == 2  # no retries


def test_an_account_limit_in_a_200_envelope_stops_like_an_empty_account(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(errors_in_200=True, permanent_error_code=500060, permanent_error_share=1.0)
    batch = write_manifest(tmp_path, 3)
    done = run_pixrun(batch, sim.base_url)
    assert done.returncode == 4, explain(done)
    assert set(states(batch.ledger).values()) == {"pending"}


# -- a rehearsal's clock and its hints ----------------------------------------------------


def test_a_rehearsal_waits_on_its_own_clock_and_its_hints_keep_simulate(tmp_path: Path) -> None:
    """Renders of 1 s: the poll settings shrink with them (not 20 s before the first
    poll). Interrupted, the printed resume command keeps --simulate."""
    batch = write_manifest(tmp_path, 3)
    doc = yaml.safe_load(batch.manifest.read_text())
    del doc["run"]["poll"]  # the defaults: 20 s before the first poll of a real task
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    args = ["run", str(batch.manifest), "--yes", "--simulate", "--sim-render-time", "1,1"]
    t0 = time.monotonic()
    done = pixrun(args, env_for(None, key=None), cwd=tmp_path)
    assert done.returncode == 0 and time.monotonic() - t0 < 12, explain(done)

    slow = write_manifest(tmp_path / "slow", 3)
    slow_args = ["run", str(slow.manifest), "--yes", "--simulate", "--sim-render-time", "30,30"]
    running = start(slow_args, env_for(None, key=None), cwd=slow.dir, tag="slow")
    ledger = default_ledger_path(slow.manifest, simulated=True)
    wait_until(lambda: len(in_state(ledger, "submitted")) == 3, what="three tasks rendering")
    running.signal(signal.SIGINT)
    assert running.wait(20) == 130
    out, _ = running.output()
    assert f"pixrun run {slow.manifest} --simulate" in flat(out), out
