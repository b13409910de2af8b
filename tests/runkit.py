"""Run ``pixrun`` as a real subprocess against a simulator thread, and read the evidence.

The crash, CLI, fault and chaos tests use it. The simulator lives in the test process
(:class:`~runner.sim.SimulatorThread`), outside the runner. It keeps its books across
runner crashes, so they prove what reached the provider. The ledger is read through
separate read-only SQLite connections, as another process would read it.

Shots are named ``s00``, ``s01``, ... and each prompt names its shot, so a simulator
task can be traced back to its shot without going through pixrun's own code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from runner.sim import SimulatorThread

#: the ``sim_thread`` fixture: ``sim = sim_thread(**knobs)``
SimThread = Callable[..., SimulatorThread]

REPO = Path(__file__).resolve().parents[1]
#: the key the simulator accepts; distinctive, so a leak into a file or log is visible
KEY = "sk-runkit-5f3a9c1e7b2d4086"
#: renders of 20-100 ms
FAST_RENDER_S = (0.02, 0.1)
PRICE_UPTC = 100_000  # 360p, 5 s, v4.5: 0.1 PTC
_SCENE = "a calm lake at dawn"
_SHOT_IN_PROMPT = re.compile(r"shot (s\d+)$")


# -- the batch -------------------------------------------------------------------------


@dataclass
class Batch:
    """A manifest written into a test folder, with where its ledger and files go."""

    dir: Path
    manifest: Path
    ids: list[str]
    out: Path
    ledger: Path


def shot_ids(n_shots: int) -> list[str]:
    return [f"s{i:02d}" for i in range(n_shots)]


def prompt_of(shot_id: str, scene: str = _SCENE) -> str:
    return f"{scene}, shot {shot_id}"


def shot_of(prompt: str) -> str:
    match = _SHOT_IN_PROMPT.search(prompt)
    assert match, f"a simulator task with a prompt no test wrote: {prompt!r}"
    return match.group(1)


def write_manifest(
    folder: Path,
    n_shots: int,
    *,
    concurrency: int = 4,
    download_concurrency: int = 4,
    requests_per_s: float = 500,
    budget_ptc: float | None = None,
    max_attempts: int = 3,
    timeout_s: float = 60,
    name: str = "batch",
    output_dir: Path | None = None,
    ledger: Path | None = None,
    scenes: Mapping[str, str] | None = None,
) -> Batch:
    """A text-only manifest ``NAME.yaml`` of ``n_shots`` cheap shots on a compressed
    polling clock. Outputs go to ``output_dir`` (default: ``out`` next to the manifest);
    ``ledger`` is where the test points ``--ledger`` (default: pixrun's, next to the
    manifest); ``scenes`` replaces the scene of some shots' prompts (each still names
    its shot)."""
    ids = shot_ids(n_shots)
    scenes = scenes or {}
    out = output_dir or folder / "out"
    run: dict[str, Any] = {
        "concurrency": concurrency,
        "download_concurrency": download_concurrency,
        "requests_per_s": requests_per_s,
        "max_attempts": max_attempts,
        "poll": {
            "initial_delay_s": 0.02,
            "min_interval_s": 0.01,
            "max_interval_s": 0.2,
            "timeout_s": timeout_s,
        },
    }
    if budget_ptc is not None:
        run["budget_ptc"] = budget_ptc
    doc = {
        "version": 1,
        "name": name,
        "defaults": {"model": "v4.5", "quality": "360p", "duration": 5},
        "output": {"dir": str(output_dir) if output_dir else "out"},
        "run": run,
        "shots": [{"id": sid, "prompt": prompt_of(sid, scenes.get(sid, _SCENE))} for sid in ids],
    }
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    ledger = ledger or manifest.with_name(manifest.stem + ".ledger.sqlite")
    return Batch(dir=folder, manifest=manifest, ids=ids, out=out, ledger=ledger)


# -- running pixrun --------------------------------------------------------------------


def env_for(
    base_url: str | None,
    *,
    key: str | None = KEY,
    crash_at: str | None = None,
) -> dict[str, str]:
    """The runner's environment: this tree's code, the simulator, the key, a crash point."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXRUN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    # never the user's own settings file (an empty value switches it off)
    env["PIXRUN_CONFIG"] = ""
    if base_url is not None:
        env["PIXRUN_BASE_URL"] = base_url
    if key is not None:
        env["PIXRUN_API_KEY"] = key
    if crash_at is not None:
        env["PIXRUN_CRASH_AT"] = crash_at
    return env


