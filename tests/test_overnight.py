"""The overnight queue's parts together: several manifests in one run (and in a watched
folder) with a sample, the failure-rate brake, notifications and a manifest on stdin.

Each feature has its own tests (test_multi, test_sample, test_brake, test_notify,
test_cli_habits); these check that they hold per manifest when manifests share a run.
The runner is a real subprocess against a simulator thread, and notify targets are
real HTTP servers (tests/hookkit.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from hookkit import Receiver
from runkit import (
    Batch,
    SimThread,
    env_for,
    explain,
    pixrun,
    start,
    states,
    wait_until,
    write_manifest,
)

from runner.errors import BatchDefect, ExitCode
from runner.model import ShotState
from runner.run.batch import BatchOutcome
from runner.run.context import SharedFlow
from runner.run.multi import BatchEnd, BatchSet, BatchSettings, run_batches
from runner.run.options import RunResult, StopReason
from runner.run.watch import HotFolder

FAST = ["--notify-backoff-s", "0.01"]
FLAGS = ["--backoff-base-s", "0.01", *FAST]


def _batch(folder: Path, name: str, n: int, **kw: Any) -> Batch:
    """Manifest ``NAME.yaml`` whose prompts start with its name, writing to ``out-NAME``."""
    notify: str | None = kw.pop("notify", None)
    halt: dict[str, Any] | None = kw.pop("halt", None)
    scenes = kw.pop("scenes", {f"s{i:02d}": f"{name} scene" for i in range(n)})
    batch = write_manifest(
        folder, n, name=name, output_dir=Path(f"out-{name}"), scenes=scenes, **kw
    )
    doc = yaml.safe_load(batch.manifest.read_text(encoding="utf-8"))
    if notify is not None:
        doc["run"]["notify"] = notify
    if halt is not None:
        doc["run"]["halt"] = halt
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return batch


def _charged(stats: dict[str, Any]) -> Counter[str]:
    """Net charges per manifest (the prompt's first word)."""
    return Counter(
        t["prompt"].split(" ")[0] for t in stats["tasks"] if t["charged"] and not t["refunded"]
    )


def _names(r: Receiver) -> list[str]:
    return sorted(s["manifest"]["name"] for s in r.summaries())


def test_a_sample_applies_to_each_manifest_and_the_rest_follows(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    a, b = _batch(tmp_path, "a", 5), _batch(tmp_path, "b", 4)
    both = ["run", str(a.manifest), str(b.manifest), "--yes", "--quiet", *FLAGS]
    env = env_for(sim.base_url)

    sampled = pixrun([*both, "--limit", "2"], env, cwd=tmp_path)
    assert sampled.returncode == 0, explain(sampled)  # the rest is left on purpose
    assert _charged(sim.stats()) == {"a": 2, "b": 2}
    for batch in (a, b):
        assert Counter(states(batch.ledger).values()) == {"done": 2, "pending": len(batch.ids) - 2}

    # a pattern that matches nothing anywhere is refused before anything is sent
    typo = pixrun([*both, "--only", "hero*"], env, cwd=tmp_path)
    assert typo.returncode == ExitCode.INVALID, explain(typo)
    assert "matches no shot of any manifest" in typo.stderr
    assert _charged(sim.stats()) == {"a": 2, "b": 2}

    # s04 exists only in a: b's sample is empty, and b sends nothing
    only = pixrun([*both, "--only", "s04"], env, cwd=tmp_path)
    assert only.returncode == 0, explain(only)
    assert _charged(sim.stats()) == {"a": 3, "b": 2}
    assert states(a.ledger)["s04"] == "done" and states(b.ledger)["s03"] == "pending"

    rest = pixrun(both, env, cwd=tmp_path)
    assert rest.returncode == 0, explain(rest)
    assert _charged(sim.stats()) == {"a": 5, "b": 4}  # nothing paid for twice
    prompts = Counter(t["prompt"] for t in sim.stats()["tasks"] if t["charged"])
    assert set(prompts.values()) == {1}, prompts
    for batch in (a, b):
        assert set(states(batch.ledger).values()) == {"done"}


def test_the_brake_stops_one_manifest_and_the_others_finish(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread(moderated_words=("forbidden",))
    failing = _batch(
        tmp_path,
        "bad",
        30,
        scenes={f"s{i:02d}": "bad forbidden scene" for i in range(30)},
        halt={"failure_share": 0.5, "window": 6},
        concurrency=2,
        max_attempts=1,
    )
    good = _batch(tmp_path, "good", 6, concurrency=2)
    result = pixrun(
        ["run", str(failing.manifest), str(good.manifest), "--yes", "--json-logs", *FLAGS],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    assert result.returncode == ExitCode.SHOTS_FAILED, explain(result)
    records = [yaml.safe_load(line) for line in result.stdout.splitlines()]
    summaries = {r["manifest"]: r for r in records if r.get("type") == "summary"}
    braked = summaries[str(failing.manifest)]
    assert braked["stop_reason"] == "brake" and braked["message"].startswith("brake: ")
    assert summaries[str(good.manifest)]["exit_code"] == 0
    assert set(states(good.ledger).values()) == {"done"}
    after = Counter(states(failing.ledger).values())
    assert after["pending"] > 0 and set(after) <= {"moderated", "pending"}, after
    assert _charged(sim.stats())["good"] == 6


def test_each_manifest_of_several_is_told_once(
    sim_thread: SimThread, tmp_path: Path, receiver: Any
) -> None:
    """Its own run.notify gets its own summary; --notify gets one per manifest, the
    invalid one's too (status error); each comes once."""
    sim = sim_thread()
    own, every = receiver(), receiver()
    a = _batch(tmp_path, "a", 3, notify=own.url)
    b = _batch(tmp_path, "b", 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nshots:\n  - prompt: ''\n    seed: -4\n")
    result = pixrun(
        ["run", str(a.manifest), str(bad), str(b.manifest), "-yq", "--notify", every.url, *FLAGS],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    said = explain(result)
    assert result.returncode == ExitCode.INVALID, said
    assert _names(own) == ["a"], said
    assert _names(every) == ["a", "b", "bad"], said
    by_name = {s["manifest"]["name"]: s for s in every.summaries()}
    assert by_name["a"] == own.summaries()[0]
    assert by_name["a"]["status"] == "ok" and by_name["a"]["counts"]["done"] == 3
    assert by_name["b"]["status"] == "ok" and by_name["b"]["counts"]["done"] == 2
    assert by_name["bad"]["status"] == "error" and by_name["bad"]["exit_code"] == 2
    assert by_name["bad"]["text"].startswith("pixrun: 'bad' did not run, exit 2")
    assert len({s["id"] for s in every.summaries()}) == 3


def test_a_refused_command_line_tells_every_manifest(
    sim_thread: SimThread, tmp_path: Path, receiver: Any
) -> None:
    """--only matching no shot of any manifest refuses the whole run before anything is
    sent; each manifest's summary says so (status error), as one run alone would."""
    sim = sim_thread()
    every = receiver()
    a, b = _batch(tmp_path, "a", 2), _batch(tmp_path, "b", 2)
    result = pixrun(
        [
            "run",
            str(a.manifest),
            str(b.manifest),
            "-yq",
            "--only",
            "hero*",
            "--notify",
            every.url,
            *FLAGS,
        ],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    said = explain(result)
    assert result.returncode == ExitCode.INVALID, said
    assert _charged(sim.stats()) == {}
    assert _names(every) == ["a", "b"], said
    assert {s["status"] for s in every.summaries()} == {"error"}
    assert all("--only 'hero*'" in s["message"] for s in every.summaries())


def test_a_watched_folder_tells_each_manifest_that_ends(
    sim_thread: SimThread, tmp_path: Path, receiver: Any
) -> None:
    sim = sim_thread()
    own, every = receiver(), receiver()
    hot = tmp_path / "hot"
    hot.mkdir()
    staged = _batch(tmp_path / "stage", "a", 2, notify=own.url)
    os.replace(staged.manifest, hot / "a.yaml")
    (hot / "bad.yaml").write_text("version: 1\nname: bad\nshots:\n  - prompt: ''\n")
    result = pixrun(
        ["watch", str(hot), "--once", "-q", "--stable-s", "0.2", "--notify", every.url, *FAST],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    said = explain(result)
    assert result.returncode == ExitCode.INVALID, said
    assert _names(own) == ["a"] and _names(every) == ["a", "bad"], said
    done = own.summaries()[0]
    assert done["status"] == "ok" and done["counts"]["done"] == 2
    assert done["manifest"]["path"] == str(hot / "done" / "a.yaml")  # where it is now
    rejected = next(s for s in every.summaries() if s["manifest"]["name"] == "bad")
    assert rejected["status"] == "error"
    assert rejected["manifest"]["path"] == str(hot / "rejected" / "bad.yaml")


def test_one_of_several_manifests_can_come_from_stdin(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    a = _batch(tmp_path / "stage", "a", 2)
    b = _batch(tmp_path, "b", 2)
    text = a.manifest.read_text(encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", "-", str(b.manifest), "--yes", "--quiet", *FLAGS],
        env=env_for(sim.base_url),
        cwd=tmp_path,
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    # the text stands for ./a.yaml: its ledger and outputs are found from there
    assert set(states(tmp_path / "a.ledger.sqlite").values()) == {"done"}
    assert sorted(p.name for p in (tmp_path / "out-a").glob("*.mp4")) == ["s00.mp4", "s01.mp4"]
    assert _charged(sim.stats()) == {"a": 2, "b": 2}


def test_a_manifest_dropped_again_counts_once_under_the_overall_cap(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """--max-cost over a watched folder counts each ledger once: ``a`` done and dropped
    again (nothing left to send) still holds its 0.2 PTC, not 0.4, so ``b`` fits."""
    sim = sim_thread()
    hot = tmp_path / "hot"
    hot.mkdir()
    args = ["watch", str(hot), "-q", "--stable-s", "0.2", "--max-cost", "0.45"]
    watching = start(args, env_for(sim.base_url), cwd=tmp_path, tag="watch")
    try:
        wait_until(lambda: (hot / "done").is_dir(), what="the watch to start")
        a = _batch(tmp_path / "stage", "a", 2)  # 0.1 PTC a shot
        os.replace(a.manifest, hot / "a.yaml")
        wait_until(lambda: (hot / "done" / "a.yaml").exists(), what="a done")
        shutil.copy(hot / "done" / "a.yaml", hot / "a.yaml")  # the same file, again
        wait_until(lambda: not (hot / "a.yaml").exists(), what="a done again")
        b = _batch(tmp_path / "stage", "b", 2)
        os.replace(b.manifest, hot / "b.yaml")
        wait_until(
            lambda: (hot / "done" / "b.yaml").exists() or (hot / "rejected" / "b.yaml").exists(),
            what="b done or refused",
        )
    finally:
        watching.signal(signal.SIGINT)
        code = watching.wait(30)
    said = explain(watching)
    assert code == 130, said
    assert (hot / "done" / "b.yaml").exists(), said
    assert set(states(hot / "ledgers" / "b.ledger.sqlite").values()) == {"done"}, said
    assert _charged(sim.stats()) == {"a": 2, "b": 2}


def test_a_manifest_refused_after_its_claim_gives_the_claim_back(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """b passes the overall cap, then is refused (a foreign file at one of its outputs)
    with nothing sent: its 0.2 PTC go back to the cap, so c still fits."""
    sim = sim_thread()
    a, b, c = (_batch(tmp_path, name, 2) for name in ("a", "b", "c"))  # 0.2 PTC each
    (tmp_path / "out-b").mkdir()
    (tmp_path / "out-b" / "s00.mp4").write_bytes(b"someone else's video")
    result = pixrun(
        [
            "run",
            str(a.manifest),
            str(b.manifest),
            str(c.manifest),
            "-yq",
            "--max-cost",
            "0.45",
            *FLAGS,
        ],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    said = explain(result)
    assert result.returncode == ExitCode.INVALID, said  # b's refusal
    assert "s00.mp4" in said and "overall cap" not in said, said
    assert _charged(sim.stats()) == {"a": 2, "c": 2}
    assert set(states(c.ledger).values()) == {"done"}


# -- ends that are not ordinary, in process ---------------------------------------------
# A batch is replaced by a stand-in task (BatchSet.prepare patched): what is checked is
# how the run of several and the hot folder deal with its end, not the batch itself.


def _outcome(tmp_path: Path, stop: StopReason | None = None) -> BatchOutcome:
    return BatchOutcome(
        result=RunResult(
            exit_code=1 if stop else 0,
            stop_reason=stop,
            message=None,
            counts={ShotState.DONE: 1},
            spent_uptc=0,
            elapsed_s=0.1,
            calls={},
            ledger_commits=0,
        ),
        ledger_path=tmp_path / "x.ledger.sqlite",
        output_dir=tmp_path / "out",
        recovered_ambiguous=[],
        new_shots=1,
        changed_shots=0,
    )


def _stand_in(name: str) -> Any:
    """What the hot folder and the run read of a manifest."""
    run = SimpleNamespace(notify=(), concurrency=2, requests_per_s=10.0, priority=0)
    return SimpleNamespace(name=name, path=Path(f"{name}.yaml"), run=run)


def _patch_batches(
    monkeypatch: pytest.MonkeyPatch, body: Callable[[Any], Coroutine[Any, Any, BatchOutcome]]
) -> list[str]:
    """Every prepared batch runs ``body(manifest)``; returns the names prepared."""
    prepared: list[str] = []

    async def prepare(self: BatchSet, manifest: Any, rank: Any) -> asyncio.Task[BatchOutcome]:
        prepared.append(manifest.name)
        return asyncio.create_task(body(manifest))

    monkeypatch.setattr(BatchSet, "prepare", prepare)
    return prepared


async def test_a_defect_in_one_batch_of_several_ends_it_alone_and_every_end_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(manifest: Any) -> BatchOutcome:
        await asyncio.sleep(0.01 if manifest.name == "bad" else 0.2)
        if manifest.name == "bad":
            raise RuntimeError("a defect")
        return _outcome(tmp_path)

    _patch_batches(monkeypatch, body)
    told: list[BatchEnd] = []

    async def on_end(end: BatchEnd) -> None:
        told.append(end)

    manifests = [_stand_in("bad"), _stand_in("good")]
    ends = await run_batches(
        manifests, BatchSettings(), lambda m: None, handle_signals=False, on_end=on_end
    )
    assert [e.name for e in told] == ["bad", "good"]  # each as it ended, the good one too
    assert isinstance(ends[0].error, BatchDefect) and "RuntimeError: a defect" in str(ends[0].error)
    assert ends[0].exit_code == ExitCode.SHOTS_FAILED
    assert ends[1].outcome is not None and ends[1].exit_code == 0


def _hot(tmp_path: Path, ends: list[BatchEnd], news: list[str], stable_s: float) -> HotFolder:
    async def on_end(end: BatchEnd) -> None:
        ends.append(end)

    return HotFolder(
        tmp_path,
        SharedFlow(2, 10.0, None),
        BatchSettings(),
        lambda manifest: None,  # type: ignore[arg-type,return-value]
        lambda path: _stand_in(path.stem),
        lambda n: news.append(f"{n.kind} {n.path.name}"),
        stable_s=stable_s,
        on_end=on_end,
    )


async def test_a_stopped_manifest_is_not_restarted_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The brake (or an empty account, a defect...) leaves the manifest in the folder:
    the running watch must not start it again every moment, paying and telling anew."""
    fixed = asyncio.Event()

    async def body(manifest: Any) -> BatchOutcome:
        return _outcome(tmp_path, None if fixed.is_set() else StopReason.BRAKE)

    prepared = _patch_batches(monkeypatch, body)
    ends: list[BatchEnd] = []
    news: list[str] = []
    hot = _hot(tmp_path, ends, news, stable_s=0.02)
    (tmp_path / "a.yaml").write_text("version: 1\n")
    watching = asyncio.create_task(hot.run())
    try:
        await _until(lambda: len(ends) == 1)
        await asyncio.sleep(0.5)  # 25 times the stable time: long enough to loop
        assert prepared == ["a"] and len(ends) == 1, news
        assert (tmp_path / "a.yaml").exists() and "stopped a.yaml" in news
        fixed.set()
        (tmp_path / "a.yaml").write_text("version: 1\nname: fixed\n")  # saved over it
        await _until(lambda: len(ends) == 2)
        assert prepared == ["a", "a"] and (tmp_path / "done" / "a.yaml").exists()
    finally:
        hot.stop()
        await watching


async def test_a_defect_in_a_watched_batch_is_told_and_the_folder_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(manifest: Any) -> BatchOutcome:
        if manifest.name == "bad":
            raise RuntimeError("a defect")
        return _outcome(tmp_path)

    _patch_batches(monkeypatch, body)
    ends: list[BatchEnd] = []
    news: list[str] = []
    hot = _hot(tmp_path, ends, news, stable_s=0.0)
    for name in ("bad", "good"):
        (tmp_path / f"{name}.yaml").write_text("version: 1\n")
    result = await asyncio.wait_for(hot.run(once=True), 10)
    assert sorted(e.name or "" for e in result) == ["bad", "good"]
    assert sorted(e.name or "" for e in ends) == ["bad", "good"]  # both told
    bad = next(e for e in ends if e.name == "bad")
    assert isinstance(bad.error, BatchDefect)
    assert (tmp_path / "bad.yaml").exists() and (tmp_path / "done" / "good.yaml").exists()


async def test_watch_once_does_not_wait_for_a_file_that_went_away(tmp_path: Path) -> None:
    ends: list[BatchEnd] = []
    hot = _hot(tmp_path, ends, [], stable_s=3600.0)  # never stable while it is there
    (tmp_path / "a.yaml").write_text("version: 1\n")
    watching = asyncio.create_task(hot.run(once=True))
    await asyncio.sleep(0.3)
    assert not watching.done()
    (tmp_path / "a.yaml").unlink()
    assert await asyncio.wait_for(watching, 10) == []


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout_s)
