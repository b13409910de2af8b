"""Meeting a provider pixrun does not fully know, as a real process against a simulator
that can disagree: fail closed on answers it does not recognise, never pay twice for a
route that is wrong, never share a trace id with another ledger.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from runkit import (
    SimThread,
    assert_files_match,
    env_for,
    explain,
    flat,
    generate_calls,
    in_state,
    ledger_task_ids,
    pixrun,
    query,
    run_args,
    run_pixrun,
    sha256_of,
    sim_tasks,
    states,
    write_manifest,
)

from runner.sim import SimulatorThread

CONTRACT = 5
ELSEWHERE = "/pix/fetch/{task_id}"


def test_a_fetch_route_served_elsewhere_stops_at_once_and_a_rerun_collects_for_free(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """The simulator serves fetch on another route: the run stops with exit 5 within
    seconds, pays for no shot twice and fails none; a rerun with the right fetch_path
    finishes every shot without generating an accepted one again."""
    sim = sim_thread(fetch_path=ELSEWHERE)
    batch = write_manifest(tmp_path, 8, concurrency=3)
    t0 = time.monotonic()
    first = run_pixrun(batch, sim.base_url)
    took_s = time.monotonic() - t0
    said = explain(first)
    assert first.returncode == CONTRACT, said
    assert took_s < 20, f"the run took {took_s:.1f} s to stop"
    text = flat(first.stdout + first.stderr)
    assert "GET http" in text and "/pix/task/" in text and "HTTP 404" in text, said
    assert "pixrun doctor" in text or "fetch_path" in text, said
    assert "Traceback" not in first.stderr, said
    accepted = sim.stats()
    by_shot = sim_tasks(accepted)
    assert by_shot, "nothing was submitted before the first fetch"
    assert all(len(tasks) == 1 for tasks in by_shot.values())
    assert not in_state(batch.ledger, "failed") and not in_state(batch.ledger, "ambiguous")
    # every accepted task keeps its id in the ledger
    assert {t["task_id"] for t in accepted["tasks"]} <= ledger_task_ids(batch.ledger)

    run_pixrun(batch, sim.base_url, "--provider-option", f"fetch_path={ELSEWHERE}", check=True)
    final = sim.stats()
    for shot, tasks in sim_tasks(final).items():
        assert len(tasks) == 1, f"{shot} was generated {len(tasks)} times"
    for shot in by_shot:  # the paid ones were collected, not generated again
        assert sim_tasks(final)[shot][0]["task_id"] == by_shot[shot][0]["task_id"]
    assert_files_match(batch, final, batch.ids)


def test_a_wrong_generate_route_stops_at_once_and_charges_nothing(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(generate_path="/pix/v2/generate")
    batch = write_manifest(tmp_path, 5, concurrency=5)
    t0 = time.monotonic()
    first = run_pixrun(batch, sim.base_url)
    said = explain(first)
    assert first.returncode == CONTRACT, said
    assert time.monotonic() - t0 < 20
    assert "POST http" in flat(first.stdout) and "generate_path" in flat(first.stdout), said
    assert sim.stats()["accepted_tasks"] == 0
    # nothing was made, nothing failed or parked: the shots wait, same attempt next time
    assert set(states(batch.ledger).values()) == {"pending"}
    outcomes = {r[0] for r in query(batch.ledger, "SELECT outcome FROM attempts")}
    assert "mismatch" in outcomes and outcomes <= {"mismatch", "transient"}, outcomes
    run_pixrun(
        batch, sim.base_url, "--provider-option", "generate_path=/pix/v2/generate", check=True
    )
    assert_files_match(batch, sim.stats(), batch.ids)


def test_a_task_the_provider_no_longer_knows_is_parked_never_paid_again(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Tasks at one provider, then a provider that has never heard of them (a recognised
    "no such task" envelope): parked as ambiguous, never generated again."""
    first_sim = sim_thread(render_time_s=(5.0, 5.0))
    batch = write_manifest(tmp_path, 4, concurrency=4)
    crashed = pixrun(
        run_args(batch),
        env_for(first_sim.base_url, crash_at="after_task_committed:4"),
        cwd=batch.dir,
    )
    assert crashed.returncode != 0
    submitted = in_state(batch.ledger, "submitted")
    assert submitted, explain(crashed)
    other = sim_thread()  # knows none of those tasks
    refused = run_pixrun(batch, other.base_url)
    assert refused.returncode == 2 and "--switch-provider" in refused.stderr, explain(refused)
    assert generate_calls(other) == 0
    rerun = run_pixrun(batch, other.base_url, "--switch-provider")
    assert rerun.returncode == 1, explain(rerun)
    assert in_state(batch.ledger, "ambiguous") == submitted
    kinds = dict(query(batch.ledger, "SELECT shot_id, error_kind FROM shots"))
    assert all(kinds[s] == "task_lost" for s in submitted)
    regenerated = set(sim_tasks(other.stats())) & submitted
    assert not regenerated, f"generated again: {regenerated}"


