"""The manifest loader: valid fixtures load, every invalid fixture reports exactly the
problems written in its ``# expect:`` lines (line, field path, message, hint), and no
input of any kind gets anything but a ManifestError out of it."""

from __future__ import annotations

import json
import re
import shutil
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from runner.errors import ManifestError, Problem, UsageError
from runner.manifest import load_manifest, validate_file
from runner.manifest.expand import take_seed
from runner.manifest.schema import manifest_schema
from runner.manifest.validate import SchemaCheck
from runner.model import Mode

DATA = Path(__file__).parent / "data" / "manifests"
REPO = Path(__file__).parent.parent
VALID = sorted((DATA / "valid").glob("*.yaml"))
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
SHIPPED = [REPO / "manifests" / "demo.yaml", REPO / "manifests" / "example.yaml"]

EXPECT = re.compile(
    r"^# expect(?:-(?P<sev>warning))?: (?P<line>\S+) (?P<field>\S+) :: (?P<rest>.+)$"
)


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return info.value.problems


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


MINIMAL = "version: 1\nshots:\n  - {prompt: p, model: v4, quality: 360p}\n"


# ---- fixtures ---------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID + SHIPPED, ids=lambda p: p.name)
def test_valid_fixture_loads(path: Path) -> None:
    manifest = load_manifest(path)
    assert manifest.shots
    assert not [w for w in manifest.warnings if w.severity == "error"]


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_reports_exactly_its_expectations(path: Path) -> None:
    expected = []
    for line in path.read_text().splitlines():
        m = EXPECT.match(line)
        if m:
            expected.append(m.groupdict())
    assert expected, f"{path.name} has no '# expect:' lines"
    problems = problems_of(path)
    left = list(problems)
    for exp in expected:
        parts = [x.strip() for x in exp["rest"].split(" :: ")]
        match = next(
            (
                p
                for p in left
                if str(p.line if p.line is not None else "-") == exp["line"]
                and (p.field_path or "-") == exp["field"]
                and p.severity == (exp["sev"] or "error")
                and parts[0] in p.message
                and all(x in (p.hint or "") for x in parts[1:])
            ),
            None,
        )
        assert match is not None, f"{path.name}: nothing matches {exp}; got {problems}"
        left.remove(match)
    assert not left, f"{path.name}: unexpected problems {left}"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_every_problem_is_located_and_explained(path: Path) -> None:
    problems = problems_of(path)
    assert problems
    for p in problems:
        assert p.file == str(path)
        assert p.message and p.hint, p
        if path.name != "empty.yaml":
            assert p.line is not None and p.column is not None, p


def test_all_errors_found_in_one_pass(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """version: 1
shots:
  - {id: a, prompt: p, model: v4, quality: 1080p, motion_mode: fast}
  - {id: b, prompt: p, model: v5.5, quality: 360p, camera_movement: zoom_in}
  - {id: c, prompt: p, model: v4, quality: 999p}
  - {id: d, prompt: p, model: v4, quality: 360p, colour: red}
""",
    )
    fields = sorted(p.field_path or "" for p in errors(problems_of(path)))
    assert fields == [
        "shots[0].motion_mode",
        "shots[1].camera_movement",
        "shots[2].quality",
        "shots[3].colour",
    ]


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such manifest"):
        load_manifest(tmp_path / "nope.yaml")
    report = validate_file(tmp_path / "nope.yaml")
    assert not report.ok and "no such manifest" in report.problems[0].message


# ---- requests, modes and defaults -------------------------------------------------


def test_demo_covers_three_modes_cheaply() -> None:
    manifest = load_manifest(SHIPPED[0])
    assert {s.mode for s in manifest.shots} == set(Mode)
    assert all(s.request["quality"] == "360p" for s in manifest.shots)
    for shot in manifest.shots:
        for value in shot.request.values():
            images = value if isinstance(value, list) else [value]
            for item in images:
                assert not (isinstance(item, str) and item.startswith("http")), "demo is offline"


