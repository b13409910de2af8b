"""End-to-end runs against the simulator over real HTTP on 127.0.0.1 (in-process)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import SIM_KEY, SimFactory
from runkit import assert_outputs_match, query
from shots import make_manifest, make_shot

from runner import outputs as outputs_module
from runner.errors import BudgetExceeded, ExitCode, UsageError
from runner.model import Manifest, OutputSettings, ShotState
from runner.run.batch import BatchOutcome, run_batch
from runner.run.events import RunEvent, RunEventKind, RunSnapshot
from runner.run.setup import RunOverrides
from runner.sim import Simulator


class Recorder:
    """A real observer that keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self.snapshots: list[RunSnapshot] = []

    def event(self, event: RunEvent) -> None:
        self.events.append(event)

    def snapshot(self, snapshot: RunSnapshot) -> None:
        self.snapshots.append(snapshot)

    def kinds(self) -> set[RunEventKind]:
        return {e.kind for e in self.events}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXRUN_API_KEY", SIM_KEY)


async def run(
    manifest: Manifest,
    sim: Simulator,
    recorder: Recorder | None = None,
    **overrides: Any,
) -> BatchOutcome:
    provider_options = overrides.pop("provider_options", {})
    # a changed done shot is re-rendered only with consent; another simulator (another
    # port) stands for the same provider here
    batch_flags = {
        "rerender_changed": overrides.pop("rerender_changed", False),
        "switch_provider": overrides.pop("switch_provider", False),
    }
    provider_options.setdefault("read_timeout_s", 2.0)
    provider_options.setdefault("total_timeout_s", 4.0)
    overrides.setdefault("backoff_base_s", 0.01)
    return await run_batch(
        manifest,
        recorder or Recorder(),
        overrides=RunOverrides(
            base_url=sim.base_url, provider_options=provider_options, **overrides
        ),
        handle_signals=False,
        **batch_flags,
    )


def ledger_of(manifest: Manifest) -> Path:
    return manifest.path.with_name("batch.ledger.sqlite")


def ledger_rows(manifest: Manifest, sql: str) -> list[tuple[Any, ...]]:
    return query(ledger_of(manifest), sql)


def assert_outputs_match_simulator(manifest: Manifest, sim: Simulator) -> int:
    """Every done shot's file is byte-identical to what the simulator served; no
    temporary file is left. Returns the number of done shots."""
    return assert_outputs_match(ledger_of(manifest), manifest.output.dir, sim.stats())


