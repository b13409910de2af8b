"""Sample first: ``pixrun run --only/--limit`` submits a subset into the same ledger, the
rest follows later without being redone, and ``pixrun plan --only/--limit`` prices
exactly that subset. Checked against a simulator thread's books."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from runkit import (
    Batch,
    SimThread,
    env_for,
    explain,
    flat,
    in_state,
    pixrun,
    run_args,
    sim_tasks,
    start,
    states,
    wait_until,
    write_manifest,
)

from runner.errors import ExitCode


def _summary(stdout: str) -> dict[str, Any]:
    """The last JSON line of ``--json-logs``: the run's summary."""
    record: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    assert record["type"] == "summary", record
    return record


def _tasks_per_shot(sim: Any) -> Counter[str]:
    return Counter({sid: len(t) for sid, t in sim_tasks(sim.stats()).items()})


def _plan(batch: Batch, *extra: str) -> dict[str, Any]:
    result = pixrun(
        ["plan", str(batch.manifest), "--format", "json", *extra], env_for(None), cwd=batch.dir
    )
    assert result.returncode == 0, explain(result)
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


def test_sample_runs_then_the_full_run_submits_each_shot_exactly_once(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 10)
    env = env_for(sim.base_url)

    first = pixrun(run_args(batch, "--limit", "3", output="--json-logs"), env, cwd=tmp_path)
    assert first.returncode == 0, explain(first)
    assert set(_tasks_per_shot(sim)) == {"s00", "s01", "s02"}
    after = states(batch.ledger)
    assert {s for s, st in after.items() if st == "done"} == {"s00", "s01", "s02"}
    # the rest is in the ledger, pending for later: not abandoned, not sent
    assert {s for s, st in after.items() if st == "pending"} == set(batch.ids[3:])
    summary = _summary(first.stdout)
    assert "s00, s01, s02" in summary["sample"], summary
    assert "7 other shots stay pending" in summary["sample"], summary

    # --limit counts pending shots only: the three done ones are skipped over
    second = pixrun(
        run_args(batch, "--limit", "2", "--only", "s0[0-5]", "--only", "s09"), env, cwd=tmp_path
    )
    assert second.returncode == 0, explain(second)
    assert set(_tasks_per_shot(sim)) == {"s00", "s01", "s02", "s03", "s04"}

    third = pixrun(run_args(batch, "--only", "s09"), env, cwd=tmp_path)
    assert third.returncode == 0, explain(third)
    assert set(_tasks_per_shot(sim)) == {"s00", "s01", "s02", "s03", "s04", "s09"}

    full = pixrun(run_args(batch), env, cwd=tmp_path)
    assert full.returncode == 0, explain(full)
    assert _tasks_per_shot(sim) == Counter({sid: 1 for sid in batch.ids})
    assert set(states(batch.ledger).values()) == {"done"}


def test_plan_prices_the_sample_the_run_would_submit(tmp_path: Path, sim_thread: SimThread) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 10)

    fresh = _plan(batch, "--limit", "4")
    assert (fresh["shot_count"], fresh["remaining_count"]) == (4, 4)
    assert fresh["remaining_ptc"] == "0.4"
    assert fresh["total_ptc"] == "0.4"

    run = pixrun(run_args(batch, "--only", "s0[2-4]"), env_for(sim.base_url), cwd=tmp_path)
    assert run.returncode == 0, explain(run)

    # with the ledger: the first 4 still to submit are s00, s01, s05, s06
    limited = _plan(batch, "--limit", "4")
    assert (limited["shot_count"], limited["remaining_count"]) == (4, 4), limited
    assert limited["remaining_ptc"] == "0.4"
    # --only prices what the pattern names: done shots are shown, not paid for again
    only = _plan(batch, "--only", "s0[1-3]")
    assert (only["shot_count"], only["remaining_count"]) == (3, 1), only
    assert only["remaining_ptc"] == "0.1"
    # the run with the same options submits exactly what the plan priced
    again = pixrun(run_args(batch, "--limit", "4"), env_for(sim.base_url), cwd=tmp_path)
    assert again.returncode == 0, explain(again)
    assert set(_tasks_per_shot(sim)) == {"s00", "s01", "s02", "s03", "s04", "s05", "s06"}


