"""Run benchmarks: pixrun as a real subprocess against the simulator in this process.

1. Makespan: N shots (default 2,000) at concurrency 50, renders uniform in [1, 2] s,
   three ways side by side: polling only, provider callbacks, and callbacks of which
   20% are lost. Reports makespan / ideal, where ideal = sum of the simulator's render
   times divided by the concurrency, and fetch calls per shot; beside it, makespan /
   the zero-overhead placement of the same renders (what pixrun itself adds). Targets: polling only
   <= 1.08 and <= 5; callbacks <= 1.02 and <= 1.5; 20% lost <= 1.05.
2. Throughput: N shots (default 5,000) with zero render time and the default output
   (a sidecar beside every video). Reports shots per second and the runner's CPU
   milliseconds per shot (user + system of the pixrun process), the median of five
   runs, each in its own folder on a settled file system (see benchmarks/machine.py).
   Targets: >= 200 shots/s and <= 3 ms. Five runs without sidecars and five with
   ``--pin-cpu`` (threads kept on one CPU instead of placed by the OS, the default),
   taken in turn with those, are reported beside them, with the paired differences.

Beside each throughput run it reports the CPU speed probe of benchmarks/machine.py
(a fixed workload timed just before and after the run): this VM's CPU speed drifts by
more than the differences measured here.

``BENCH_DIR`` chooses where the temporary folders go (default: the system's).

``python -m benchmarks.bench_run [--quick]``; ``--quick`` runs smaller batches.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.machine import bench_dir, byte_compile, cpu_speed_probe_ms, settle_filesystem
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


#: Runs the measured command as its only child; writes that child's wall time and rusage
#: as JSON to argv[1]. On Linux a process's ru_maxrss keeps the peak of the memory it was
#: spawned from (fork/vfork + exec): spawned from the benchmark (the simulator's tasks,
#: earlier benchmarks' data) pixrun would report the benchmark's peak, not its own. From
#: this small launcher, the floor is the launcher's ~10 MB.
_LAUNCHER = """
import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"wall_s": time.perf_counter() - started,
               "exit_code": os.waitstatus_to_exitcode(status),
               "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
               "peak_rss_mb": usage.ru_maxrss / 1024}, out)
