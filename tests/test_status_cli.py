"""`pixrun status` and `pixrun report` as a user runs them: output, files, exit codes."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from viewkit import Batch, build_batch

from runner.cli import cli

KEY = "sk-MARKER-5be1d0c4-never-print-me"


@pytest.fixture
def batch(tmp_path: Path) -> Batch:
    return asyncio.run(build_batch(tmp_path, finish_run=True))


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_status_table_shows_counts_money_failures_and_parked(batch: Batch) -> None:
    result = run("status", batch.manifest_path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "4/11 done" in out
    assert "queued 2" in out and "failed 2" in out and "parked 1" in out
    assert "spent 1.05/1.35 PTC" in out and "(+2 unpriced)" in out
    assert "failed (2)" in out and "blocked" in out and "moderation" in out
    assert "lost-answer" in out
    assert "exit code 1" in out  # the last run, finished
    assert "still to submit: 2 shots, about 0.15 PTC" in out


def test_status_json(batch: Batch) -> None:
    result = run("status", "--ledger", batch.ledger_path, "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["total"] == 11 and data["counts"]["done"] == 4
    assert data["groups"]["parked"] == 1 and data["in_flight"] == 2
    assert (data["spent_ptc"], data["planned_ptc"]) == ("1.05", "1.35")
    assert [f["shot_id"] for f in data["failures"]] == ["blocked", "broken"]
    assert data["parked"][0]["shot_id"] == "lost-answer"
    assert data["last_run"]["active"] is False and data["last_run"]["exit_code"] == 1
    assert data["output_dir"] == str(batch.output_dir)


def test_status_without_a_ledger_says_where_it_looked(tmp_path: Path) -> None:
    result = run("status", tmp_path / "nothing.yaml")
    assert result.exit_code == 2
    assert "no ledger for" in result.stderr and "nothing.ledger.sqlite" in result.stderr
    assert "pixrun run" in result.stderr and "Traceback" not in result.output
    result = run("status", "--ledger", tmp_path / "gone.sqlite")
    assert result.exit_code == 2 and "no ledger at" in result.stderr
    result = run("status")
    assert result.exit_code == 2 and "give the manifest" in result.stderr


def test_status_of_a_file_that_is_not_a_ledger(tmp_path: Path) -> None:
    bogus = tmp_path / "x.sqlite"
    bogus.write_bytes(b"not a database at all" * 100)
    result = run("status", "--ledger", bogus)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "ledger" in result.stderr


def test_watch_refreshes_as_lines_when_not_a_terminal(batch: Batch) -> None:
    result = run("status", batch.manifest_path, "--watch", "--interval", "0.1", "--iterations", "2")
    assert result.exit_code == 0
    assert result.stdout.count("4/11 done") == 2
    result = run(
        "status",
        batch.manifest_path,
        "--watch",
        "--format",
        "json",
        "--interval",
        "0.1",
        "--iterations",
        "3",
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(json.loads(line)["total"] == 11 for line in lines)


_WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from shots import make_shot
    from runner.ledger import open_ledger

    async def main(path):
        async with await open_ledger(path, writer=True) as ledger:
            await ledger.sync_manifest([make_shot(f"s{i}") for i in range(3)])
            await ledger.start_run()
            print("ready", flush=True)
            sys.stdin.readline()
            row = await ledger.get_shot("s0")
            attempt = await ledger.begin_attempt(row, attempt_no=1, trace_id="t",
                                                 new_attempt=True)
            await ledger.attempt_accepted("s0", attempt, "91", 100000, time.time())
            print("wrote", flush=True)
            sys.stdin.readline()

    asyncio.run(main(Path(sys.argv[1])))
    """
)


def test_status_reads_a_ledger_that_a_running_process_holds(tmp_path: Path) -> None:
    ledger = tmp_path / "live.ledger.sqlite"
    tests_dir = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir), str(tests_dir.parent)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(ledger)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        first = json.loads(run("status", "--ledger", ledger, "--format", "json").stdout)
        assert first["counts"]["pending"] == 3
        assert first["last_run"]["active"] is True and first["last_run"]["pid"] == proc.pid
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "wrote\n"  # the writer was never blocked
        second = json.loads(run("status", "--ledger", ledger, "--format", "json").stdout)
        assert second["counts"]["submitted"] == 1 and second["spent_uptc"] == 100_000
        table = run("status", "--ledger", ledger).stdout
        assert f"running (pid {proc.pid})" in table
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- report ----------------------------------------------------------------------------------


