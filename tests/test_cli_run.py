"""``pixrun run`` (and retry, resolve, status, report) end to end, as a real process.

Signals, two runners on one ledger, and every exit code of the run, checked against a
simulator thread's books: what the process says must match what reached the provider.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from runkit import (
    FAST_RENDER_S,
    KEY,
    PRICE_UPTC,
    Batch,
    Running,
    SimThread,
    assert_files_match,
    assert_key_absent,
    env_for,
    exit_within,
    explain,
    files_under,
    flat,
    generate_calls,
    in_state,
    integrity,
    last_attempts,
    lose_generate_answers_to,
    pixrun,
    prompt_of,
    run_args,
    run_count,
    shot_of,
    sim_tasks,
    start,
    states,
    wait_until,
    write_manifest,
)

from runner.sim import SimulatorThread

INTERRUPTED = 130
#: slow enough that a run is stopped with every task still rendering
SLOW_RENDER_S = (1.0, 1.5)


def _task_ids(sim: SimulatorThread) -> dict[str, list[str]]:
    return {
        sid: sorted(t["task_id"] for t in tasks) for sid, tasks in sim_tasks(sim.stats()).items()
    }


def _run_with_tasks_in_flight(
    tmp_path: Path, sim_thread: SimThread, *, shots: int, tasks: int
) -> tuple[SimulatorThread, Batch, dict[str, str], Running]:
    """A run of ``shots`` slow renders at concurrency ``tasks``, once that many tasks are
    at the provider: the simulator, the batch, the run's environment and the run."""
    sim = sim_thread(render_time_s=SLOW_RENDER_S)
    batch = write_manifest(tmp_path, shots, concurrency=tasks)
    env = env_for(sim.base_url)
    runner = start(run_args(batch), env, cwd=tmp_path, tag="first")
    wait_until(
        lambda: batch.ledger.exists() and len(in_state(batch.ledger, "submitted")) == tasks,
        what=f"{tasks} tasks at the provider",
    )
    return sim, batch, env, runner


