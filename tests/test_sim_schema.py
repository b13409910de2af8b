"""The simulator's own request schema: hand-written from API.md, able to disagree.

It must accept every request pixrun builds from a valid manifest, refuse one bad body
per documented rule, and be the only thing the simulator checks requests with.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from runner.errors import InvalidRequest
from runner.manifest import load_manifest
from runner.sim.rules import RequestRules, carries_image_bytes, request_schema

DATA = Path(__file__).parent / "data"
SIM_SOURCES = Path(__file__).parents[1] / "runner" / "sim"
URL = "https://example.test/subject.png"
DATA_URI = "data:image/png;base64,iVBORw0KGgo="


def _online(value: Any) -> Any:
    """The request with every ``file://`` image as an https URL (the sim cannot read files)."""
    if isinstance(value, str) and value.startswith("file://"):
        return URL
    if isinstance(value, list):
        return [_online(v) for v in value]
    if isinstance(value, dict):
        return {k: _online(v) for k, v in value.items()}
    return value


def manifest_requests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DATA / "manifests" / "valid").glob("*.yaml")):
        for shot in load_manifest(path, check_images=False).shots:
            out.append((f"{path.name}:{shot.shot_id}", _online(shot.request)))
    return out


def test_the_schema_is_valid_2020_12() -> None:
    schema = request_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    for rule in schema["allOf"]:
        assert "API.md" in rule["description"], rule


def test_accepts_every_request_a_valid_manifest_builds() -> None:
    rules = RequestRules()
    requests = manifest_requests()
    modes = {("fusion" in r) * "fusion" or ("image" in r) * "image" or "text" for _, r in requests}
    assert len(requests) >= 10 and modes == {"text", "image", "fusion"}
    for where, request in requests:
        assert rules.problems(request) == [], where


BASE = {"prompt": "a fox in the snow", "model": "v4.5"}

#: one body per rule: (why it is wrong, the body, words the refusal must contain)
BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("prompt is required", {"model": "v4"}, "'prompt' is a required property"),
    ("model is required", {"prompt": "x"}, "'model' is a required property"),
    ("prompt at most 2048", {**BASE, "prompt": "x" * 2049}, "prompt:"),
    ("prompt not empty", {**BASE, "prompt": ""}, "prompt:"),
    ("unknown field", {**BASE, "colour": "red"}, "'colour' was unexpected"),
    ("text models", {**BASE, "model": "v5"}, "model: 'v5' is not one of"),
    ("image models", {**BASE, "model": "v3.5", "image": URL}, "model: 'v3.5'"),
    ("fusion models", {**BASE, "model": "v5.5", "fusion": [URL]}, "model: 'v5.5'"),
    ("text duration", {**BASE, "duration": 6}, "duration: 6 is not one of"),
    ("text duration is a number", {**BASE, "duration": "5s"}, "duration: '5s'"),
    ("image duration", {**BASE, "image": URL, "duration": 7}, "duration: 7"),
    ("fusion duration is a string", {**BASE, "fusion": [URL], "duration": 5}, "duration: 5"),
    ("fusion has no 10 s", {**BASE, "fusion": [URL], "duration": "10s"}, "duration: '10s'"),
    ("fusion at least 1", {**BASE, "fusion": []}, "fusion:"),
    ("fusion at most 3", {**BASE, "fusion": [URL] * 4}, "fusion:"),
    ("ratio is text-only", {**BASE, "image": URL, "ratio": "16:9"}, "ratio: not accepted"),
    ("style is image-only", {**BASE, "style": "anime"}, "style: not accepted in text"),
    ("audio is image-only", {**BASE, "model": "v5.5", "audio": 1}, "audio: not accepted"),
    ("roll is an integer", {**BASE, "motion_scale": {"roll": 0.5}}, "motion_scale.roll"),
    ("motion_scale axes", {**BASE, "motion_scale": {"tilt": 1}}, "'tilt' was unexpected"),
    ("lip sync at most 140", {**BASE, "lip_sync_tts_content": "y" * 141}, "lip_sync_tts"),
    ("switch is 0/1", {**BASE, "sound_effect_switch": True}, "sound_effect_switch"),
    ("image is a URL", {**BASE, "image": "cat.png"}, "image:"),
    ("no file:// on the wire", {**BASE, "last_image": "file:///tmp/a.png"}, "last_image:"),
    ("callback is http(s)", {**BASE, "callback": "ftp://x.test/"}, "callback:"),
    ("quality values", {**BASE, "quality": "4k"}, "quality:"),
    ("camera values", {**BASE, "camera_movement": "spin"}, "camera_movement:"),
    (
        "1080p no fast",
        {**BASE, "quality": "1080p", "motion_mode": "fast"},
        "1080p supports neither motion_mode fast nor 8 s",
    ),
    (
        "1080p no 8 s",
        {**BASE, "quality": "1080p", "duration": 8},
        "1080p supports neither motion_mode fast nor 8 s",
    ),
    (
        "1080p no 8 s in fusion",
        {**BASE, "fusion": [URL], "quality": "1080p", "duration": "8s"},
        "1080p supports neither",
    ),
    (
        "720p not fast with 8 s",
        {**BASE, "quality": "720p", "motion_mode": "fast", "duration": 8},
        "720p cannot combine motion_mode fast with 8 s",
    ),
    (
        "camera_movement not with v5.5",
        {**BASE, "model": "v5.5", "camera_movement": "zoom_in"},
        "camera_movement: camera_movement is not supported by v5.5",
    ),
    (
        "last_image not with template_id",
        {**BASE, "template_id": 3, "last_image": URL},
        "last_image: last_image does not work with effects",
    ),
    ("audio only on v5.5", {**BASE, "model": "v5", "image": URL, "audio": 1}, "v5.5 only"),
    ("audio switch only on v5.5", {**BASE, "generate_audio_switch": True}, "v5.5 only"),
    ("multi clip only on v5.5", {**BASE, "generate_multi_clip_switch": False}, "v5.5 only"),
    ("thinking only on v5.5", {**BASE, "thinking_type": "auto"}, "v5.5 only"),
]