def test_wire_form_durations_and_switches(tmp_path: Path) -> None:
    shutil.copy(DATA / "images" / "ok.png", tmp_path / "ok.png")
    path = write(
        tmp_path,
        """version: 1
defaults: {model: v4.5, quality: 360p}
shots:
  - {id: t, prompt: p, duration: "8s", sound_effect_switch: true, seed: 5.0}
  - {id: i, prompt: p, image: ok.png, duration: 8}
  - {id: f, prompt: p, fusion: [ok.png], duration: 8}
  - {id: f5, prompt: p, fusion: [ok.png]}
""",
    )
    shots = {s.shot_id: s for s in load_manifest(path).shots}
    assert shots["t"].request["duration"] == 8
    assert shots["t"].request["sound_effect_switch"] == 1
    assert type(shots["t"].request["seed"]) is int
    assert shots["i"].request["duration"] == 8
    assert shots["f"].request["duration"] == "8s"
    assert shots["f5"].request["duration"] == "5s"
    assert shots["i"].request["image"] == (tmp_path / "ok.png").as_uri()
    assert shots["f"].mode is Mode.FUSION and shots["i"].mode is Mode.IMAGE


def test_defaults_apply_and_mode_specific_defaults_are_skipped(tmp_path: Path) -> None:
    shutil.copy(DATA / "images" / "ok.png", tmp_path / "ok.png")
    path = write(
        tmp_path,
        """version: 1
defaults: {model: v4.5, quality: 540p, ratio: "9:16", style: anime, max_attempts: 7}
run: {max_attempts: 2}
shots:
  - {id: t, prompt: p}
  - {id: i, prompt: p, image: ok.png, quality: 720p}
  - {id: j, prompt: p, image: ok.png, max_attempts: 1}
""",
    )
    shots = {s.shot_id: s for s in load_manifest(path).shots}
    assert shots["t"].request == {
        "model": "v4.5",
        "quality": "540p",
        "ratio": "9:16",
        "prompt": "p",
        "duration": 5,
    }
    assert "ratio" not in shots["i"].request and shots["i"].request["style"] == "anime"
    assert shots["i"].request["quality"] == "720p"
    assert shots["t"].max_attempts == 7 and shots["j"].max_attempts == 1


def test_run_max_attempts_is_the_fallback(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("shots:", "run: {max_attempts: 6}\nshots:"))
    assert load_manifest(path).shots[0].max_attempts == 6


def test_run_and_output_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace(
            "shots:",
            "name: My Batch!\nrun: {concurrency: 3, budget_ptc: 2.5, requests_per_s: 0.5,"
            " poll: {initial_delay_s: 0.01, min_interval_s: 0.02, max_interval_s: 0.5}}\n"
            "output: {sidecar: false}\nshots:",
        ),
    )
    manifest = load_manifest(path)
    assert manifest.name == "My Batch!"
    assert manifest.run.concurrency == 3
    assert manifest.run.budget_ptc == Decimal("2.5")
    assert manifest.run.requests_per_s == 0.5
    assert manifest.run.poll.initial_delay_s == 0.01
    assert manifest.run.poll.timeout_s == 1800.0
    assert manifest.output.dir == tmp_path / "out" / "My-Batch"
    assert manifest.output.sidecar is False


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    assert load_manifest(write(tmp_path, MINIMAL, "night-shoot.yaml")).name == "night-shoot"


# ---- ids, takes, variations -------------------------------------------------------