def test_report_table_to_stdout(batch: Batch) -> None:
    result = run("report", batch.manifest_path)
    assert result.exit_code == 0
    for shot_id in ("dawn-lake", "blocked", "queued-2"):
        assert shot_id in result.stdout
    assert "dawn-lake.mp4" in result.stdout


def test_report_csv_and_json_with_filters(batch: Batch) -> None:
    rows = list(
        csv.DictReader(io.StringIO(run("report", batch.manifest_path, "--format", "csv").stdout))
    )
    assert len(rows) == 11
    failed = json.loads(run("report", batch.manifest_path, "--format", "json", "--failed").stdout)
    assert [r["shot_id"] for r in failed] == ["blocked", "broken"]
    parked = json.loads(
        run("report", batch.manifest_path, "--format", "json", "--state", "parked").stdout
    )
    assert [r["shot_id"] for r in parked] == ["lost-answer"]
    mixed = json.loads(
        run(
            "report",
            batch.manifest_path,
            "--format",
            "json",
            "--state",
            "done",
            "--state",
            "pending",
        ).stdout
    )
    assert {r["state"] for r in mixed} == {"done", "pending"} and len(mixed) == 6
    result = run("report", batch.manifest_path, "--state", "nonsense")
    assert result.exit_code == 2


def test_report_to_a_file(batch: Batch, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "all.json"
    result = run("report", batch.manifest_path, "--format", "json", "-o", target)
    assert result.exit_code == 0 and result.stdout == ""
    assert "wrote 11 shots" in result.stderr
    assert len(json.loads(target.read_text())) == 11
    table = tmp_path / "all.txt"
    run("report", batch.manifest_path, "-o", table)
    assert "dawn-lake" in table.read_text() and "\x1b[" not in table.read_text()


def test_report_html_goes_beside_the_outputs(batch: Batch) -> None:
    result = run("report", batch.manifest_path, "--format", "html")
    sheet = batch.output_dir / "contact-sheet.html"
    assert result.exit_code == 0 and sheet.is_file()
    assert sheet.as_uri() in result.stdout
    html = sheet.read_text()
    assert html.count('<article class="card"') == 11
    assert 'src="dawn-lake.mp4"' in html


def test_report_html_without_a_known_output_folder_goes_beside_the_ledger(
    batch: Batch, tmp_path: Path
) -> None:
    con = sqlite3.connect(batch.ledger_path)
    con.execute("DELETE FROM meta WHERE key = 'output_dir'")
    con.commit()
    con.close()
    result = run("report", batch.manifest_path, "--format", "html")
    assert result.exit_code == 0
    assert (tmp_path / "demo.contact-sheet.html").is_file()


def test_views_never_write_the_ledger(batch: Batch) -> None:
    def digest() -> str:
        return hashlib.sha256(batch.ledger_path.read_bytes()).hexdigest()

    before = digest()
    for args in (
        ["status"],
        ["status", "--format", "json"],
        ["report", "--format", "csv"],
        ["report", "--format", "html"],
    ):
        assert run(*args, batch.manifest_path).exit_code == 0
    assert digest() == before


def test_the_api_key_never_reaches_status_or_reports(
    batch: Batch, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a provider that echoed the key into an error message, stored as the shot's error
    con = sqlite3.connect(batch.ledger_path)
    con.execute(
        "UPDATE shots SET last_error = ? WHERE shot_id = 'broken'", (f"denied for key {KEY}",)
    )
    con.execute(
        "INSERT INTO events (at, kind, shot_id, message) VALUES (1, 'x', 'broken', ?)",
        (f"key {KEY}",),
    )
    con.commit()
    con.close()
    monkeypatch.setenv("PIXRUN_API_KEY", KEY)
    outputs = [
        run("status", batch.manifest_path).output,
        run("status", batch.manifest_path, "--format", "json").output,
    ]
    for fmt in ("table", "csv", "json"):
        outputs.append(run("report", batch.manifest_path, "--format", fmt).output)
    run("report", batch.manifest_path, "--format", "html", "-o", tmp_path / "s.html")
    outputs.append((tmp_path / "s.html").read_text())
    assert all("denied for key" in text or "key ***" in text for text in outputs[:2])
    for text in outputs:
        assert KEY not in text


def test_watch_on_a_terminal_redraws_one_board(batch: Batch) -> None:
    from rich.console import Console

    from runner.cli.view_cmds import _watch

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=100)
    asyncio.run(_watch(batch.ledger_path, console, "table", 0.01, 2))
    text = out.getvalue()
    assert "4/11 done" in text and "failed (2)" in text
    assert "\x1b[" in text  # drawn in place (cursor control), not appended as lines
