"""The faults an overnight run meets: provider outage, a bad network path, a full disk,
a ledger that cannot be written. Each test fails if pixrun breaks the promise it names.

pixrun runs as a subprocess (``python -m runner run``) against a simulator in a
background thread; the checks read the ledger and the simulator's books.
"""

from __future__ import annotations

import sqlite3
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
    states,
    wait_until,
    write_manifest,
)
from tcpproxy import Fault, ProxyThread

from runner.sim import SimConfig, SimulatorThread

#: a real-time outage, standing in for minutes: longer than pixrun's whole retry budget
#: for a call at --backoff-base-s 0.01 (8 submit tries or 4 download tries)
OUTAGE_S = 3.0


def _backlog(ledger: Path) -> int:
    """Shots rendered but not yet saved (0 while the ledger does not exist yet)."""
    sql = "SELECT COUNT(*) FROM shots WHERE state IN ('rendered', 'downloading')"
    try:
        return int(query(ledger, sql)[0][0])
    except sqlite3.Error:  # not created (or not migrated) yet
        return 0


def test_provider_outage_is_waited_out_and_nothing_fails(tmp_path: Path) -> None:
    """The provider goes away mid-run and comes back on the same port: pixrun backs off,
    keeps polling the tasks it knows, and completes; no shot is marked failed.

    The outage starts while tasks are rendering and finished videos wait to be
    downloaded (downloads are slowed by the proxy), so polls, downloads and submits all
    meet it. Only a generate that was on the wire at the very moment the server went down
    may be parked (its answer was lost); once re-queued, the provider's trace-id dedupe
    completes it without a second charge.
    """
    n = 40
    config = SimConfig(api_key=SIM_KEY, render_time_s=(0.05, 0.3), seed=3, dedupe_trace_id=True)
    slow_videos = Fault(media_latency_s=0.05)
    with (
        SimulatorThread(config) as sim,
        ProxyThread("127.0.0.1", sim.port, lambda kind, rng: slow_videos) as proxy,
    ):
        manifest = write_manifest(tmp_path, n, concurrency=8, download_concurrency=1)
        ledger = ledger_of(manifest)
        proc = start_run(manifest, proxy.base_url)
        wait_until(
            lambda: _backlog(ledger) >= 3 and sim.stats(with_tasks=False)["in_flight"] >= 4,
            timeout_s=30,
            what="renders in flight and videos waiting to be downloaded",
        )
        before_ids = {t["task_id"] for t in sim.stats()["tasks"]}
        proxy.stop_listening()  # connection refused, as from a host that is down
        sim.stop_server()
        stopped_at = time.time()
        time.sleep(OUTAGE_S)
        back_at = time.time()
        sim.start_server()
        proxy.start_listening()
        out, err = proc.communicate(timeout=120)
        said = explain(proc, out + err)

        counts = state_counts(ledger)
        assert counts.get("failed", 0) == 0 and counts.get("moderated", 0) == 0, said
        parked = {s for s, st in states(ledger).items() if st == "ambiguous"}
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