def test_ids_hashes_and_seeds_are_stable_across_reads_and_moves(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    for target in (a, b):
        shutil.copytree(REPO / "manifests", target)
    first = load_manifest(a / "example.yaml")
    again = load_manifest(a / "example.yaml")
    moved = load_manifest(b / "example.yaml")
    summary = [(s.shot_id, s.request_hash, s.request.get("seed")) for s in first.shots]
    assert summary == [(s.shot_id, s.request_hash, s.request.get("seed")) for s in again.shots]
    assert summary == [(s.shot_id, s.request_hash, s.request.get("seed")) for s in moved.shots]


def test_request_hash_follows_image_content_not_path(tmp_path: Path) -> None:
    shutil.copy(DATA / "images" / "ok.png", tmp_path / "img.png")
    path = write(
        tmp_path, "version: 1\nshots:\n  - {prompt: p, model: v4, quality: 360p, image: img.png}\n"
    )
    before = load_manifest(path).shots[0]
    Image.new("RGB", (300, 300), (1, 2, 3)).save(tmp_path / "img.png")
    after = load_manifest(path).shots[0]
    assert before.shot_id == after.shot_id
    assert before.request_hash != after.request_hash


def test_request_hash_changes_with_the_request(tmp_path: Path) -> None:
    one = load_manifest(write(tmp_path, MINIMAL)).shots[0]
    two = load_manifest(write(tmp_path, MINIMAL.replace("360p", "540p"), "n.yaml")).shots[0]
    assert one.request_hash != two.request_hash
    assert re.fullmatch(r"[0-9a-f]{64}", one.request_hash)


def test_count_gives_distinct_deterministic_seeds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """version: 1
defaults: {model: v4, quality: 360p}
shots:
  - {id: hero, prompt: p, count: 4}
  - {id: based, prompt: p, count: 3, seed: 2147483646}
""",
    )
    shots = load_manifest(path).shots
    hero = [s for s in shots if s.shot_id.startswith("hero")]
    assert [s.shot_id for s in hero] == ["hero.t1", "hero.t2", "hero.t3", "hero.t4"]
    assert [s.take for s in hero] == [1, 2, 3, 4]
    seeds = [s.request["seed"] for s in hero]
    assert len(set(seeds)) == 4
    assert seeds == [take_seed("hero", t) for t in (1, 2, 3, 4)]
    based = [s.request["seed"] for s in shots if s.shot_id.startswith("based")]
    assert based == [2147483646, 2147483647, 0]


def test_more_takes_keep_the_first_takes(tmp_path: Path) -> None:
    text = "version: 1\nshots:\n  - {id: h, prompt: p, model: v4, quality: 360p, count: N}\n"
    three = load_manifest(write(tmp_path, text.replace("N", "3"))).shots
    five = load_manifest(write(tmp_path, text.replace("N", "5"), "b.yaml")).shots
    assert [(s.shot_id, s.request_hash) for s in three] == [
        (s.shot_id, s.request_hash) for s in five[:3]
    ]


def test_vary_is_a_cross_product_with_readable_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """version: 1
shots:
  - id: grid
    prompt: p
    model: v4
    quality: 360p
    count: 2
    vary:
      quality: [360p, 540p]
      ratio: ["16:9", "1:1"]
  - id: prompts
    model: v4
    quality: 360p
    vary:
      prompt: [a long prompt with spaces, another long prompt]
""",
    )
    shots = load_manifest(path).shots
    grid = [s for s in shots if s.shot_id.startswith("grid")]
    assert len(grid) == 8
    assert grid[0].shot_id == "grid.quality-360p.ratio-16-9.t1"
    assert {(s.request["quality"], s.request["ratio"]) for s in grid} == {
        (q, r) for q in ("360p", "540p") for r in ("16:9", "1:1")
    }
    # take 1 of every variation shares a seed: variations compare like with like
    assert len({s.request["seed"] for s in grid if s.take == 1}) == 1
    assert [s.shot_id for s in shots if s.shot_id.startswith("prompts")] == [
        "prompts.prompt-1",
        "prompts.prompt-2",
    ]


def test_derived_ids_identical_shots_are_reported_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """version: 1
defaults: {model: v4, quality: 360p}
shots:
  - {prompt: A cat on a roof, seed: 1}
  - {prompt: A cat on a roof, seed: 1, duration: 5}
  - {prompt: A cat on a roof, seed: 2}
""",
    )
    manifest = load_manifest(path)
    assert len(manifest.shots) == 2
    assert manifest.shots[0].shot_id.startswith("text-a-cat-on-a-roof-")
    (warning,) = manifest.warnings
    assert warning.severity == "warning" and warning.line == 5
    assert "duplicate shot" in warning.message and "line 4" in warning.message


def test_unsafe_ids_never_reach_output_paths(tmp_path: Path) -> None:
    for bad in ("../x", "/abs", "a/b", "a\\\\b", "..", "x..y", "C:x", "x\\n"):
        path = write(tmp_path, MINIMAL.replace("{prompt", f'{{id: "{bad}", prompt'))
        problems = problems_of(path)
        assert [p.field_path for p in problems] == ["shots[0].id"], (bad, problems)


