"""output.embed_metadata: the shot's metadata written into each MP4 as tags, end to end
against the simulator (pixrun as a subprocess), and the tagger's failure paths."""

from __future__ import annotations

import errno
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mutagen import MutagenError
from mutagen.mp4 import MP4
from runkit import (
    KEY,
    Batch,
    SimThread,
    assert_key_absent,
    env_for,
    explain,
    pixrun,
    prompt_of,
    query,
    run_args,
    run_pixrun,
    sha256_of,
    write_manifest,
)

from runner.errors import DiskFull, DownloadCorrupt
from runner.mp4tags import FREEFORM, Embedder, tag_values
from runner.outputs import DownloadResult
from runner.provider import mp4_problem
from runner.sim import task_mp4


def embedding_batch(folder: Path, n_shots: int, **kwargs: Any) -> Batch:
    batch = write_manifest(folder, n_shots, **kwargs)
    doc = yaml.safe_load(batch.manifest.read_text(encoding="utf-8"))
    doc["output"]["embed_metadata"] = True
    doc["defaults"]["ratio"] = "16:9"
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return batch


def sidecar_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_name(path.name + ".json").read_text("utf-8"))
    return data


def done_rows(batch: Batch) -> dict[str, tuple[Any, ...]]:
    rows = query(
        batch.ledger, "SELECT shot_id, task_id, seed, output_path, sha256, bytes FROM shots"
    )
    return {r[0]: r[1:] for r in rows}


def read_values(path: Path) -> dict[str, str]:
    """The freeform pixrun fields of a tagged file."""
    tags = MP4(path).tags or {}
    return {
        key.removeprefix(FREEFORM): bytes(value[0]).decode("utf-8")
        for key, value in tags.items()
        if key.startswith(FREEFORM)
    }


def top_boxes(data: bytes) -> dict[bytes, bytes]:
    """Top-level boxes (type -> payload; the last of a type wins)."""
    boxes, at = {}, 0
    while at < len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        boxes[kind] = data[at + 8 : at + size]
        at += size
    return boxes


