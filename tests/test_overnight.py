"""The overnight queue's parts together: several manifests in one run (and in a watched
folder) with a sample, the failure-rate brake, notifications and a manifest on stdin.

Each feature has its own tests (test_multi, test_sample, test_brake, test_notify,
test_cli_habits); these check that they hold per manifest when manifests share a run.
The runner is a real subprocess against a simulator thread, and notify targets are
real HTTP servers (tests/hookkit.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

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

from runner.errors import ExitCode

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