# ---- output names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("/abs/{shot_id}.mp4", "could write outside"),
        ("a/../../{shot_id}.mp4", "could write outside"),
        ("a//{shot_id}.mp4", "could write outside"),
        ("C:{shot_id}.mp4", "could write outside"),
        ("a\\\\{shot_id}.mp4", "could write outside"),
        ("{shot_id}.mov", "does not end with .mp4"),
        ("{shot_id!r}.mp4", "conversions are not allowed"),
        ("{shot_id.upper}.mp4", "unknown placeholder"),
        ("{shot_id[0]}.mp4", "unknown placeholder"),
        ("{model:d}.mp4", "cannot be formatted"),
        ("{shot_id.mp4", "not a valid pattern"),
        ("{take:/>9}.mp4", "could write outside"),
    ],
)
def test_output_patterns_that_could_escape_are_refused(
    tmp_path: Path, pattern: str, message: str
) -> None:
    path = write(tmp_path, MINIMAL.replace("shots:", f'output: {{filename: "{pattern}"}}\nshots:'))
    (problem,) = problems_of(path)
    assert problem.field_path == "output.filename" and message in problem.message


def test_output_pattern_placeholders(tmp_path: Path) -> None:
    pattern = (
        "{name}/{mode}/{model}/{quality}/{duration}s-{motion_mode}/"
        "{shot_id}_{take:02d}_{seed}_{hash}.mp4"
    )
    path = write(
        tmp_path,
        f'version: 1\nname: b\noutput: {{filename: "{pattern}"}}\n'
        "shots:\n  - {id: s, prompt: p, model: v4.5, quality: 540p, count: 2, seed: 9}\n",
    )
    shot = load_manifest(path).shots[1]
    assert shot.output_relpath == (
        f"b/text/v4.5/540p/5s-normal/s.t2_02_10_{shot.request_hash[:12]}.mp4"
    )


# ---- YAML safety ------------------------------------------------------------------


