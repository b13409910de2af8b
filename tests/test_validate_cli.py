"""``pixrun validate``, ``pixrun plan`` and ``pixrun schema`` through click: exit codes,
where output goes, and the json/csv shapes scripts rely on."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from click.testing import CliRunner, Result

from runner.cli import cli
from runner.manifest.schema import manifest_schema_json

REPO = Path(__file__).parent.parent
DEMO = str(REPO / "manifests" / "demo.yaml")
EXAMPLE = str(REPO / "manifests" / "example.yaml")
INVALID = Path(__file__).parent / "data" / "manifests" / "invalid"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return str(path)


def write_shots(tmp_path: Path, *shots: str) -> str:
    """A version 1 manifest of ``shots``, each a flow mapping (``{prompt: p, ...}``)."""
    return write(tmp_path, "version: 1\nshots:\n" + "".join(f"  - {s}\n" for s in shots))


def test_validate_valid_manifests_exit_0() -> None:
    result = run("validate", DEMO, EXAMPLE)
    assert result.exit_code == 0, result.output
    # one summary line per file ("valid" alone would also match "invalid")
    assert result.stdout.splitlines() == [
        f"valid: {DEMO} (5 shots)",
        f"valid: {EXAMPLE} (17 shots)",
    ]
    assert result.stderr == ""


def test_validate_invalid_exit_2_with_locations() -> None:
    bad = str(INVALID / "combination-rules.yaml")
    result = run("validate", bad)
    assert result.exit_code == 2
    assert f"{bad}:8:18" in result.stderr
    assert "shot hd-fast" in result.stderr and "shots[0].motion_mode" in result.stderr
    assert "fix:" in result.stderr
    assert "invalid" in result.stdout and "15 errors" in result.stdout


def test_validate_mixed_files_exit_2_and_reports_both() -> None:
    bad = str(INVALID / "keys.yaml")
    result = run("validate", DEMO, bad)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [f"valid: {DEMO} (5 shots)", f"invalid: {bad} (11 errors)"]


def test_validate_json_is_a_list_of_problem_objects() -> None:
    result = run("validate", "--format", "json", str(INVALID / "keys.yaml"))
    assert result.exit_code == 2
    problems = json.loads(result.stdout)
    assert len(problems) == 11
    first = problems[0]
    assert set(first) == {
        "file",
        "line",
        "column",
        "severity",
        "shot_id",
        "field",
        "message",
        "hint",
    }
    assert (first["line"], first["column"], first["field"]) == (2, 1, "concurrency")
    assert json.loads(run("validate", "--format", "json", DEMO).stdout) == []


def test_warnings_do_not_fail(tmp_path: Path) -> None:
    same = "{prompt: p, model: v4, quality: 360p}"
    result = run("validate", write_shots(tmp_path, same, same))
    assert result.exit_code == 0
    assert "warning" in result.stderr and "duplicate shot" in result.stderr
    assert "1 warning" in result.stdout


def test_validate_missing_file_exit_2(tmp_path: Path) -> None:
    result = run("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "no such manifest" in result.stderr


def test_garbage_never_shows_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage: [\x00")
    for command in ("validate", "plan"):
        result = run(command, str(path))
        assert result.exit_code == 2
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_plan_table() -> None:
    result = run("plan", EXAMPLE)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "fusion" in out and "v5.5" in out and "0.15" in out
    assert "total: 3.15 PTC for 17 shots" in out
    assert "fits the budget of 12.5 PTC" in out


def test_plan_over_budget_exits_4_saying_by_how_much() -> None:
    result = run("plan", DEMO, "--max-cost", "0.3")
    assert result.exit_code == 4
    # 0.5 PTC of shots and 3 local images to upload once each (0.001 PTC each)
    assert "3 local images to upload once each" in result.stdout
    assert "over the budget of 0.3 PTC by 0.203 PTC" in result.stdout
    assert "by 0.203 PTC" in result.stderr


def test_plan_unknown_prices_are_counted_not_zero(tmp_path: Path) -> None:
    path = write_shots(
        tmp_path,
        "{prompt: p, model: v4, quality: 360p, duration: 10}",
        "{prompt: q, model: v4, quality: 360p}",
    )
    result = run("plan", path)
    assert result.exit_code == 0
    assert "unknown" in result.stdout and "1 shot has no published price" in result.stdout
    data = json.loads(run("plan", path, "--format", "json").stdout)
    assert data["unpriced_count"] == 1 and data["total_ptc"] == "0.1"


def test_plan_json_and_csv() -> None:
    data = json.loads(run("plan", EXAMPLE, "--format", "json").stdout)
    assert data["total_ptc"] == "3.15" and data["fits"] is True
    assert sum(g["count"] for g in data["groups"]) == 17
    rows = list(csv.DictReader(io.StringIO(run("plan", EXAMPLE, "--format", "csv").stdout)))
    assert sum(int(r["count"]) for r in rows) == 17
    assert rows[0]["mode"] == "text" and rows[0]["unit_price_ptc"] == "0.15"


def test_plan_invalid_manifest_exit_2() -> None:
    result = run("plan", str(INVALID / "types.yaml"))
    assert result.exit_code == 2
    assert "types.yaml:13:13" in result.stderr


def test_plan_options(tmp_path: Path) -> None:
    assert run("plan", DEMO, "--max-cost", "lots").exit_code == 2
    missing = run("plan", DEMO, "--ledger", str(tmp_path / "l.sqlite"))
    assert missing.exit_code == 2 and "no ledger" in missing.stderr
    prices = tmp_path / "p.json"
    prices.write_text('{"base_ptc": "1", "multipliers": {"quality": {"360p": "2"}}}')
    data = json.loads(run("plan", DEMO, "--prices", str(prices), "--format", "json").stdout)
    assert data["total_ptc"] == "10"
    prices.write_text("nope")
    bad = run("plan", DEMO, "--prices", str(prices))
    assert bad.exit_code == 2 and "price table" in bad.stderr


def test_schema_command_prints_the_schema() -> None:
    result = run("schema")
    assert result.exit_code == 0
    assert result.stdout == manifest_schema_json()
