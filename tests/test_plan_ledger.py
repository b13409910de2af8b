"""`pixrun plan` against a ledger: what is done, in flight, parked, failed, changed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from runner.cli import cli
from runner.ledger import open_ledger
from runner.manifest import load_manifest
from runner.model import ShotState

MANIFEST = """\
version: 1
name: planned
defaults: {model: v4.5, quality: 360p, duration: 5}
output: {dir: out}
run: {budget_ptc: 0.75}
shots:
"""


def write_manifest(folder: Path, prompts: dict[str, str]) -> Path:
    body = MANIFEST + "".join(
        f"  - id: {sid}\n    prompt: {prompt}\n" for sid, prompt in prompts.items()
    )
    path = folder / "planned.yaml"
    path.write_text(body)
    return path


async def record_earlier_run(manifest: Path) -> None:
    loaded = load_manifest(manifest)
    ledger_path = manifest.with_name("planned.ledger.sqlite")
    async with await open_ledger(ledger_path, writer=True) as ledger:
        await ledger.sync_manifest(loaded.shots)
        await ledger.start_run()
        states = {
            "s0": ShotState.DONE,
            "s1": ShotState.DONE,
            "s2": ShotState.SUBMITTED,
            "s3": ShotState.AMBIGUOUS,
            "s4": ShotState.FAILED,
        }
        for sid, state in states.items():
            row = await ledger.get_shot(sid)
            assert row is not None
            attempt = await ledger.begin_attempt(row, attempt_no=1, trace_id=sid, new_attempt=True)
            if state != ShotState.AMBIGUOUS:
                await ledger.attempt_accepted(sid, attempt, f"task-{sid}", 100_000, 0.0)
            await ledger.update_shot(sid, {"state": state})


def test_plan_reads_the_ledger_and_prices_only_what_remains(tmp_path: Path) -> None:
    prompts = {f"s{i}": f"prompt number {i}" for i in range(8)}
    manifest = write_manifest(tmp_path, prompts)
    asyncio.run(record_earlier_run(manifest))
    # s5 changes its prompt; s6 and s7 are untouched and pending
    prompts["s5"] = "a different prompt"
    write_manifest(tmp_path, prompts)
    result = CliRunner().invoke(cli, ["plan", str(manifest), "--format", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    (group,) = plan["groups"]
    assert group["by_status"] == {
        "done": 2,
        "in_flight": 1,
        "parked": 1,
        "failed": 1,
        "changed": 1,
        "to_submit": 2,
    }
    # 4 accepted submissions spent 0.4; 3 shots remain to pay for (changed + 2 pending)
    assert plan["spent_ptc"] == "0.4"
    assert plan["remaining_count"] == 3 and plan["remaining_ptc"] == "0.3"
    assert plan["fits"] is True
    # a tighter cap counts what was already spent
    over = CliRunner().invoke(cli, ["plan", str(manifest), "--max-cost", "0.6"])
    assert over.exit_code == 4
    assert "by 0.1" in over.stderr
