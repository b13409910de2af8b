"""Helpers for the fault and chaos suites: pixrun as a subprocess against a simulator.

Everything here is real: manifests are YAML files, pixrun runs as ``python -m runner``,
the simulator listens on 127.0.0.1 in a background thread, and the checks read the
ledger with the ``sqlite3`` module and the simulator's books through its stats.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

# the ledger-reading primitives are the crash suite's; these helpers build on them
from runkit import integrity, query, states

#: the repository root: the subprocess imports this tree's ``runner``
REPO = Path(__file__).resolve().parents[1]
SIM_KEY = "sim-fault-key-0123456789"


def write_manifest(
    tmp: Path,
    n_shots: int,
    *,
    name: str = "faults",
    concurrency: int = 8,
    download_concurrency: int = 4,
    output_dir: Path | None = None,
    prompts: Mapping[int, str] | None = None,
    file_name: str = "batch.yaml",
) -> Path:
    """A text-shot manifest (360p, 5 s, v4.5) on a compressed clock."""
    prompts = prompts or {}
    doc: dict[str, Any] = {
        "version": 1,
        "name": name,
        "defaults": {"model": "v4.5", "quality": "360p", "duration": 5},
        "output": {"dir": str(output_dir or tmp / "out")},
        "run": {
            "concurrency": concurrency,
            "download_concurrency": download_concurrency,
            "requests_per_s": 500,
            "poll": {
                "initial_delay_s": 0.02,
                "min_interval_s": 0.01,
                "max_interval_s": 0.2,
                "timeout_s": 60,
            },
        },
        "shots": [
            {"id": f"s{i:04d}", "prompt": prompts.get(i, f"a calm lake at dawn, take {i}")}
            for i in range(n_shots)
        ],
    }
    path = tmp / file_name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def ledger_of(manifest: Path) -> Path:
    return manifest.with_name(manifest.stem + ".ledger.sqlite")


def pixrun_env(base_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PIXRUN_CRASH_AT", None)
    env.update(PIXRUN_BASE_URL=base_url, PIXRUN_API_KEY=SIM_KEY, **extra)
    return env


def run_args(manifest: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "runner",
        "run",
        str(manifest),
        "--yes",
        "--quiet",
        "--backoff-base-s",
        "0.01",
        "--provider-option",
        "read_timeout_s=1",
        *extra,
    ]


#: runs started in the background, so a failed test leaves none behind
_STARTED: list[subprocess.Popen[str]] = []


def start_run(manifest: Path, base_url: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        run_args(manifest, *extra),
        env=pixrun_env(base_url),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _STARTED.append(proc)
    return proc


def kill_leftovers() -> None:
    """SIGKILL any background run still going (after a test failed half-way)."""
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def run_pixrun(
    manifest: Path, base_url: str, *extra: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        run_args(manifest, *extra),
        env=pixrun_env(base_url),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def pixrun(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Any other pixrun command (retry, status, ...)."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=pixrun_env("http://127.0.0.1:9"),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def state_counts(ledger: Path) -> Counter[str]:
    return Counter(states(ledger).values())


def integrity_ok(ledger: Path) -> bool:
    return integrity(ledger) == "ok"


def shot_of_trace(ledger: Path) -> dict[str, str]:
    """Every Ai-trace-id the ledger ever recorded an intent for -> its shot."""
    return dict(query(ledger, "SELECT trace_id, shot_id FROM attempts"))


def sim_tasks_by_shot(ledger: Path, stats: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The simulator's tasks grouped by shot (through the ledger's trace ids).

    Fails if the simulator holds a task whose trace id the ledger never recorded: a
    generate request went out without a durable intent.
    """
    owner = shot_of_trace(ledger)
    by_shot: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in stats["tasks"]:
        shot = owner.get(task["trace_id"])
        assert shot is not None, f"task {task['task_id']} has no intent in the ledger: {task}"
        by_shot[shot].append(task)
    return dict(by_shot)


def kept_charges(tasks: Iterable[Mapping[str, Any]]) -> int:
    """Charges that were not refunded (a failed or moderated render is refunded)."""
    return sum(1 for t in tasks if t["charged"] and not t["refunded"])


def assert_outputs_match(ledger: Path, output_dir: Path, stats: Mapping[str, Any]) -> int:
    """Every done shot's file is byte-identical to what the simulator served for its task;
    no temporary file is left. Returns the number of done shots."""
    served = {t["task_id"]: t["sha256"] for t in stats["tasks"]}
    done = query(
        ledger, "SELECT shot_id, task_id, output_path, sha256 FROM shots WHERE state = 'done'"
    )
    for shot_id, task_id, relpath, sha in done:
        data = (output_dir / relpath).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha == served[task_id], shot_id
    leftovers = [p.name for p in output_dir.rglob(".*") if p.is_file()]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    return len(done)


def explain(proc: subprocess.CompletedProcess[str] | subprocess.Popen[str], out: str = "") -> str:
    """For assertion messages: what the run said."""
    if isinstance(proc, subprocess.CompletedProcess):
        return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return f"exit {proc.returncode}\n{out}"
