"""What people read: durations as numbers, file modes, no escape sequences, counts that
read right, plan as strict as run, and rehearsals marked and found.

Most tests run ``pixrun`` as a subprocess on one rehearsal (``pixrun run --simulate``)
of a two-shot manifest: a text shot whose prompt carries terminal escapes, and a fusion
shot (its request spells the duration "5s").
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console
from runkit import env_for, explain, pixrun
from viewkit import Spec, build_batch

from runner.cli.progress import PlainObserver, render_summary
from runner.ledger import META_PROVIDER, default_ledger_path
from runner.model import ShotState
from runner.run.events import RunEvent, RunEventKind
from runner.text import json_safe, plural, printable

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "manifests" / "images"

#: clear the screen, retitle the window, and an 8-bit CSI (C1)
HOSTILE = "a calm lake \x1b[2J at dawn \x1b]0;pwned\x07 ok \x9b31m red\x00"
HOSTILE_YAML = r'"a calm lake \e[2J at dawn \e]0;pwned\a ok \x9b31m red\0"'

MANIFEST = f"""version: 1
name: "tiny \\e]0;pwned\\a"
defaults: {{model: v4, quality: 360p, duration: 5}}
output: {{dir: "out\\e[2J"}}
run:
  poll: {{initial_delay_s: 0.02, min_interval_s: 0.01, max_interval_s: 0.2}}
shots:
  - {{id: plain, prompt: {HOSTILE_YAML}}}
  - {{id: duo, prompt: robot and cat, fusion: [robot.png, cat.jpg]}}
