"""Habits of a good CLI, as a user's shell sees them: ``-`` for a manifest on stdin,
tables that a pipe gets whole, JSON from retry and resolve, --no-color, completion.

Every command runs as a real subprocess, so stdin is a real pipe and stdout is not a
terminal, exactly as in ``... | pixrun run -`` or ``pixrun report | grep``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from runkit import (
    KEY,
    Batch,
    SimThread,
    env_for,
    generate_calls,
    in_state,
    last_attempts,
    lose_generate_answers_to,
    run_count,
    sim_tasks,
    states,
    write_manifest,
)
from viewkit import Spec, build_batch

from runner.model import ShotState

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
#: longer than any column rich would give them in 80 columns
LONG_ID = "scene-042-take-07-" + "x" * 70 + "-end"
LONG_ERROR = "the provider refused the request because " + "reason " * 30 + "THE-END"
LONG_PROMPT = "a prompt of " + "many words " * 20 + "PROMPT-END"
ESC = "\x1b"


def pixrun_io(
    args: Sequence[str | Path],
    env: Mapping[str, str],
    *,
    cwd: Path,
    stdin: str | None = None,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m runner ARGS`` with ``stdin`` piped in (or none at all)."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)],
        env=dict(env),
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def plain_env(**extra: str) -> dict[str, str]:
    """The runner's environment with no provider, 80 columns and no colour settings."""
    env = env_for(None)
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS", "LINES"):
        env.pop(name, None)
    env["COLUMNS"] = "80"
    env.update(extra)
    return env