def test_billion_laughs_stays_small(tmp_path: Path) -> None:
    levels = ['x-a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"x-{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    text = "version: 1\n" + "\n".join(levels) + "\nshots:\n  - {prompt: *i, model: v4}\n"
    problems = problems_of(write(tmp_path, text))
    assert any(p.field_path == "shots[0].prompt" for p in problems)


def test_recursive_alias_is_an_error_not_a_hang(tmp_path: Path) -> None:
    text = "version: 1\nshots:\n  - &s {prompt: p, model: v4, quality: 360p, vary: {seed: [*s]}}\n"
    problems = problems_of(write(tmp_path, text))
    assert any(p.field_path == "shots[0].vary.seed[0]" for p in problems)


def test_deep_nesting_is_an_error(tmp_path: Path) -> None:
    text = "version: 1\nshots:\n  - prompt: " + "[" * 200 + "]" * 200 + "\n"
    assert problems_of(write(tmp_path, text))


def test_implicit_tags_resolve_like_pyyaml() -> None:
    from yaml.nodes import ScalarNode

    from runner.manifest.yaml_common import EventLoader as _Loader

    ours, theirs = _Loader(""), yaml.CSafeLoader("")
    samples = ["0", "00", "07", "089", "1_0", "12", "1.5", "1e3", "0x1f", "0o7", "1:20", "~"]
    samples += ["yes", "No", "2024-01-01", "", "=", "<<", ".inf", "5s", "v4.5", "16:9", "+1"]
    for value in samples:
        for implicit in ((True, False), (False, True)):
            assert ours.resolve(ScalarNode, value, implicit) == theirs.resolve(
                ScalarNode, value, implicit
            ), value


def test_loader_builds_the_same_data_as_pyyaml() -> None:
    from runner.manifest.yaml_source import parse

    for path in VALID + SHIPPED:
        data = path.read_bytes()
        assert parse(data).data == yaml.load(data, Loader=yaml.CSafeLoader), path


_ALPHABET = "version: 1\nshots- {}[]&*!|>'\"#%@`,?:prompt model quality image fusion 0123456789.\t "


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), st.text(alphabet=_ALPHABET, max_size=400)))
def test_fuzz_nothing_but_manifest_error_comes_out(
    tmp_path_factory: pytest.TempPathFactory, blob: bytes | str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "m.yaml"
    path.write_bytes(blob if isinstance(blob, bytes) else blob.encode())
    try:
        load_manifest(path)
    except ManifestError as exc:
        assert exc.problems
        assert all(isinstance(p, Problem) and p.message for p in exc.problems)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**32)
    | st.floats(allow_nan=False)
    | st.sampled_from(["360p", "1080p", "v4", "v5.5", "fast", "5s", "", "x", "../a", "ok.png"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_shot_keys = st.sampled_from(
    [
        "id",
        "prompt",
        "model",
        "quality",
        "duration",
        "motion_mode",
        "seed",
        "count",
        "vary",
        "image",
        "fusion",
        "mode",
        "audio",
        "ratio",
        "motion_scale",
        "qualty",
        "camera_movement",
    ]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(_shot_keys, _values, max_size=6), min_size=1, max_size=3))
def test_fuzz_structured_shots(
    tmp_path_factory: pytest.TempPathFactory, shots: list[dict[str, object]]
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "m.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "shots": shots}))
    try:
        load_manifest(path)
    except ManifestError as exc:
        assert exc.problems


# ---- the message layer drops no jsonschema error -----------------------------------


def _shape_verdict(doc: object) -> bool:
    return not SchemaCheck(manifest_schema()).issues(doc)


def _schema_verdict(doc: object) -> bool:
    return jsonschema.Draft202012Validator(manifest_schema()).is_valid(doc)


@pytest.mark.parametrize("path", VALID + INVALID + SHIPPED, ids=lambda p: p.name)
def test_fast_check_agrees_with_jsonschema_on_fixtures(path: Path) -> None:
    try:
        doc = yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)
    except yaml.YAMLError:
        pytest.skip("not YAML: neither check runs")
    doc = json.loads(json.dumps(doc, default=str))  # what jsonschema can see
    assert _shape_verdict(doc) == _schema_verdict(doc)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_shot_keys, _values, max_size=5), max_size=3), _values)
def test_fast_check_agrees_with_jsonschema_on_generated_docs(
    shots: list[dict[str, object]], extra: object
) -> None:
    for doc in ({"version": 1, "shots": shots}, {"version": 1, "shots": shots, "run": extra}):
        assert _shape_verdict(doc) == _schema_verdict(doc), doc


# ---- images -----------------------------------------------------------------------


def test_local_images_checked_and_urls_passed_through(tmp_path: Path) -> None:
    # PixVerse's own limits (runner/data/rules.json): under 20 MB, sides up to 4000 px,
    # no minimum side and no aspect limit (the 10 MB / 300 px / 2.5:1 were another's)
    (tmp_path / "big.png").write_bytes(b"\x89PNG" + b"\0" * (20 * 1024 * 1024))
    Image.new("L", (4000, 4000), 9).save(tmp_path / "square.png")
    Image.new("L", (4001, 10), 9).save(tmp_path / "too-wide.png")
    Image.new("RGB", (30, 900), (9, 9, 9)).save(tmp_path / "thin.webp", "WEBP")
    path = write(
        tmp_path,
        f"""version: 1
defaults: {{model: v4, quality: 360p}}
shots:
  - {{id: big, prompt: p, image: big.png}}
  - {{id: square, prompt: p, image: square.png}}
  - {{id: too-wide, prompt: p, image: too-wide.png}}
  - {{id: thin, prompt: p, image: thin.webp}}
  - {{id: url, prompt: p, image: "https://example.test/nowhere.png"}}
  - {{id: uri, prompt: p, image: "{(tmp_path / "square.png").as_uri()}"}}
""",
    )
    problems = problems_of(path)
    assert [(p.shot_id, p.message.split(";")[0]) for p in problems] == [
        ("big", "big.png is over 20 MB"),
        ("too-wide", "too-wide.png is 4001x10 px"),
    ]
    shots = load_manifest(path, check_images=False).shots
    assert {s.shot_id: s.request["image"] for s in shots}[
        "url"
    ] == "https://example.test/nowhere.png"


