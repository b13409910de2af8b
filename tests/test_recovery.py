"""Recovery commands and ledgers that are not what they seem, as real processes.

``pixrun resolve`` checks a task before tying a shot to it; ``pixrun retry
--moderated``; re-rolling a shot with ``retry --new-seed`` (the older version keeps
its file and sidecar, and the ledger says where); a shot dropped from the manifest
stays gone; ``--ledger`` refuses a file that is not this batch's ledger.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from runkit import (
    Batch,
    SimThread,
    assert_files_match,
    env_for,
    explain,
    flat,
    forget_task,
    generate_calls,
    in_state,
    ledger_task_ids,
    lose_generate_answers_to,
    pixrun,
    query,
    run_args,
    run_pixrun,
    sha256_of,
    sim_seed,
    sim_tasks,
    states,
    write_manifest,
)

from runner.sim import SimulatorThread


def _park_s01(sim: SimulatorThread, batch: Batch) -> dict[str, Any]:
    """Run the batch with s01's generate answer lost: s01 is parked, its task exists
    on the provider's side (returned), the other shots are done."""
    config = sim.simulator.config
    lose_generate_answers_to(sim, "s01")
    first = run_pixrun(batch, sim.base_url)
    config.generate_hook = None
    config.lost_generate_share = 0.0
    assert first.returncode == 1, explain(first)
    assert in_state(batch.ledger, "ambiguous") == {"s01"}
    (task,) = sim_tasks(sim.stats())["s01"]
    return task


def _set_seeds(batch: Batch, seeds: Mapping[str, int]) -> None:
    doc = yaml.safe_load(batch.manifest.read_text("utf-8"))
    for shot in doc["shots"]:
        if shot["id"] in seeds:
            shot["seed"] = seeds[shot["id"]]
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def _resolve(batch: Batch, sim: SimulatorThread, task_id: str) -> Any:
    return pixrun(
        ["resolve", "s01", str(batch.manifest), "--task-id", task_id],
        env_for(sim.base_url),
        cwd=batch.dir,
    )


def _ledger_unchanged_for_s01(batch: Batch) -> None:
    assert in_state(batch.ledger, "ambiguous") == {"s01"}
    assert query(batch.ledger, "SELECT COUNT(*) FROM events WHERE kind = 'resolved'") == [(0,)]


# -- resolve verifies before it ties -----------------------------------------------------