def run_args(batch: Batch, *extra: str, output: str = "--quiet", yes: bool = True) -> list[str]:
    """``pixrun run`` on a fast clock: tiny back-off, short read timeout."""
    args = ["run", str(batch.manifest), output] if output else ["run", str(batch.manifest)]
    if yes:
        args.append("--yes")
    args += ["--backoff-base-s", "0.01", "--provider-option", "read_timeout_s=1"]
    return args + list(extra)


def pixrun(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path,
    timeout_s: float = 120,
    entry: Sequence[str] = ("-m", "runner"),
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m runner ARGS`` (or ``python ENTRY ARGS``) to the end; stdin is
    never a terminal."""
    return subprocess.run(
        [sys.executable, *entry, *args],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def run_pixrun(
    batch: Batch, base_url: str, *extra: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``pixrun run`` on the batch to the end (:func:`run_args`, the key, ``base_url``);
    with ``check``, the run must finish the batch (exit 0), and a failure shows its output."""
    result = pixrun(run_args(batch, *extra), env_for(base_url), cwd=batch.dir)
    if check:
        assert result.returncode == 0, explain(result)
    return result


@dataclass
class Running:
    """A ``pixrun`` started in the background; its output goes to files (no pipe fills)."""

    proc: subprocess.Popen[str]
    stdout_path: Path
    stderr_path: Path
    _files: list[TextIO] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.returncode is not None:
                for fh in self._files:
                    fh.close()

    def kill(self) -> int:
        """SIGKILL (this process only, by its pid) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait(30)

    def output(self) -> tuple[str, str]:
        return (
            self.stdout_path.read_text(encoding="utf-8", errors="replace"),
            self.stderr_path.read_text(encoding="utf-8", errors="replace"),
        )


#: runs started in the background, so a failed test leaves none behind
_STARTED: list[Running] = []


def start(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path,
    tag: str,
    stdin: int | None = subprocess.DEVNULL,
) -> Running:
    logs = cwd / "logs"
    logs.mkdir(exist_ok=True)
    out_path, err_path = logs / f"{tag}.out", logs / f"{tag}.err"
    out, err = out_path.open("w", encoding="utf-8"), err_path.open("w", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        env=dict(env),
        cwd=cwd,
        stdin=stdin,
        stdout=out,
        stderr=err,
        text=True,
    )
    running = Running(proc, out_path, err_path, [out, err])
    _STARTED.append(running)
    return running


def kill_leftovers() -> None:
    """SIGKILL any background run still going (after a test failed half-way)."""
    while _STARTED:
        _STARTED.pop().kill()


def explain(result: subprocess.CompletedProcess[str] | Running) -> str:
    """For assertion messages: how the run ended and what it said."""
    if isinstance(result, Running):
        out, err = result.output()
        return f"exit {result.proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def wait_until(
    condition: Callable[[], object], *, timeout_s: float = 30, what: str = "condition"
) -> None:
    """Poll ``condition`` every 10 ms; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def wait_for_run(running: Running, ledger: Path, runs_before: int) -> None:
    """Until the run has taken the ledger (or ended): its start-up is behind it."""
    wait_until(
        lambda: run_count(ledger) > runs_before or running.proc.poll() is not None,
        what="the run to take the ledger",
    )


def _holds(condition: Callable[[], object]) -> bool:
    try:
        return bool(condition())
    except sqlite3.Error:  # the ledger is still being created
        return False


# -- reading the ledger (read-only, as another process) ---------------------------------


def query(ledger: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def integrity(ledger: Path) -> str:
    ((result,),) = query(ledger, "PRAGMA integrity_check")
    return str(result)


def states(ledger: Path) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in query(ledger, "SELECT shot_id, state FROM shots")}


def state_counts(ledger: Path) -> Counter[str]:
    return Counter(states(ledger).values())


def in_state(ledger: Path, state: str) -> set[str]:
    return {r[0] for r in query(ledger, "SELECT shot_id FROM shots WHERE state = ?", (state,))}


def submitted_count(ledger: Path) -> int:
    """How many shots wait at the provider for their render; 0 while a starting run has
    not made its ledger yet (so it serves as a :func:`wait_until` condition)."""
    return len(in_state(ledger, "submitted")) if ledger.exists() else 0


def run_count(ledger: Path) -> int:
    """Runs that have started on this ledger (0 while it does not exist yet)."""
    if not ledger.exists():
        return 0
    try:
        return int(query(ledger, "SELECT COUNT(*) FROM runs")[0][0])
    except sqlite3.Error:
        return 0  # still being created or migrated


def ledger_task_ids(ledger: Path) -> set[str]:
    """Every task id the ledger ever committed (attempt rows and shot rows)."""
    rows = query(
        ledger,
        "SELECT task_id FROM attempts WHERE task_id IS NOT NULL "
        "UNION SELECT task_id FROM shots WHERE task_id IS NOT NULL",
    )
    return {str(r[0]) for r in rows}


def shot_of_trace(ledger: Path) -> dict[str, str]:
    """Every Ai-trace-id the ledger ever recorded an intent for -> its shot."""
    return dict(query(ledger, "SELECT trace_id, shot_id FROM attempts"))


def last_attempts(ledger: Path) -> dict[str, tuple[str, str, str | None]]:
    """Each shot's latest attempt: ``shot_id -> (trace_id, outcome, task_id)``."""
    rows = query(
        ledger,
        "SELECT a.shot_id, a.trace_id, a.outcome, a.task_id FROM attempts a "
        "WHERE a.attempt_id = (SELECT MAX(b.attempt_id) FROM attempts b "
        "WHERE b.shot_id = a.shot_id)",
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


# -- reading the simulator's books -------------------------------------------------------


def sim_tasks(stats: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The simulator's accepted tasks, by the shot named in their prompt."""
    by_shot: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in stats["tasks"]:
        by_shot[shot_of(task["prompt"])].append(task)
    return dict(by_shot)


def sim_tasks_by_intent(ledger: Path, stats: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The simulator's tasks grouped by shot through the ledger's trace ids.

    Fails if the simulator holds a task whose trace id the ledger never recorded (a
    generate request went out without a durable intent), or whose intent belongs to
    another shot than the one its prompt names.
    """
    owner = shot_of_trace(ledger)
    by_shot: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in stats["tasks"]:
        shot = owner.get(task["trace_id"])
        assert shot is not None, f"task {task['task_id']} has no intent in the ledger: {task}"
        assert shot == shot_of(task["prompt"]), f"{shot}'s intent sent another prompt: {task}"
        by_shot[shot].append(task)
    return dict(by_shot)


def lose_generate_answers_to(sim: SimulatorThread, shot_id: str) -> None:
    """From now on the provider creates and charges ``shot_id``'s tasks, then the
    connection drops before pixrun reads the answer, so the shot is parked as
    ambiguous; other shots are answered. The test sets ``generate_hook = None`` to stop."""
    config = sim.simulator.config

    async def lose_the_answer(body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        config.lost_generate_share = 1.0 if shot_of(str(body["prompt"])) == shot_id else 0.0

    config.generate_hook = lose_the_answer


def forget_task(sim: SimulatorThread, task_id: str) -> None:
    """The provider no longer knows ``task_id`` (fetches answer "task not found"), as
    when a task id given to ``pixrun resolve`` turns out to be gone later."""
    books = sim.simulator.books
    books.tasks.pop(task_id)  # one dict operation: atomic against the server's thread


def sim_seed(sim: SimulatorThread, task_id: str) -> int:
    """The seed the simulator rendered a task with."""
    return int(sim.simulator.books.tasks[task_id].seed)


def net_charges(stats: Mapping[str, Any]) -> dict[str, int]:
    """Per shot: charges the simulator kept (accepted tasks not refunded)."""
    counts: dict[str, int] = defaultdict(int)
    for task in stats["tasks"]:
        if task["charged"] and not task["refunded"]:
            counts[shot_of(task["prompt"])] += 1
    return dict(counts)


# -- checks ----------------------------------------------------------------------------


def flat(text: str) -> str:
    """Output with rich's line wrapping undone, for matching phrases."""
    return " ".join(text.split())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_files_match(batch: Batch, stats: Mapping[str, Any], shots: Iterable[str]) -> None:
    """Each shot is done, its file is byte-identical to what the simulator rendered for
    the task the ledger names (and to the digest the ledger recorded), that task is this
    shot's, and the sidecar agrees (its digest, task and done time are the ledger's)."""
    tasks = {t["task_id"]: t for t in stats["tasks"]}
    rows = {
        r[0]: r[1:]
        for r in query(
            batch.ledger, "SELECT shot_id, state, task_id, output_path, sha256, done_at FROM shots"
        )
    }
    for sid in shots:
        state, task_id, relpath, recorded, done_at = rows[sid]
        assert state == "done", f"{sid} is {state}"
        task = tasks[str(task_id)]
        assert shot_of(task["prompt"]) == sid, f"{sid} holds the file of another shot's task"
        target = batch.out / relpath
        assert sha256_of(target) == task["sha256"] == recorded, f"{sid}: bytes differ"
        sidecar = json.loads(target.with_name(target.name + ".json").read_text("utf-8"))
        assert sidecar["sha256"] == task["sha256"] and str(sidecar["task_id"]) == str(task_id)
        assert sidecar["done_at"] == done_at, f"{sid}: the sidecar's done time is not the ledger's"


def assert_only_final_files(batch: Batch, shots: Iterable[str] | None = None) -> None:
    """After a complete batch, the output folder holds the files of ``shots`` (default:
    all) and their sidecars, and nothing else: no temporary or partial file."""
    ids = batch.ids if shots is None else list(shots)
    expected = {f"{sid}.mp4" for sid in ids} | {f"{sid}.mp4.json" for sid in ids}
    found = {p.name for p in batch.out.iterdir()}
    assert found == expected, f"unexpected files: {sorted(found - expected)}"


def assert_batch_sound(batch: Batch, stats: Mapping[str, Any], shots: Iterable[str]) -> None:
    """The end of a batch: the files of ``shots`` match the simulator's (and the ledger's),
    nothing else is in the output folder, and the ledger passes SQLite's integrity check."""
    ids = list(shots)
    assert_files_match(batch, stats, ids)
    assert_only_final_files(batch, ids)
    assert integrity(batch.ledger) == "ok"


def assert_outputs_match(ledger: Path, output_dir: Path, stats: Mapping[str, Any]) -> int:
    """For any ledger (shots need not follow this kit's naming): every done shot's file
    is byte-identical to what the simulator served for its task; no temporary file is
    left. Returns the number of done shots."""
    served = {t["task_id"]: t["sha256"] for t in stats["tasks"]}
    done = query(
        ledger, "SELECT shot_id, task_id, output_path, sha256 FROM shots WHERE state = 'done'"
    )
    for shot_id, task_id, relpath, sha in done:
        assert sha256_of(output_dir / relpath) == sha == served[task_id], shot_id
    leftovers = [p.name for p in output_dir.rglob(".*") if p.is_file()]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    return len(done)


def assert_key_absent(key: str, *texts: str, files: Iterable[Path] = ()) -> None:
    for text in texts:
        assert key not in text
    for path in files:
        assert key.encode() not in path.read_bytes(), f"the API key is in {path}"


def files_under(folder: Path) -> list[Path]:
    """Every file in ``folder`` and below (all a run wrote: ledger, WAL, lock, outputs)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def exit_within(running: Running, seconds: float) -> tuple[int, float]:
    """Wait for the process; its return code and how long it took."""
    t0 = time.monotonic()
    try:
        code = running.wait(seconds)
    except subprocess.TimeoutExpired:
        running.kill()
        raise AssertionError(f"pixrun did not exit within {seconds} s") from None
    return code, time.monotonic() - t0


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (free when asked)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def generate_calls(sim: SimulatorThread) -> int:
    """Generate requests the simulator has received (accepted or not)."""
    return int(sim.stats(with_tasks=False)["calls"].get("generate", 0))
