"""Run benchmarks: pixrun as a real subprocess against the simulator in this process.

1. Makespan: N shots (default 2,000) at concurrency 50, renders uniform in [1, 2] s.
   Reports makespan / ideal, where ideal = sum of the simulator's render times divided
   by the concurrency, and fetch calls per shot. Targets: <= 1.08 and <= 5.
2. Throughput: N shots (default 5,000) with zero render time and the default output
   (a sidecar beside every video). Reports shots per second and the runner's CPU
   milliseconds per shot (user + system of the pixrun process), the median of five
   runs, each in its own folder on a settled file system (see benchmarks/machine.py).
   Targets: >= 200 shots/s and <= 3 ms. The same without sidecars (three runs) is
   reported beside it, for comparison.

``BENCH_DIR`` chooses where the temporary folders go (default: the system's).

``python -m benchmarks.bench_run [--quick]``; ``--quick`` runs smaller batches.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.machine import byte_compile, settle_filesystem
from runner.ledger import default_ledger_path
from runner.sim import SimConfig, SimulatorThread

KEY = "bench-key"
#: polling for zero render time, where the runner, not the clock, is what is measured
FAST_POLL = {
    "initial_delay_s": 0.001,
    "min_interval_s": 0.001,
    "max_interval_s": 0.5,
    "timeout_s": 120,
}


def write_manifest(
    folder: Path,
    shots: int,
    *,
    concurrency: int,
    poll: dict[str, float],
    download_concurrency: int = 16,
    requests_per_s: float = 5000,
    name: str | None = None,
    prompt: str = "benchmark shot {i}",
    sidecar: bool = True,
) -> Path:
    """``folder/bench.yaml``: one explicit text shot per entry (``prompt`` formatted with
    ``i``), as a script generating a big batch would write it."""
    manifest = {
        "version": 1,
        "name": name or f"bench {shots}",
        "defaults": {"model": "v4.5", "quality": "360p", "duration": 5},
        "output": {"dir": "out", "filename": "{shot_id}.mp4", "sidecar": sidecar},
        "run": {
            "concurrency": concurrency,
            "download_concurrency": download_concurrency,
            "requests_per_s": requests_per_s,
            "max_attempts": 3,
            "poll": poll,
        },
        "shots": [{"id": f"shot-{i:06d}", "prompt": prompt.format(i=i)} for i in range(shots)],
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def measure_pixrun(base_url: str, *args: str) -> dict[str, float]:
    """Run ``pixrun <args>`` to completion: wall time, and CPU and peak RSS of that
    process alone (``os.wait4``: RUSAGE_CHILDREN would mix in earlier children's peaks)."""
    env = dict(os.environ, PIXRUN_BASE_URL=base_url, PIXRUN_API_KEY=KEY)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # read the pipes in threads so a chatty child cannot block; reap with wait4
    outputs: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        outputs[name] = stream.read()

    readers = [
        threading.Thread(target=drain, args=("out", proc.stdout)),
        threading.Thread(target=drain, args=("err", proc.stderr)),
    ]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - started
    for reader in readers:
        reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pixrun {args[0]} exited {proc.returncode}:\n{outputs.get('out')}\n"
            f"{outputs.get('err')}"
        )
    return {
        "wall_s": wall_s,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def run_pixrun(manifest: Path, base_url: str) -> dict[str, float]:
    """``pixrun run`` of the whole manifest, measured as :func:`measure_pixrun` does."""
    return measure_pixrun(base_url, "run", str(manifest), "--yes", "--quiet")


def batch_span_s(ledger: Path) -> float:
    """The batch's makespan, from its ledger: first generate request sent -> last file
    recorded done."""
    con = sqlite3.connect(ledger)
    try:
        first_sent, last_done = con.execute(
            "SELECT (SELECT MIN(sent_at) FROM attempts), (SELECT MAX(done_at) FROM shots)"
        ).fetchone()
    finally:
        con.close()
    return float(last_done - first_sent)


def bench_dir() -> str | None:
    """Where the temporary folders go: ``BENCH_DIR``, else the system's default."""
    return os.environ.get("BENCH_DIR") or None


def bench_makespan(shots: int, concurrency: int = 50) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(dir=bench_dir()) as tmp,
        SimulatorThread(SimConfig(api_key=KEY, render_time_s=(1.0, 2.0), seed=3)) as sim,
    ):
        manifest = write_manifest(
            Path(tmp),
            shots,
            concurrency=concurrency,
            poll={
                "initial_delay_s": 1.0,
                "min_interval_s": 0.05,
                "max_interval_s": 1.0,
                "timeout_s": 120,
            },
        )
        measured = run_pixrun(manifest, sim.base_url)
        stats = sim.stats()
        tasks = stats["tasks"]
        ideal_s = sum(t["render_s"] for t in tasks) / concurrency
        fetches = sum(t["fetches"] for t in tasks)
        makespan_s = batch_span_s(default_ledger_path(manifest))
        return {
            "shots": shots,
            "concurrency": concurrency,
            "process_wall_s": round(measured["wall_s"], 2),
            "makespan_s": round(makespan_s, 2),
            "ideal_s": round(ideal_s, 2),
            "makespan_over_ideal": round(makespan_s / ideal_s, 3),
            "process_wall_over_ideal": round(measured["wall_s"] / ideal_s, 3),
            "fetch_calls_per_shot": round(fetches / shots, 2),
            "accepted": stats["accepted_tasks"],
        }