"""

#: "pixrun run --simulate" on a terminal-free stdout, whatever display it picks
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Rehearsal:
    dir: Path
    manifest: Path
    ledger: Path
    run: subprocess.CompletedProcess[str]


def _env(columns: int = 200) -> dict[str, str]:
    # wide enough for the report's settings column; rich reads COLUMNS
    return {**env_for(None, key=None), "COLUMNS": str(columns)}


def _pixrun(
    cwd: Path, *args: str | Path, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    words = [str(a) for a in args]
    if umask is None:
        return pixrun(words, _env(), cwd=cwd)
    # the shell sets the umask of the pixrun it becomes (no preexec_fn in a threaded test)
    script = f'umask {umask:03o} && exec "$0" -m runner "$@"'
    return subprocess.run(
        ["/bin/sh", "-c", script, sys.executable, *words],
        env=_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    folder = tmp_path_factory.mktemp("rehearsal")
    for name in ("robot.png", "cat.jpg"):
        shutil.copyfile(IMAGES / name, folder / name)
    manifest = folder / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    # the rehearsal's own ledger, named explicitly: the same whichever default run uses
    ledger = default_ledger_path(manifest, simulated=True)
    result = _pixrun(
        folder,
        "run",
        manifest,
        "--simulate",
        "--sim-render-time",
        "0.01,0.02",
        "--yes",
        "--ledger",
        ledger,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Rehearsal(folder, manifest, ledger, result)


# -- 1. durations are numbers ---------------------------------------------------------


def test_a_fusion_duration_is_a_number_in_every_view(rehearsal: Rehearsal) -> None:
    r = rehearsal
    rows = list(
        csv.DictReader(
            io.StringIO(_pixrun(r.dir, "report", "--ledger", r.ledger, "--format", "csv").stdout)
        )
    )
    assert {row["shot_id"]: row["duration"] for row in rows} == {"plain": "5", "duo": "5"}
    records = json.loads(_pixrun(r.dir, "report", "--ledger", r.ledger, "--format", "json").stdout)
    assert {rec["shot_id"]: rec["duration"] for rec in records} == {"plain": 5, "duo": 5}
    table = _pixrun(r.dir, "report", "--ledger", r.ledger).stdout
    assert "v4 360p 5s" in table and "5ss" not in table
    sheet = r.dir / "sheet.html"
    made = _pixrun(r.dir, "report", "--ledger", r.ledger, "--format", "html", "-o", sheet)
    assert made.returncode == 0, explain(made)
    assert "duration <b>5 s</b>" in sheet.read_text() and "5s s" not in sheet.read_text()


# -- 2. files for people follow the umask --------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_reports_get_the_mode_the_umask_gives(rehearsal: Rehearsal, umask: int, mode: int) -> None:
    r = rehearsal
    sheet = r.dir / f"sheet-{umask:o}.html"
    csv_file = r.dir / f"report-{umask:o}.csv"
    for args in (("--format", "html", "-o", sheet), ("--format", "csv", "-o", csv_file)):
        result = _pixrun(r.dir, "report", "--ledger", r.ledger, *args, umask=umask)
        assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(sheet.stat().st_mode) == mode
    assert stat.S_IMODE(csv_file.stat().st_mode) == mode


# -- 3. no escape sequence reaches the terminal --------------------------------------


def test_the_run_log_and_summary_carry_no_control_characters(rehearsal: Rehearsal) -> None:
    # the output folder named in the summary holds "ESC [2J" (from the manifest)
    out = rehearsal.run.stdout + rehearsal.run.stderr
    assert "run finished" in out and "files" in out
    assert not CONTROL.search(out), repr(out)


def test_report_and_status_tables_carry_no_control_characters(rehearsal: Rehearsal) -> None:
    r = rehearsal
    table = _pixrun(r.dir, "report", "--ledger", r.ledger)
    assert "a calm lake" in table.stdout and "plain" in table.stdout
    status = _pixrun(r.dir, "status", "--ledger", r.ledger)
    assert "2/2 done" in status.stdout
    for text in (table.stdout, status.stdout, table.stderr, status.stderr):
        assert not CONTROL.search(text), repr(text)


def test_csv_loses_control_characters_json_keeps_them_escaped(rehearsal: Rehearsal) -> None:
    r = rehearsal
    csv_text = _pixrun(r.dir, "report", "--ledger", r.ledger, "--format", "csv").stdout
    assert not CONTROL.search(csv_text)
    rows = {row["shot_id"]: row for row in csv.DictReader(io.StringIO(csv_text))}
    assert rows["plain"]["prompt"] == "a calm lake  at dawn  ok  red"
    json_text = _pixrun(r.dir, "report", "--ledger", r.ledger, "--format", "json").stdout
    assert not CONTROL.search(json_text.replace("\n", ""))
    assert {rec["shot_id"]: rec["prompt"] for rec in json.loads(json_text)}["plain"] == HOSTILE
    status = _pixrun(r.dir, "status", "--ledger", r.ledger, "--format", "json").stdout
    assert json.loads(status)["total"] == 2


def test_plain_log_lines_of_provider_messages_carry_no_escapes() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, color_system=None, width=100)
    observer = PlainObserver(console)
    observer.event(
        RunEvent(RunEventKind.FAILED, f"refused: {HOSTILE}", "s1", ShotState.FAILED, None, 1)
    )
    line = out.getvalue()
    assert "refused: a calm lake" in line and not CONTROL.search(line.rstrip("\n"))


def test_printable_drops_whole_sequences_and_keeps_text() -> None:
    assert printable(HOSTILE) == "a calm lake  at dawn  ok  red"
    assert printable("tab\there\nnext\r\nline") == "tab here next  line"
    assert printable("a\nb\r\nc", keep_newlines=True) == "a\nb\nc"
    assert printable("plain text, café ✓") == "plain text, café ✓"
    assert json.loads(json_safe(json.dumps("x\x9by\x7f", ensure_ascii=False))) == "x\x9by\x7f"
    assert "\x9b" not in json_safe(json.dumps("x\x9by", ensure_ascii=False))


# -- 4. counts read right in the singular --------------------------------------------


def test_plural() -> None:
    assert [plural(n, "shot") for n in (0, 1, 2)] == ["0 shots", "1 shot", "2 shots"]
    assert (
        plural(1, "match", "matches") == "1 match" and plural(3, "match", "matches") == "3 matches"
    )


def test_one_shot_reads_as_one_shot(tmp_path: Path) -> None:
    manifest = tmp_path / "one.yaml"
    manifest.write_text("version: 1\nshots:\n  - {id: a, prompt: p, model: v4, quality: 360p}\n")
    validate = _pixrun(tmp_path, "validate", manifest)
    assert "(1 shot)" in validate.stdout, validate.stdout
    plan = _pixrun(tmp_path, "plan", manifest)
    assert "for 1 shot\n" in plan.stdout and "1 shots" not in plan.stdout
    batch = asyncio.run(build_batch(tmp_path, [Spec("x", ShotState.PENDING, "p")], name="b"))
    status = _pixrun(tmp_path, "status", batch.manifest_path)
    assert "still to submit: 1 shot," in status.stdout, status.stdout
    sheet = _pixrun(tmp_path, "report", batch.manifest_path, "--format", "html")
    assert sheet.stdout.startswith("contact sheet of 1 shot:"), sheet.stdout
    written = _pixrun(tmp_path, "report", batch.manifest_path, "--format", "csv", "-o", "r.csv")
    assert written.stderr.startswith("wrote 1 shot to"), written.stderr


def test_the_run_summary_says_1_shot(tmp_path: Path) -> None:
    from runner.run.batch import BatchOutcome
    from runner.run.scheduler import RunResult

    result = RunResult(
        exit_code=0,
        stop_reason=None,
        message=None,
        counts={ShotState.DONE: 1},
        spent_uptc=0,
        elapsed_s=1.0,
        calls={},
        ledger_commits=0,
    )
    outcome = BatchOutcome(
        result=result,
        ledger_path=default_ledger_path(tmp_path / "b.yaml"),
        output_dir=tmp_path / "out\x1b[2J",
        recovered_ambiguous=[],
        new_shots=0,
        changed_shots=0,
    )
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=200)
    render_summary(outcome, console, manifest=tmp_path / "b.yaml", issues=([], 0, [], 0))
    text = out.getvalue()
    assert "of 1 shot\n" in text and "1 shots" not in text
    assert str(tmp_path / "out") in text and "\x1b[2J" not in text


# -- 5. plan is as strict as run -----------------------------------------------------


def test_plan_with_a_budget_and_unpriced_shots_exits_4(tmp_path: Path) -> None:
    text = (
        "version: 1\n{run}shots:\n"
        "  - {{id: long, prompt: p, model: v4, quality: 360p, duration: 10}}\n"
        "  - {{id: short, prompt: q, model: v4, quality: 360p}}\n"
    )
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text.format(run="run: {budget_ptc: 5}\n"))
    result = _pixrun(tmp_path, "plan", manifest)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "1 shot to submit has no published price, so the budget cannot be checked" in (
        result.stderr
    )
    assert "drop the budget" in result.stderr
    assert "fits the budget" not in result.stdout
    manifest.write_text(text.format(run=""))
    assert _pixrun(tmp_path, "plan", manifest).returncode == 0
    assert _pixrun(tmp_path, "plan", manifest, "--max-cost", "5").returncode == 4


# -- 6. rehearsals are marked ----------------------------------------------------------


def _mark(ledger: Path, simulated: bool) -> None:
    record = {"simulated": simulated, "base_url": "http://127.0.0.1:1", "dialect": "302"}
    with sqlite3.connect(ledger) as db:
        db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (META_PROVIDER, json.dumps(record)),
        )
    db.close()


NOTE = "rehearsal: simulated provider, nothing was spent"


@pytest.mark.parametrize("simulated", [True, False, None])
def test_simulated_work_is_marked(tmp_path: Path, simulated: bool | None) -> None:
    batch = asyncio.run(build_batch(tmp_path, [Spec("x", ShotState.DONE, "p")], name="b"))
    if simulated is not None:  # None: a ledger from before the record
        _mark(batch.ledger_path, simulated)
    marked = simulated is True
    m = batch.manifest_path
    assert (NOTE in _pixrun(tmp_path, "status", m).stdout) is marked
    assert (
        json.loads(_pixrun(tmp_path, "status", m, "--format", "json").stdout)["simulated"] is marked
    )
    assert (NOTE in _pixrun(tmp_path, "report", m).stdout) is marked
    made = _pixrun(tmp_path, "report", m, "--format", "html", "-o", "sheet.html")
    assert made.returncode == 0, explain(made)
    head = (tmp_path / "sheet.html").read_text().split("</header>")[0]
    assert ("(rehearsal, simulated provider)" in head) is marked
    assert (head.count("(rehearsal, simulated provider)") == 2) is marked  # title and h1


# -- 7. rehearsal ledgers are found ----------------------------------------------------


def test_the_rehearsal_ledger_is_found_with_simulate(rehearsal: Rehearsal) -> None:
    r = rehearsal
    assert not default_ledger_path(r.manifest).exists()
    for command in ("status", "report"):
        missing = _pixrun(r.dir, command, r.manifest)
        assert missing.returncode == 2
        assert "a rehearsal ledger exists: add --simulate" in missing.stderr
        found = _pixrun(r.dir, command, r.manifest, "--simulate")
        assert found.returncode == 0, found.stderr
        assert "plain" in found.stdout or "2/2 done" in found.stdout
    # plan against the rehearsal: both shots done; without --simulate: all to submit
    plan = _pixrun(r.dir, "plan", r.manifest, "--simulate", "--format", "json")
    rehearsed = json.loads(plan.stdout)
    # two shots, and the two local images each uploaded once (0.001 PTC each)
    assert rehearsed["remaining_count"] == 0 and rehearsed["spent_ptc"] == "0.202"
    fresh = json.loads(_pixrun(r.dir, "plan", r.manifest, "--format", "json").stdout)
    assert fresh["remaining_count"] == 2


def test_the_live_board_shows_hostile_titles_and_events_as_text() -> None:
    from runner.cli.views import Board, BoardEvent, board_renderable

    board = Board(
        title=f"pixrun run · {HOSTILE}",
        total=1,
        counts={ShotState.PENDING: 1},
        in_flight=0,
        target_concurrency=4,
        spent_uptc=0,
        planned_uptc=0,
        done_per_min=None,
        eta_s=None,
        elapsed_s=1.0,
        events=(BoardEvent("0:00:01", "failed\x1b[2J", f"s1: {HOSTILE}"),),
    )
    out = io.StringIO()
    Console(file=out, force_terminal=False, color_system=None, width=200).print(
        board_renderable(board)
    )
    text = out.getvalue()
    assert "pixrun run · a calm lake" in text and "s1: a calm lake  at dawn" in text
    assert not CONTROL.search(text.replace("\n", "")), repr(text)
