"""The failure-rate brake (``run.halt``): a manifest whose renders keep failing stops
submitting after the window, collects what is in flight, exits 1 naming the common
errors, and a rerun after fixing the manifest continues. Checked against a simulator
thread's books."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from runkit import (
    Batch,
    SimThread,
    env_for,
    explain,
    pixrun,
    run_args,
    sim_tasks,
    states,
    write_manifest,
)

from runner.errors import ExitCode, ManifestError
from runner.manifest import load_manifest
from runner.run.brake import FailureBrake

BAD = "forbidden scene"
N_SHOTS = 40


def _set_halt(batch: Batch, **halt: Any) -> None:
    doc = yaml.safe_load(batch.manifest.read_text(encoding="utf-8"))
    doc["run"]["halt"] = halt
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def _failing_batch(tmp_path: Path, *, good: set[str]) -> Batch:
    """Shots whose prompts the simulator moderates, but for ``good``; one attempt each."""
    scenes = {f"s{i:02d}": BAD for i in range(N_SHOTS) if f"s{i:02d}" not in good}
    return write_manifest(tmp_path, N_SHOTS, concurrency=4, max_attempts=1, scenes=scenes)


def _summary(stdout: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    assert record["type"] == "summary", record
    return record


def test_the_brake_stops_a_failing_manifest_collects_in_flight_and_a_rerun_continues(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(moderated_words=("forbidden",))
    batch = _failing_batch(tmp_path, good={"s00", "s01"})
    _set_halt(batch, failure_share=0.5, window=10)
    env = env_for(sim.base_url)

    braked = pixrun(run_args(batch, output="--json-logs"), env, cwd=tmp_path)
    assert braked.returncode == ExitCode.SHOTS_FAILED, explain(braked)
    summary = _summary(braked.stdout)
    assert summary["stop_reason"] == "brake", summary
    message = summary["message"]
    assert message.startswith("brake: ") and "of the last 10 finished renders" in message
    # the common error, with its count (8 or more of the window were moderated)
    moderated = [s for s, st in states(batch.ledger).items() if st == "moderated"]
    errors = {
        r["message"]
        for r in map(json.loads, braked.stdout.splitlines())
        if r.get("kind") == "moderated"
    }
    assert len(errors) == 1, errors
    (error,) = errors
    assert f"x {error!r}" in message, message

    tasks = sim_tasks(sim.stats())
    # stopped: far from every shot was sent, and nothing sent is left behind
    assert 10 <= len(tasks) < N_SHOTS - 10, len(tasks)
    after = states(batch.ledger)
    assert set(after.values()) <= {"done", "moderated", "pending"}, Counter(after.values())
    assert {s for s, st in after.items() if st != "pending"} == set(tasks)
    assert len(moderated) == len(tasks) - 2
    assert all(after[s] == "done" for s in ("s00", "s01"))

    # the manifest is fixed: the rerun renders the rest, and nothing done is sent again
    fixed = write_manifest(tmp_path, N_SHOTS, concurrency=4, max_attempts=1)
    _set_halt(fixed, failure_share=0.5, window=10)
    rerun = pixrun(run_args(fixed), env, cwd=tmp_path)
    assert rerun.returncode == 0, explain(rerun)
    assert set(states(batch.ledger).values()) == {"done"}
    per_shot = {sid: len(t) for sid, t in sim_tasks(sim.stats()).items()}
    assert per_shot["s00"] == per_shot["s01"] == 1
    assert sorted(per_shot) == fixed.ids
    assert all(n == (2 if sid in moderated else 1) for sid, n in per_shot.items())


def test_share_one_turns_the_brake_off(tmp_path: Path, sim_thread: SimThread) -> None:
    sim = sim_thread(moderated_words=("forbidden",))
    batch = _failing_batch(tmp_path, good=set())
    _set_halt(batch, failure_share=1, window=5)
    result = pixrun(run_args(batch, output="--json-logs"), env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == ExitCode.SHOTS_FAILED, explain(result)
    assert _summary(result.stdout)["stop_reason"] is None
    assert len(sim_tasks(sim.stats())) == N_SHOTS
    assert set(states(batch.ledger).values()) == {"moderated"}


def test_failures_under_the_share_do_not_stop_the_run(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(moderated_words=("forbidden",))
    # every third shot is moderated; one at a time, so each window of 6 holds exactly 2
    scenes = {f"s{i:02d}": BAD for i in range(0, 24, 3)}
    batch = write_manifest(tmp_path, 24, concurrency=1, max_attempts=1, scenes=scenes)
    _set_halt(batch, failure_share=0.5, window=6)
    result = pixrun(run_args(batch, output="--json-logs"), env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == ExitCode.SHOTS_FAILED, explain(result)
    assert _summary(result.stdout)["stop_reason"] is None
    assert Counter(states(batch.ledger).values()) == {"done": 16, "moderated": 8}


def test_requests_refused_before_rendering_do_not_count(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    # the provider refuses every request outright (pre-moderation): no render is made
    sim = sim_thread(permanent_error_code=500063, permanent_error_share=1.0)
    batch = write_manifest(tmp_path, 12, concurrency=2, max_attempts=1)
    _set_halt(batch, failure_share=0.5, window=3)
    result = pixrun(run_args(batch, output="--json-logs"), env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == ExitCode.SHOTS_FAILED, explain(result)
    assert _summary(result.stdout)["stop_reason"] is None
    assert set(states(batch.ledger).values()) == {"failed"}


def test_the_brake_waits_for_a_full_window() -> None:
    brake = FailureBrake(failure_share=0.5, window=4)
    assert [brake.record("render failed") for _ in range(3)] == [None] * 3
    message = brake.record(None)
    assert message is not None and "3 of the last 4 finished renders" in message


def test_the_window_slides_and_names_the_most_common_errors() -> None:
    brake = FailureBrake(failure_share=0.5, window=4)
    moderated = "refused by content moderation"
    seen = [
        brake.record(error)
        for error in (
            None,
            None,
            "render failed (attempt 1 of 1)",
            "render failed (attempt 1 of 1)",  # 2 of 4: not more than half
            None,
            None,
            None,  # the early failures have slid out
            moderated,
            moderated,  # 2 of 4 again
        )
    ]
    assert seen == [None] * 9
    message = brake.record("render failed (attempt 2 of 2)")  # 3 of the last 4
    assert message is not None
    assert "3 of the last 4 finished renders" in message
    assert f"2x {moderated!r}; 1x 'render failed'" in message
    assert brake.record("render failed") is None  # once per run


def test_the_brake_is_on_by_default_and_share_one_is_off() -> None:
    default = FailureBrake(0.5, 20)
    assert [default.record("x") for _ in range(19)] == [None] * 19
    assert default.record("x") is not None
    off = FailureBrake(1.0, 3)
    assert all(off.record("x") is None for _ in range(10))


@pytest.mark.parametrize(
    ("halt", "field"),
    [
        ({"failure_share": 0}, "failure_share"),
        ({"failure_share": 1.5}, "failure_share"),
        ({"window": 0}, "window"),
        ({"window": 2.5}, "window"),
        ({"stop_at": 3}, "stop_at"),
    ],
)
def test_run_halt_is_validated(tmp_path: Path, halt: dict[str, Any], field: str) -> None:
    batch = write_manifest(tmp_path, 1)
    _set_halt(batch, **halt)
    with pytest.raises(ManifestError) as caught:
        load_manifest(batch.manifest)
    assert any(field in str(p) for p in caught.value.problems), caught.value.problems


def test_run_halt_is_read_from_the_manifest(tmp_path: Path) -> None:
    batch = write_manifest(tmp_path, 1)
    assert load_manifest(batch.manifest).run.halt.failure_share == 0.5
    _set_halt(batch, failure_share=0.25, window=7)
    halt = load_manifest(batch.manifest).run.halt
    assert (halt.failure_share, halt.window) == (0.25, 7)