def bench_throughput(shots: int, runs: int = 5, *, sidecar: bool = True) -> dict[str, Any]:
    """``runs`` runs, each in its own folder; the folders are removed only after the
    last run, so no run follows a mass deletion of the previous one's files (see
    benchmarks/machine.py)."""
    with tempfile.TemporaryDirectory(dir=bench_dir()) as parent:
        measured = [
            _throughput_once(shots, Path(parent) / f"run-{n}", sidecar=sidecar) for n in range(runs)
        ]
    cpu = [m["runner_cpu_ms_per_shot"] for m in measured]
    rate = [m["shots_per_s"] for m in measured]
    return {
        "shots": shots,
        "sidecars": sidecar,
        "runs": runs,
        "shots_per_s": statistics.median(rate),
        "runner_cpu_ms_per_shot": statistics.median(cpu),
        "runner_user_ms_per_shot": statistics.median(m["user_ms_per_shot"] for m in measured),
        "runner_sys_ms_per_shot": statistics.median(m["sys_ms_per_shot"] for m in measured),
        "runner_cpu_ms_per_shot_each": cpu,
        "shots_per_s_each": rate,
        "runner_peak_rss_mb": max(m["runner_peak_rss_mb"] for m in measured),
        "file_create_ms": [m["file_system"]["create_ms_settled"] for m in measured],
        "accepted": measured[-1]["accepted"],
    }


def _throughput_once(shots: int, folder: Path, *, sidecar: bool) -> dict[str, Any]:
    folder.mkdir()
    with SimulatorThread(SimConfig(api_key=KEY, render_time_s=(0.0, 0.0), seed=3)) as sim:
        manifest = write_manifest(
            folder,
            shots,
            concurrency=200,
            download_concurrency=32,
            poll=FAST_POLL,
            sidecar=sidecar,
        )
        file_system = settle_filesystem(folder / "out")
        measured = run_pixrun(manifest, sim.base_url)
        stats = sim.stats(with_tasks=False)
        return {
            "shots_per_s": round(shots / measured["wall_s"], 1),
            "runner_cpu_ms_per_shot": round(1000 * measured["cpu_s"] / shots, 3),
            "user_ms_per_shot": round(1000 * measured["user_s"] / shots, 3),
            "sys_ms_per_shot": round(1000 * measured["sys_s"] / shots, 3),
            "runner_peak_rss_mb": round(measured["peak_rss_mb"], 1),
            "file_system": file_system,
            "accepted": stats["accepted_tasks"],
        }


def main(quick: bool = False) -> dict[str, Any]:
    byte_compile()
    makespan = bench_makespan(400 if quick else 2000)
    shots = 1000 if quick else 5000
    throughput = bench_throughput(shots)
    bare = bench_throughput(shots, runs=3, sidecar=False)
    print("run benchmark: makespan (renders uniform in [1, 2] s)")
    for key, value in makespan.items():
        print(f"  {key:28} {value}")
    print("  targets: makespan_over_ideal <= 1.08, fetch_calls_per_shot <= 5")
    print("run benchmark: throughput (zero render time; default output, with sidecars)")
    for key, value in throughput.items():
        print(f"  {key:28} {value}")
    print("  targets: shots_per_s >= 200, runner_cpu_ms_per_shot <= 3")
    print("run benchmark: throughput without sidecars (output.sidecar: false), for comparison")
    for key, value in bare.items():
        print(f"  {key:28} {value}")
    return {"makespan": makespan, "throughput": throughput, "throughput_no_sidecars": bare}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
