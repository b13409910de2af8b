"""Crash tests on a real subprocess: pixrun killed anywhere resumes without paying twice.

Each test runs ``python -m runner run`` against a simulator thread in this process. The
simulator outlives every runner it serves, so its books (tasks, trace ids, charges,
bytes) prove what reached the provider. The ledger is read read-only from outside,
as the dead process left it.

What a crash may leave ambiguous: a shot whose intent is committed (``submitting``) and
whose task id is not. Whether its request left the machine cannot be known from the
ledger: the process may have died before the first byte was sent (the simulator never
saw it) or after (the simulator accepted and charged it). Both are parked, and only an
explicit ``pixrun retry --ambiguous`` sends them again, with the same Ai-trace-id.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from runkit import (
    PRICE_UPTC,
    Batch,
    SimThread,
    assert_files_match,
    assert_only_final_files,
    env_for,
    flat,
    in_state,
    integrity,
    last_attempts,
    ledger_task_ids,
    net_charges,
    pixrun,
    query,
    run_args,
    run_count,
    run_pixrun,
    shot_of,
    sim_tasks,
    start,
    states,
    wait_for_run,
    write_manifest,
)

from runner.sim import SimulatorThread

KILLED = -signal.SIGKILL

# -- named crash points ------------------------------------------------------------------

#: four shots, one in flight at a time, so the shot at each crash is known:
#: (point, which pass kills, the shots parked by the rerun). At concurrency 1 nothing
#: else is mid-submit when a shot passes after_task_committed or after_poll (it holds
#: the only slot); the points after a render are taken at the last shot's pass, when
#: every shot has been accepted.
N_SHOTS = 4
CRASH_CASES = [
    ("after_intent", 2, {"s01"}),
    ("after_submit_sent", 2, {"s01"}),
    ("after_task_committed", 2, set()),
    ("after_poll", 3, set()),
    ("after_rendered", N_SHOTS, set()),
    ("mid_download", N_SHOTS, set()),
    ("after_done", N_SHOTS, set()),
]


def _tasks_per_shot(sim: SimulatorThread) -> dict[str, int]:
    return {sid: len(tasks) for sid, tasks in sim_tasks(sim.stats()).items()}


@pytest.mark.parametrize(("point", "nth", "parked"), CRASH_CASES, ids=[c[0] for c in CRASH_CASES])
def test_crash_point_then_rerun_completes_without_paying_twice(
    tmp_path: Path, sim_thread: SimThread, point: str, nth: int, parked: set[str]
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path, N_SHOTS, concurrency=1)
    env = env_for(sim.base_url)

    crashed = pixrun(
        run_args(batch), env_for(sim.base_url, crash_at=f"{point}:{nth}"), cwd=tmp_path
    )
    assert crashed.returncode == KILLED, crashed.stderr

    # -- the ledger as the killed process left it
    assert integrity(batch.ledger) == "ok"
    assert in_state(batch.ledger, "submitting") == parked
    committed = ledger_task_ids(batch.ledger)
    at_sim = sim.stats()
    unrecorded = {shot_of(t["prompt"]) for t in at_sim["tasks"] if t["task_id"] not in committed}
    seen = sim_tasks(at_sim)
    if point == "after_intent":
        assert "s01" not in seen  # killed before a byte of its request was sent
    if point == "after_submit_sent":
        # the provider accepted (and charged) s01; the ledger never learnt its task id
        (task,) = seen["s01"]
        assert unrecorded == {"s01"}
        assert task["trace_id"] == last_attempts(batch.ledger)["s01"][0]
    else:
        assert unrecorded == set()

    # -- the rerun: resumes everything, parks what may have been charged, resends nothing
    rerun = run_pixrun(batch, sim.base_url)
    assert rerun.returncode == (1 if parked else 0), rerun.stdout + rerun.stderr
    assert in_state(batch.ledger, "ambiguous") == parked
    for sid in parked:
        _, outcome, task_id = last_attempts(batch.ledger)[sid]
        assert (outcome, task_id) == ("ambiguous", None)
    expected = {sid: 1 for sid in batch.ids}
    if point == "after_intent":
        del expected["s01"]  # never sent, and the rerun did not send it either
    assert _tasks_per_shot(sim) == expected
    assert_files_match(batch, sim.stats(), set(batch.ids) - parked)
    assert integrity(batch.ledger) == "ok"
    if not parked:
        assert_only_final_files(batch)
        return

    # -- explicitly re-queued: the same Ai-trace-id is sent again, and a provider that
    # deduplicates on it returns the task it already has, without a second charge
    sim.simulator.config.dedupe_trace_id = True
    retry = pixrun(["retry", "--ambiguous", str(batch.manifest)], env, cwd=tmp_path)
    assert retry.returncode == 0, retry.stderr
    assert "may have been accepted and charged" in flat(retry.stderr)
    final = run_pixrun(batch, sim.base_url)
    assert final.returncode == 0, final.stdout + final.stderr
    stats = sim.stats()
    assert _tasks_per_shot(sim) == {sid: 1 for sid in batch.ids}
    assert stats["faults"].get("deduplicated", 0) == (1 if point == "after_submit_sent" else 0)
    assert stats["charges"]["sum_uptc"] == N_SHOTS * PRICE_UPTC
    assert_files_match(batch, stats, batch.ids)
    assert_only_final_files(batch)
    assert integrity(batch.ledger) == "ok"


# -- random kill -9s during a faulty run -------------------------------------------------

#: every fault that keeps a shot collectable (no moderation, no invalid requests)
FAULTS: dict[str, Any] = {
    "error_5xx_share": 0.08,
    "rate_limit_share": 0.08,
    "retry_after_s": 0.02,
    "fail_first_attempt_share": 0.2,
    "truncate_share": 0.3,
    "url_ttl_s": 0.3,
}


def check_books(batch: Batch, stats: Mapping[str, Any]) -> set[str]:
    """What the ledger and the simulator agree on at any commit; the open intents.

    - an open intent (submitting, or parked as ambiguous) is the shot's latest attempt,
      committed, without a task id;
    - every task the simulator accepted that the ledger does not know belongs to an
      open intent, and carries that intent's trace id: the request that was sent while
      the id was not yet committed;
    - no trace id (a shot's render attempt) was accepted twice, and no shot holds two
      charges (a failed render's charge is refunded).
    """
    shot_states = states(batch.ledger)
    latest = last_attempts(batch.ledger)
    open_intents = {s for s, st in shot_states.items() if st in ("submitting", "ambiguous")}
    for sid in open_intents:
        _, outcome, task_id = latest[sid]
        assert outcome in ("sending", "ambiguous") and task_id is None, (sid, latest[sid])
    committed = ledger_task_ids(batch.ledger)
    traces: dict[str, int] = {}
    for task in stats["tasks"]:
        traces[task["trace_id"]] = traces.get(task["trace_id"], 0) + 1
        if task["task_id"] in committed:
            continue
        sid = shot_of(task["prompt"])
        assert sid in open_intents, f"the provider accepted {sid}, the ledger lost it"
        assert task["trace_id"] == latest[sid][0]
    assert all(n == 1 for n in traces.values()), "an attempt was accepted twice"
    assert all(n == 1 for n in net_charges(stats).values()), "a shot was charged twice"
    return open_intents


def test_random_kills_during_a_faulty_run(tmp_path: Path, sim_thread: SimThread) -> None:
    seed = int(os.environ.get("PIXRUN_TEST_SEED", random.randrange(10_000)))
    rng = random.Random(seed)
    print(f"random kills: PIXRUN_TEST_SEED={seed}")
    latency = random.Random(seed)

    async def network_latency(body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        # a request takes a while to be answered: kills land between send and answer
        await asyncio.sleep(latency.uniform(0.0, 0.06))

    sim = sim_thread(seed=seed, render_time_s=(0.1, 0.4), generate_hook=network_latency, **FAULTS)
    batch = write_manifest(tmp_path, 60, concurrency=6, download_concurrency=2)
    env = env_for(sim.base_url)

    kills = 0
    for i in range(9):
        runs = run_count(batch.ledger)
        runner = start(run_args(batch), env, cwd=tmp_path, tag=f"run{i}")
        wait_for_run(runner, batch.ledger, runs)
        time.sleep(rng.uniform(0.05, 0.5))
        code = runner.kill()
        assert code in (KILLED, 0, 1), runner.output()
        if code != KILLED:
            break  # it finished first
        kills += 1
        assert integrity(batch.ledger) == "ok"
        check_books(batch, sim.stats())
    assert kills >= 5, f"only {kills} kills landed before the batch finished"

    # runs without a kill until only parked shots are left. One is enough unless the
    # faults exhaust a shot's retries for that run (it stays collectable or pending)
    reruns, left = 0, {"not run yet"}
    while left and reruns < 3:
        reruns += 1
        final = run_pixrun(batch, sim.base_url)
        assert final.returncode in (0, 1), final.stdout + final.stderr
        left = set(states(batch.ledger).values()) - {"done", "ambiguous"}
    assert not left, f"{left} after {reruns} reruns: {final.stdout}"
    stats = sim.stats()
    parked = check_books(batch, stats)
    assert in_state(batch.ledger, "done") == set(batch.ids) - parked
    assert final.returncode == (1 if parked else 0)
    assert_files_match(batch, stats, set(batch.ids) - parked)
    assert integrity(batch.ledger) == "ok"

    # parked shots whose request reached the provider are returned, not charged again
    sent = {t["trace_id"] for t in stats["tasks"]}
    latest = last_attempts(batch.ledger)
    reached = {sid for sid in parked if latest[sid][0] in sent}
    sim.simulator.config.dedupe_trace_id = True
    if parked:
        retry = pixrun(["retry", "--ambiguous", str(batch.manifest)], env, cwd=tmp_path)
        assert retry.returncode == 0, retry.stderr
    last = run_pixrun(batch, sim.base_url)
    assert last.returncode == 0, last.stdout + last.stderr
    stats = sim.stats()
    check_books(batch, stats)
    assert stats["faults"].get("deduplicated", 0) == len(reached)
    assert net_charges(stats) == {sid: 1 for sid in batch.ids}
    assert_files_match(batch, stats, batch.ids)
    assert_only_final_files(batch)
    assert integrity(batch.ledger) == "ok"
    print(f"{kills} kills, {reruns} rerun(s), {len(parked)} parked, {len(reached)} reached")


# -- the power-loss stand-in ---------------------------------------------------------------


def test_every_generate_request_arrives_after_its_intent_is_committed(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Were the power cut at any instant, the ledger would already hold the intent of
    every request that reached the provider: the simulator checks each one on arrival,
    through its own read-only connection to the ledger."""
    batch = write_manifest(tmp_path, 40, concurrency=8)
    checked: list[str] = []

    async def intent_committed(body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        trace = headers.get("Ai-trace-id", "")
        shot = shot_of(str(body.get("prompt")))
        rows = query(
            batch.ledger,
            "SELECT shot_id FROM attempts WHERE trace_id = ? AND outcome = 'sending'",
            (trace,),
        )
        if [r[0] for r in rows] != [shot]:
            raise AssertionError(f"the generate of {shot} arrived before its intent: {rows}")
        checked.append(trace)

    sim = sim_thread(seed=3, generate_hook=intent_committed, **FAULTS)
    done = run_pixrun(batch, sim.base_url)
    stats = sim.stats()
    assert stats["violations"] == [], stats["violations"][:1]
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(checked) == stats["calls"]["generate"] > len(batch.ids)  # retries included
    assert_files_match(batch, stats, batch.ids)