@pytest.mark.parametrize(("why", "body", "words"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_refuses_one_bad_body_per_rule(why: str, body: dict[str, Any], words: str) -> None:
    problems = RequestRules().problems(body)
    assert problems, why
    assert any(words in p for p in problems), problems


def test_accepts_what_api_md_allows_and_the_edges() -> None:
    rules = RequestRules()
    good = [
        {**BASE, "fusion": [URL, DATA_URI, URL], "image": URL, "duration": "8s"},
        {**BASE, "image": DATA_URI, "model": "v5.5", "audio": 0, "style": "clay", "duration": 10},
        {**BASE, "model": "v5.5", "thinking_type": "auto", "generate_audio_switch": True},
        {**BASE, "prompt": "x" * 2048, "lip_sync_tts_content": "y" * 140},
        {**BASE, "quality": "720p", "motion_mode": "fast", "duration": 5},
        {**BASE, "quality": "1080p", "motion_mode": "normal", "duration": 10},
        {**BASE, "motion_scale": {"roll": -2, "zoom": 0.5}, "callback": "http://h.test/cb"},
        {**BASE, "fusion": [URL], "callback": "https://h.test/cb", "template_id": 1},
    ]
    for body in good:
        assert rules.problems(body) == [], body


def test_names_at_most_the_first_few_problems() -> None:
    body = {"prompt": "", "model": "v9", "quality": "9k", "duration": 1, "colour": 1}
    assert len(RequestRules().problems(body)) == 3


def test_inline_image_bytes_are_recognised() -> None:
    assert carries_image_bytes({**BASE, "image": DATA_URI})
    assert carries_image_bytes({**BASE, "fusion": [URL, "iVBORw0KGgo" * 10]})
    assert not carries_image_bytes({**BASE, "image": URL, "image_list": [URL]})


def test_the_simulator_never_imports_the_clients_contract() -> None:
    imports = re.compile(r"^\s*(from|import)\s+runner(\.contract|\s+import\s+.*\bcontract\b)")
    for source in SIM_SOURCES.glob("*.py"):
        for line in source.read_text().splitlines():
            assert not imports.match(line), f"{source.name}: {line}"


async def test_the_simulator_disagrees_where_the_client_is_wrong(
    sim_factory: Any, provider_factory: Any, tmp_path: Path
) -> None:
    """A body the client's rules pass (a user's rules file that adds a model the
    provider does not have) is refused by the provider: the simulator judges by the
    provider contract, not by the client's rules."""
    import json as json_

    from runner.manifest.contract import load_rules
    from runner.manifest.request_check import check_request
    from runner.model import Mode

    packaged = Path(__file__).parents[1] / "runner" / "data" / "rules.json"
    doc = json_.loads(packaged.read_text(encoding="utf-8"))
    doc["models"]["text"]["values"].append("v6")
    mine = tmp_path / "rules.json"
    mine.write_text(json_.dumps(doc), encoding="utf-8")
    body = {**BASE, "model": "v6"}
    assert check_request(Mode.TEXT, body, rules=load_rules(mine)) == []
    for dialect, code in (("pixverse", 400017), ("gateway", 400)):
        sim = await sim_factory(dialect=dialect)
        with pytest.raises(InvalidRequest) as refused:
            await provider_factory(sim).generate(body, trace_id="t")
        assert refused.value.provider_code == code
        assert "Invalid parameter: model" in str(refused.value)
        assert sim.stats()["refusals"] == {"invalid": 1}
