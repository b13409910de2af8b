"""Local images in a run: the upload cache against the simulator (a shared reference
image is read and hashed once per run, one edited in place is uploaded again), and
how a sidecar names them."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import runner.run.uploads as uploads_module
from runner.ledger import ShotRow, open_ledger
from runner.model import ShotState
from runner.provider import Provider
from runner.run.collect import sidecar_fields
from runner.run.uploads import ImageUploads


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_a_shared_image_is_read_once_and_an_edited_one_uploaded_again(
    tmp_path: Path,
    sim_factory: Callable[..., Any],
    provider_factory: Callable[..., Provider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = await sim_factory()
    image = tmp_path / "reference.png"
    image.write_bytes(_png((200, 30, 30)))
    reads: list[Path] = []
    real_read = uploads_module._read

    def counting_read(path: Path) -> tuple[str, bytes]:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(uploads_module, "_read", counting_read)
    request = {"prompt": "a red square", "image": image.as_uri()}
    async with await open_ledger(tmp_path / "batch.ledger.sqlite", writer=True) as ledger:
        uploads = ImageUploads(ledger, provider_factory(sim), enabled=True, price_uptc=1_000)
        first = await uploads.prepare(request)
        assert str(first["image"]).startswith("http"), first
        for _ in range(5):
            assert await uploads.prepare(request) == first
        assert reads == [image]  # six generates, one read and hash
        assert sim.stats()["uploads"]["count"] == 1

        image.write_bytes(_png((30, 30, 200)))  # edited in place: other content
        second = await uploads.prepare(request)
        assert second["image"] != first["image"]
        assert reads == [image, image]
        assert sim.stats()["uploads"]["count"] == 2


def test_a_sidecar_names_every_local_image_as_a_plain_path(tmp_path: Path) -> None:
    # the sidecar is for people: decoded paths, in lists too (fusion, image_list)
    spaced = tmp_path / "my ref #1.png"
    other = tmp_path / "other.png"
    request = {
        "prompt": "a lake",
        "image": spaced.as_uri(),
        "image_list": [other.as_uri(), "https://example.com/a.png"],
    }
    columns = {f.name: None for f in dataclasses.fields(ShotRow)}
    row = ShotRow(
        **{
            **columns,
            "shot_id": "s01",
            "version": 1,
            "request_json": json.dumps(request),
            "request_hash": "h",
            "prompt": "a lake",
            "mode": "image",
            "state": ShotState.DOWNLOADING,
        }
    )
    sidecar = sidecar_fields(row)["request"]
    assert sidecar["image"] == str(spaced)
    assert sidecar["image_list"] == [str(other), "https://example.com/a.png"]
    assert sidecar["prompt"] == "a lake"
