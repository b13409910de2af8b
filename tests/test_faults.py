"""The faults an overnight run meets: provider outage, a bad network path, a full disk,
a ledger that cannot be written. Each test fails if pixrun breaks the promise it names.

pixrun runs as a subprocess (``python -m runner run``) against a simulator in a
background thread; the checks read the ledger and the simulator's books.
"""

from __future__ import annotations

import time
from pathlib import Path

from faultkit import (
    SIM_KEY,
    assert_outputs_match,
    explain,
    integrity_ok,
    kept_charges,
    ledger_of,
    pixrun,
    query,
    run_pixrun,
    sim_tasks_by_shot,
    start_run,
    state_counts,
    wait_until,
    write_manifest,
)

from runner.sim import SimConfig, SimulatorThread

#: a real-time outage, standing in for minutes: longer than pixrun's whole retry budget
#: for a call at --backoff-base-s 0.01 (8 submit tries or 4 download tries)
OUTAGE_S = 3.0


def test_provider_outage_is_waited_out_and_nothing_fails(tmp_path: Path) -> None:
    """The provider goes away mid-run and comes back on the same port: pixrun backs off,
    keeps polling the tasks it knows, and completes; no shot is marked failed.

    Only a generate that was on the wire at the very moment the server went down may be
    parked (its answer was lost); once re-queued, the provider's trace-id dedupe makes
    it complete without a second charge.
    """
    n = 40
    config = SimConfig(api_key=SIM_KEY, render_time_s=(0.05, 0.3), seed=3, dedupe_trace_id=True)
    with SimulatorThread(config) as sim:
        manifest = write_manifest(tmp_path, n, concurrency=8, download_concurrency=2)
        ledger = ledger_of(manifest)
        proc = start_run(manifest, sim.base_url)
        wait_until(
            lambda: sim.stats(with_tasks=False)["accepted_tasks"] >= 12,
            timeout_s=30,
            what="the run to get going",
        )
        before_ids = {t["task_id"] for t in sim.stats()["tasks"]}
        sim.stop_server()
        stopped_at = time.time()
        time.sleep(OUTAGE_S)
        back_at = time.time()
        sim.start_server()
        out, err = proc.communicate(timeout=120)
        said = explain(proc, out + err)

        counts = state_counts(ledger)
        assert counts.get("failed", 0) == 0 and counts.get("moderated", 0) == 0, said
        parked = {
            s for s, st in query(ledger, "SELECT shot_id, state FROM shots") if st == "ambiguous"
        }
        assert counts["done"] + len(parked) == n, (counts, said)
        assert proc.returncode == (1 if parked else 0), said
        # only requests already on the wire when the server went down may be parked:
        # anything sent during the outage was refused at connect time (nothing sent)
        for shot_id, sent_at in query(
            ledger, "SELECT shot_id, sent_at FROM attempts WHERE outcome = 'ambiguous'"
        ):
            assert sent_at <= stopped_at, f"{shot_id} parked for a request sent in the outage"
        # refused submits were retried, with back-off: a handful of calls, not a storm
        refused = query(
            ledger,
            "SELECT COUNT(*) FROM attempts WHERE outcome = 'transient' AND sent_at BETWEEN ? AND ?",
            (stopped_at, back_at),
        )[0][0]
        assert refused <= 8 * 12, f"{refused} generate calls in a {OUTAGE_S} s outage"

        if parked:  # re-queue the lost answers: the same trace id is sent, deduplicated
            assert pixrun("retry", str(manifest), "--ambiguous").returncode == 0
            rerun = run_pixrun(manifest, sim.base_url)
            assert rerun.returncode == 0, explain(rerun)

        assert state_counts(ledger) == {"done": n}
        stats = sim.stats()
        by_shot = sim_tasks_by_shot(ledger, stats)
        assert {s: kept_charges(t) for s, t in by_shot.items()} == {
            f"s{i:04d}": 1 for i in range(n)
        }
        assert stats["charges"]["count"] == n, "a shot was generated twice"
        assert assert_outputs_match(ledger, manifest.parent / "out", stats) == n
        # the tasks the provider held before the outage were collected, not generated again
        collected = {r[0] for r in query(ledger, "SELECT task_id FROM shots WHERE state='done'")}
        assert before_ids <= collected
        assert integrity_ok(ledger)