def charges_per_trace(sim: Simulator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in sim.stats()["tasks"]:
        if task["charged"] and not task["refunded"]:
            counts[task["trace_id"]] = counts.get(task["trace_id"], 0) + 1
    return counts


async def test_clean_batch_completes_with_one_charge_per_shot(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    sim = await sim_factory()
    shots = [make_shot(f"s{i:02d}") for i in range(24)]
    manifest = make_manifest(tmp_path, shots, concurrency=6)
    recorder = Recorder()
    outcome = await run(manifest, sim, recorder)
    assert outcome.result.exit_code == ExitCode.OK, outcome.result
    assert outcome.result.counts == {ShotState.DONE: 24}
    assert assert_outputs_match_simulator(manifest, sim) == 24
    stats = sim.stats()
    assert stats["accepted_tasks"] == 24
    assert stats["charges"]["net_uptc"] == 24 * 100_000
    assert outcome.result.spent_uptc == 24 * 100_000
    # sidecars carry what a person needs to trace a file back
    sidecar = json.loads((manifest.output.dir / "s00.mp4.json").read_text())
    assert sidecar["shot_id"] == "s00" and sidecar["sha256"] and sidecar["task_id"]
    assert sidecar["request"]["prompt"].startswith("a calm lake")
    assert RunEventKind.DONE in recorder.kinds()
    assert recorder.snapshots[-1].counts[ShotState.DONE] == 24


async def test_rerun_of_finished_batch_sends_nothing(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    sim = await sim_factory()
    manifest = make_manifest(tmp_path, [make_shot(f"s{i}") for i in range(5)])
    await run(manifest, sim)
    calls_before = dict(sim.stats()["calls"])
    outcome = await run(manifest, sim)
    assert outcome.result.exit_code == ExitCode.OK
    assert sim.stats()["calls"] == calls_before
    # a deleted output is downloaded again (never generated again)
    (manifest.output.dir / "s3.mp4").unlink()
    outcome = await run(manifest, sim)
    assert outcome.result.exit_code == ExitCode.OK
    assert (manifest.output.dir / "s3.mp4").exists()
    assert sim.stats()["accepted_tasks"] == 5
    assert assert_outputs_match_simulator(manifest, sim) == 5


async def test_faulty_provider_every_shot_ends_in_its_right_state(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    sim = await sim_factory(
        seed=7,
        # long enough that eight submissions are in flight at once: the cap of 4 bites
        render_time_s=(0.05, 0.1),
        error_5xx_share=0.15,
        rate_limit_share=0.1,
        retry_after_s=0.02,
        concurrency_limit=4,
        moderated_words=("forbidden",),
        fail_first_attempt_share=0.3,
        url_ttl_s=0.05,
        truncate_share=0.3,
    )
    shots = [make_shot(f"s{i:02d}") for i in range(30)]
    shots += [make_shot("mod1", prompt="a forbidden scene"), make_shot("mod2", prompt="forbidden")]
    manifest = make_manifest(tmp_path, shots, concurrency=8)
    recorder = Recorder()
    # one download at a time: queued URLs outlive their 50 ms and must be refreshed
    outcome = await run(manifest, sim, recorder, download_concurrency=1)
    counts = outcome.result.counts
    errors = ledger_rows(
        manifest, "SELECT shot_id, state, last_error FROM shots WHERE state NOT IN ('done')"
    )
    assert counts == {ShotState.DONE: 30, ShotState.MODERATED: 2}, errors
    assert outcome.result.exit_code == ExitCode.SHOTS_FAILED  # moderated shots did not succeed
    assert assert_outputs_match_simulator(manifest, sim) == 30
    # one net charge per successful shot; failed and moderated renders were refunded
    stats = sim.stats()
    assert stats["charges"]["net_uptc"] == 30 * 100_000
    # no trace id (shot attempt) was ever charged twice
    assert all(n == 1 for n in charges_per_trace(sim).values())
    faults = stats["faults"]
    assert faults.get("truncated_downloads", 0) > 0, faults
    assert stats["refusals"].get("concurrency", 0) > 0
    assert RunEventKind.THROTTLED in recorder.kinds()
    assert RunEventKind.RETRY in recorder.kinds()
    moderated = ledger_rows(manifest, "SELECT error_kind FROM shots WHERE state='moderated'")
    assert moderated == [("moderated",), ("moderated",)]


async def test_expired_urls_are_refreshed_by_fetching_never_by_generating(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    sim = await sim_factory(url_ttl_s=0.03)
    # 40 renders end together and queue for one download slot: the tail of the queue
    # outlives its URLs' 30 ms
    manifest = make_manifest(tmp_path, [make_shot(f"s{i:02d}") for i in range(40)], concurrency=40)
    recorder = Recorder()
    outcome = await run(manifest, sim, recorder, download_concurrency=1)
    assert outcome.result.counts == {ShotState.DONE: 40}
    stats = sim.stats()
    assert stats["refusals"].get("expired_url", 0) > 0, stats["refusals"]
    assert stats["accepted_tasks"] == 40
    assert RunEventKind.URL_REFRESHED in recorder.kinds()
    assert assert_outputs_match_simulator(manifest, sim) == 40


async def test_invalid_request_fails_the_shot_with_the_providers_message(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    sim = await sim_factory()
    # 1080p with fast motion: the provider refuses it (the manifest would too)
    bad = make_shot("bad", quality="1080p", motion_mode="fast")
    manifest = make_manifest(tmp_path, [make_shot("good"), bad])
    outcome = await run(manifest, sim)
    assert outcome.result.counts == {ShotState.DONE: 1, ShotState.FAILED: 1}
    assert outcome.result.exit_code == ExitCode.SHOTS_FAILED
    ((kind, error),) = ledger_rows(
        manifest, "SELECT error_kind, last_error FROM shots WHERE shot_id='bad'"
    )
    assert kind == "invalid" and "Invalid parameter" in error


async def test_plan_over_budget_refuses_to_start(tmp_path: Path, sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    manifest = make_manifest(
        tmp_path, [make_shot(f"s{i}") for i in range(5)], budget_ptc=Decimal("0.45")
    )
    with pytest.raises(BudgetExceeded, match="does not fit the budget") as info:
        await run(manifest, sim)
    assert info.value.exit_code == ExitCode.MONEY
    assert sim.stats()["calls"].get("generate", 0) == 0


async def test_run_stops_submitting_at_the_cap(tmp_path: Path, sim_factory: SimFactory) -> None:
    # every first render fails: the retries would pass the cap, which the run respects
    sim = await sim_factory(fail_first_attempt_share=1.0, refund_failed=False)
    manifest = make_manifest(
        tmp_path,
        [make_shot(f"s{i}") for i in range(4)],
        budget_ptc=Decimal("0.6"),
        concurrency=4,
    )
    recorder = Recorder()
    outcome = await run(manifest, sim, recorder)
    assert outcome.result.exit_code == ExitCode.MONEY
    assert outcome.result.spent_uptc <= 600_000
    assert sim.stats()["charges"]["sum_uptc"] <= 600_000
    assert RunEventKind.BUDGET_REACHED in recorder.kinds()


async def test_empty_account_stops_submitting_and_rerun_resumes(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    poor = await sim_factory(balance_ptc=Decimal("0.3"))
    manifest = make_manifest(tmp_path, [make_shot(f"s{i}") for i in range(6)], concurrency=2)
    outcome = await run(manifest, poor)
    assert outcome.result.exit_code == ExitCode.MONEY
    assert outcome.result.counts[ShotState.DONE] == 3
    assert outcome.result.counts[ShotState.PENDING] == 3
    assert "out of credit" in (outcome.result.message or "")
    rich = await sim_factory()
    outcome = await run(manifest, rich, switch_provider=True)
    assert outcome.result.exit_code == ExitCode.OK
    assert outcome.result.counts == {ShotState.DONE: 6}
    assert rich.stats()["accepted_tasks"] == 3


async def test_refused_key_stops_everything_and_fails_nothing(
    tmp_path: Path, sim_factory: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = await sim_factory()
    monkeypatch.setenv("PIXRUN_API_KEY", "wrong-key")
    manifest = make_manifest(tmp_path, [make_shot(f"s{i}") for i in range(6)])
    outcome = await run(manifest, sim)
    assert outcome.result.exit_code == ExitCode.AUTH
    assert set(outcome.result.counts) == {ShotState.PENDING}
    assert "wrong-key" not in (outcome.result.message or "")
    assert sim.stats()["accepted_tasks"] == 0


async def test_lost_answers_park_shots_and_a_streak_stops_submitting(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    sim = await sim_factory(lost_generate_share=1.0)
    manifest = make_manifest(tmp_path, [make_shot(f"s{i}") for i in range(12)], concurrency=1)
    recorder = Recorder()
    outcome = await run(manifest, sim, recorder)
    assert outcome.result.counts[ShotState.AMBIGUOUS] == 5
    assert outcome.result.counts[ShotState.PENDING] == 7
    assert "in a row" in (outcome.result.message or "")
    # exactly the shots whose request reached the provider are parked
    parked = {
        r[0] for r in ledger_rows(manifest, "SELECT shot_id FROM shots WHERE state='ambiguous'")
    }
    accepted_prompts = {t["prompt"] for t in sim.stats()["tasks"]}
    assert {f"a calm lake at dawn, shot {s}" for s in parked} == accepted_prompts
    # a rerun does not resubmit them
    sim.config.lost_generate_share = 0.0
    outcome = await run(manifest, sim)
    assert outcome.result.counts == {ShotState.DONE: 7, ShotState.AMBIGUOUS: 5}
    assert sim.stats()["accepted_tasks"] == 12


async def test_existing_different_file_is_never_overwritten(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    sim = await sim_factory()
    manifest = make_manifest(tmp_path, [make_shot("a"), make_shot("b")])
    manifest.output.dir.mkdir(parents=True)
    precious = manifest.output.dir / "a.mp4"
    precious.write_bytes(b"someone else's file")
    # refused before anything is spent, rather than paid for and then refused
    with pytest.raises(UsageError, match=r"a\.mp4"):
        await run(manifest, sim)
    assert precious.read_bytes() == b"someone else's file"
    assert sim.stats()["calls"].get("generate", 0) == 0


async def test_changed_shot_becomes_a_new_version_and_keeps_the_old_file(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    sim = await sim_factory()
    first = make_manifest(tmp_path, [make_shot("a"), make_shot("b")])
    await run(first, sim)
    old_bytes = (first.output.dir / "a.mp4").read_bytes()
    second = make_manifest(tmp_path, [make_shot("a", prompt="a stormy sea"), make_shot("b")])
    outcome = await run(second, sim, rerender_changed=True)
    assert outcome.result.counts == {ShotState.DONE: 2}
    assert sim.stats()["accepted_tasks"] == 3
    assert (first.output.dir / "a.v1.mp4").read_bytes() == old_bytes
    assert (first.output.dir / "a.mp4").read_bytes() != old_bytes
    ((version, sha256, done_at),) = ledger_rows(
        second, "SELECT version, sha256, done_at FROM shots WHERE shot_id='a'"
    )
    assert version == 2
    # the new version's video was placed over the old one: its sidecar is the new one's
    sidecar = json.loads((first.output.dir / "a.mp4.json").read_text())
    assert sidecar["version"] == 2 and sidecar["prompt"] == "a stormy sea"
    # the older version's sidecar moved aside with it, and the ledger says where
    aside = json.loads((first.output.dir / "a.v1.mp4.json").read_text())
    assert aside["version"] == 1 and aside["sha256"] == hashlib.sha256(old_bytes).hexdigest()
    assert ledger_rows(second, "SELECT version, output_path FROM shot_versions") == [
        (1, "a.v1.mp4")
    ]
    assert (
        sidecar["sha256"]
        == sha256
        == hashlib.sha256((first.output.dir / "a.mp4").read_bytes()).hexdigest()
    )
    assert sidecar["done_at"] == done_at


@pytest.mark.parametrize("sidecar", [True, False], ids=["with-sidecar", "no-sidecar"])
async def test_a_new_version_placed_over_the_old_file_is_made_durable(
    tmp_path: Path, sim_factory: SimFactory, monkeypatch: pytest.MonkeyPatch, sidecar: bool
) -> None:
    """Moving the old version aside and the new one into place creates names: the
    folder is fsynced after both, before the shot is done, with or without a sidecar;
    with one, after the new version's sidecar is in place too."""
    sim = await sim_factory()
    output = OutputSettings(dir=tmp_path / "out", sidecar=sidecar)
    first = replace(make_manifest(tmp_path, [make_shot("a")]), output=output)
    await run(first, sim)
    names_at_fsync: list[set[str]] = []

    def fsync_dir(directory: Path) -> None:
        if directory == output.dir:
            names = {p.name for p in directory.iterdir()}
            if "a.mp4.json" in names:  # which version's sidecar has the name
                version = json.loads((directory / "a.mp4.json").read_text())["version"]
                names.add(f"sidecar of version {version}")
            names_at_fsync.append(names)

    monkeypatch.setattr(outputs_module, "_fsync_dir", fsync_dir)
    second = replace(
        make_manifest(tmp_path, [make_shot("a", prompt="a stormy sea")]), output=output
    )
    outcome = await run(second, sim, rerender_changed=True)
    assert outcome.result.counts == {ShotState.DONE: 1}
    assert (output.dir / "a.v1.mp4").exists()
    # an fsync saw the old version aside and no staging file left: it covers the moves
    # (and, with sidecars, the old version's sidecar moved aside with it and the new
    # version's sidecar under its name)
    covered = {"a.v1.mp4", "a.v1.mp4.json", "sidecar of version 2"} if sidecar else {"a.v1.mp4"}
    assert any(
        covered <= names and not {".a.mp4.incoming", ".a.mp4.json.tmp"} & names
        for names in names_at_fsync
    ), names_at_fsync