def test_the_budget_is_checked_against_the_sample(tmp_path: Path, sim_thread: SimThread) -> None:
    sim = sim_thread()
    # 10 shots at 0.1 PTC do not fit 0.35 PTC; a sample of three does
    batch = write_manifest(tmp_path, 10, budget_ptc=0.35)
    env = env_for(sim.base_url)
    whole = pixrun(run_args(batch), env, cwd=tmp_path)
    assert whole.returncode == ExitCode.MONEY, explain(whole)
    assert not sim.stats()["tasks"]

    sample = pixrun(run_args(batch, "--limit", "3"), env, cwd=tmp_path)
    assert sample.returncode == 0, explain(sample)
    assert set(_tasks_per_shot(sim)) == {"s00", "s01", "s02"}
    plan = pixrun(["plan", str(batch.manifest), "--limit", "3"], env_for(None), cwd=tmp_path)
    assert plan.returncode == ExitCode.MONEY, explain(plan)  # 0.3 spent + 0.3 > 0.35


def test_only_matching_nothing_is_a_usage_error_and_sends_nothing(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 4)
    result = pixrun(
        run_args(batch, "--only", "s0*", "--only", "hero*"), env_for(sim.base_url), cwd=tmp_path
    )
    assert result.returncode == ExitCode.INVALID, explain(result)
    said = flat(result.stderr)
    assert "'hero*' matches no shot" in said, said
    assert "s00, s01" in said, said
    assert not sim.stats()["tasks"]
    assert not batch.ledger.exists()  # a refused run leaves nothing behind

    plan = pixrun(["plan", str(batch.manifest), "--only", "hero"], env_for(None), cwd=tmp_path)
    assert plan.returncode == ExitCode.INVALID, explain(plan)
    assert "'hero' matches no shot" in flat(plan.stderr)


def test_a_changed_done_shot_outside_the_sample_is_left_as_it_is(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 4)
    env = env_for(sim.base_url)
    assert pixrun(run_args(batch, "--limit", "2"), env, cwd=tmp_path).returncode == 0
    doc = yaml.safe_load(batch.manifest.read_text(encoding="utf-8"))
    doc["shots"][0]["prompt"] = "a stormy sea at dusk, shot s00"  # s00 is done: now changed
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    sample = pixrun(run_args(batch, "--only", "s03"), env, cwd=tmp_path)
    assert sample.returncode == 0, explain(sample)  # s00's change is not this run's business
    assert _tasks_per_shot(sim) == Counter({"s00": 1, "s01": 1, "s03": 1})
    assert states(batch.ledger)["s00"] == "done"
    assert states(batch.ledger)["s02"] == "pending"


def test_a_task_outside_the_sample_is_collected_but_never_sent_again(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    # every first render fails: a shot is sent again only by a run that may submit it
    sim = sim_thread(render_time_s=(1.0, 1.5), fail_first_attempt_share=1.0)
    batch = write_manifest(tmp_path, 6, concurrency=2)
    env = env_for(sim.base_url)
    first = start(run_args(batch, "--limit", "2"), env, cwd=tmp_path, tag="first")
    wait_until(
        lambda: batch.ledger.exists() and in_state(batch.ledger, "submitted") == {"s00", "s01"},
        what="two tasks at the provider",
    )
    first.signal(signal.SIGINT)
    assert first.wait(30) == 130, explain(first)

    # s00 and s01 are collected (their renders failed: attempts left) but not this
    # sample's to send again; s05 is, and renders on its second attempt
    second = pixrun(run_args(batch, "--only", "s05"), env, cwd=tmp_path)
    assert second.returncode == ExitCode.SHOTS_FAILED, explain(second)
    assert _tasks_per_shot(sim) == Counter({"s00": 1, "s01": 1, "s05": 2})
    after = states(batch.ledger)
    assert (after["s00"], after["s01"], after["s05"]) == ("pending", "pending", "done")
