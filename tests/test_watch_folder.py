"""``pixrun watch`` reaches the provider as ``pixrun run`` does: ``--provider-option``
(a gateway on another route), ``--callback-listen`` (one port for every manifest), and
a command line that cannot work is refused before any manifest is touched."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import yaml
from runkit import (
    Running,
    SimThread,
    env_for,
    explain,
    flat,
    free_port,
    generate_calls,
    net_charges,
    pixrun,
    prompt_of,
    query,
    run_args,
    start,
    state_counts,
    submitted_count,
    wait_until,
    write_manifest,
)
from shots import scanning_hot_folder

from runner.errors import UsageError
from runner.provider.config import checked_settings

ALT_FETCH = "/pix/fetch/{task_id}"


def _hot_with(tmp_path: Path, *names: str) -> Path:
    """A watched folder holding one 2-shot manifest per name, fully written."""
    hot = tmp_path / "hot"
    hot.mkdir()
    for name in names:
        batch = write_manifest(tmp_path / "stage", 2, name=name, output_dir=Path(f"out-{name}"))
        os.replace(batch.manifest, hot / f"{name}.yaml")
    return hot


def test_watch_takes_a_fetch_route_and_one_callback_port_for_every_manifest(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread(fetch_path=ALT_FETCH, callback=True, render_time_s=(0.2, 0.4))
    hot = _hot_with(tmp_path, "a", "b")
    args = ["watch", str(hot), "--once", "-q", "--stable-s", "0.1"]
    args += ["--provider-option", f"fetch_path={ALT_FETCH}"]
    args += ["--callback-listen", f"127.0.0.1:{free_port()}"]
    result = pixrun(args, env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    assert sorted(p.name for p in (hot / "done").iterdir()) == ["a.yaml", "b.yaml"]
    stats = sim.stats()
    assert stats["accepted_tasks"] == 4 and sum(net_charges(stats).values()) == 4
    for name in ("a", "b"):
        ledger = hot / "ledgers" / f"{name}.ledger.sqlite"
        assert state_counts(ledger) == {"done": 2}
        summary = json.loads(query(ledger, "SELECT summary FROM runs")[-1][0])
        assert summary["callbacks"]["valid"] > 0, summary


@pytest.mark.parametrize(
    ("env", "flags", "phrase"),
    [
        ({"key": None}, (), "no API key"),
        ({}, ("--provider-option", "bogus=1"), "unknown provider setting"),
        ({}, ("--callback-listen", "nowhere"), "is not HOST:PORT"),
    ],
    ids=["no-key", "bad-option", "bad-listen"],
)
def test_a_watch_that_cannot_work_refuses_at_once_and_moves_no_manifest(
    sim_thread: SimThread,
    tmp_path: Path,
    env: dict[str, None],
    flags: tuple[str, ...],
    phrase: str,
) -> None:
    sim = sim_thread()
    hot = _hot_with(tmp_path, "a")
    args = ["watch", str(hot), "--once", "-q", "--stable-s", "0.1", *flags]
    result = pixrun(args, env_for(sim.base_url, **env), cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    assert phrase in flat(result.stderr) and "Traceback" not in result.stderr
    assert (hot / "a.yaml").exists(), "the manifest is not to blame: it stays queued"
    assert not (hot / "rejected").exists() or not any((hot / "rejected").iterdir())
    assert generate_calls(sim) == 0


def test_a_bad_provider_option_value_exits_2_without_a_traceback(tmp_path: Path) -> None:
    batch = write_manifest(tmp_path, 1)
    for option in ("read_timeout_s=abc", "max_connections=1.5", "trust_env=maybe"):
        args = ["run", str(batch.manifest), "--simulate", "-q", "--provider-option", option]
        result = pixrun(args, env_for(None), cwd=tmp_path)
        assert result.returncode == 2, explain(result)
        assert option.split("=")[0] in result.stderr and "Traceback" not in result.stderr
    assert not batch.ledger.with_name("batch.sim.ledger.sqlite").exists()


def test_provider_settings_take_their_types() -> None:
    settings = checked_settings(
        {"trust_env": "false", "read_timeout_s": "30", "max_connections": "8", "fetch_path": 7}
    )
    assert settings == {
        "trust_env": False,  # never the truthy text "false"
        "read_timeout_s": 30.0,
        "max_connections": 8,
        "fetch_path": "7",
    }
    assert checked_settings({"ambiguous_generate_statuses": "504,502"}) == {
        "ambiguous_generate_statuses": (504, 502)
    }
    with pytest.raises(UsageError, match="read_timeout_s"):
        checked_settings({"read_timeout_s": "nan"})


# -- the folder's manifests are never lost or moved under a run --------------------------


def _watch(hot: Path, *extra: str) -> list[str]:
    return ["watch", str(hot), "-q", "--stable-s", "0.2", *extra]


def test_a_manifest_written_to_while_it_runs_runs_again_before_done(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """A writer that pauses longer than --stable-s: the first half runs; the rest, written
    while it renders, is rendered too before the manifest counts as done (it used to
    move to done/ with half its shots never sent)."""
    sim = sim_thread(render_time_s=(2.0, 3.0))
    hot = tmp_path / "hot"
    hot.mkdir()
    batch = write_manifest(tmp_path / "stage", 2, name="a", output_dir=Path("out-a"))
    os.replace(batch.manifest, hot / "a.yaml")
    ledger = hot / "ledgers" / "a.ledger.sqlite"
    watching = start(_watch(hot), env_for(sim.base_url), cwd=tmp_path, tag="watch")
    try:
        wait_until(
            lambda: submitted_count(ledger) == 2,
            what="the first half at the provider",
        )
        with (hot / "a.yaml").open("a", encoding="utf-8") as fh:  # the writer goes on
            more = [{"id": sid, "prompt": prompt_of(sid)} for sid in ("s02", "s03")]
            fh.write(yaml.safe_dump(more, sort_keys=False))
        wait_until(lambda: (hot / "done" / "a.yaml").exists(), what="a done", timeout_s=60)
        assert state_counts(ledger) == {"done": 4}, watching.output()
        assert sum(net_charges(sim.stats()).values()) == 4
    finally:
        watching.signal(signal.SIGINT)
        watching.wait(30)


def test_a_second_watch_on_the_folder_exits_2_and_touches_nothing(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread(render_time_s=(2.0, 3.0))
    hot = _hot_with(tmp_path, "a")
    ledger = hot / "ledgers" / "a.ledger.sqlite"
    first = start(_watch(hot), env_for(sim.base_url), cwd=tmp_path, tag="first")
    try:
        wait_until(
            lambda: submitted_count(ledger) > 0,
            what="a rendering",
        )
        second = pixrun(_watch(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
        assert second.returncode == 2, explain(second)
        assert "another pixrun watch is watching" in flat(second.stderr)
        assert (hot / "a.yaml").exists() and not any((hot / "rejected").iterdir())
        wait_until(lambda: (hot / "done" / "a.yaml").exists(), what="a done")
        assert state_counts(ledger) == {"done": 2}
    finally:
        first.signal(signal.SIGINT)
        first.wait(30)


def test_two_manifests_writing_the_same_files_refuse_the_second_before_paying(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """Same output folder, same shot ids: the second used to render (paid) and then fail
    every shot as an output conflict."""
    sim = sim_thread()
    a = write_manifest(tmp_path, 2, name="a", output_dir=Path("shared"))
    b = write_manifest(tmp_path, 2, name="b", output_dir=Path("shared"))
    c = write_manifest(tmp_path, 2, name="c", output_dir=Path("shared/c"))  # inside: fine
    args = ["run", str(a.manifest), str(b.manifest), str(c.manifest), "-q", "--yes"]
    result = pixrun(args, env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    said = flat(result.stdout + result.stderr)
    assert "b.yaml would write 2 file(s) that a.yaml writes" in said, said
    assert generate_calls(sim) == 4  # a's and c's, none of b's
    assert not b.ledger.exists()
    assert state_counts(a.ledger) == {"done": 2} and state_counts(c.ledger) == {"done": 2}


def _watching_two_of(sim: SimThread, tmp_path: Path, n: int) -> tuple[Path, Path, Running]:
    """A watch of a folder holding one manifest of ``n`` shots (two at a time), once two
    of them are at the provider: the folder, the manifest's ledger, the watch."""
    hot = tmp_path / "hot"
    hot.mkdir()
    batch = write_manifest(tmp_path / "stage", n, name="a", concurrency=2)
    os.replace(batch.manifest, hot / "a.yaml")
    ledger = hot / "ledgers" / "a.ledger.sqlite"
    args = ["watch", str(hot), "--stable-s", "0.1", "--no-color"]
    watching = start(args, env_for(sim.base_url), cwd=tmp_path, tag="watch")
    wait_until(
        lambda: submitted_count(ledger) == 2,
        what="two at the provider",
    )
    return hot, ledger, watching