# -- signals -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_within_2s_and_the_rerun_collects_without_resubmitting(
    tmp_path: Path, sim_thread: SimThread, sig: signal.Signals
) -> None:
    sim, batch, env, runner = _run_with_tasks_in_flight(tmp_path, sim_thread, shots=6, tasks=3)
    runner.signal(sig)
    code, took_s = exit_within(runner, 10)
    assert code == INTERRUPTED, runner.output()
    assert took_s < 2.0
    # consistent: the three tasks recorded, the rest untouched, nothing parked or failed
    assert integrity(batch.ledger) == "ok"
    at_provider = in_state(batch.ledger, "submitted")
    assert len(at_provider) == 3
    assert set(states(batch.ledger).values()) == {"submitted", "pending"}
    before = _task_ids(sim)
    assert set(before) == at_provider

    sim.simulator.config.render_time_s = FAST_RENDER_S  # for the shots not yet sent
    rerun = pixrun(run_args(batch), env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = _task_ids(sim)
    assert {sid: after[sid] for sid in at_provider} == before  # collected, not resubmitted
    assert all(len(ids) == 1 for ids in after.values()) and len(after) == 6
    assert_files_match(batch, sim.stats(), batch.ids)


def _hold_generate_of(shot: str, held: threading.Event, release: threading.Event) -> Any:
    """A generate hook that keeps one shot's request unanswered until released."""

    async def hook(body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        if shot_of(str(body.get("prompt"))) != shot:
            return
        held.set()
        for _ in range(500):
            if release.is_set():
                return
            await asyncio.sleep(0.01)

    return hook


@pytest.mark.parametrize("case", ["one-ctrl-c", "two-ctrl-c", "answered-in-grace"])
def test_ctrl_c_with_a_generate_under_way(tmp_path: Path, sim_thread: SimThread, case: str) -> None:
    """One Ctrl-C waits (briefly) for a generate under way, and still exits within 2 s:
    an answer that comes in that grace is recorded, and the next run collects the task;
    with no answer the shot is parked. A second Ctrl-C ends the process at once."""
    held, release = threading.Event(), threading.Event()
    hook = _hold_generate_of("s00", held, release)
    sim = sim_thread(render_time_s=SLOW_RENDER_S, generate_hook=hook)
    batch = write_manifest(tmp_path, 3, concurrency=3)
    env = env_for(sim.base_url)
    # a long read timeout: only the stop itself can end the wait for s00's answer
    args = run_args(batch, "--provider-option", "read_timeout_s=30")
    runner = start(args, env, cwd=tmp_path, tag="first")
    try:
        wait_until(
            lambda: held.is_set() and len(in_state(batch.ledger, "submitted")) == 2,
            what="s00 held, s01 and s02 at the provider",
        )
        runner.signal(signal.SIGINT)
        if case == "two-ctrl-c":
            time.sleep(0.2)  # two separate signals, not one coalesced by the kernel
            assert runner.proc.poll() is None
            runner.signal(signal.SIGINT)
        if case == "answered-in-grace":
            time.sleep(0.2)
            release.set()
        code, took_s = exit_within(runner, 10)
    finally:
        release.set()
    assert code == INTERRUPTED, runner.output()
    assert integrity(batch.ledger) == "ok"
    if case == "answered-in-grace":
        assert took_s < 2.0, took_s
        # the task id that came back during the stop is recorded; the rerun collects it
        assert in_state(batch.ledger, "submitted") == {"s00", "s01", "s02"}
        rerun = pixrun(run_args(batch), env, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert_files_match(batch, sim.stats(), batch.ids)
        assert all(len(ids) == 1 for ids in _task_ids(sim).values())
        return
    if case == "one-ctrl-c":
        assert 0.8 < took_s < 2.0, took_s  # waited for s00's answer a while, then gave up
    else:
        assert took_s < 0.5, took_s  # the second did not wait
    assert in_state(batch.ledger, "submitting") == {"s00"}  # its request was sent

    # the held request goes through once released: charged, and unknown to the ledger
    wait_until(lambda: "s00" in sim_tasks(sim.stats()), what="s00's task")
    rerun = pixrun(run_args(batch), env, cwd=tmp_path)
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # one shot parked
    assert in_state(batch.ledger, "ambiguous") == {"s00"}
    assert_files_match(batch, sim.stats(), ["s01", "s02"])
    assert all(len(ids) == 1 for ids in _task_ids(sim).values())


# -- two runners, one ledger ---------------------------------------------------------------


def test_a_second_runner_on_the_same_ledger_exits_at_once(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim, batch, env, first = _run_with_tasks_in_flight(tmp_path, sim_thread, shots=4, tasks=4)
    # frozen with its lock held, so it cannot finish before the second one starts, however
    # slowly a loaded machine starts the second interpreter
    first.signal(signal.SIGSTOP)
    runs = run_count(batch.ledger)
    generates = sim.stats()["calls"]["generate"]

    second = pixrun(run_args(batch), env, cwd=tmp_path, timeout_s=30)
    assert second.returncode == 2
    message = flat(second.stderr)
    assert "another pixrun run is using the ledger" in message
    assert f"pid {first.pid}" in message
    assert "Traceback" not in second.stderr
    assert run_count(batch.ledger) == runs  # it wrote nothing
    assert sim.stats()["calls"]["generate"] == generates  # and sent nothing

    # the kernel frees the lock of a killed runner: the next run takes over
    assert first.kill() == -signal.SIGKILL
    third = pixrun(run_args(batch), env, cwd=tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert all(len(ids) == 1 for ids in _task_ids(sim).values())
    assert_files_match(batch, sim.stats(), batch.ids)


# -- exit codes ----------------------------------------------------------------------------


def test_plan_over_the_budget_exits_4_and_sends_nothing(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 5)
    done = pixrun(run_args(batch, "--max-cost", "0.45"), env_for(sim.base_url), cwd=tmp_path)
    said = explain(done)
    assert done.returncode == 4, said
    assert "does not fit the budget" in flat(done.stderr), said
    assert "Traceback" not in done.stderr, said
    assert generate_calls(sim) == 0, said
    assert sim.stats()["calls"] == {}, said  # nothing at all reached the provider


def test_empty_account_exits_4_and_a_rerun_after_topping_up_completes(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Also: status and report on the finished ledger agree with the provider's books."""
    sim = sim_thread(balance_ptc=Decimal("0.3"))
    batch = write_manifest(tmp_path, 6, concurrency=2)
    env = env_for(sim.base_url)
    poor = pixrun(run_args(batch), env, cwd=tmp_path)
    assert poor.returncode == 4, poor.stdout + poor.stderr
    said = flat(poor.stdout + poor.stderr)
    assert "out of credit" in said and "a rerun resumes" in said
    counts = list(states(batch.ledger).values())
    assert counts.count("done") == 3 and counts.count("pending") == 3  # nothing failed

    sim.simulator.books.balance_uptc = 10 * PRICE_UPTC  # topped up
    rich = pixrun(run_args(batch), env, cwd=tmp_path)
    assert rich.returncode == 0, rich.stdout + rich.stderr
    books = sim.stats()
    assert books["accepted_tasks"] == 6 and books["refusals"].get("balance", 0) >= 1
    assert_files_match(batch, books, batch.ids)

    status = pixrun(["status", str(batch.manifest), "--format", "json"], env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["counts"]["done"] == 6 and summary["total"] == 6
    assert summary["spent_uptc"] == books["charges"]["net_uptc"] == 6 * PRICE_UPTC
    report = pixrun(["report", str(batch.manifest), "--format", "json"], env, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    tasks = {t["task_id"]: t for t in books["tasks"]}
    rows = json.loads(report.stdout)
    assert sorted(r["shot_id"] for r in rows) == batch.ids
    for row in rows:
        task = tasks[str(row["task_id"])]
        assert shot_of(task["prompt"]) == row["shot_id"]
        assert row["sha256"] == task["sha256"]
        assert Decimal(row["charged_ptc"]) == Decimal(task["charged_ptc"])


def test_refused_key_exits_3_and_fails_no_shot(tmp_path: Path, sim_thread: SimThread) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 4)
    wrong = "sk-wrong-key-98765"
    args = run_args(batch, output="--json-logs")
    done = pixrun(args, env_for(sim.base_url, key=wrong), cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert set(states(batch.ledger).values()) == {"pending"}
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["stop_reason"] == "auth" and summary["counts"] == {"pending": 4}
    assert sim.stats()["accepted_tasks"] == 0
    assert_key_absent(wrong, done.stdout, done.stderr, files=files_under(tmp_path))


def test_invalid_manifest_exits_2_naming_file_and_line(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    lines = batch.manifest.read_text().splitlines()
    at = lines.index(f"  prompt: {prompt_of('s01')}")
    lines.insert(at + 1, "  quality: 999p")
    batch.manifest.write_text("\n".join(lines) + "\n")
    done = pixrun(run_args(batch), env_for(sim.base_url), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{batch.manifest.name}:{at + 2}:" in done.stderr  # 1-based line of the field
    assert "999p" in done.stderr and "Traceback" not in done.stderr
    assert not batch.ledger.exists() and sim.stats()["calls"] == {}


def test_missing_api_key_exits_2_before_touching_the_ledger(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    done = pixrun(run_args(batch), env_for(sim.base_url, key=None), cwd=tmp_path)
    assert done.returncode == 2
    assert "PIXRUN_API_KEY" in done.stderr and "Traceback" not in done.stderr
    assert not batch.ledger.exists()
    assert not batch.ledger.with_name(batch.ledger.name + ".lock").exists()
    assert sim.stats()["calls"] == {}


def test_run_never_waits_for_input_when_stdin_is_not_a_terminal(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """No --yes, stdin an open pipe nobody writes to (as under cron or nohup)."""
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    runner = start(
        run_args(batch, output="", yes=False),
        env_for(sim.base_url),
        cwd=tmp_path,
        tag="no-tty",
        stdin=subprocess.PIPE,
    )
    try:
        code, _ = exit_within(runner, 30)
    finally:
        if runner.proc.stdin is not None:
            runner.proc.stdin.close()
    out, err = runner.output()
    assert code == 0, out + err
    assert "run finished" in out
    assert_files_match(batch, sim.stats(), batch.ids)


def test_json_logs_parse_and_never_carry_the_key(tmp_path: Path, sim_thread: SimThread) -> None:
    echoes: list[str] = []

    async def echo_the_key(body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        # a careless gateway: its error page quotes the request's Authorization header
        if len(echoes) < 3:
            echoes.append(headers["Authorization"])
            raise RuntimeError(f"bad request from {headers['Authorization']}")

    sim = sim_thread(
        error_5xx_share=0.2,
        rate_limit_share=0.1,
        retry_after_s=0.02,
        seed=5,
        generate_hook=echo_the_key,
    )
    batch = write_manifest(tmp_path, 8)
    done = pixrun(run_args(batch, output="--json-logs"), env_for(sim.base_url), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["type"] for r in records} <= {"event", "progress", "summary"}
    assert sorted(r["shot_id"] for r in records if r.get("kind") == "done") == batch.ids
    assert records[-1]["type"] == "summary" and records[-1]["exit_code"] == 0
    assert echoes == [f"Bearer {KEY}"] * 3  # the key was in answers pixrun read
    # every file the run left: the ledger (and its WAL, if any), outputs and sidecars
    written = files_under(tmp_path)
    assert {batch.ledger, batch.out / "s00.mp4.json"} <= set(written)
    assert_key_absent(KEY, done.stdout, done.stderr, files=written)


def test_resolve_ties_a_parked_shot_to_its_task_without_a_new_charge(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    config = sim.simulator.config
    # the task is created and charged, then the connection drops: the shot is parked
    lose_generate_answers_to(sim, "s01")
    batch = write_manifest(tmp_path, 3)
    env = env_for(sim.base_url)
    first = pixrun(run_args(batch), env, cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    assert in_state(batch.ledger, "ambiguous") == {"s01"}
    assert "resolve" in flat(first.stdout)  # the summary says how
    (task,) = sim_tasks(sim.stats())["s01"]  # found on the provider's side
    assert task["trace_id"] == last_attempts(batch.ledger)["s01"][0]
    charged = sim.stats()["charges"]["sum_uptc"]

    config.generate_hook = None
    resolve = pixrun(
        ["resolve", "s01", str(batch.manifest), "--task-id", task["task_id"]], env, cwd=tmp_path
    )
    assert resolve.returncode == 0, resolve.stderr
    again = pixrun(run_args(batch), env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    books = sim.stats()
    assert books["accepted_tasks"] == 3 and books["charges"]["sum_uptc"] == charged
    assert books["calls"]["generate"] == 3  # nothing sent again
    assert_files_match(batch, books, batch.ids)
