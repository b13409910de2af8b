"""Several manifests in one run, and the hot folder (``pixrun watch``), end to end.

The runner is a real subprocess against a simulator thread that caps the account's
renders in flight: its books prove what reached the provider (never above the cap, in
what order, each shot charged once). The pool itself is also checked in process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from runkit import (
    Batch,
    SimThread,
    env_for,
    explain,
    flat,
    net_charges,
    pixrun,
    query,
    start,
    states,
    submitted_count,
    wait_until,
    write_manifest,
)
from shots import scanning_hot_folder

from runner.run.flow import SharedSlots

FLAGS = ["--backoff-base-s", "0.01", "--provider-option", "read_timeout_s=1"]
CAP = 3


def _batch(
    folder: Path,
    name: str,
    n: int,
    *,
    priority: int | None = None,
    concurrency: int = CAP,
    **kw: Any,
) -> Batch:
    """A manifest whose prompts start with its name (``a scene, shot s00``), writing to
    its own output folder."""
    ids = [f"s{i:02d}" for i in range(n)]
    batch = write_manifest(
        folder,
        n,
        name=name,
        concurrency=concurrency,
        output_dir=Path(f"out-{name}"),  # beside the manifest, wherever it goes
        scenes={sid: f"{name} scene" for sid in ids},
        **kw,
    )
    batch = replace(batch, out=folder / f"out-{name}")
    if priority is not None:
        doc = yaml.safe_load(batch.manifest.read_text())
        doc["run"]["priority"] = priority
        batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return batch


def _by_manifest(stats: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    tasks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in stats["tasks"]:
        tasks[task["prompt"].split(" scene")[0]].append(task)
    return tasks


def _peak_in_flight(tasks: list[dict[str, Any]]) -> int:
    """Most renders at the provider at once (created -> render ended)."""
    starts = [(t["created_s"], 1) for t in tasks]
    ends = [(t["created_s"] + t["render_s"], -1) for t in tasks]
    edges = sorted(starts + ends)  # an end before a start at the same instant
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


# -- the pool, in process --------------------------------------------------------------


async def test_a_free_slot_goes_to_the_batch_ranked_first() -> None:
    pool = SharedSlots(2)
    first, second = pool.share((0, 0), 2), pool.share((0, 1), 2)
    await first.acquire()
    await first.acquire()
    wants_second = asyncio.create_task(second.acquire())
    wants_first = asyncio.create_task(first.acquire())
    await asyncio.sleep(0.01)
    assert not wants_first.done() and not wants_second.done()
    first.release()
    await asyncio.wait_for(wants_first, 1)
    await asyncio.sleep(0.01)
    assert not wants_second.done(), "a lower batch took a slot a higher one waited for"
    first.release()  # the first batch waits for nothing now: the slot moves on
    await asyncio.wait_for(wants_second, 1)
    assert (first.in_flight, second.in_flight, pool.limiter.in_flight) == (1, 1, 2)


async def test_a_batch_at_its_own_ceiling_does_not_hold_the_others_back() -> None:
    pool = SharedSlots(3)
    small, big = pool.share((0, 0), 1), pool.share((0, 1), 3)
    await small.acquire()
    blocked = asyncio.create_task(small.acquire())
    await asyncio.wait_for(big.acquire(), 1)
    await asyncio.wait_for(big.acquire(), 1)
    assert not blocked.done()
    assert (small.in_flight, big.in_flight, pool.limiter.in_flight) == (1, 2, 3)
    blocked.cancel()


# -- pixrun run a.yaml b.yaml c.yaml -----------------------------------------------------


async def _last_shot_slow(body: Any, headers: Any) -> None:
    """The last shot of ``a`` and ``c`` is answered late, so its render ends well after
    the others: the slots the rest of its batch frees must go to the next batch."""
    if str(body.get("prompt", "")).endswith("shot s08") and not body["prompt"].startswith("b"):
        await asyncio.sleep(0.4)


def _intents(ledger: Path) -> list[float]:
    return sorted(r[0] for r in query(ledger, "SELECT sent_at FROM attempts"))


def test_three_manifests_share_the_cap_in_priority_order(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread(concurrency_limit=CAP, render_time_s=(0.1, 0.3), generate_hook=_last_shot_slow)
    a, b = _batch(tmp_path, "a", 9), _batch(tmp_path, "b", 9)
    c = _batch(tmp_path, "c", 9, priority=5)
    result = pixrun(
        ["run", str(a.manifest), str(b.manifest), str(c.manifest), "--yes", "--quiet", *FLAGS],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    assert result.returncode == 0, explain(result)
    stats = sim.stats()
    assert stats["refusals"].get("concurrency", 0) == 0, "more than the cap was sent"
    assert _peak_in_flight(stats["tasks"]) <= CAP
    tasks = _by_manifest(stats)
    assert {k: len(v) for k, v in tasks.items()} == {"a": 9, "b": 9, "c": 9}
    created = {k: min(t["created_s"] for t in v) for k, v in tasks.items()}
    ends = {k: max(t["created_s"] + t["render_s"] for t in v) for k, v in tasks.items()}
    # priority 5 first, then in the order given: a batch takes a slot only once the one
    # before has none to wait for (a last submit of that one may still be on its way)
    intents = {batch.manifest.stem: _intents(batch.ledger) for batch in (a, b, c)}
    for before, after in (("c", "a"), ("a", "b")):
        early = [t for t in intents[after] if t < intents[before][-1]]
        assert len(early) < CAP, f"{after} went before {before}: {intents}"
    # ...and the slots the one before frees while its slow last render runs: no tail
    assert created["a"] < ends["c"] and created["b"] < ends["a"]
    for batch in (a, b, c):
        assert set(states(batch.ledger).values()) == {"done"}
        assert sorted(p.name for p in batch.out.glob("*.mp4")) == [f"{s}.mp4" for s in batch.ids]


def test_an_invalid_manifest_is_skipped_and_the_others_run(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    a = _batch(tmp_path, "a", 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nshots:\n  - prompt: ''\n    quality: 9000p\n")
    result = pixrun(
        ["run", str(bad), str(a.manifest), "--yes", "--json-logs", *FLAGS],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    assert result.returncode == 2, explain(result)  # invalid input, the rest done
    assert set(states(a.ledger).values()) == {"done"}
    assert set(_by_manifest(sim.stats())) == {"a"}
    assert not (tmp_path / "bad.ledger.sqlite").exists()
    records = [json.loads(line) for line in result.stdout.splitlines()]
    summaries = [r for r in records if r["type"] == "summary"]
    assert [(r["manifest"], r["exit_code"]) for r in summaries] == [
        (str(bad), 2),
        (str(a.manifest), 0),
    ]
    skipped = next(r for r in summaries if r["manifest"] == str(bad))
    assert skipped["skipped"] and len(skipped["problems"]) >= 2
    assert records[-1]["type"] == "total" and records[-1]["exit_code"] == 2
    assert records[-1]["counts"] == {"done": 3}
    events = [r for r in records if r["type"] == "event"]
    assert events and {r["manifest"] for r in events} == {str(a.manifest)}


def test_the_overall_cap_refuses_what_does_not_fit_after_the_others(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    a, b = _batch(tmp_path, "a", 3), _batch(tmp_path, "b", 3)  # 0.1 PTC a shot
    result = pixrun(
        ["run", str(a.manifest), str(b.manifest), "--yes", "-q", "--max-cost", "0.5", *FLAGS],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    assert result.returncode == 4, explain(result)
    assert "does not fit the overall cap" in result.stdout
    assert set(states(a.ledger).values()) == {"done"}
    assert set(_by_manifest(sim.stats())) == {"a"}  # nothing sent for b
    assert not b.ledger.exists()


def test_status_of_several_manifests_gives_each_and_the_total(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    a, b = _batch(tmp_path, "a", 2), _batch(tmp_path, "b", 3)
    ran = pixrun(
        ["run", str(a.manifest), str(b.manifest), "--yes", "--quiet", *FLAGS],
        env_for(sim.base_url),
        cwd=tmp_path,
    )
    assert ran.returncode == 0, explain(ran)
    result = pixrun(
        ["status", str(a.manifest), str(b.manifest), "--format", "json"],
        env_for(None),
        cwd=tmp_path,
    )
    assert result.returncode == 0, explain(result)
    doc = json.loads(result.stdout)
    assert [m["counts"]["done"] for m in doc["manifests"]] == [2, 3]
    assert doc["total"]["counts"]["done"] == 5 and doc["total"]["total"] == 5

    # one not started yet (queued for tonight): said beside the others, not a failure
    c = _batch(tmp_path, "c", 2)
    three = ["status", str(a.manifest), str(c.manifest), str(b.manifest)]
    result = pixrun([*three, "--format", "json"], env_for(None), cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    doc = json.loads(result.stdout)
    assert [m["manifest"] for m in doc["manifests"]] == [str(a.manifest), str(b.manifest)]
    assert [m["manifest"] for m in doc["not_started"]] == [str(c.manifest)]
    assert doc["total"]["total"] == 5
    text = pixrun(three, env_for(None), cwd=tmp_path)
    assert text.returncode == 0 and "not started" in flat(text.stdout), explain(text)
    alone = pixrun(["status", str(c.manifest), str(c.manifest)], env_for(None), cwd=tmp_path)
    assert alone.returncode == 2 and "no ledger" in flat(alone.stderr), explain(alone)


def test_ctrl_c_stops_every_manifest_and_a_rerun_finishes_them(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread(render_time_s=(1.0, 1.5))
    a, b = _batch(tmp_path, "a", 4), _batch(tmp_path, "b", 4)
    args = ["run", str(a.manifest), str(b.manifest), "--yes", "--quiet", *FLAGS]
    running = start(args, env_for(sim.base_url), cwd=tmp_path, tag="first")
    wait_until(
        lambda: submitted_count(a.ledger) >= 1,
        what="a task in flight",
    )
    running.signal(signal.SIGINT)
    assert running.wait(30) == 130, running.output()
    again = pixrun(args, env_for(sim.base_url), cwd=tmp_path)
    assert again.returncode == 0, explain(again)
    for batch in (a, b):
        assert set(states(batch.ledger).values()) == {"done"}
    charges = defaultdict(int)
    for task in sim.stats()["tasks"]:
        if not task["refunded"]:
            charges[task["prompt"]] += 1
    assert sorted(charges.values()) == [1] * 8  # nothing paid for twice


# -- pixrun watch DIR ----------------------------------------------------------------------


def _drop(batch: Batch, folder: Path) -> Path:
    """Move a fully written manifest into the watched folder, as a user would."""
    target = folder / batch.manifest.name
    os.replace(batch.manifest, target)
    return target


def _watch_args(folder: Path, *extra: str) -> list[str]:
    return ["watch", str(folder), "--quiet", "--stable-s", "0.2", *extra]


def test_a_manifest_dropped_into_a_watched_folder_is_rendered(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    hot = tmp_path / "hot"
    hot.mkdir()
    watching = start(_watch_args(hot), env_for(sim.base_url), cwd=tmp_path, tag="watch")
    try:
        wait_until(lambda: (hot / "done").is_dir(), what="the watch to start")
        batch = _batch(tmp_path / "stage", "a", 4)
        _drop(batch, hot)
        wait_until(lambda: (hot / "done" / "a.yaml").exists(), what="a.yaml done")
        assert not (hot / "a.yaml").exists()
        assert sorted(p.name for p in (hot / "out-a").glob("*.mp4")) == [
            f"{s}.mp4" for s in batch.ids
        ]
        ledger = hot / "ledgers" / "a.ledger.sqlite"
        assert set(states(ledger).values()) == {"done"}
        # a second one, picked up while it watches
        _drop(_batch(tmp_path / "stage", "b", 2), hot)
        wait_until(lambda: (hot / "done" / "b.yaml").exists(), what="b.yaml done")
    finally:
        watching.signal(signal.SIGINT)
        code = watching.wait(30)
    assert code == 130, watching.output()
    assert net_charges(sim.stats()) == {"s00": 2, "s01": 2, "s02": 1, "s03": 1}


def test_watch_once_runs_what_is_there_rejects_the_invalid_and_skips_temp_files(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    hot = tmp_path / "hot"
    hot.mkdir()
    _drop(_batch(tmp_path / "stage", "a", 2), hot)
    _drop(_batch(tmp_path / "stage", "b", 2), hot)
    (hot / "bad.yaml").write_text("version: 1\nname: bad\nshots:\n  - prompt: ''\n    seed: -4\n")
    temp = [".#a.yaml", "a.yaml~", "a.yaml.swp", ".hidden.yaml", "notes.txt", "c.yaml.tmp"]
    for name in temp:
        (hot / name).write_text("not: [a manifest")
    result = pixrun(_watch_args(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    assert sorted(p.name for p in (hot / "done").iterdir()) == ["a.yaml", "b.yaml"]
    assert sorted(p.name for p in (hot / "rejected").iterdir()) == ["bad.errors.txt", "bad.yaml"]
    errors = (hot / "rejected" / "bad.errors.txt").read_text().splitlines()
    assert len([e for e in errors if ":error" in e]) >= 2, errors  # every problem
    assert all(e.startswith(str(hot / "bad.yaml")) for e in errors[:2])
    assert sorted(p.name for p in hot.iterdir() if p.is_file()) == sorted(temp)
    assert set(_by_manifest(sim.stats())) == {"a", "b"}


def test_a_restarted_watch_resumes_what_was_in_flight(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread(render_time_s=(2.0, 3.0))
    hot = tmp_path / "hot"
    hot.mkdir()
    # Room for every shot at once: once all six have task ids, the killed runner cannot
    # have an intent on the wire, which a restart would rightly park as ambiguous.
    batch = _batch(tmp_path / "stage", "a", 6, concurrency=6)
    _drop(batch, hot)
    ledger = hot / "ledgers" / "a.ledger.sqlite"
    first = start(_watch_args(hot), env_for(sim.base_url), cwd=tmp_path, tag="first")
    wait_until(
        lambda: (
            ledger.exists()
            and query(
                ledger,
                "SELECT COUNT(*) FROM shots WHERE state IN ('submitted', 'rendered',"
                " 'downloading', 'done')",
            )[0][0]
            == 6
        ),
        what="every shot at the provider",
    )
    first.kill()  # no goodbye: the ledger alone says what is at the provider
    in_flight = query(ledger, "SELECT COUNT(*) FROM shots WHERE state = 'submitted'")[0][0]
    assert in_flight >= 1  # else this proves nothing about resuming
    assert (hot / "a.yaml").exists()
    result = pixrun(_watch_args(hot, "--once"), env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    assert (hot / "done" / "a.yaml").exists()
    assert set(states(ledger).values()) == {"done"}
    assert net_charges(sim.stats()) == {sid: 1 for sid in batch.ids}  # none sent twice


def test_watch_simulate_keeps_rehearsal_ledgers_apart(tmp_path: Path) -> None:
    hot = tmp_path / "hot"
    hot.mkdir()
    _drop(_batch(tmp_path / "stage", "a", 2), hot)
    result = pixrun(
        _watch_args(hot, "--once", "--simulate", "--sim-render-time", "0.02,0.05"),
        env_for(None, key=None),
        cwd=tmp_path,
    )
    assert result.returncode == 0, explain(result)
    assert (hot / "ledgers" / "a.sim.ledger.sqlite").exists()
    assert not (hot / "ledgers" / "a.ledger.sqlite").exists()
    assert len(list((hot / "out-a.sim").glob("*.mp4"))) == 2


async def test_only_a_file_unchanged_for_a_moment_counts(tmp_path: Path) -> None:
    found: list[str] = []
    hot = scanning_hot_folder(
        tmp_path,
        stable_s=3600.0,
        on_news=lambda news: found.append(f"{news.kind} {news.path.name}"),
    )
    dropped = tmp_path / "a.yaml"
    dropped.write_text("version: 1\n")
    (tmp_path / "a.yaml.part").write_text("x")
    assert hot._stable(None) == [] and found == ["found a.yaml"]
    assert hot._stable(None) == []  # unchanged, but not for long enough
    hot.stable_s = 0.0
    with dropped.open("a") as fh:
        fh.write("name: still being written\n")
    assert hot._stable(None) == []  # it changed: the clock starts again
    assert hot._stable(None) == ["a.yaml"]
    assert found == ["found a.yaml"]


def test_a_contract_mismatch_in_one_manifest_stops_the_others_before_they_pay(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """The fetch route is served elsewhere: the first manifest's first fetch proves it.
    The second manifest, on the same provider, must stop then too (exit 5), not take the
    freed slots and pay for tasks it cannot collect either; a rerun with the right
    fetch_path finishes both, each shot generated once."""
    elsewhere = "/pix/fetch/{task_id}"
    sim = sim_thread(fetch_path=elsewhere, render_time_s=(0.05, 0.1))
    a, b = _batch(tmp_path, "a", 9, priority=5), _batch(tmp_path, "b", 9)
    args = ["run", str(a.manifest), str(b.manifest), "--yes", "--quiet", *FLAGS]
    first = pixrun(args, env_for(sim.base_url), cwd=tmp_path)
    assert first.returncode == 5, explain(first)
    tasks = _by_manifest(sim.stats())
    assert tasks["a"], "the first manifest submitted nothing before its first fetch"
    assert not tasks.get("b"), f"b paid for {len(tasks['b'])} tasks after the mismatch"
    for batch in (a, b):
        assert set(states(batch.ledger).values()) <= {"pending", "submitted"}, explain(first)
    ids = {
        str(r[0]) for r in query(a.ledger, "SELECT task_id FROM shots WHERE task_id IS NOT NULL")
    }
    assert {t["task_id"] for t in tasks["a"]} <= ids

    fixed = pixrun(
        [*args, "--provider-option", f"fetch_path={elsewhere}"], env_for(sim.base_url), cwd=tmp_path
    )
    assert fixed.returncode == 0, explain(fixed)
    final = _by_manifest(sim.stats())
    assert {k: len(v) for k, v in final.items()} == {"a": 9, "b": 9}
    assert {t["task_id"] for t in tasks["a"]} <= {t["task_id"] for t in final["a"]}


def test_a_watched_batch_run_on_its_own_is_refused_not_paid_again(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    """A watched manifest's ledger is in DIR/ledgers/: 'pixrun run DIR/x.yaml' (or
    DIR/done/x.yaml) without --ledger would start a new ledger beside it and pay again
    for every task in flight. It is refused before anything is sent; --ledger resumes."""
    sim = sim_thread()
    hot = tmp_path / "hot"
    hot.mkdir()
    _drop(_batch(tmp_path / "stage", "a", 2), hot)
    env = env_for(sim.base_url)
    assert pixrun(_watch_args(hot, "--once"), env, cwd=tmp_path).returncode == 0
    before = sim.stats()["accepted_tasks"]
    watched = hot / "ledgers" / "a.ledger.sqlite"
    shutil.copy(hot / "done" / "a.yaml", hot / "a.yaml")  # as if it had stopped there
    for manifest in (hot / "a.yaml", hot / "done" / "a.yaml"):
        alone = pixrun(["run", str(manifest), "--quiet", "--yes"], env, cwd=tmp_path)
        assert alone.returncode == 2 and str(watched) in flat(alone.stderr), explain(alone)
        assert not manifest.with_name("a.ledger.sqlite").exists()
        # reading it finds the folder's ledger by itself
        status = pixrun(["status", str(manifest), "--format", "json"], env, cwd=tmp_path)
        assert status.returncode == 0, explain(status)
        assert json.loads(status.stdout)["counts"]["done"] == 2
    resumed = pixrun(
        ["run", str(hot / "a.yaml"), "--quiet", "--yes", "--ledger", str(watched)],
        env,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, explain(resumed)
    assert sim.stats()["accepted_tasks"] == before


def test_a_bad_provider_address_or_no_key_stops_watch_and_run_before_any_manifest(
    tmp_path: Path,
) -> None:
    """The command's own settings are wrong (a malformed address, no key): exit 2 at
    once with one error, never a queue of good manifests moved to rejected/ for it."""
    hot = tmp_path / "hot"
    hot.mkdir()
    dropped = _drop(_batch(tmp_path / "stage", "a", 2), hot)
    other = _batch(tmp_path / "stage", "b", 2).manifest
    for env in (env_for("http://[::1"), env_for(None, key=None)):
        watched = pixrun(_watch_args(hot, "--once"), env, cwd=tmp_path)
        assert watched.returncode == 2, explain(watched)
        assert dropped.exists() and not any((hot / "rejected").glob("*")), explain(watched)
        both = pixrun(["run", str(dropped), str(other), "--quiet", "--yes"], env, cwd=tmp_path)
        assert both.returncode == 2, explain(both)
        assert flat(both.stderr).count("error:") == 1 and "skipped" not in both.stdout, explain(
            both
        )