# ---- the event builder agrees with yaml.safe_load -----------------------------------

# Valid documents without duplicate keys: runner/yaml_source.parse must build exactly
# what yaml.safe_load builds (it reads libyaml's events, never a node graph).
_SAME_AS_SAFE_LOAD = [
    "a: &x {k: 1}\nb: *x\nc: {<<: *x, d: 2}\nd:\n  <<: *x\n  k: 9\n",
    "base: &b {x: 1, y: 2}\nmore: &m {z: 4}\nboth: {<<: [*b, *m], w: 5}\n",
    "t1: 2001-12-14t21:59:43.10-05:00\nt2: 2002-12-14\nt3: 2001-12-14 21:59:43.10 -5\n"
    "t4: 2001-12-15T02:59:43.1Z\nt5: 2001-12-15 2:59:43.10\nt6: !!timestamp '2020-02-29'\n",
    "bin: !!binary |\n  R0lGODlhDAAMAIQAAP//9/X17unp5WZmZgAAAOfn515eXvPz7Y6OjuDg4J+fn5\n"
    "  OTk6enp56enmlpaWNjY6Ojo4SEhP/++f/++f/++f/++f/++f/++f/++f/++f/+\n"
    "flow: !!binary 'aGVsbG8='\n",
    "oct: 0o17\nold_oct: 017\nhex: 0x1F\nneg_hex: -0x1f\nbinary: 0b1010\nsep: 1_000\n"
    "sexa: 190:20:30\nsign: +12\nnot_oct: 089\nzero: 0\nneg_zero: -0\n"
    "big: 123456789012345678901234567890\n",
    "f1: .inf\nf2: -.Inf\nf3: +.INF\nf4: 1e3\nf5: 1.5e+3\nf6: 6.8523015e+5\nf7: 685.230_15e+03\n"
    "f8: 190:20:30.15\nf9: .5\nf10: -1.\nf11: 1.0\nnan: .NaN\n",
    "e1:\ne2: ~\ne3: null\ne4: ''\ne5: \"\"\ne6: Null\ne7: NULL\nlist:\n  -\n  - ~\n",
    "s1: !!str 12\ns2: !!str yes\ns3: !!str\ns4: !!str ~\ns5: !!int '7'\ns6: ! 12\ns7: '12'\n"
    "s8: !<tag:yaml.org,2002:str> 5\ns9: !!float '2'\ns10: !!bool 'on'\ns11: !!null ''\n",
    "lit: |\n  line1\n  line2\nkeep: |+\n  x\n\nfold: >\n  folded\n  text\n\n  para\n"
    "plain: a\n  multi\n  line\nq: \"x\\ny \\u00e9 \\t\"\nsq: 'it''s'\nstrip: >-\n  end\n",
    "bools: [yes, No, on, OFF, true, FALSE, y, n, Yes]\n",
    "set: !!set {a, b, 1}\nomap: !!omap [{a: 1}, {b: 2}]\npairs: !!pairs [{a: 1}, {a: 2}]\n",
    "%YAML 1.1\n---\nversion: 1\n...\n",
    "1: int key\n2.5: float key\nnull: null key\nfalse: bool key\n2024-01-01: date key\n"
    "'1': text\n",
    "deep: " + "[" * 60 + "]" * 60 + "\n",
    "anchors: [&a x, *a, &b [1, 2], *b, &c {k: v}, *c]\n",
    "{a: 1, b: [2, {c: 3}], d: {e: [], f: {}}, 'g h': \"i\"}\n",
    "- a\n- - b\n  - c\n- {d: e}\n- ? complex\n  : key\n",
    "k: v # comment\n? |\n  block key\n: value\n",
    'unicode: caf\u00e9 \u2603\nemoji: "\\U0001F600"\n',
    "version: 1\nshots:\n  - &s {prompt: p, model: v4, quality: 360p}\n"
    "  - <<: *s\n    quality: 540p\n",
    *("", "# only a comment\n", "---\n", "~\n", "just text\n", "12\n", "[a, b]\n"),
]