def test_resolve_refuses_a_task_the_ledger_ties_to_another_shot(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    _park_s01(sim, batch)
    (s00_task,) = sim_tasks(sim.stats())["s00"]
    fetches = sim.stats()["calls"].get("fetch", 0)
    refused = _resolve(batch, sim, s00_task["task_id"])
    assert refused.returncode == 2, explain(refused)
    assert "already belongs to shot s00" in flat(refused.stderr)
    assert sim.stats()["calls"].get("fetch", 0) == fetches  # refused before asking
    _ledger_unchanged_for_s01(batch)


def test_resolve_refuses_a_task_the_provider_does_not_know(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    _park_s01(sim, batch)
    refused = _resolve(batch, sim, "987654321")
    assert refused.returncode == 2, explain(refused)
    assert "the provider does not know task 987654321; nothing was written" in flat(refused.stderr)
    _ledger_unchanged_for_s01(batch)


def test_resolve_refuses_a_task_made_from_another_prompt(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Two projects on one account: the other project's s01 is not this s01."""
    sim = sim_thread()
    batch = write_manifest(tmp_path / "mine", 3)
    _park_s01(sim, batch)
    other = write_manifest(tmp_path / "theirs", 2, scenes={"s01": "a busy street"})
    run_pixrun(other, sim.base_url, check=True)
    (theirs,) = [t for t in sim_tasks(sim.stats())["s01"] if "busy street" in t["prompt"]]
    refused = _resolve(batch, sim, theirs["task_id"])
    assert refused.returncode == 2, explain(refused)
    assert "its prompt is 'a busy street, shot s01'" in flat(refused.stderr)
    _ledger_unchanged_for_s01(batch)


def test_resolve_checks_the_seed_when_the_shot_sets_one(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path / "mine", 3)
    _set_seeds(batch, {"s01": 5})
    task = _park_s01(sim, batch)
    other = write_manifest(tmp_path / "theirs", 2)  # the same prompt, another seed
    _set_seeds(other, {"s01": 6})
    run_pixrun(other, sim.base_url, check=True)
    (theirs,) = [t for t in sim_tasks(sim.stats())["s01"] if t["task_id"] != task["task_id"]]
    refused = _resolve(batch, sim, theirs["task_id"])
    assert refused.returncode == 2, explain(refused)
    assert "its seed is 6, the shot's is 5" in flat(refused.stderr)
    _ledger_unchanged_for_s01(batch)
    # the right task passes every check
    tied = _resolve(batch, sim, task["task_id"])
    assert tied.returncode == 0, explain(tied)
    run_pixrun(batch, sim.base_url, check=True)
    assert generate_calls(sim) == 5  # 3 of mine, 2 of theirs: none again


def test_a_resolved_task_that_turns_out_unknown_parks_the_shot_again(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    task = _park_s01(sim, batch)
    tied = _resolve(batch, sim, task["task_id"])
    assert tied.returncode == 0, explain(tied)
    forget_task(sim, task["task_id"])  # gone between the resolve and the run
    generates = generate_calls(sim)
    again = run_pixrun(batch, sim.base_url)
    assert again.returncode == 1, explain(again)
    assert in_state(batch.ledger, "ambiguous") == {"s01"}
    assert generate_calls(sim) == generates  # never generated again


# -- retry --moderated ---------------------------------------------------------------------


def test_retry_moderated_requeues_what_the_summary_says(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(moderated_words=("forbidden",))
    batch = write_manifest(tmp_path, 3, scenes={"s01": "a forbidden scene"})
    env = env_for(sim.base_url)
    first = run_pixrun(batch, sim.base_url)
    assert first.returncode == 1, explain(first)
    assert in_state(batch.ledger, "moderated") == {"s01"}
    assert f"pixrun retry --moderated {batch.manifest}" in flat(first.stdout)
    # --failed takes failed shots only
    failed = pixrun(["retry", "--failed", str(batch.manifest)], env, cwd=tmp_path)
    assert failed.returncode == 0 and "re-queued 0 shots" in failed.stdout
    moderated = pixrun(["retry", "--moderated", str(batch.manifest)], env, cwd=tmp_path)
    assert moderated.returncode == 0, moderated.stderr
    assert "re-queued 1 shot;" in moderated.stdout
    assert states(batch.ledger)["s01"] == "pending"
    sim.simulator.config.moderated_words = ()  # the prompt was dealt with
    run_pixrun(batch, sim.base_url, check=True)
    assert_files_match(batch, sim.stats(), batch.ids)


# -- re-roll: retry --shot X --new-seed -----------------------------------------------------


def _sidecar(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.with_name(path.name + ".json").read_text("utf-8"))
    return result


def _versions(batch: Batch, shot_id: str) -> dict[int, str]:
    rows = query(
        batch.ledger, "SELECT version, output_path FROM shot_versions WHERE shot_id = ?", (shot_id,)
    )
    return {int(v): str(p) for v, p in rows}


def _plan_statuses(batch: Batch, env: Mapping[str, str]) -> dict[str, int]:
    plan = pixrun(["plan", str(batch.manifest), "--format", "json"], env, cwd=batch.dir)
    assert plan.returncode == 0, explain(plan)
    (group,) = json.loads(plan.stdout)["groups"]
    result: dict[str, int] = group["by_status"]
    return result


def test_reroll_renders_a_new_version_with_a_fresh_seed_and_keeps_the_old_one(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 2)
    env = env_for(sim.base_url)
    run_pixrun(batch, sim.base_url, check=True)
    clip = batch.out / "s00.mp4"
    v1_bytes = clip.read_bytes()

    reroll = pixrun(
        ["retry", str(batch.manifest), "--shot", "s00", "--new-seed"], env, cwd=tmp_path
    )
    assert reroll.returncode == 0, explain(reroll)
    out = flat(reroll.stdout)
    assert "re-render costs 0.10 PTC" in out and "version 2" in out
    seed = int(out.split("new seed ")[1].split(",")[0])
    assert 0 <= seed <= 2_147_483_647
    ((version, override, request_json, state),) = query(
        batch.ledger,
        "SELECT version, seed_override, request_json, state FROM shots WHERE shot_id = 's00'",
    )
    assert (version, override, json.loads(request_json)["seed"], state) == (
        2,
        seed,
        seed,
        "pending",
    )

    # the plan counts it as to submit (not as changed): the manifest entry is the same
    assert _plan_statuses(batch, env) == {"to_submit": 1, "done": 1}

    run_pixrun(batch, sim.base_url, check=True)
    tasks = sim_tasks(sim.stats())
    assert len(tasks["s00"]) == 2 and len(tasks["s01"]) == 1
    assert sim_seed(sim, tasks["s00"][1]["task_id"]) == seed  # rendered with the new seed
    assert_files_match(batch, sim.stats(), batch.ids)
    # the older version keeps its file and its sidecar, and the ledger says where
    aside = batch.out / "s00.v1.mp4"
    assert aside.read_bytes() == v1_bytes and clip.read_bytes() != v1_bytes
    assert _sidecar(aside)["version"] == 1 and _sidecar(aside)["sha256"] == sha256_of(aside)
    assert _sidecar(clip)["version"] == 2 and _sidecar(clip)["request"]["seed"] == seed
    assert _versions(batch, "s00") == {1: "s00.v1.mp4"}

    # the re-roll survives later runs of the unchanged manifest
    run_pixrun(batch, sim.base_url, check=True)
    assert generate_calls(sim) == 3
    assert query(batch.ledger, "SELECT version, state FROM shots WHERE shot_id='s00'") == [
        (2, "done")
    ]
    assert _plan_statuses(batch, env) == {"done": 2}

    # an edit of the shot in the manifest is a real change: it drops the re-roll's seed
    write_manifest(tmp_path, 2, scenes={"s00": "a stormy sea"})
    run_pixrun(batch, sim.base_url, "--rerender-changed", check=True)
    ((version, override, request_json),) = query(
        batch.ledger, "SELECT version, seed_override, request_json FROM shots WHERE shot_id='s00'"
    )
    assert (version, override) == (3, None) and "seed" not in json.loads(request_json)
    v2 = batch.out / "s00.v2.mp4"
    assert _sidecar(v2)["version"] == 2 and _sidecar(v2)["sha256"] == sha256_of(v2)
    assert _sidecar(clip)["version"] == 3
    assert _versions(batch, "s00") == {1: "s00.v1.mp4", 2: "s00.v2.mp4"}


def test_reroll_refuses_what_it_cannot_reroll(tmp_path: Path, sim_thread: SimThread) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 2)
    env = env_for(sim.base_url)
    task = _park_s01(sim, batch)
    # the provider made s01's task but its answer was lost: the ledger never learnt it
    assert task["task_id"] not in ledger_task_ids(batch.ledger)
    parked = pixrun(
        ["retry", str(batch.manifest), "--shot", "s01", "--new-seed"], env, cwd=tmp_path
    )
    assert parked.returncode == 2 and "shot s01 is ambiguous" in flat(parked.stderr)
    no_shot = pixrun(["retry", str(batch.manifest), "--failed", "--new-seed"], env, cwd=tmp_path)
    assert no_shot.returncode == 2 and "--shot ID --new-seed" in flat(no_shot.stderr)
    unknown = pixrun(
        ["retry", str(batch.manifest), "--shot", "zz", "--new-seed"], env, cwd=tmp_path
    )
    assert unknown.returncode == 2 and "no shot 'zz'" in flat(unknown.stderr)
    assert query(batch.ledger, "SELECT MAX(version) FROM shots") == [(1,)]


# -- removed shots stay removed -----------------------------------------------------------


def test_a_removed_shots_deleted_file_is_not_downloaded_again(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 3)
    env = env_for(sim.base_url)
    run_pixrun(batch, sim.base_url, check=True)
    write_manifest(tmp_path, 2)  # s02 dropped from the manifest ...
    (batch.out / "s02.mp4").unlink()  # ... and its file deleted
    downloads = sim.stats()["calls"]["download"]
    run_pixrun(batch, sim.base_url, check=True)
    assert not (batch.out / "s02.mp4").exists()
    assert sim.stats()["calls"]["download"] == downloads
    # nor re-rolled: no run would render it (and the other shot named is left alone)
    reroll = pixrun(
        ["retry", str(batch.manifest), "--shot", "s00", "--shot", "s02", "--new-seed"],
        env,
        cwd=tmp_path,
    )
    assert reroll.returncode == 2 and "s02 is no longer in the manifest" in flat(reroll.stderr)
    assert query(batch.ledger, "SELECT MAX(version) FROM shots") == [(1,)]
    # a shot of the manifest whose file vanished is still downloaded again
    (batch.out / "s01.mp4").unlink()
    run_pixrun(batch, sim.base_url, check=True)
    assert (batch.out / "s01.mp4").exists() and not (batch.out / "s02.mp4").exists()


# -- --ledger refuses what is not this batch's ledger ---------------------------------------


def test_a_sqlite_file_of_another_program_is_refused_untouched(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, 1)
    foreign = tmp_path / "notes.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE notes (body TEXT)")
    con.execute("INSERT INTO notes VALUES ('keep me')")
    con.commit()
    con.close()
    before = foreign.read_bytes()
    refused = run_pixrun(batch, sim.base_url, "--ledger", str(foreign))
    assert refused.returncode == 2, explain(refused)
    assert "is an SQLite file, but not a pixrun ledger" in flat(refused.stderr)
    assert foreign.read_bytes() == before  # not migrated, not even switched to WAL
    assert generate_calls(sim) == 0
    # an empty file, or a new path, becomes a ledger
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    run_pixrun(batch, sim.base_url, "--ledger", str(empty), check=True)
    assert states(empty) == {"s00": "done"}


def test_a_ledger_of_another_manifest_is_refused_unless_forced(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    env = env_for(sim.base_url)
    alpha = write_manifest(tmp_path / "alpha", 2, name="alpha")
    done = pixrun(run_args(alpha), env, cwd=tmp_path)
    assert done.returncode == 0, explain(done)
    beta = write_manifest(tmp_path / "beta", 2, name="beta", scenes={"s00": "a desert"})
    refused = pixrun(run_args(beta, "--ledger", str(alpha.ledger)), env, cwd=tmp_path)
    assert refused.returncode == 2, explain(refused)
    err = flat(refused.stderr)
    assert "belongs to the batch 'alpha'" in err and "--force" in err
    assert generate_calls(sim) == 2  # nothing sent
    assert query(alpha.ledger, "SELECT value FROM meta WHERE key='name'") == [("alpha",)]
    take_over = ("--ledger", str(alpha.ledger), "--force", "--rerender-changed")
    forced = pixrun(run_args(beta, *take_over), env, cwd=tmp_path)
    assert forced.returncode == 0, explain(forced)
    assert query(alpha.ledger, "SELECT value FROM meta WHERE key='name'") == [("beta",)]


def test_a_moved_project_warns_and_proceeds(tmp_path: Path, sim_thread: SimThread) -> None:
    sim = sim_thread()
    env = env_for(sim.base_url)
    batch = write_manifest(tmp_path / "old-place", 2)
    done = pixrun(run_args(batch), env, cwd=tmp_path)
    assert done.returncode == 0, explain(done)
    shutil.move(tmp_path / "old-place", tmp_path / "new-place")
    moved = write_manifest(tmp_path / "new-place", 2)  # the same manifest, moved
    again = pixrun(run_args(moved, output=""), env, cwd=tmp_path)
    assert again.returncode == 0, explain(again)
    out = flat(again.stdout + again.stderr)
    assert "was last used with the manifest at" in out and "old-place" in out
    assert generate_calls(sim) == 2  # nothing sent again
