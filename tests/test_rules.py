"""The provider rules file (runner/data/rules.json, or the user's via --rules): parsing,
what the rules decide, the image limits, and image paths that are not regular files."""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from runkit import env_for, pixrun

from runner.errors import ManifestError, UsageError
from runner.manifest import load_manifest
from runner.manifest.contract import default_rules, load_rules
from runner.manifest.images import ImageChecker, inspect_image
from runner.manifest.request_check import check_request
from runner.manifest.rules import ImageLimits
from runner.manifest.schema import manifest_schema
from runner.model import Mode

PACKAGED = Path(__file__).parent.parent / "runner" / "data" / "rules.json"
IMG = "file:///tmp/a.png"


def packaged() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PACKAGED.read_text(encoding="utf-8"))
    return data


def write_rules(tmp_path: Path, data: dict[str, Any], name: str = "rules.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def text(**extra: Any) -> dict[str, Any]:
    return {"prompt": "p", "model": "v4.5", "quality": "360p", "duration": 5, **extra}


# ---- the file -----------------------------------------------------------------------


def test_packaged_rules_parse_and_every_entry_has_a_source() -> None:
    rules = default_rules()
    assert rules is load_rules(None) is default_rules()
    assert rules.models_by_mode[Mode.TEXT] == ("v3.5", "v4", "v4.5", "v5.5")
    assert rules.durations_s_by_mode[Mode.FUSION] == (5, 8)
    assert rules.max_chars == {"prompt": 2048, "lip_sync_tts_content": 140}
    assert (rules.fusion_min, rules.fusion_max) == (1, 3)
    images = rules.images
    assert images.suffixes == (".jpg", ".jpeg", ".png", ".webp")
    assert (images.max_bytes, images.max_side_px) == (20 * 2**20, 4000)
    assert images.min_side_px is None and images.max_aspect is None
    expected = {"models.text", "qualities", "combinations.1080p-no-fast", "images.max_bytes"}
    expected |= {"text_limits.prompt", "fusion_references", "model_only_fields.camera_movement"}
    assert expected <= set(rules.sources)
    assert all(s.strip() for s in rules.sources.values())
    assert "docs.platform.pixverse.ai/upload-image" in rules.sources["images.max_side_px"]


def _drop_source(d: dict[str, Any]) -> None:
    del d["combinations"][0]["source"]


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(d: dict[str, Any]) -> None:
        holder: Any = d
        for part in path[:-1]:
            holder = holder[part]
        holder[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (_drop_source, "combinations.1080p-no-fast: has no source"),
        (_set(("colour",), 1), "at colour: is not a known key"),
        (_set(("version",), 2), "at version: is 2"),
        (_set(("models", "text", "values"), []), "at models.text.values: must be a non-empty"),
        (_set(("models", "image"), ["v4"]), "at models.image: must be a JSON object"),
        (_set(("durations_s", "text", "values"), [5, "8"]), "durations_s.text.values[1]"),
        (_set(("qualities", "values"), ["360p", "360p"]), "qualities.values: lists a value twice"),
        (
            _set(("model_only_fields", 0, "models"), ["v4"]),
            'model_only_fields[0]: needs exactly one of "models" and "not_models"',
        ),
        (_set(("combinations", 0, "when"), {"qualty": ["1080p"]}), "'qualty' is not a request"),
        (_set(("combinations", 0, "field"), "seed"), "'seed' is not one of the fields"),
        (_set(("combinations", 1, "id"), "1080p-no-fast"), "'1080p-no-fast' is used twice"),
        (_set(("combinations", 3, "when"), {"quality": ["1080p"]}), 'needs either "when"'),
        (_set(("text_limits", "seed"), {"max_chars": 3, "source": "x"}), "not a text field"),
        (_set(("fusion_references", "max"), 0), "fusion_references.max: must be a whole number"),
        (_set(("images", "suffixes", "values"), [".gif"]), "'.gif' is not an image type"),
        (_set(("images", "max_bytes", "value"), None), "images.max_bytes.value"),
        (_set(("images", "max_aspect", "value"), 0.5), "images.max_aspect.value"),
    ],
)
def test_a_bad_rules_file_is_refused_naming_the_file_and_key(
    tmp_path: Path, change: Any, words: str
) -> None:
    data = packaged()
    change(data)
    path = write_rules(tmp_path, data)
    with pytest.raises(UsageError) as info:
        load_rules(path)
    assert str(path) in info.value.message
    assert words in info.value.message, info.value.message
    assert info.value.hint