def _same_data(ours: object, theirs: object) -> bool:
    """Equality that also holds for NaN, and that does not allow True for 1."""
    import math

    if isinstance(ours, float) and math.isnan(ours):
        return isinstance(theirs, float) and math.isnan(theirs)
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, dict):
        assert isinstance(theirs, dict)
        return ours.keys() == theirs.keys() and all(_same_data(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list):
        assert isinstance(theirs, list)
        return len(ours) == len(theirs) and all(map(_same_data, ours, theirs))
    return ours == theirs


def _assert_builds_like_safe_load(text: str) -> None:
    from runner.manifest.yaml_source import parse

    parsed = parse(text)
    assert not parsed.issues, (text, parsed.issues)
    theirs = yaml.safe_load(text)
    assert _same_data(parsed.data, theirs), (text, parsed.data, theirs)


@pytest.mark.parametrize("text", _SAME_AS_SAFE_LOAD)
def test_event_builder_matches_safe_load_on_edge_cases(text: str) -> None:
    _assert_builds_like_safe_load(text)


_dump_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
    | st.sampled_from(["yes", "No", "~", "null", "0x1f", "017", "1:20", "1e3", ".inf", "<<", "="])
    | st.binary(max_size=12)
    | st.dates()
    | st.datetimes()
)
_dump_keys = (
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
    | st.integers(-5, 2**40)
    | st.none()
    | st.dates()
)
_dump_data = st.recursive(
    _dump_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_dump_keys, inner, max_size=4)
        | st.sets(st.integers(-3, 3) | st.text(max_size=3), max_size=3)
        # the same object twice: safe_dump writes an anchor and an alias
        | inner.map(lambda shared: [shared, {"again": shared}])
    ),
    max_leaves=12,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _dump_data,
    st.sampled_from([None, False, True]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([20, 80]),
)
def test_event_builder_matches_safe_load_on_dumped_data(
    data: object, flow: bool | None, canonical: bool, allow_unicode: bool, width: int
) -> None:
    # canonical output tags every node explicitly (!!int "1", !!map {...}); a narrow
    # width folds long text over several lines
    text = yaml.safe_dump(
        data,
        default_flow_style=flow,
        canonical=canonical,
        allow_unicode=allow_unicode,
        width=width,
        sort_keys=False,
    )
    _assert_builds_like_safe_load(text)


def test_merge_sources_follow_the_spec_earlier_wins() -> None:
    """yaml.org/type/merge: keys of earlier mappings in a ``<<`` sequence win. (PyYAML
    6.0.4's safe_load lets the later one win for keys longer than one character:
    yaml/pyyaml#953; the event builder keeps to the spec, as before.)"""
    from runner.manifest.yaml_source import parse

    text = "a: &a {kk: 1, k: 1}\nb: &b {kk: 2, k: 2, only_b: 2}\nc: {<<: [*a, *b], own: 3}\n"
    parsed = parse(text)
    assert parsed.data["c"] == {"kk": 1, "k": 1, "only_b": 2, "own": 3}
    assert not parsed.issues


def test_event_builder_shares_aliased_objects() -> None:
    from runner.manifest.yaml_source import parse

    data = parse("a: &x [1, {k: v}]\nb: *x\nc: [*x, *x]\nr: &r {self: *r}\n").data
    assert data["a"] is data["b"] is data["c"][0] is data["c"][1]
    assert data["r"]["self"] is data["r"]