"""


def measure_pixrun(base_url: str, *args: str) -> dict[str, float]:
    """Run ``pixrun <args>`` to completion: wall time, and CPU and peak RSS of that
    process alone (see :data:`_LAUNCHER`)."""
    env = dict(os.environ, PIXRUN_BASE_URL=base_url, PIXRUN_API_KEY=KEY)
    with tempfile.NamedTemporaryFile(prefix="pixrun-usage-", suffix=".json") as usage_file:
        pixrun = [sys.executable, "-m", "runner", *args]
        completed = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, usage_file.name, *pixrun],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        measured = json.loads(Path(usage_file.name).read_text() or "{}")
    if completed.returncode != 0 or measured.get("exit_code") != 0:
        raise RuntimeError(
            f"pixrun {args[0]} exited {measured.get('exit_code')}:\n{completed.stdout}\n"
            f"{completed.stderr}"
        )
    measured["cpu_s"] = measured["user_s"] + measured["sys_s"]
    return measured


def run_pixrun(manifest: Path, base_url: str, *extra: str) -> dict[str, float]:
    """``pixrun run`` of the whole manifest, measured as :func:`measure_pixrun` does."""
    return measure_pixrun(base_url, "run", str(manifest), "--yes", "--quiet", *extra)


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


#: the makespan benchmark's ways of learning that a render ended: simulator knobs and
#: pixrun flags (a receiver on a free port, reached at its own address)
MAKESPAN_MODES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "polling_only": ({}, ()),
    "callbacks": ({"callback": True}, ("--callback-listen", "127.0.0.1:0")),
    "callbacks_20pct_lost": (
        {"callback": True, "callback_lost_share": 0.2},
        ("--callback-listen", "127.0.0.1:0"),
    ),
}
#: makespan / ideal and fetch calls per shot each mode must stay within
MAKESPAN_TARGETS = {
    "polling_only": (1.08, 5.0),
    "callbacks": (1.02, 1.5),
    "callbacks_20pct_lost": (1.05, None),
}


def placement_floor_s(tasks: list[dict[str, Any]], concurrency: int) -> float:
    """The makespan of these very renders, in the order the provider accepted them, on
    ``concurrency`` slots with zero overhead: each starts the instant a slot frees.

    No runner that learns a render's length only by running it can beat this; the gap
    between it and ``ideal`` (sum / concurrency) is the last wave's slots ending at
    different times, which no request, commit or download of pixrun's causes.
    """
    slots = [0.0] * concurrency
    for task in sorted(tasks, key=lambda t: t["created_s"]):
        heapq.heapreplace(slots, slots[0] + task["render_s"])
    return max(slots)


def bench_makespan(shots: int, concurrency: int = 50, mode: str = "polling_only") -> dict[str, Any]:
    knobs, flags = MAKESPAN_MODES[mode]
    with (
        tempfile.TemporaryDirectory(dir=bench_dir()) as tmp,
        SimulatorThread(SimConfig(api_key=KEY, render_time_s=(1.0, 2.0), seed=3, **knobs)) as sim,
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
        measured = run_pixrun(manifest, sim.base_url, *flags)
        stats = sim.stats()
        tasks = stats["tasks"]
        ideal_s = sum(t["render_s"] for t in tasks) / concurrency
        floor_s = placement_floor_s(tasks, concurrency)
        fetches = sum(t["fetches"] for t in tasks)
        makespan_s = batch_span_s(default_ledger_path(manifest))
        return {
            "mode": mode,
            "shots": shots,
            "concurrency": concurrency,
            "process_wall_s": round(measured["wall_s"], 2),
            "makespan_s": round(makespan_s, 2),
            "ideal_s": round(ideal_s, 2),
            "makespan_over_ideal": round(makespan_s / ideal_s, 3),
            "process_wall_over_ideal": round(measured["wall_s"] / ideal_s, 3),
            "placement_floor_over_ideal": round(floor_s / ideal_s, 4),
            "makespan_over_floor": round(makespan_s / floor_s, 3),
            "fetch_calls_per_shot": round(fetches / shots, 2),
            "runner_cpu_ms_per_shot": round(1000 * measured["cpu_s"] / shots, 3),
            "callbacks_sent": stats["calls"].get("callback", 0),
            "accepted": stats["accepted_tasks"],
        }


def bench_makespans(shots: int, modes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The makespan benchmark once per mode, in one run, for a side-by-side table."""
    return {mode: bench_makespan(shots, mode=mode) for mode in modes or list(MAKESPAN_MODES)}


def print_makespans(results: dict[str, dict[str, Any]]) -> None:
    modes = list(results)
    print("run benchmark: makespan (renders uniform in [1, 2] s), side by side")
    print(f"  {'':28}" + "".join(f"{m:>22}" for m in modes))
    for key in next(iter(results.values())):
        if key == "mode":
            continue
        print(f"  {key:28}" + "".join(f"{results[m][key]!s:>22}" for m in modes))
    targets = []
    for mode in modes:
        ratio, fetches = MAKESPAN_TARGETS[mode]
        text = f"{mode}: makespan_over_ideal <= {ratio}"
        targets.append(text + (f", fetch_calls_per_shot <= {fetches}" if fetches else ""))
    print("  targets: " + "; ".join(targets))


def bench_throughput(shots: int, rounds: int = 5) -> dict[str, Any]:
    """``rounds`` rounds of three runs: the default (sidecars on, threads placed by the
    OS: unpinned), without sidecars, and with ``--pin-cpu``, taken in turn so that all three
    see the same machine; each run in its own folder, all removed only after the last
    run, so no run follows a mass deletion of another's files (see
    benchmarks/machine.py)."""
    variants = {
        "default_output": {"sidecar": True, "pin_cpu": False},
        "no_sidecars": {"sidecar": False, "pin_cpu": False},
        "pin_cpu": {"sidecar": True, "pin_cpu": True},
    }
    series: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(dir=bench_dir()) as parent:
        for n in range(rounds):
            for name, settings in variants.items():
                folder = Path(parent) / f"run-{n}-{name}"
                series[name].append(_throughput_once(shots, folder, **settings))
    result: dict[str, Any] = {name: _summary(shots, runs) for name, runs in series.items()}
    # paired by round: what sidecars cost, and what the default (unpinned) costs over
    # --pin-cpu (see runner/placement.py)
    for key, costly, cheap in (
        ("sidecar_cost", "default_output", "no_sidecars"),
        ("unpinned_cost", "default_output", "pin_cpu"),
    ):
        paired = [
            a["cpu_ms"] - b["cpu_ms"] for a, b in zip(series[costly], series[cheap], strict=True)
        ]
        result[f"{key}_ms_per_shot"] = round(statistics.median(paired), 3)
        result[f"{key}_each"] = [round(d, 3) for d in paired]
    return result


