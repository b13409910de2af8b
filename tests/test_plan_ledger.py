"""`pixrun plan` against a ledger: what is done, in flight, parked, failed, changed."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from runkit import (
    PRICE_UPTC,
    SimThread,
    env_for,
    explain,
    in_state,
    pixrun,
    run_args,
    states,
)
from runkit import write_manifest as write_sim_manifest

from runner.cli import cli
from runner.ledger import open_ledger
from runner.manifest import load_manifest
from runner.model import ShotState
from runner.money import from_uptc

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


def plan_json(manifest: Path) -> dict[str, Any]:
    """``pixrun plan --format json`` in process; it must succeed."""
    result = CliRunner().invoke(cli, ["plan", str(manifest), "--format", "json"])
    assert result.exit_code == 0, result.output
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


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
    plan = plan_json(manifest)
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


def test_plan_prices_what_the_run_then_spends_when_abandoned_shots_come_back(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Two shots dropped from the manifest while pending are abandoned; put back
    unchanged, the next run revives and pays for them. ``pixrun plan`` must say so:
    its remaining cost is what that run then spends, and spent + remaining is what the
    provider charged in all."""
    sim = sim_thread(balance_ptc=Decimal("0.2"))
    batch = write_sim_manifest(tmp_path, 4, concurrency=1)
    env = env_for(sim.base_url)
    poor = pixrun(run_args(batch), env, cwd=tmp_path)
    assert poor.returncode == 4, explain(poor)  # out of credit after two shots
    done, waiting = in_state(batch.ledger, "done"), in_state(batch.ledger, "pending")
    assert len(done) == 2 and len(waiting) == 2
    full = batch.manifest.read_text(encoding="utf-8")
    doc = yaml.safe_load(full)
    doc["shots"] = [s for s in doc["shots"] if s["id"] in done]
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    shrunk = pixrun(run_args(batch), env, cwd=tmp_path)
    # (exit 1: the run's summary counts the dropped shots as not done; what matters
    # here is what the ledger then holds)
    assert shrunk.returncode in (0, 1), explain(shrunk)
    assert in_state(batch.ledger, "abandoned") == waiting
    batch.manifest.write_text(full, encoding="utf-8")  # the two shots come back unchanged
    sim.simulator.books.balance_uptc = 10 * PRICE_UPTC

    planned = pixrun(["plan", str(batch.manifest), "--format", "json"], env, cwd=tmp_path)
    assert planned.returncode == 0, explain(planned)
    plan = json.loads(planned.stdout)
    charged_before_uptc = sim.stats()["charges"]["net_uptc"]
    run = pixrun(run_args(batch), env, cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    charged_uptc = sim.stats()["charges"]["net_uptc"]

    assert states(batch.ledger) == dict.fromkeys(batch.ids, "done")
    (group,) = plan["groups"]
    assert group["by_status"] == {"done": 2, "to_submit": 2}
    assert Decimal(plan["spent_ptc"]) == from_uptc(charged_before_uptc)
    assert Decimal(plan["remaining_ptc"]) == from_uptc(charged_uptc - charged_before_uptc)
    assert Decimal(plan["spent_ptc"]) + Decimal(plan["remaining_ptc"]) == from_uptc(charged_uptc)


def test_a_changed_shot_caught_mid_submit_is_planned_as_parked_as_the_run_parks_it(
    tmp_path: Path,
) -> None:
    """A crashed run left s0 in ``submitting`` (its request may have been charged), and
    then its prompt changed. The next run's sync leaves it alone and parks it; the plan
    must not price it as a changed shot to submit."""
    prompts = {"s0": "first prompt", "s1": "second prompt"}
    manifest = write_manifest(tmp_path, prompts)
    ledger_path = manifest.with_name("planned.ledger.sqlite")

    async def crash_mid_submit() -> None:
        async with await open_ledger(ledger_path, writer=True) as ledger:
            await ledger.sync_manifest(load_manifest(manifest).shots)
            await ledger.start_run()
            row = await ledger.get_shot("s0")
            assert row is not None
            await ledger.begin_attempt(row, attempt_no=1, trace_id="s0", new_attempt=True)

    asyncio.run(crash_mid_submit())
    prompts["s0"] = "an edited prompt"
    write_manifest(tmp_path, prompts)
    plan = plan_json(manifest)
    (group,) = plan["groups"]
    assert group["by_status"] == {"parked": 1, "to_submit": 1}
    assert plan["remaining_count"] == 1

    async def next_run_start() -> ShotState:
        async with await open_ledger(ledger_path, writer=True) as ledger:
            sync = await ledger.sync_manifest(load_manifest(manifest).shots)
            assert sync.changed == ("s0",)
            await ledger.recover()
            row = await ledger.get_shot("s0")
            assert row is not None and row.version == 1
            return row.state

    assert asyncio.run(next_run_start()) == ShotState.AMBIGUOUS