def test_two_ledgers_with_the_same_shots_never_get_each_others_videos(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """Two people (or projects) with a shot of the same name, one deduplicating
    provider: each ledger's trace ids are its own, so each gets its own tasks."""
    sim = sim_thread(dedupe_trace_id=True)
    first = write_manifest(tmp_path / "alice", 5, concurrency=5)
    second = write_manifest(tmp_path / "bob", 5, concurrency=5)
    for batch in (first, second):
        run_pixrun(batch, sim.base_url, check=True)
    stats = sim.stats()
    assert stats["accepted_tasks"] == 10
    assert stats["faults"].get("deduplicated", 0) == 0
    assert not ledger_task_ids(first.ledger) & ledger_task_ids(second.ledger)
    for sid in first.ids:
        assert sha256_of(first.out / f"{sid}.mp4") != sha256_of(second.out / f"{sid}.mp4")
    traces = [
        {r[0] for r in query(b.ledger, "SELECT trace_id FROM attempts")} for b in (first, second)
    ]
    assert not traces[0] & traces[1]
    # the ledger knows its provider, and the response family it answered in
    ((raw,),) = query(first.ledger, "SELECT value FROM meta WHERE key = 'provider'")
    assert json.loads(raw) == {"simulated": False, "base_url": sim.base_url, "dialect": "pixverse"}


def test_a_malformed_base_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    batch = write_manifest(tmp_path, 1)
    for url in ("http://127.0.0.1:99999", "http://[::1"):
        done = pixrun(run_args(batch), env_for(url), cwd=batch.dir)
        assert done.returncode == 2, explain(done)
        assert "Traceback" not in done.stderr and "base URL" in done.stderr, explain(done)
        assert not batch.ledger.exists()


def _image_batch(folder: Path, shots: int) -> tuple[Path, Path]:
    """A manifest of image-to-video and fusion shots sharing two local images."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (640, 480), (200, 30, 30)).save(folder / "red.png")
    Image.new("RGB", (480, 640), (30, 30, 200)).save(folder / "blue.jpg")
    entries = []
    for i in range(shots):
        if i % 3 == 2:
            entries.append(
                {
                    "id": f"s{i:02d}",
                    "prompt": f"two friends, shot s{i:02d}",
                    "fusion": ["red.png", "blue.jpg"],
                    "model": "v4",
                }
            )
        else:
            image = "red.png" if i % 2 else "blue.jpg"
            entries.append(
                {"id": f"s{i:02d}", "prompt": f"it moves, shot s{i:02d}", "image": image}
            )
    doc = {
        "version": 1,
        "name": "images",
        "defaults": {"model": "v4.5", "quality": "360p", "duration": 5},
        "output": {"dir": "out"},
        "run": {
            "concurrency": 4,
            "requests_per_s": 500,
            "max_attempts": 3,
            "poll": {"initial_delay_s": 0.02, "min_interval_s": 0.01, "max_interval_s": 0.2},
        },
        "shots": entries,
    }
    manifest = folder / "images.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return manifest, folder / "images.ledger.sqlite"


def _run_images(sim: SimulatorThread, manifest: Path, *extra: str) -> dict[str, Any]:
    """``pixrun run`` on an image batch, from its folder, to a clean finish (exit 0);
    returns the simulator's books after it."""
    args = ["run", str(manifest), "--quiet", "--yes", *extra]
    done = pixrun(args, env_for(sim.base_url), cwd=manifest.parent)
    assert done.returncode == 0, explain(done)
    stats: dict[str, Any] = sim.stats()
    return stats


def test_each_distinct_local_image_is_uploaded_once_across_shots_retries_and_reruns(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(fail_first_attempt_share=1.0)  # every shot renders twice
    manifest, ledger = _image_batch(tmp_path, 6)
    stats = _run_images(sim, manifest, "--backoff-base-s", "0.01")
    assert stats["uploads"]["count"] == 2 and stats["uploads"]["distinct"] == 2
    assert stats["inline_image_generates"] == 0
    assert stats["accepted_tasks"] == 12  # two renders per shot, one upload per image
    # uploads are money too: spent = renders + uploads
    assert query(ledger, "SELECT COUNT(*), SUM(charged_uptc) FROM uploads")[0] == (2, 2_000)
    # a rerun with one more shot on the same images uploads nothing again
    _image_batch(tmp_path, 7)
    stats = _run_images(sim, manifest, "--backoff-base-s", "0.01")
    assert stats["uploads"]["count"] == 2
    assert stats["inline_image_generates"] == 0


def test_inline_images_stay_available(tmp_path: Path, sim_thread: SimThread) -> None:
    sim = sim_thread()
    manifest, _ = _image_batch(tmp_path, 2)
    stats = _run_images(sim, manifest, "--provider-option", "image_encoding=data_uri")
    assert stats["uploads"]["count"] == 0
    assert stats["inline_image_generates"] == 2


def test_the_plan_prices_the_uploads_still_to_make(tmp_path: Path, sim_thread: SimThread) -> None:
    sim = sim_thread()
    manifest, _ = _image_batch(tmp_path, 4)
    env = env_for(sim.base_url)

    def planned() -> dict[str, object]:
        done = pixrun(["plan", str(manifest), "--format", "json"], env, cwd=tmp_path)
        assert done.returncode == 0, explain(done)
        uploads: dict[str, object] = json.loads(done.stdout)["uploads"]
        return uploads

    assert planned() == {"count": 2, "unit_ptc": "0.001", "subtotal_ptc": "0.002"}
    table = pixrun(["plan", str(manifest)], env, cwd=tmp_path)
    assert "2 local images to upload once each" in flat(table.stdout), explain(table)
    _run_images(sim, manifest)
    assert planned()["count"] == 0  # the ledger has them


def test_a_fetch_route_that_knows_no_task_at_all_stops_instead_of_parking_everything(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """A gateway that answers a wrong route with a well-formed "not found": the task was
    accepted seconds ago and no fetch has ever found one, so the route is wrong: exit 5,
    nothing parked or failed (a task from an earlier run would be parked instead)."""
    sim = sim_thread(forget_share=1.0)
    batch = write_manifest(tmp_path, 4, concurrency=2)
    done = run_pixrun(batch, sim.base_url)
    said = explain(done)
    assert done.returncode == CONTRACT, said
    assert "fetch route" in flat(done.stdout) and "pixrun doctor" in flat(done.stdout), said
    assert not in_state(batch.ledger, "ambiguous") and not in_state(batch.ledger, "failed")
    by_shot = sim_tasks(sim.stats())
    assert by_shot, "no task was accepted before the route was judged wrong"
    assert all(len(t) == 1 for t in by_shot.values()), by_shot
