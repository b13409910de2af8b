"""Scale: a 100,000-shot batch, resuming it, and reading its ledger.

pixrun runs as a real subprocess (``python -m runner``) against the simulator, which
runs on its own loop in a thread of this process (zero render time, so the runner is
the bottleneck). Measured:

1. The whole batch at high concurrency: wall time, shots/s, and the runner's peak RSS
   (``wait4`` rusage of the child). Target: peak RSS < 500 MB.
2. Resume: the same ledger with all but 10 shots done. Time from ``pixrun run``'s
   process start to the first generate request the simulator receives (its
   generate_hook timestamps it), against the wall time of ``pixrun plan`` on the same
   manifest and ledger. Target: <= 1.5x.
3. ``pixrun status`` on that ledger: process wall time, and the in-process query time.
   Target: < 1 s.
4. The ledger's size per shot (bytes / shot), after the run closed it.

``BENCH_DIR`` chooses where the temporary folder goes (default: the system's).

``python -m benchmarks.bench_scale [--quick] [--shots N] [--concurrency N] [--repeat N]``;
``main()`` returns the numbers as a dict (``--quick``: 10,000 shots).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.bench_run import (
    FAST_POLL,
    KEY,
    batch_span_s,
    measure_pixrun,
    run_pixrun,
    write_manifest,
)
from benchmarks.machine import bench_dir, byte_compile, settle_filesystem
from runner.ledger import default_ledger_path, open_ledger
from runner.ledger.queries import status_summary
from runner.sim import SimConfig, SimulatorThread

TARGET_RSS_MB = 500.0
TARGET_RESUME_RATIO = 1.5
TARGET_STATUS_S = 1.0
#: shots left to do in the resume measurement
RESUME_LEFT = 10


def write_scale_manifest(folder: Path, shots: int, concurrency: int) -> Path:
    return write_manifest(
        folder,
        shots,
        concurrency=concurrency,
        download_concurrency=32,
        requests_per_s=100_000,
        poll={**FAST_POLL, "timeout_s": 600},
        name="scale",
        prompt="scale shot {i}: a calm lake at dawn",
    )


def bench_full_run(
    folder: Path, sim: SimulatorThread, shots: int, concurrency: int
) -> dict[str, Any]:
    manifest = write_scale_manifest(folder, shots, concurrency)
    file_system = settle_filesystem(folder / "out")
    measured = run_pixrun(manifest, sim.base_url)
    ledger = default_ledger_path(manifest)
    con = sqlite3.connect(ledger)
    try:
        (done,) = con.execute("SELECT COUNT(*) FROM shots WHERE state = 'done'").fetchone()
        (attempts,) = con.execute("SELECT COUNT(*) FROM attempts").fetchone()
    finally:
        con.close()
    if done != shots:
        raise RuntimeError(f"only {done} of {shots} shots done")
    batch_s = batch_span_s(ledger)
    stats = sim.stats(with_tasks=False)
    ledger_bytes = ledger.stat().st_size
    wal = ledger.with_name(ledger.name + "-wal")
    return {
        "shots": shots,
        "concurrency": concurrency,
        "wall_s": round(measured["wall_s"], 1),
        "shots_per_s": round(shots / measured["wall_s"], 1),
        "batch_s": round(batch_s, 1),
        "batch_shots_per_s": round(shots / batch_s, 1),
        "runner_cpu_ms_per_shot": round(1000 * measured["cpu_s"] / shots, 3),
        "runner_peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "file_system": file_system,
        "accepted_tasks": stats["accepted_tasks"],
        "attempt_rows": attempts,
        "ledger_bytes": ledger_bytes,
        "ledger_bytes_per_shot": round(ledger_bytes / shots, 1),
        "wal_left_bytes": wal.stat().st_size if wal.exists() else 0,
        "manifest": manifest,
        "ledger": ledger,
    }


class FirstGenerate:
    """A generate hook that remembers when the first request of a round arrived."""

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.count = 0

    def reset(self) -> None:
        self.first_at = None
        self.count = 0

    async def __call__(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        self.count += 1
        if self.first_at is None:
            self.first_at = time.perf_counter()


def bench_resume(
    folder: Path, sim: SimulatorThread, hook: FirstGenerate, full: dict[str, Any], repeat: int
) -> dict[str, Any]:
    """The finished ledger, with the manifest grown by 10 shots: all but 10 are done."""
    shots = full["shots"]
    manifest = write_scale_manifest(folder, shots + RESUME_LEFT, full["concurrency"])
    ledger: Path = full["ledger"]
    pristine = ledger.with_name("pristine.sqlite")
    shutil.copyfile(ledger, pristine)
    out = folder / "out"
    new_files = [out / f"shot-{i:06d}.mp4" for i in range(shots, shots + RESUME_LEFT)]

    plan_s = []
    for _ in range(repeat):
        plan_s.append(measure_pixrun(sim.base_url, "plan", str(manifest))["wall_s"])

    dispatch_s = []
    run_wall_s = []
    run_rss = []
    for _ in range(repeat):
        shutil.copyfile(pristine, ledger)
        for path in new_files:
            path.unlink(missing_ok=True)
        hook.reset()
        started = time.perf_counter()
        measured = run_pixrun(manifest, sim.base_url)
        if hook.first_at is None or hook.count != RESUME_LEFT:
            raise RuntimeError(f"expected {RESUME_LEFT} generates, saw {hook.count}")
        dispatch_s.append(hook.first_at - started)
        run_wall_s.append(measured["wall_s"])
        run_rss.append(measured["peak_rss_mb"])

    status_s = []
    for _ in range(repeat):
        status_s.append(measure_pixrun(sim.base_url, "status", str(manifest))["wall_s"])
    query_s = asyncio.run(_status_query_s(ledger, repeat))
    plan = statistics.median(plan_s)
    dispatch = statistics.median(dispatch_s)
    return {
        "shots": shots + RESUME_LEFT,
        "left_to_do": RESUME_LEFT,
        "plan_wall_s": round(plan, 2),
        "run_first_generate_s": round(dispatch, 2),
        "resume_over_plan": round(dispatch / plan, 2),
        "resume_run_wall_s": round(statistics.median(run_wall_s), 2),
        "resume_run_peak_rss_mb": round(max(run_rss), 1),
        "status_wall_s": round(statistics.median(status_s), 2),
        "status_wall_max_s": round(max(status_s), 2),
        "status_query_s": round(query_s, 3),
    }


async def _status_query_s(ledger: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        async with await open_ledger(ledger, writer=False) as opened:
            await status_summary(opened)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(
    quick: bool = False, shots: int | None = None, concurrency: int = 300, repeat: int = 3
) -> dict[str, Any]:
    shots = shots or (10_000 if quick else 100_000)
    byte_compile()
    hook = FirstGenerate()
    config = SimConfig(api_key=KEY, render_time_s=(0.0, 0.0), seed=5, generate_hook=hook)
    with (
        tempfile.TemporaryDirectory(prefix="pixrun-scale-", dir=bench_dir()) as tmp,
        SimulatorThread(config) as sim,
    ):
        folder = Path(tmp)
        full = bench_full_run(folder, sim, shots, concurrency)
        resume = bench_resume(folder, sim, hook, full, repeat)
    for key in ("manifest", "ledger"):
        full.pop(key)
    result: dict[str, Any] = {"run": full, "resume": resume}
    result["ok"] = {
        "peak_rss": full["runner_peak_rss_mb"] < TARGET_RSS_MB,
        "resume_vs_plan": resume["resume_over_plan"] <= TARGET_RESUME_RATIO,
        "status": resume["status_wall_max_s"] < TARGET_STATUS_S,
    }
    _print(result)
    return result


def _print(result: dict[str, Any]) -> None:
    run, resume, ok = result["run"], result["resume"], result["ok"]

    def verdict(flag: bool) -> str:
        return "ok" if flag else "MISSED"

    rows = [
        ("shots", f"{run['shots']:,}", ""),
        ("concurrency", str(run["concurrency"]), ""),
        ("run wall time", f"{run['wall_s']:.1f} s", ""),
        ("shots/s (process wall)", f"{run['shots_per_s']:.1f}", ""),
        ("shots/s (first send..last done)", f"{run['batch_shots_per_s']:.1f}", ""),
        ("runner CPU per shot", f"{run['runner_cpu_ms_per_shot']:.2f} ms", ""),
        (
            "runner peak RSS",
            f"{run['runner_peak_rss_mb']:.0f} MB",
            f"< {TARGET_RSS_MB:.0f} MB: {verdict(ok['peak_rss'])}",
        ),
        ("ledger size per shot", f"{run['ledger_bytes_per_shot']:.0f} B", ""),
        ("plan wall time", f"{resume['plan_wall_s']:.2f} s", ""),
        ("resume: start -> first generate", f"{resume['run_first_generate_s']:.2f} s", ""),
        (
            "resume / plan",
            f"{resume['resume_over_plan']:.2f}",
            f"<= {TARGET_RESUME_RATIO}: {verdict(ok['resume_vs_plan'])}",
        ),
        ("resume run peak RSS", f"{resume['resume_run_peak_rss_mb']:.0f} MB", ""),
        (
            "status (process, max)",
            f"{resume['status_wall_max_s']:.2f} s",
            f"< {TARGET_STATUS_S:.0f} s: {verdict(ok['status'])}",
        ),
        ("status query (in process)", f"{resume['status_query_s'] * 1000:.0f} ms", ""),
    ]
    print("scale benchmark")
    for name, value, target in rows:
        print(f"  {name:<34}{value:>14}  {target}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 shots")
    parser.add_argument("--shots", type=int)
    parser.add_argument("--concurrency", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    outcome = main(
        quick=args.quick, shots=args.shots, concurrency=args.concurrency, repeat=args.repeat
    )
    sys.exit(0 if all(outcome["ok"].values()) else 1)