def test_a_run_tags_every_file_and_its_sidecar_keeps_both_hashes(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    batch = embedding_batch(tmp_path, 3)
    run_pixrun(batch, sim.base_url, check=True)

    served = {t["task_id"]: t for t in sim.stats()["tasks"]}
    for sid, (task_id, seed, relpath, sha256, size) in done_rows(batch).items():
        path = batch.out / relpath
        delivered = task_mp4(str(task_id))
        assert served[str(task_id)]["sha256"] == sidecar_of(path)["delivered_sha256"]
        tags = MP4(path).tags
        assert tags is not None
        assert tags["\xa9nam"] == [sid]
        assert tags["\xa9cmt"] == [prompt_of(sid)] == tags["desc"]
        assert tags["\xa9alb"] == ["batch"]
        assert tags["\xa9too"][0].startswith("pixrun ")
        values = read_values(path)
        assert values["shot_id"] == sid and values["task_id"] == str(task_id)
        assert values["seed"] == str(seed) and values["model"] == "v4.5"
        assert values["prompt"] == prompt_of(sid) and values["ratio"] == "16:9"
        assert values["manifest"] == "batch" and values["quality"] == "360p"
        # the ledger and the sidecar know the tagged file; the sidecar also the delivered
        sidecar = sidecar_of(path)
        assert sha256_of(path) == sha256 == sidecar["sha256"]
        assert path.stat().st_size == size == sidecar["bytes"]
        assert sidecar["delivered_bytes"] == len(delivered)
        assert sidecar["delivered_sha256"] != sidecar["sha256"]
        assert sidecar["embedded_metadata"] == values and "embed_error" not in sidecar
        # not re-encoded: the media data is byte for byte the delivered one, still sound
        assert top_boxes(path.read_bytes())[b"mdat"] == top_boxes(delivered)[b"mdat"]
        assert mp4_problem(path) is None
        assert MP4(path).info.length == pytest.approx(1.0, abs=0.1)
    assert_key_absent(KEY, files=batch.out.iterdir())


@pytest.mark.parametrize("embed", [True, False], ids=["tagged", "untagged"])
def test_a_rerun_keeps_tagged_files_and_sees_a_changed_one_as_before(
    sim_thread: SimThread, tmp_path: Path, embed: bool
) -> None:
    """Tagged or not, a rerun fetches nothing for files as the ledger knows them, fetches
    a missing one again (tagged again: the same bytes), and refuses to overwrite one
    edited since."""
    sim = sim_thread()
    batch = embedding_batch(tmp_path, 3) if embed else write_manifest(tmp_path, 3)
    run_pixrun(batch, sim.base_url, check=True)
    before = {sid: row[3] for sid, row in done_rows(batch).items()}
    downloads = sim.stats()["calls"]["download"]

    run_pixrun(batch, sim.base_url, check=True)
    assert sim.stats()["calls"]["download"] == downloads

    (batch.out / "s00.mp4").unlink()
    edited = batch.out / "s01.mp4"
    with edited.open("ab") as fh:
        fh.write(b"\0\0\0\x08free")
    edited_sha = sha256_of(edited)
    result = pixrun(run_args(batch), env_for(sim.base_url), cwd=batch.dir)
    assert result.returncode == 1, explain(result)
    assert sim.stats()["calls"]["download"] > downloads
    assert sha256_of(batch.out / "s00.mp4") == before["s00"]
    assert sha256_of(edited) == edited_sha  # never overwritten
    failed = query(batch.ledger, "SELECT shot_id, error_kind FROM shots WHERE state = 'failed'")
    assert failed == [("s01", "output_conflict")]


def test_a_lost_ledger_adopts_the_tagged_files(sim_thread: SimThread, tmp_path: Path) -> None:
    sim = sim_thread()
    batch = embedding_batch(tmp_path, 2)
    run_pixrun(batch, sim.base_url, check=True)
    before = {sid: sha for sid, (_, _, _, sha, _) in done_rows(batch).items()}
    generates = sim.stats()["calls"]["generate"]
    for leftover in tmp_path.glob(batch.ledger.name + "*"):
        leftover.unlink()

    run_pixrun(batch, sim.base_url, check=True)
    assert sim.stats()["calls"]["generate"] == generates
    assert {sid: sha for sid, (_, _, _, sha, _) in done_rows(batch).items()} == before
    adopted = query(batch.ledger, "SELECT shot_id FROM events WHERE kind = 'adopted'")
    assert {r[0] for r in adopted} == set(before)


def test_a_file_mutagen_cannot_read_is_kept_as_delivered_and_said_so(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread(untaggable_words=("untaggable",))
    batch = embedding_batch(tmp_path, 2, scenes={"s01": "an untaggable scene"})
    # plain output (not a terminal): notable events only, and this is one
    result = pixrun(run_args(batch, output=""), env_for(sim.base_url), cwd=batch.dir)
    assert result.returncode == 0, explain(result)
    said = [line for line in result.stdout.splitlines() if "without embedded metadata" in line]
    assert len(said) == 1 and "s01" in said[0], result.stdout

    rows = done_rows(batch)
    task_id, _, relpath, sha256, _ = rows["s01"]
    path = batch.out / relpath
    sidecar = sidecar_of(path)
    served = {t["task_id"]: t["sha256"] for t in sim.stats()["tasks"]}
    assert sha256_of(path) == sha256 == served[str(task_id)] == sidecar["delivered_sha256"]
    assert sidecar["sha256"] == sha256 and sidecar["embedded_metadata"] is None
    assert "mutagen cannot read it" in sidecar["embed_error"]
    events = query(batch.ledger, "SELECT shot_id, message FROM events WHERE kind = 'untagged'")
    assert [shot for shot, _ in events] == ["s01"]
    assert "kept as delivered" in events[0][1]
    # the other shot is tagged; a rerun fetches neither again
    assert read_values(batch.out / rows["s00"][2])["shot_id"] == "s00"
    downloads = sim.stats()["calls"]["download"]
    run_pixrun(batch, sim.base_url, check=True)
    assert sim.stats()["calls"]["download"] == downloads


# -- the tagger's failure paths, in process (mutagen made to fail) ----------------------


def delivered_file(tmp_path: Path) -> tuple[Path, DownloadResult]:
    part = tmp_path / ".clip.mp4.part"
    part.write_bytes(task_mp4("t1"))
    return part, DownloadResult(tmp_path / "clip.mp4", part.stat().st_size, sha256_of(part))


def mp4_fails_in(monkeypatch: pytest.MonkeyPatch, method: str, failure: Callable[[], None]) -> None:
    """mutagen's ``MP4.<method>`` runs ``failure`` (which raises) in its place."""

    def instead(self: MP4, *args: Any, **kwargs: Any) -> None:
        failure()

    monkeypatch.setattr(MP4, method, instead)


def assert_kept_untagged(
    embedder: Embedder, part: Path, delivered: DownloadResult, reason: str
) -> None:
    """The embedder hands the file on as delivered, byte for byte, and says why."""
    assert embedder(part, delivered) == delivered
    assert embedder.untagged is not None and reason in embedder.untagged
    assert sha256_of(part) == delivered.sha256


def test_a_tag_write_that_fails_untouched_keeps_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part, delivered = delivered_file(tmp_path)

    def refuse() -> None:
        raise MutagenError("no room in the moov")

    mp4_fails_in(monkeypatch, "save", refuse)
    embedder = Embedder({"shot_id": "s1"})
    assert_kept_untagged(embedder, part, delivered, "no room in the moov")


def test_a_tag_write_that_damages_the_file_fetches_it_again_untagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part, delivered = delivered_file(tmp_path)

    def damage() -> None:
        with open(part, "r+b") as fh:
            fh.truncate(100)
        raise MutagenError("cut short")

    mp4_fails_in(monkeypatch, "save", damage)
    embedder = Embedder({"shot_id": "s1"})
    with pytest.raises(DownloadCorrupt, match="damaged"):
        embedder(part, delivered)
    # the next download of this shot is kept as delivered, not tagged again
    part.write_bytes(task_mp4("t1"))
    assert_kept_untagged(embedder, part, delivered, "cut short")


def test_a_full_disk_while_tagging_is_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part, delivered = delivered_file(tmp_path)

    def full() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise MutagenError(exc) from exc

    mp4_fails_in(monkeypatch, "save", full)
    with pytest.raises(DiskFull):
        Embedder({"shot_id": "s1"})(part, delivered)


def test_a_tagged_file_that_is_not_a_sound_mp4_is_never_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part, delivered = delivered_file(tmp_path)

    def cut() -> None:
        with open(part, "ab") as fh:
            fh.write(b"\0\0\1\0mdat")  # a box that runs past the end

    mp4_fails_in(monkeypatch, "save", cut)
    with pytest.raises(DownloadCorrupt, match="tagged file is unusable"):
        Embedder({"shot_id": "s1"})(part, delivered)


def test_only_allowed_request_fields_are_written() -> None:
    request = {
        "model": "v5",
        "image": "file:///home/me/secret/face.png",
        "last_image": "https://files.example/x.png?token=abc",
        "callback": "https://hooks.example/pix?secret=abc",
        "motion_scale": {"zoom": 1},
        "seed": 7,
    }
    values = tag_values(
        shot_id="a",
        version=2,
        task_id=None,
        seed=7,
        mode="image",
        prompt="p",
        request=request,
        manifest=None,
    )
    assert values == {
        "model": "v5",
        "shot_id": "a",
        "version": "2",
        "seed": "7",
        "mode": "image",
        "prompt": "p",
    }


def test_embed_metadata_must_be_true_or_false(tmp_path: Path) -> None:
    batch = write_manifest(tmp_path, 1)
    doc = yaml.safe_load(batch.manifest.read_text(encoding="utf-8"))
    doc["output"]["embed_metadata"] = "yes please"
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    result = pixrun(["validate", str(batch.manifest)], env_for(None), cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    assert "embed_metadata" in result.stdout + result.stderr


def test_a_crash_after_tagging_publishes_nothing_and_the_rerun_finishes(
    sim_thread: SimThread, tmp_path: Path
) -> None:
    sim = sim_thread()
    batch = embedding_batch(tmp_path, 2, concurrency=1, download_concurrency=1)
    crashed = pixrun(
        run_args(batch), env_for(sim.base_url, crash_at="after_tagged:2"), cwd=tmp_path
    )
    assert crashed.returncode == -signal.SIGKILL, explain(crashed)
    # the second file was tagged in its temporary file only: nothing under its name
    assert sorted(p.name for p in batch.out.iterdir()) == [
        ".s01.mp4.part",
        "s00.mp4",
        "s00.mp4.json",
    ]

    run_pixrun(batch, sim.base_url, check=True)
    assert sorted(p.name for p in batch.out.iterdir()) == [
        "s00.mp4",
        "s00.mp4.json",
        "s01.mp4",
        "s01.mp4.json",
    ]
    assert len(sim.stats()["tasks"]) == 2  # nothing rendered twice
    for sid in ("s00", "s01"):
        path = batch.out / f"{sid}.mp4"
        assert read_values(path)["shot_id"] == sid
        assert sha256_of(path) == sidecar_of(path)["sha256"]


def test_a_parser_slip_keeps_the_file_untagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only mutagen's own errors: a bug of the parser on a provider's file never
    costs the video."""
    part, delivered = delivered_file(tmp_path)

    def slip() -> None:
        raise IndexError("list index out of range")

    mp4_fails_in(monkeypatch, "load", slip)
    embedder = Embedder({"shot_id": "s1"})
    assert_kept_untagged(embedder, part, delivered, "list index out of range")
