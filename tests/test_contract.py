"""The request-field contract (check_request on wire-form bodies) and the JSON schema
generated from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from runner.manifest.contract import (
    FIELDS,
    FIELDS_BY_NAME,
    fields_for,
    mode_of_request,
)
from runner.manifest.request_check import check_request
from runner.manifest.schema import manifest_schema, manifest_schema_json
from runner.model import Mode

REPO = Path(__file__).parent.parent
IMG = "file:///tmp/a.png"


def text(**extra: Any) -> dict[str, Any]:
    return {"prompt": "p", "model": "v4.5", "quality": "360p", "duration": 5, **extra}


def image(**extra: Any) -> dict[str, Any]:
    return {"prompt": "p", "model": "v4.5", "quality": "360p", "image": IMG, **extra}


def fusion(**extra: Any) -> dict[str, Any]:
    return {"prompt": "p", "model": "v4", "quality": "360p", "fusion": [IMG], **extra}


def fields_of(mode: Mode, request: dict[str, Any]) -> list[str]:
    return [v.field for v in check_request(mode, request)]


@pytest.mark.parametrize(
    ("mode", "request_"),
    [
        (Mode.TEXT, text()),
        (Mode.TEXT, text(model="v5.5", generate_audio_switch=True, thinking_type="auto")),
        (Mode.TEXT, text(ratio="1:1", camera_movement="whip_pan", duration=10, seed=0)),
        (Mode.TEXT, text(quality="720p", motion_mode="fast", duration=5)),
        (Mode.TEXT, text(quality="540p", motion_mode="fast", duration=8)),
        (Mode.TEXT, text(quality="1080p", duration=5, motion_mode="normal")),
        (Mode.TEXT, text(lip_sync_tts_content="x" * 140, sound_effect_switch=1)),
        (Mode.TEXT, text(motion_scale={"zoom": 0.5}, motion_strength=1, callback="https://h")),
        (Mode.IMAGE, image(model="v5.5", audio=1, style="clay", duration=8)),
        (Mode.IMAGE, image(image="https://example.test/a.jpg", template_id=3)),
        (Mode.IMAGE, image(image="data:image/png;base64,AAAA", last_image=IMG)),
        (Mode.FUSION, fusion(duration="8s", image_list=[IMG])),
        (Mode.FUSION, fusion(model="v3.5", duration="5s")),
    ],
)
def test_acceptable_requests(mode: Mode, request_: dict[str, Any]) -> None:
    assert check_request(mode, request_) == []
    assert mode_of_request(request_) is mode


@pytest.mark.parametrize(
    ("mode", "request_", "field", "words"),
    [
        (Mode.TEXT, text(quality="1080p", motion_mode="fast"), "motion_mode", "1080p"),
        (Mode.TEXT, text(quality="1080p", duration=8), "duration", "1080p does not support 8"),
        (Mode.TEXT, text(quality="720p", motion_mode="fast", duration=8), "motion_mode", "720p"),
        (Mode.TEXT, text(model="v5.5", camera_movement="zoom_in"), "camera_movement", "v5.5"),
        (Mode.TEXT, text(lip_sync_tts_content="x" * 141), "lip_sync_tts_content", "140"),
        (Mode.IMAGE, image(audio=1), "audio", "only v5.5"),
        (Mode.TEXT, text(generate_audio_switch=True), "generate_audio_switch", "only v5.5"),
        (Mode.TEXT, text(generate_multi_clip_switch=False), "generate_multi_clip_switch", "v5.5"),
        (Mode.TEXT, text(thinking_type="auto"), "thinking_type", "only v5.5"),
        (Mode.TEXT, text(model="v5"), "model", "not available for text"),
        (Mode.IMAGE, image(model="v3.5"), "model", "not available for image"),
        (Mode.FUSION, fusion(model="v5.5"), "model", "not available for fusion"),
        (Mode.FUSION, fusion(duration=5), "duration", "not allowed in fusion"),
        (Mode.FUSION, fusion(duration="10s"), "duration", "not allowed in fusion"),
        (Mode.TEXT, text(duration="5s"), "duration", "not allowed in text"),
        (Mode.TEXT, text(duration=6), "duration", "not allowed"),
        (Mode.IMAGE, image(last_image=IMG, template_id=1), "last_image", "template_id"),
        (Mode.TEXT, text(style="anime"), "style", "only image"),
        (Mode.IMAGE, image(ratio="16:9"), "ratio", "only text"),
        (Mode.TEXT, text(ratio="21:9"), "ratio", "not one of"),
        (Mode.TEXT, text(qualty="360p"), "qualty", "not a request field"),
        (Mode.TEXT, text(sound_effect_switch=True), "sound_effect_switch", "0 or 1"),
        (Mode.TEXT, text(seed=True), "seed", "whole number"),
        (Mode.TEXT, text(seed=2**31), "seed", "out of range"),
        (Mode.TEXT, text(prompt=" "), "prompt", "empty"),
        (Mode.IMAGE, image(image="pics/a.png"), "image", "not an image URL"),
        (Mode.FUSION, fusion(fusion=[]), "fusion", "non-empty list"),
        (Mode.FUSION, fusion(fusion=["https://x", 3]), "fusion[1]", "image URL"),
        (Mode.TEXT, text(motion_scale={"pitch": 1}), "motion_scale.pitch", "axis"),
        (Mode.TEXT, text(callback="ftp://x"), "callback", "http(s) URL"),
    ],
)
def test_each_rule(mode: Mode, request_: dict[str, Any], field: str, words: str) -> None:
    violations = check_request(mode, request_)
    assert [v.field for v in violations] == [field], violations
    assert words in violations[0].message + " " + violations[0].hint
    assert violations[0].hint


def test_missing_required_fields() -> None:
    assert fields_of(Mode.TEXT, {}) == ["prompt", "model"]
    assert fields_of(Mode.IMAGE, {"prompt": "p", "model": "v4"}) == ["image"]
    assert fields_of(Mode.FUSION, {"prompt": "p", "model": "v4"}) == ["fusion"]


def test_unknown_field_suggests_the_right_one() -> None:
    (v,) = check_request(Mode.TEXT, text(promt="x"))
    assert "did you mean 'prompt'" in v.hint


def test_mode_of_request() -> None:
    assert mode_of_request({"fusion": [IMG], "image": IMG}) is Mode.FUSION
    assert mode_of_request({"image": IMG}) is Mode.IMAGE
    assert mode_of_request({"prompt": "p"}) is Mode.TEXT


def test_fields_per_mode() -> None:
    assert "ratio" in fields_for(Mode.TEXT) and "ratio" not in fields_for(Mode.IMAGE)
    assert "style" in fields_for(Mode.IMAGE) and "audio" in fields_for(Mode.IMAGE)
    assert "fusion" in fields_for(Mode.FUSION) and "fusion" not in fields_for(Mode.TEXT)
    # image is optional (accepted, not forbidden) in text and fusion: API.md
    assert "image" in fields_for(Mode.TEXT) and "image" in fields_for(Mode.FUSION)
    assert len(FIELDS_BY_NAME) == len(FIELDS)


# ---- the schema -------------------------------------------------------------------


def test_committed_schema_is_the_generated_one() -> None:
    committed = (REPO / "schemas" / "manifest.schema.json").read_text(encoding="utf-8")
    assert committed == manifest_schema_json(), "run: pixrun schema > schemas/manifest.schema.json"


def test_schema_is_valid_2020_12_and_fully_described() -> None:
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def walk(node: dict[str, Any], where: str) -> None:
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, where
        for name, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{where}.{name} has no description"
            walk(sub, f"{where}.{name}")
        for name, sub in node.get("patternProperties", {}).items():
            assert sub.get("description"), f"{where}.{name}"
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(schema, "$")


def test_schema_lists_every_request_field_with_its_values() -> None:
    shot = manifest_schema()["properties"]["shots"]["items"]["properties"]
    for spec in FIELDS:
        assert spec.name in shot
        if spec.choices and spec.name != "duration":
            assert shot[spec.name]["enum"] == list(spec.choices)
    assert shot["duration"]["enum"] == [5, 8, 10, "5s", "8s", "10s"]


def test_shipped_manifests_have_the_modeline_and_pass_the_schema() -> None:
    import yaml

    for name in ("demo.yaml", "example.yaml"):
        path = REPO / "manifests" / name
        first = path.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schemas/manifest.schema.json"
        doc = yaml.safe_load(path.read_text())
        jsonschema.Draft202012Validator(manifest_schema()).validate(json.loads(json.dumps(doc)))