def test_parse_never_composes_a_node_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.manifest import yaml_source

    def refuse(*_: object) -> None:
        raise AssertionError("parse composed the document")

    monkeypatch.setattr(yaml_source.EventLoader, "get_single_node", refuse)
    monkeypatch.setattr(yaml_source.EventLoader, "get_node", refuse)
    parsed = yaml_source.parse((SHIPPED[1]).read_bytes())
    assert parsed.data["shots"] and not parsed.issues


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ("a: 1\nb: *nope\n", "found undefined alias", 2, 4),
        ("a: &x 1\nb: &x 2\n", "found duplicate anchor", 2, 4),
        ("a: 1\n---\nb: 2\n", "expected a single document", 2, 1),
        ("a: [1, 2\nb: 3\n", "not valid YAML", 2, 2),
    ],
)
def test_event_builder_reports_composer_errors_with_positions(
    text: str, message: str, line: int, column: int
) -> None:
    from runner.manifest.yaml_source import parse

    parsed = parse(text)
    assert parsed.data is None and parsed.shot_marks == []
    (issue,) = parsed.issues
    assert issue.fatal and message in issue.message
    assert (issue.line, issue.column) == (line, column)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!bool maybe", "'maybe' is not a valid bool"),
        ("!!timestamp soon", "'soon' is not a valid timestamp"),
        ("!!float ''", "'' is not a valid float"),
        ("!!int ''", "'' is not a valid int"),
        ("!!int x1", "invalid literal for int()"),
        ("!!binary 'é'", "failed to convert base64 data"),
        ("!!map [1]", "expected a mapping node"),
        ("!!omap [1]", "expected a mapping of length 1"),
        ("!!omap [{a: 1, b: 2}]", "expected a single mapping item"),
        ("!foo {a: 1}", "the YAML tag '!foo' is not allowed"),
        ("!!python/name:os.system ''", "is not allowed"),
    ],
)
def test_bad_tagged_values_are_issues_at_their_position(value: str, message: str) -> None:
    """SafeConstructor indexes and matches without checking (a KeyError for ``!!bool
    maybe``): every such value is a YamlIssue, never an exception."""
    from runner.manifest.yaml_source import parse

    parsed = parse(f"version: 1\nrun:\n  x: {value}\n")
    (issue,) = parsed.issues
    assert message in issue.message, issue
    assert (issue.line, issue.column, issue.path) == (3, 6, ("run", "x"))
    assert parsed.data["run"]["x"] is None


def test_aliased_bad_value_is_reported_where_used() -> None:
    from runner.manifest.yaml_source import parse

    parsed = parse("a: &t !foo x\nb: *t\nc: [*t]\n")
    assert parsed.data == {"a": None, "b": None, "c": [None]}
    assert [(i.line, i.column, i.path) for i in parsed.issues] == [
        (1, 4, ("a",)),
        (1, 4, ("b",)),
        (1, 4, ("c", 0)),
    ]


def test_shot_marks_from_the_event_stream() -> None:
    from runner.manifest.yaml_source import parse

    text = "x: &e {prompt: p}\nshots:\n  - {prompt: a}\n  - *e\n  -   prompt: c\n"
    assert parse(text).shot_marks == [(3, 5), (1, 4), (5, 7)]
    aliased = "list: &s\n  - a\n  - b\nshots: *s\n"
    assert parse(aliased).shot_marks == [(2, 5), (3, 5)]
    assert parse("shots: {a: 1}\n").shot_marks == []
    assert parse("- shots\n").shot_marks == []


def test_duplicate_key_names_its_first_line() -> None:
    from runner.manifest.yaml_source import parse

    parsed = parse("top:\n  a: 1\n  b: 2\n  a: 3\n")
    assert parsed.data == {"top": {"a": 1, "b": 2}}
    (issue,) = parsed.issues
    assert issue.message == "duplicate key 'a' (first at line 2)"
    assert (issue.line, issue.column, issue.path) == (4, 3, ("top",))


def test_very_deep_nesting_is_skipped_without_recursion() -> None:
    from runner.manifest.yaml_source import MAX_DEPTH, parse

    # libyaml itself refuses more than 1000 levels
    parsed = parse("a: " + "[" * 990 + "]" * 990 + "\nb: 1\n")
    (issue,) = parsed.issues
    assert "nested too deeply" in issue.message
    assert parsed.data["b"] == 1
    assert len(issue.path) == MAX_DEPTH


def test_keys_that_are_not_text_are_unknown_keys(tmp_path: Path) -> None:
    # the top level's "x-" pattern cannot be tried on a number: still an unknown key
    path = write(
        tmp_path, "version: 1\n1: x\nshots:\n  - {prompt: p, model: v4, quality: 360p, 2: y}\n"
    )
    found = {(p.line, p.field_path, p.message) for p in errors(problems_of(path))}
    assert found == {(2, "1", "unknown key '1'"), (4, "shots[0].2", "unknown key '2'")}