def test_a_manifest_removed_while_it_runs_is_withdrawn_and_sends_no_more(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """Dropped by mistake and removed: it used to render all its shots anyway (and was
    said to be in done/, where it never was)."""
    sim = sim_thread(render_time_s=(2.0, 3.0))
    hot, ledger, watching = _watching_two_of(sim, tmp_path, 6)
    try:
        (hot / "a.yaml").unlink()
        wait_until(lambda: "withdrawn:" in watching.output()[1], what="its end said", timeout_s=60)
    finally:
        watching.signal(signal.SIGINT)
        watching.wait(30)
    said = flat(watching.output()[1])
    assert f"withdrawn: {hot / 'a.yaml'} (exit 1; its file left)" in said, said
    assert not (hot / "done" / "a.yaml").exists()
    counts = state_counts(ledger)
    assert counts["pending"] >= 1 and counts["done"] + counts["pending"] == 6, counts
    assert generate_calls(sim) == counts["done"]  # what was in flight was collected
    # the run itself says it was withdrawn, not that it ran out of work
    summary = json.loads(query(ledger, "SELECT summary FROM runs")[-1][0])
    assert summary["stop_reason"] == "withdrawn", summary
    assert set(net_charges(sim.stats()).values()) == {1}


def test_a_manifest_renamed_in_the_folder_waits_and_pays_nothing_twice(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """Renamed mid-run, it is another file (another ledger) writing the same outputs:
    it used to render every shot again (each paid twice, then refused as conflicts)."""
    sim = sim_thread(render_time_s=(2.0, 3.0))
    hot, _, watching = _watching_two_of(sim, tmp_path, 4)
    try:
        os.replace(hot / "a.yaml", hot / "b.yaml")
        wait_until(lambda: (hot / "done" / "b.yaml").exists(), what="b done", timeout_s=60)
    finally:
        watching.signal(signal.SIGINT)
        watching.wait(30)
    said = flat(watching.output()[1])
    assert "waiting: " in said and not any((hot / "rejected").iterdir()), said
    assert sorted(p.name for p in (hot / "out").glob("*.mp4")) == [f"s0{i}.mp4" for i in range(4)]
    stats = sim.stats()
    assert stats["accepted_tasks"] == 4 and set(net_charges(stats).values()) == {1}, said


def test_a_manifest_of_a_watched_folder_is_read_from_done_and_never_run_twice(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """``pixrun status DIR/done/a.yaml`` used to find no ledger and advise ``pixrun run
    DIR/done/a.yaml``, which started a new ledger (outputs beside it) and paid again."""
    sim = sim_thread()
    hot = _hot_with(tmp_path, "a")
    result = pixrun(_watch(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    done = hot / "done" / "a.yaml"
    status = pixrun(["status", str(done), "--format", "json"], env_for(None), cwd=tmp_path)
    assert status.returncode == 0, explain(status)
    assert json.loads(status.stdout)["counts"]["done"] == 2
    again = pixrun(["run", str(done), "-q", "--yes"], env_for(sim.base_url), cwd=tmp_path)
    assert again.returncode == 2, explain(again)
    assert "belongs to the watched folder" in flat(again.stderr)
    assert generate_calls(sim) == 2  # nothing sent again
    assert not (hot / "done" / "a.ledger.sqlite").exists()


async def test_a_folder_that_cannot_be_read_for_a_moment_forgets_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hiccup listing the folder (a network mount) used to read as "every file gone":
    a stopped manifest lost its hold and ran again (the brake's failures paid again)."""
    hot = scanning_hot_folder(tmp_path, stable_s=0.0)
    stopped = tmp_path / "a.yaml"
    stopped.write_text("version: 1\n")
    hot._hold(stopped)

    def unreadable(path: object) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(os, "scandir", unreadable)
        assert hot._stable(None) == []
    for _ in range(3):  # seen, then stable: it would start here if it had lost its hold
        assert hot._stable(None) == [], "still held: it stopped, and nothing changed it"


def test_a_callback_port_held_by_another_program_rejects_no_manifest(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    hot = _hot_with(tmp_path, "a")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = f"127.0.0.1:{holder.getsockname()[1]}"
        # given to watch: refused at once
        args = _watch(hot, "--once", "--callback-listen", busy)
        flag = pixrun(args, env_for(sim.base_url), cwd=tmp_path)
        assert flag.returncode == 2 and "cannot listen" in flag.stderr, explain(flag)
        # the manifest's own run.callback: it stays queued, never moved to rejected/
        doc = yaml.safe_load((hot / "a.yaml").read_text())
        doc["run"]["callback"] = {"listen": busy}
        (hot / "a.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
        own = pixrun(_watch(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert own.returncode == 2, explain(own)
    assert "cannot listen" in flat(own.stderr)
    assert (hot / "a.yaml").exists() and not any((hot / "rejected").iterdir())
    assert generate_calls(sim) == 0


def test_a_new_batch_under_an_old_file_name_is_told_what_watch_can_do(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """The hint named --ledger and --force, which watch does not take."""
    sim = sim_thread()
    hot = _hot_with(tmp_path, "tonight")
    first = pixrun(_watch(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert first.returncode == 0, explain(first)
    batch = write_manifest(tmp_path / "next", 1, name="tuesday", output_dir=Path("out-tue"))
    os.replace(batch.manifest, hot / "tonight.yaml")
    second = pixrun(_watch(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert second.returncode == 2, explain(second)
    errors = (hot / "rejected" / "tonight.errors.txt").read_text(encoding="utf-8")
    assert "give the file another name" in errors and "--force" not in errors, errors


def test_a_braked_manifest_is_not_run_again_as_it_is_by_a_later_watch(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """``watch --once`` under cron, the brake stopped a manifest: every later cron run
    used to restart it and pay for another window of failing renders."""
    sim = sim_thread(moderated_words=("forbidden",))
    hot = tmp_path / "hot"
    hot.mkdir()
    scenes = {f"s{i:02d}": "forbidden scene" for i in range(30)}
    batch = write_manifest(tmp_path / "stage", 30, name="a", concurrency=2, scenes=scenes)
    doc = yaml.safe_load(batch.manifest.read_text(encoding="utf-8"))
    doc["run"]["halt"] = {"failure_share": 0.5, "window": 4}
    doc["run"]["max_attempts"] = 1
    (hot / "a.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    first = pixrun(_watch(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert first.returncode == 1 and "brake" in first.stdout + first.stderr, explain(first)
    sent = generate_calls(sim)
    assert sent < 30

    again = pixrun(_watch(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert again.returncode == 1, explain(again)
    assert "stopped by the failure-rate brake" in flat(again.stderr), explain(again)
    assert generate_calls(sim) == sent, "nothing more paid for while it is unchanged"
    assert (hot / "a.yaml").exists()

    os.utime(hot / "a.yaml")  # saved (touched): tried again as it is
    third = pixrun(_watch(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert third.returncode == 1, explain(third)
    assert generate_calls(sim) > sent


def test_watch_once_runs_a_copy_after_the_manifest_whose_files_it_shares(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """A copy waits for the original (same outputs); --once used to exit without it."""
    sim = sim_thread()
    hot = _hot_with(tmp_path, "a")
    (hot / "b.yaml").write_bytes((hot / "a.yaml").read_bytes())
    result = pixrun(_watch(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    assert sorted(p.name for p in (hot / "done").iterdir()) == ["a.yaml", "b.yaml"]
    assert generate_calls(sim) == 2  # the copy adopted the files: nothing paid twice


def test_a_manifest_dropped_with_its_own_ledger_pays_nothing_again(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """Run on its own, stopped with every task in flight, then moved into the watched
    folder with its ledger: the watch takes that ledger over and collects the tasks it
    holds; a new ledger in ledgers/ would buy every one of them again."""
    sim = sim_thread(render_time_s=(2.0, 3.0))
    stage = tmp_path / "stage"
    batch = write_manifest(stage, 6, name="a", concurrency=6, output_dir=Path("out-a"))
    first = start(run_args(batch), env_for(sim.base_url), cwd=tmp_path, tag="alone")
    at_provider = "SELECT COUNT(*) FROM shots WHERE state IN ('submitted', 'rendered', 'done')"
    # once all six have task ids, no intent can be on the wire (it would be parked)
    wait_until(
        lambda: batch.ledger.exists() and query(batch.ledger, at_provider)[0][0] == 6,
        what="every shot at the provider",
    )
    first.kill()
    assert query(batch.ledger, "SELECT COUNT(*) FROM shots WHERE state = 'submitted'")[0][0]
    hot = tmp_path / "hot"
    hot.mkdir()
    for path in stage.glob("a.*"):  # the manifest, its ledger, its WAL and lock
        os.replace(path, hot / path.name)

    result = pixrun(
        ["watch", str(hot), "--once", "-q", "--stable-s", "0.1"],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    assert result.returncode == 0, explain(result)
    assert net_charges(sim.stats()) == {sid: 1 for sid in batch.ids}  # none bought twice
    ledger = hot / "ledgers" / "a.ledger.sqlite"
    assert state_counts(ledger) == {"done": 6}
    assert not list(hot.glob("a.ledger.sqlite*")), "the ledger was copied, not moved"
    assert "adopted:" in result.stderr, explain(result)
    assert len(list((hot / "out-a").glob("*.mp4"))) == 6


def test_a_manifest_with_a_ledger_in_both_places_is_rejected_unsent(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """Its own ledger beside it and one in ledgers/: which holds the work is not
    guessed. It is rejected with both named, and nothing is sent."""
    sim = sim_thread()
    hot = _hot_with(tmp_path, "a")
    env = env_for(sim.base_url)
    args = ["watch", str(hot), "--once", "-q", "--stable-s", "0.1"]
    assert pixrun(args, env, cwd=tmp_path).returncode == 0
    os.replace(hot / "done" / "a.yaml", hot / "a.yaml")
    ledger = hot / "ledgers" / "a.ledger.sqlite"
    (hot / "a.ledger.sqlite").write_bytes(ledger.read_bytes())
    calls = generate_calls(sim)
    result = pixrun(args, env, cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    assert (hot / "rejected" / "a.yaml").exists()
    said = (hot / "rejected" / "a.errors.txt").read_text()
    assert "two ledgers" in said and str(ledger) in said, said
    assert generate_calls(sim) == calls