def test_unreadable_or_not_json_rules_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the rules file"):
        load_rules(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{ not json", encoding="utf-8")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_rules(tmp_path / "bad.json")


# ---- what the rules decide ----------------------------------------------------------


def with_v6() -> dict[str, Any]:
    data = packaged()
    data["models"]["text"]["values"].append("v6")
    data["models"]["text"]["source"] += "; v6: the user's addition"
    return data


def test_a_rules_file_that_adds_a_model_makes_it_valid(tmp_path: Path) -> None:
    rules = load_rules(write_rules(tmp_path, with_v6()))
    assert check_request(Mode.TEXT, text(model="v6"), rules) == []
    # camera_movement is refused only for v5.5 (a deny list), so a new model takes it
    assert check_request(Mode.TEXT, text(model="v6", camera_movement="zoom_in"), rules) == []
    refused = check_request(Mode.TEXT, text(model="v6"))
    assert {v.field for v in refused} == {"model"}
    assert any("not available for text" in v.message for v in refused)
    assert (
        "v6"
        in manifest_schema(rules)["properties"]["shots"]["items"]["properties"]["model"]["enum"]
    )
    assert "v6" not in json.dumps(manifest_schema()["properties"]["shots"]["items"]["properties"])


def test_combination_rules_come_from_the_file(tmp_path: Path) -> None:
    data = packaged()
    data["combinations"] = [
        {
            "id": "540p-no-fast",
            "when": {"quality": ["540p"]},
            "forbid": {"motion_mode": ["fast"]},
            "message": "540p fast is out today",
            "hint": "use normal",
            "source": "a test",
        },
        {
            "id": "seed-no-effects",
            "when_present": "seed",
            "forbid_present": "template_id",
            "message": "no seeds with effects",
            "hint": "drop one",
            "source": "a test",
        },
    ]
    rules = load_rules(write_rules(tmp_path, data))
    # the packaged 1080p rules are gone with the packaged list
    assert check_request(Mode.TEXT, text(quality="1080p", motion_mode="fast"), rules) == []
    (v,) = check_request(Mode.TEXT, text(quality="540p", motion_mode="fast"), rules)
    assert (v.field, v.message, v.hint) == ("motion_mode", "540p fast is out today", "use normal")
    (v,) = check_request(Mode.TEXT, text(seed=1, template_id=2), rules)
    assert (v.field, v.message) == ("seed", "no seeds with effects")
    # durations compare in seconds, absent ones as the default 5
    assert check_request(Mode.FUSION, {**text(duration="8s", quality="1080p"), "fusion": [IMG]})


def test_image_is_optional_in_text_and_fusion() -> None:
    assert check_request(Mode.TEXT, text(image=IMG)) == []
    fusion = {"prompt": "p", "model": "v4", "fusion": [IMG], "duration": "5s"}
    assert check_request(Mode.FUSION, {**fusion, "image": IMG}) == []


def test_fusion_takes_one_to_three_references_and_prompts_2048_chars() -> None:
    fusion = {"prompt": "p", "model": "v4", "duration": "5s"}
    assert check_request(Mode.FUSION, {**fusion, "fusion": [IMG] * 3}) == []
    (v,) = check_request(Mode.FUSION, {**fusion, "fusion": [IMG] * 4})
    assert v.field == "fusion" and "1 to 3" in v.message
    assert check_request(Mode.TEXT, text(prompt="x" * 2048)) == []
    (v,) = check_request(Mode.TEXT, text(prompt="x" * 2049))
    assert v.field == "prompt" and "at most 2048" in v.message


def test_motion_scale_roll_is_a_whole_number() -> None:
    assert check_request(Mode.TEXT, text(motion_scale={"roll": 2, "zoom": 0.5})) == []
    (v,) = check_request(Mode.TEXT, text(motion_scale={"roll": 0.5}))
    assert v.field == "motion_scale.roll" and "whole number" in v.message
    roll = manifest_schema()["properties"]["shots"]["items"]["properties"]["motion_scale"]
    assert roll["properties"]["roll"]["type"] == "integer"
    assert roll["properties"]["zoom"]["type"] == "number"


def write_manifest(tmp_path: Path, shots: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        "version: 1\ndefaults: {model: v4.5, quality: 360p}\nshots:\n" + shots, encoding="utf-8"
    )
    return path


def test_manifest_text_shot_with_an_image_and_roll(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "a.webp", "WEBP")
    path = write_manifest(
        tmp_path,
        "  - {id: t, mode: text, prompt: p, image: a.webp, motion_scale: {roll: 2.0}}\n"
        "  - {id: f, prompt: p, model: v4, fusion: [a.webp], image: a.webp}\n",
    )
    shots = {s.shot_id: s for s in load_manifest(path).shots}
    assert shots["t"].mode is Mode.TEXT and shots["t"].request["image"].endswith("a.webp")
    roll = shots["t"].request["motion_scale"]["roll"]
    assert roll == 2 and type(roll) is int
    assert shots["f"].mode is Mode.FUSION
    bad = write_manifest(
        tmp_path,
        "  - {id: r, prompt: p, motion_scale: {roll: 1.5}}\n"
        "  - {id: f, prompt: p, model: v4, fusion: [a.webp, a.webp, a.webp, a.webp]}\n",
        "bad.yaml",
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(bad)
    found = {(p.field_path, p.message) for p in info.value.problems}
    assert ("shots[0].motion_scale.roll", "must be a whole number, not the number 1.5") in found
    assert ("shots[1].fusion", "has 4 items; at most 3 are allowed") in found


# ---- image limits -------------------------------------------------------------------


def limits(**change: Any) -> ImageLimits:
    base = default_rules().images
    values = {
        "suffixes": base.suffixes,
        "max_bytes": base.max_bytes,
        "max_side_px": base.max_side_px,
        "min_side_px": base.min_side_px,
        "max_aspect": base.max_aspect,
        "sources": base.sources,
    }
    return ImageLimits(**{**values, **change})


def test_image_limits_against_pixverse_numbers(tmp_path: Path) -> None:
    packaged_limits = default_rules().images
    Image.new("L", (4000, 1), 0).save(tmp_path / "edge.png")
    Image.new("L", (1, 4001), 0).save(tmp_path / "over.jpg")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "tiny.webp", "WEBP")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "png-inside.webp", "PNG")
    assert inspect_image(tmp_path / "edge.png", packaged_limits) is None
    assert inspect_image(tmp_path / "tiny.webp", packaged_limits) is None
    over = inspect_image(tmp_path / "over.jpg", packaged_limits)
    assert over is not None and "1x4001 px; neither side may exceed 4000 px" in over.message
    inside = inspect_image(tmp_path / "png-inside.webp", packaged_limits)
    assert inside is not None and "is a PNG image despite its name" in inside.message
    # a user's rules may bring back a minimum side or an aspect bound
    strict = limits(min_side_px=300, max_aspect=2.5)
    tiny = inspect_image(tmp_path / "tiny.webp", strict)
    assert tiny is not None and "at least 300 px" in tiny.message
    Image.new("L", (751, 300), 0).save(tmp_path / "wide.png")
    wide = inspect_image(tmp_path / "wide.png", strict)
    assert wide is not None and "aspect 2.503:1" in wide.message


def test_size_limit_reads_at_most_one_byte_past_it(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "a.png")
    size = (tmp_path / "a.png").stat().st_size
    assert inspect_image(tmp_path / "a.png", limits(max_bytes=size)) is None
    fault = inspect_image(tmp_path / "a.png", limits(max_bytes=size - 1))
    assert fault is not None and "is over" in fault.message
    checker = ImageChecker(limits(max_bytes=size - 1))
    assert checker.content_id(tmp_path / "a.png").startswith("missing:")
    assert ImageChecker(limits(max_bytes=size)).content_id(tmp_path / "a.png").startswith("sha256:")


# ---- paths that are not regular files: never a hang ---------------------------------


def _odd_paths(tmp_path: Path) -> tuple[Path, Path]:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    return fifo, zero


@pytest.mark.parametrize("image_check", [True, False], ids=["inspect", "hash-only"])
def test_validate_does_not_hang_on_a_fifo_or_dev_zero(tmp_path: Path, image_check: bool) -> None:
    _odd_paths(tmp_path)
    path = write_manifest(
        tmp_path,
        "  - {id: fifo, prompt: p, image: pipe.png}\n  - {id: zero, prompt: p, image: zero.png}\n",
    )
    args = ["validate", str(path)] + ([] if image_check else ["--no-image-check"])
    # a regression blocks on the FIFO or reads /dev/zero forever: the timeout fails it
    result = pixrun(args, env_for(None, key=None), cwd=tmp_path, timeout_s=20)
    if image_check:
        assert result.returncode == 2, result.stderr
        assert "pipe.png is a named pipe (FIFO), not a regular file" in result.stderr
        assert "zero.png is a device, not a regular file" in result.stderr
    else:
        # not opened for inspection; hashing refuses them without reading (missing:)
        assert result.returncode == 0, result.stderr
        assert f"valid: {path} (2 shots)" in result.stdout.splitlines(), result.stdout


def test_hashing_a_fifo_returns_at_once(tmp_path: Path) -> None:
    fifo, zero = _odd_paths(tmp_path)
    checker = ImageChecker(default_rules().images)
    found: list[str] = []
    worker = threading.Thread(
        target=lambda: found.extend(checker.content_id(p) for p in (fifo, zero)), daemon=True
    )
    worker.start()
    worker.join(timeout=10)
    assert found == [f"missing:{fifo}", f"missing:{zero}"]


# ---- the command line ---------------------------------------------------------------


def test_cli_rules_option_adds_a_model_for_validate_plan_and_schema(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, with_v6(), "v6.json")
    manifest = write_manifest(tmp_path, "  - {id: new, prompt: p, model: v6}\n")
    env = env_for(None, key=None)
    refused = pixrun(["validate", str(manifest)], env, cwd=tmp_path, timeout_s=60)
    assert refused.returncode == 2 and "'v6' is not one of the allowed" in refused.stderr
    ok = pixrun(["validate", "--rules", str(rules), str(manifest)], env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert f"valid: {manifest} (1 shot)" in ok.stdout.splitlines(), ok.stdout  # not "invalid"
    plan = pixrun(
        ["plan", str(manifest), "--rules", str(rules), "--format", "json"], env, cwd=tmp_path
    )
    assert plan.returncode == 0, plan.stderr
    assert [g["model"] for g in json.loads(plan.stdout)["groups"]] == ["v6"]
    schema = pixrun(["schema", "--rules", str(rules)], env, cwd=tmp_path)
    enum = json.loads(schema.stdout)["properties"]["shots"]["items"]["properties"]["model"]
    assert "v6" in enum["enum"]


def test_cli_bad_rules_file_exits_2_with_the_key(tmp_path: Path) -> None:
    data = copy.deepcopy(packaged())
    del data["qualities"]["source"]
    rules = write_rules(tmp_path, data)
    manifest = write_manifest(tmp_path, "  - {id: a, prompt: p}\n")
    result = pixrun(
        ["validate", "--rules", str(rules), str(manifest)], env_for(None, key=None), cwd=tmp_path
    )
    assert result.returncode == 2
    assert f"rules file {rules} at qualities: has no source" in result.stderr
    assert "Traceback" not in result.stderr


def _capped_memory() -> None:
    """A regression reading /dev/zero would fill the memory of a shared machine: cap it."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("odd", ["fifo", "zero"])
def test_a_manifest_or_table_that_is_a_fifo_or_dev_zero_is_refused_at_once(
    tmp_path: Path, odd: str
) -> None:
    """The manifest itself, or a shots_from table, as a FIFO or a link to /dev/zero: a
    problem reported at once (exit 2), never a hang or a read without end."""
    import subprocess
    import sys

    for name in ("shots.csv", "manifest.yaml"):
        if odd == "fifo":
            os.mkfifo(tmp_path / name)
        else:
            (tmp_path / name).symlink_to("/dev/zero")
    kind = "a named pipe (FIFO)" if odd == "fifo" else "a device"
    table = tmp_path / "table.yaml"
    table.write_text(
        "version: 1\ndefaults: {model: v4.5, quality: 360p}\nshots_from: [shots.csv]\n"
    )
    for manifest, said in ((table, f"shots.csv is {kind}"), (tmp_path / "manifest.yaml", kind)):
        result = subprocess.run(
            [sys.executable, "-m", "runner", "validate", str(manifest)],
            env=env_for(None, key=None),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
            preexec_fn=_capped_memory,
        )
        assert result.returncode == 2 and said in result.stderr, result.stderr