def run_from_stdin(
    batch: Batch, env: Mapping[str, str], work: Path
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """``pixrun run -`` with the batch's manifest piped in, from a new folder ``work``
    (not the manifest's): returns the piped text and the finished run."""
    text = batch.manifest.read_text(encoding="utf-8")
    work.mkdir()
    return text, pixrun_io(run_fast(), env, cwd=work, stdin=text)


def run_fast(*extra: str) -> list[str]:
    return [
        "run",
        "-",
        "--quiet",
        "--yes",
        "--backoff-base-s",
        "0.01",
        "--provider-option",
        "read_timeout_s=1",
        *extra,
    ]


# -- '-': the manifest on stdin ---------------------------------------------------------


def test_validate_and_plan_read_stdin_and_locate_problems_there(tmp_path: Path) -> None:
    bad = "version: 1\nshots:\n  - id: a\n    prompt: p\n    model: v4.5\n    quality: 999p\n"
    result = pixrun_io(["validate", "-"], plain_env(), cwd=tmp_path, stdin=bad)
    assert result.returncode == 2, result.stderr
    assert "<stdin>:6:" in result.stderr and "quality" in result.stderr  # file:line as usual
    assert "invalid: <stdin>" in result.stdout
    problems = json.loads(
        pixrun_io(
            ["validate", "-", "--format", "json"], plain_env(), cwd=tmp_path, stdin=bad
        ).stdout
    )
    assert {p["file"] for p in problems} == {"<stdin>"} and problems[0]["line"] == 6

    good = "version: 1\ndefaults: {model: v4.5, quality: 360p}\nshots:\n  - {id: a, prompt: p}\n"
    result = pixrun_io(["validate", "-"], plain_env(), cwd=tmp_path, stdin=good)
    assert result.returncode == 0 and "valid: <stdin> (1 shot)" in result.stdout
    result = pixrun_io(["plan", "-", "--format", "json"], plain_env(), cwd=tmp_path, stdin=good)
    assert result.returncode == 0, result.stderr
    # an unnamed text is the batch "stdin", standing for ./stdin.yaml
    assert json.loads(result.stdout)["manifest"] == {
        "name": "stdin",
        "path": str(tmp_path / "stdin.yaml"),
    }

    twice = pixrun_io(["validate", "-", "-"], plain_env(), cwd=tmp_path, stdin=good)
    assert twice.returncode == 2 and "only once" in twice.stderr


def test_relative_images_on_stdin_resolve_from_the_current_folder(tmp_path: Path) -> None:
    text = (
        "version: 1\ndefaults: {model: v4.5, quality: 360p, duration: 5}\n"
        "shots:\n  - {id: i, prompt: p, image: img/ok.png}\n"
    )
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    (here / "img").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(DATA / "manifests" / "images" / "ok.png", here / "img" / "ok.png")
    found = pixrun_io(["validate", "-"], plain_env(), cwd=here, stdin=text)
    assert found.returncode == 0, found.stdout + found.stderr
    missing = pixrun_io(["validate", "-"], plain_env(), cwd=elsewhere, stdin=text)
    assert missing.returncode == 2
    assert "<stdin>:4:" in missing.stderr and "img/ok.png" in missing.stderr


def test_run_from_stdin_keeps_its_ledger_in_the_current_folder_and_resumes(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = write_manifest(tmp_path / "src", 3, name="Night Shift")
    work = tmp_path / "work"
    env = env_for(sim.base_url)

    text, first = run_from_stdin(batch, env, work)
    assert first.returncode == 0, first.stdout + first.stderr
    ledger = work / "Night-Shift.ledger.sqlite"  # named after the batch, in the cwd
    assert states(ledger) == dict.fromkeys(batch.ids, "done")
    assert sorted(p.name for p in (work / "out").glob("*.mp4")) == [f"{s}.mp4" for s in batch.ids]
    assert not (batch.dir / "Night-Shift.ledger.sqlite").exists()
    assert f"ledger  {ledger}" in first.stdout
    calls = generate_calls(sim)

    # the same text again, from the same folder: the same ledger, nothing sent again
    again = pixrun_io(run_fast(), env, cwd=work, stdin=text)
    assert again.returncode == 0, again.stdout + again.stderr
    assert run_count(ledger) == 2 and generate_calls(sim) == calls

    # the reading commands find it the same way
    status = pixrun_io(["status", "-", "--format", "json"], env, cwd=work, stdin=text)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["done"] == 3
    report = pixrun_io(["report", "-", "--format", "json"], env, cwd=work, stdin=text)
    assert [r["shot_id"] for r in json.loads(report.stdout)] == batch.ids
    elsewhere = pixrun_io(["status", "-"], env, cwd=tmp_path, stdin=text)
    assert elsewhere.returncode == 2
    assert "no ledger for <stdin>" in elsewhere.stderr
    assert str(tmp_path / "Night-Shift.ledger.sqlite") in elsewhere.stderr


def test_a_stopped_stdin_run_hints_at_commands_that_need_no_stdin(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    config = sim.simulator.config
    lose_generate_answers_to(sim, "s01")
    batch = write_manifest(tmp_path, 2, name="parks")
    work = tmp_path / "work"
    env = env_for(sim.base_url)
    text, first = run_from_stdin(batch, env, work)
    assert first.returncode == 1, first.stdout + first.stderr
    ledger = work / "parks.ledger.sqlite"
    assert in_state(ledger, "ambiguous") == {"s01"}
    # the hints name the ledger, never '-' (a pasted command would wait on stdin)
    assert f"pixrun resolve SHOT --task-id ID --ledger {ledger}" in first.stdout
    assert f"pixrun retry --ambiguous --ledger {ledger}" in first.stdout

    (task,) = sim_tasks(sim.stats())["s01"]
    assert task["trace_id"] == last_attempts(ledger)["s01"][0]
    config.generate_hook = None
    resolve = pixrun_io(
        ["resolve", "s01", "-", "--task-id", task["task_id"], "--format", "json"],
        env,
        cwd=work,
        stdin=text,
    )
    assert resolve.returncode == 0, resolve.stderr
    assert json.loads(resolve.stdout) == {
        "shot_id": "s01",
        "task_id": task["task_id"],
        "ledger": str(ledger),
        "simulated": False,
        "next": f"pixrun run - --ledger {ledger}",
    }
    assert in_state(ledger, "submitted") == {"s01"}


# -- tables through a pipe ----------------------------------------------------------------


@pytest.fixture
def long_batch(tmp_path: Path) -> Path:
    specs = [
        Spec(LONG_ID, ShotState.FAILED, LONG_PROMPT, error=LONG_ERROR),
        Spec("ok", ShotState.DONE, "fine"),
        Spec("lost", ShotState.AMBIGUOUS, "lost answer"),
    ]
    return asyncio.run(build_batch(tmp_path, specs, finish_run=True)).manifest_path


def _one_line_with(text: str, *needles: str) -> str:
    """The one line of ``text`` holding every needle (fails when they are split)."""
    lines = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line holds all of {needles!r} whole:\n{text}"
    return lines[0]


def test_piped_status_and_report_print_long_values_whole(long_batch: Path) -> None:
    env, cwd = plain_env(), long_batch.parent
    status = pixrun_io(["status", long_batch], env, cwd=cwd)
    assert status.returncode == 0, status.stderr
    # the failures table: the id and the whole error on one row
    _one_line_with(status.stdout, LONG_ID, LONG_ERROR)
    assert "…" not in status.stdout  # nothing ends in an ellipsis, board included

    report = pixrun_io(["report", long_batch], env, cwd=cwd)
    assert report.returncode == 0, report.stderr
    row = _one_line_with(report.stdout, LONG_ID, LONG_PROMPT, LONG_ERROR)
    assert "400000" in row  # the task id column is there too, whole
    assert "…" not in report.stdout
    assert not any(line != line.rstrip() for line in report.stdout.splitlines())

    assert pixrun_io(["report", long_batch, "-o", cwd / "r.txt"], env, cwd=cwd).returncode == 0
    _one_line_with((cwd / "r.txt").read_text(encoding="utf-8"), LONG_ID, LONG_ERROR)


def test_a_terminal_width_still_shortens_the_table(long_batch: Path) -> None:
    """On a terminal (FORCE_COLOR makes rich take the pipe for one) the table fits the
    window: the whole-value layout is for pipes and files only."""
    env = plain_env(FORCE_COLOR="1", NO_COLOR="1")
    report = pixrun_io(["report", long_batch], env, cwd=long_batch.parent)
    assert report.returncode == 0, report.stderr
    assert max(len(line) for line in report.stdout.splitlines()) <= 80
    assert LONG_ID not in report.stdout


def test_piped_plan_is_not_cut_to_80_columns(tmp_path: Path) -> None:
    name = "a-batch-with-a-long-name-" + "n" * 90
    text = (
        f"version: 1\nname: {name}\ndefaults: {{model: v4.5, quality: 360p}}\n"
        "shots:\n  - {id: a, prompt: p}\n"
    )
    plan = pixrun_io(["plan", "-"], plain_env(), cwd=tmp_path, stdin=text)
    assert plan.returncode == 0, plan.stderr
    _one_line_with(plan.stdout, f"Plan: {name}")


def test_piped_run_summary_lists_long_ids_whole(tmp_path: Path, sim_thread: SimThread) -> None:
    sim = sim_thread(moderated_words=("forbidden",))
    text = (
        "version: 1\nname: long\ndefaults: {model: v4.5, quality: 360p, duration: 5}\n"
        "run: {poll: {initial_delay_s: 0.02, min_interval_s: 0.01, max_interval_s: 0.2}}\n"
        f"shots:\n  - {{id: {LONG_ID}, prompt: a forbidden scene}}\n  - {{id: ok, prompt: fine}}\n"
    )
    env = {**env_for(sim.base_url), "COLUMNS": "80"}
    result = pixrun_io(run_fast(), env, cwd=tmp_path, stdin=text)
    assert result.returncode == 1, result.stdout + result.stderr
    _one_line_with(result.stdout, LONG_ID, "moderated")


# -- retry and resolve as JSON ------------------------------------------------------------


def test_retry_json(tmp_path: Path) -> None:
    batch = asyncio.run(build_batch(tmp_path, finish_run=True))
    env, cwd = plain_env(), tmp_path
    failed = pixrun_io(["retry", batch.manifest_path, "--failed", "--format", "json"], env, cwd=cwd)
    assert failed.returncode == 0, failed.stderr
    assert json.loads(failed.stdout) == {
        "action": "requeue",
        "ledger": str(batch.ledger_path),
        "simulated": False,
        "requeued": 1,  # the failed one; the moderated one stays (--moderated)
        "parked_requeued": 0,
        "next": f"pixrun run {batch.manifest_path}",
    }
    parked = pixrun_io(
        ["retry", batch.manifest_path, "--ambiguous", "--format", "json"], env, cwd=cwd
    )
    assert json.loads(parked.stdout)["parked_requeued"] == 1
    assert "warning:" in parked.stderr  # the warning is for a person: stderr, not the JSON

    reroll = pixrun_io(
        ["retry", batch.manifest_path, "--shot", "dawn-lake", "--new-seed", "--format", "json"],
        env,
        cwd=cwd,
    )
    assert reroll.returncode == 0, reroll.stderr
    data = json.loads(reroll.stdout)
    assert data["action"] == "reroll" and data["next"] == f"pixrun run {batch.manifest_path}"
    (shot,) = data["rerolled"]
    assert shot["shot_id"] == "dawn-lake" and shot["version"] == 2
    assert isinstance(shot["seed"], int)
    assert (shot["price_uptc"], shot["price_ptc"]) == (150_000, "0.15")
    assert (data["total_uptc"], data["total_ptc"], data["unpriced"]) == (150_000, "0.15", 0)

    # a ledger named by --ledger alone, and a rehearsal's: the hint repeats what picks it
    moved = tmp_path / "elsewhere.sqlite"
    batch.ledger_path.rename(moved)
    by_ledger = pixrun_io(
        ["retry", "--ledger", moved, "--failed", "--simulate", "--format", "json"], env, cwd=cwd
    )
    assert by_ledger.returncode == 0, by_ledger.stderr
    assert (
        json.loads(by_ledger.stdout)["next"] == f"pixrun run MANIFEST --simulate --ledger {moved}"
    )
    moved.rename(batch.ledger_path)

    refused = pixrun_io(["retry", batch.manifest_path, "--format", "json"], env, cwd=cwd)
    assert refused.returncode == 2 and refused.stdout == ""  # errors stay on stderr


def test_json_output_of_retry_never_carries_the_key(tmp_path: Path) -> None:
    (tmp_path / KEY).mkdir()
    batch = asyncio.run(build_batch(tmp_path / KEY, finish_run=True))
    result = pixrun_io(
        ["retry", batch.manifest_path, "--failed", "--format", "json"],
        plain_env(PIXRUN_API_KEY=KEY),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stdout and "***" in json.loads(result.stdout)["ledger"]


# -- --no-color ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--no-color after", "--no-color before", "NO_COLOR"])
def test_no_color_means_no_escape_even_with_force_color(long_batch: Path, how: str) -> None:
    env = plain_env(FORCE_COLOR="1")
    cwd = long_batch.parent

    def call(*args: str | Path) -> subprocess.CompletedProcess[str]:
        if how == "--no-color before":
            return pixrun_io(["--no-color", *args], env, cwd=cwd)
        if how == "--no-color after":
            return pixrun_io([*args, "--no-color"], env, cwd=cwd)
        return pixrun_io(args, {**env, "NO_COLOR": "1"}, cwd=cwd)

    coloured = pixrun_io(["status", long_batch], env, cwd=cwd)
    assert ESC in coloured.stdout  # FORCE_COLOR alone colours a pipe: the check can fail
    outputs = [
        call("status", long_batch),
        call("report", long_batch),
        call("plan", REPO / "manifests" / "demo.yaml"),
        call("validate", REPO / "manifests" / "demo.yaml"),
        call("status", cwd / "missing.yaml"),  # an error, on stderr
        call("retry", long_batch, "--ambiguous"),  # a warning, on stderr
    ]
    assert [r.returncode for r in outputs] == [0, 0, 0, 0, 2, 0]
    assert "failed (1)" in outputs[0].stdout and "file / error" in outputs[1].stdout
    assert "error:" in outputs[-2].stderr and "warning:" in outputs[-1].stderr
    for result in outputs:
        assert ESC not in result.stdout + result.stderr, result.args


# -- completion ---------------------------------------------------------------------------


def test_the_entry_point_is_pixrun() -> None:
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="pixrun")
    assert entry.value == "runner.cli:main"


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _pixrun_completion pixrun"),
        ("zsh", "#compdef pixrun"),
        ("fish", "complete --no-files --command pixrun"),
    ],
)
def test_completion_scripts(tmp_path: Path, shell: str, marker: str) -> None:
    env = plain_env(_PIXRUN_COMPLETE=f"{shell}_source")
    result = pixrun_io([], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout and "_PIXRUN_COMPLETE" in result.stdout


def test_bash_completion_completes_commands_and_options(tmp_path: Path) -> None:
    """The script, sourced in a real bash, completes through the installed ``pixrun``."""
    bash = shutil.which("bash")
    script = Path(sys.executable).parent / "pixrun"
    if bash is None or not script.exists():
        pytest.skip("needs bash and the installed pixrun script")
    env = plain_env()
    env["PATH"] = os.pathsep.join([str(script.parent), env.get("PATH", "")])
    probe = (
        'eval "$(_PIXRUN_COMPLETE=bash_source pixrun)"\n'
        "COMP_WORDS=(pixrun re); COMP_CWORD=1; COMPREPLY=(); _pixrun_completion pixrun\n"
        'echo "commands: ${COMPREPLY[*]}"\n'
        "COMP_WORDS=(pixrun retry --fo); COMP_CWORD=2; COMPREPLY=(); _pixrun_completion pixrun\n"
        'echo "options: ${COMPREPLY[*]}"\n'
        "COMP_WORDS=(pixrun status --no); COMP_CWORD=2; COMPREPLY=(); _pixrun_completion pixrun\n"
        'echo "flags: ${COMPREPLY[*]}"\n'
    )
    result = subprocess.run(
        [bash, "--norc", "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert set(lines["commands"].split()) == {"report", "resolve", "retry"}
    assert lines["options"].split() == ["--format"]
    assert lines["flags"].split() == ["--no-color"]