def _summary(shots: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    middle = sorted(runs, key=lambda m: m["cpu_ms"])[len(runs) // 2]
    return {
        "shots": shots,
        "runs": len(runs),
        "shots_per_s": statistics.median(m["shots_per_s"] for m in runs),
        "runner_cpu_ms_per_shot": middle["cpu_ms"],
        # the median run's own split (medians taken apart would not add up)
        "runner_user_ms_per_shot": middle["user_ms"],
        "runner_sys_ms_per_shot": middle["sys_ms"],
        "runner_cpu_ms_per_shot_each": [m["cpu_ms"] for m in runs],
        "shots_per_s_each": [m["shots_per_s"] for m in runs],
        "runner_peak_rss_mb": max(m["peak_rss_mb"] for m in runs),
        # the machine's speed around each run (see benchmarks/machine.py): lower is faster
        "cpu_probe_ms_each": [m["cpu_probe_ms"] for m in runs],
        # CPU per shot in units of the probe's CPU: moves with the runner, hardly with the
        # machine's speed, so sessions can be compared (the target is in milliseconds)
        "runner_cpu_per_probe": round(
            statistics.median(m["cpu_ms"] / m["cpu_probe_ms"] for m in runs), 4
        ),
        "file_system": [m["file_system"] for m in runs],
    }


def _throughput_once(shots: int, folder: Path, *, sidecar: bool, pin_cpu: bool) -> dict[str, Any]:
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
        probe_before_ms = cpu_speed_probe_ms()
        measured = run_pixrun(manifest, sim.base_url, *(["--pin-cpu"] if pin_cpu else []))
        probe_after_ms = cpu_speed_probe_ms()
        accepted = sim.stats(with_tasks=False)["accepted_tasks"]
    if accepted != shots:
        raise RuntimeError(f"the simulator accepted {accepted} tasks for {shots} shots")
    return {
        "shots_per_s": round(shots / measured["wall_s"], 1),
        "cpu_ms": round(1000 * measured["cpu_s"] / shots, 3),
        "user_ms": round(1000 * measured["user_s"] / shots, 3),
        "sys_ms": round(1000 * measured["sys_s"] / shots, 3),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "file_system": file_system,
        "cpu_probe_ms": round((probe_before_ms + probe_after_ms) / 2, 1),
    }


def main(quick: bool = False, makespan_only: bool = False) -> dict[str, Any]:
    byte_compile()
    makespan = bench_makespans(400 if quick else 2000)
    print_makespans(makespan)
    if makespan_only:
        return {"makespan": makespan}
    throughput = bench_throughput(1000 if quick else 5000)
    for name, title in (
        ("default_output", "throughput (zero render time; default (unpinned), with sidecars)"),
        ("no_sidecars", "throughput without sidecars (output.sidecar: false), for comparison"),
        ("pin_cpu", "throughput with --pin-cpu (threads kept on one CPU), for comparison"),
    ):
        print(f"run benchmark: {title}")
        for key, value in throughput[name].items():
            print(f"  {key:28} {value}")
    print("  targets (default output): shots_per_s >= 200, runner_cpu_ms_per_shot <= 3")
    print(
        f"  sidecar cost, median of paired runs: {throughput['sidecar_cost_ms_per_shot']} ms "
        f"per shot {throughput['sidecar_cost_each']}"
    )
    print(
        "  default (unpinned) cost over --pin-cpu, median of paired runs: "
        f"{throughput['unpinned_cost_ms_per_shot']} ms per shot {throughput['unpinned_cost_each']}"
    )
    return {"makespan": makespan, "throughput": throughput}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--makespan-only", action="store_true", help="only the makespan benchmark's three modes"
    )
    args = parser.parse_args()
    main(quick=args.quick, makespan_only=args.makespan_only)
