"""Shots from tables (``shots_from``): CSV, TSV, JSONL and folders of images become shots
exactly like YAML ones (defaults, ids, duplicates), through validate, plan and a run
against the simulator, and every problem in a table is located as file:row:column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from runkit import SimThread, env_for, explain, pixrun, run_args, states
from runkit import write_manifest as write_sim_manifest

from runner.cli import cli
from runner.errors import ManifestError, Problem
from runner.manifest import load_manifest
from runner.manifest.table_cells import column_letters, image_id
from runner.model import Manifest, Mode

HEAD = "version: 1\ndefaults: {model: v4.5, quality: 360p, duration: 5}\n"


def setup(tmp_path: Path, yaml_tail: str, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(HEAD + yaml_tail, encoding="utf-8")
    return manifest


def loaded(manifest: Path) -> Manifest:
    return load_manifest(manifest, check_images=False)


def problems_of(manifest: Path) -> list[Problem]:
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    return list(info.value.problems)


def located(problems: list[Problem]) -> list[tuple[str, str]]:
    """(file:row:column as shown, start of the message), relative to the test folder."""
    return [(Path(p.location()).name, p.message.split(" (")[0]) for p in problems]


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (9, 90, 9)).save(path)


# ---- happy paths ----------------------------------------------------------------------


def test_csv_rows_become_shots_with_defaults_types_and_a_bom(tmp_path: Path) -> None:
    csv_text = (
        "\ufeffID, Prompt ,quality,seed,duration,x-notes,motion_mode,count\n"
        "calm,a calm lake,,7,,keep this one,,\n"
        ",a busy street,540p,,8,,,\n"
        "\n"  # a blank row: skipped, still counted
        "takes,a red kite,,,5s,,fast,2\n"
        '"multi","a line\nand another",,,,,,\n'
    )
    manifest = setup(tmp_path, "shots_from: prompts.csv\n", {"prompts.csv": csv_text})
    shots = {s.shot_id: s for s in loaded(manifest).shots}
    calm = shots["calm"]
    assert calm.request == {
        "model": "v4.5",
        "quality": "360p",
        "duration": 5,
        "prompt": "a calm lake",
        "seed": 7,
    }
    assert (calm.mark.file, calm.mark.line) == (str(tmp_path / "prompts.csv"), 2)
    (street,) = [s for s in shots.values() if s.prompt == "a busy street"]
    # no id: derived from the content, as for a YAML shot
    assert street.shot_id.startswith("text-a-busy-street-")
    assert street.request["quality"] == "540p" and street.request["duration"] == 8
    assert [shots[f"takes.t{i}"].request["motion_mode"] for i in (1, 2)] == ["fast", "fast"]
    # a quoted cell over two lines is one spreadsheet row (6), not two
    assert shots["multi"].prompt == "a line\nand another"
    assert shots["multi"].mark.line == 6


def test_the_same_shots_from_yaml_and_from_a_table_are_identical(tmp_path: Path) -> None:
    rows = [("a", "one", "540p", "3"), ("", "two", "", "")]
    csv_text = "id,prompt,quality,seed\n" + "".join(",".join(r) + "\n" for r in rows)
    from_table = loaded(setup(tmp_path, "shots_from: t.csv\n", {"t.csv": csv_text})).shots
    yaml_shots = "shots:\n  - {id: a, prompt: one, quality: 540p, seed: 3}\n  - {prompt: two}\n"
    from_yaml = loaded(setup(tmp_path, yaml_shots, {})).shots
    assert [(s.shot_id, s.request_hash, s.price_ptc) for s in from_table] == [
        (s.shot_id, s.request_hash, s.price_ptc) for s in from_yaml
    ]


def test_a_table_saved_with_windows_line_ends_gives_the_same_shots(tmp_path: Path) -> None:
    """Saved on Windows (CRLF) or elsewhere (LF), a quoted cell over two lines is the
    same prompt: else re-saving the file would make every such shot a changed one."""
    text = 'id,prompt\nmulti,"a line\nand another"\nplain,one\n'
    unix = loaded(setup(tmp_path / "lf", "shots_from: t.csv\n", {"t.csv": text.encode()}))
    dos = text.replace("\n", "\r\n").encode()
    windows = loaded(setup(tmp_path / "crlf", "shots_from: t.csv\n", {"t.csv": dos}))
    assert windows.shots[0].prompt == "a line\nand another"
    assert [s.request_hash for s in windows.shots] == [s.request_hash for s in unix.shots]


def test_jsonl_lines_become_shots_and_null_means_not_set(tmp_path: Path) -> None:
    lines = [
        {"id": "j1", "prompt": "a fox", "seed": 3, "motion_scale": {"horizontal": 0.5}},
        {"prompt": "a hare", "quality": None, "x-note": "ignored"},
        {"id": "j3", "mode": "fusion", "prompt": "two", "fusion": ["a.png", "b.png"]},
    ]
    text = "\ufeff" + "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n"
    text += json.dumps(lines[2]) + "\r\n"
    manifest = setup(
        tmp_path,
        "shots_from: [shots.jsonl]\n",
        {"shots.jsonl": text},
    )
    shots = loaded(manifest).shots
    assert [s.shot_id for s in shots][::2] == ["j1", "j3"]
    assert shots[0].request["motion_scale"] == {"horizontal": 0.5}
    assert shots[1].request["quality"] == "360p" and "x-note" not in shots[1].request
    assert shots[2].mode is Mode.FUSION and shots[2].mark.line == 4
    assert [u.rsplit("/", 1)[1] for u in shots[2].request["fusion"]] == ["a.png", "b.png"]


def test_cell_syntax_for_lists_switches_objects_and_delimiters(tmp_path: Path) -> None:
    csv_text = (
        "id;mode;prompt;fusion;sound_effect_switch;motion_scale\n"
        'f1;fusion;two friends;a.png | b.png;true;{"horizontal": 1}\n'
        'f2;fusion;two friends;["a.png", "b.png"];0;\n'
    )
    tsv_text = "id\tprompt\tmodel\tgenerate_audio_switch\tmotion_strength\nt1\tx\tv5.5\tno\t0.5\n"
    manifest = setup(
        tmp_path,
        "shots_from: [semi.csv, tabs.tsv]\n",
        {"semi.csv": csv_text, "tabs.tsv": tsv_text},
    )
    shots = {s.shot_id: s for s in loaded(manifest).shots}
    assert len(shots["f1"].request["fusion"]) == 2 == len(shots["f2"].request["fusion"])
    assert shots["f1"].request["sound_effect_switch"] == 1
    assert shots["f2"].request["sound_effect_switch"] == 0
    assert shots["f1"].request["motion_scale"] == {"horizontal": 1}
    assert shots["t1"].request["generate_audio_switch"] is False
    assert shots["t1"].request["motion_strength"] == 0.5


def test_a_folder_of_images_gives_one_image_shot_per_file(tmp_path: Path) -> None:
    for name in ("b.png", "a one.png", "c.jpg", "sub/d.png"):
        image(tmp_path / "img" / name)
    manifest = setup(
        tmp_path,
        "shots:\n  - {id: t, prompt: text}\n"
        "shots_from: {images: 'img/*.png', prompt: animate it, quality: 540p, count: 1}\n",
        {},
    )
    shots = load_manifest(manifest).shots
    assert [s.shot_id for s in shots] == ["t", "a-one.t1", "b.t1"]
    assert [s.mode for s in shots[1:]] == [Mode.IMAGE, Mode.IMAGE]
    assert shots[1].request["image"] == (tmp_path / "img" / "a one.png").as_uri()
    assert shots[1].request["quality"] == "540p" and shots[1].prompt == "animate it"
    assert shots[2].mark.file == str(tmp_path / "img" / "b.png")
    assert image_id("img/IMG 0001 (2).PNG") == "IMG-0001-2"
    assert column_letters(0) == "A" and column_letters(27) == "AB"


def test_appended_or_reordered_rows_keep_their_ids(tmp_path: Path) -> None:
    rows = ["a calm lake", "a busy street", "a red kite"]
    first = loaded(setup(tmp_path, "shots_from: t.csv\n", {"t.csv": "prompt\n" + "\n".join(rows)}))
    more = ["a red kite", "a new one", *rows[:2]]
    second = loaded(setup(tmp_path, "shots_from: t.csv\n", {"t.csv": "prompt\n" + "\n".join(more)}))
    ids = {s.prompt: s.shot_id for s in first.shots}
    assert {s.prompt: s.shot_id for s in second.shots if s.prompt in ids} == ids


# ---- validate, plan and run -----------------------------------------------------------


def test_validate_and_plan_see_the_table_shots(tmp_path: Path) -> None:
    manifest = setup(
        tmp_path,
        "shots:\n  - {id: y, prompt: p}\nshots_from: [t.csv, t.jsonl]\n",
        {"t.csv": "id,prompt,quality\nc1,p,540p\n", "t.jsonl": '{"id": "j1", "prompt": "p"}\n'},
    )
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", str(manifest)])
    assert ok.exit_code == 0 and "3 shots" in ok.output, ok.output
    plan = runner.invoke(cli, ["plan", str(manifest), "--format", "json"])
    assert plan.exit_code == 0, plan.output
    doc = json.loads(plan.stdout)
    assert sorted((g["quality"], g["count"]) for g in doc["groups"]) == [("360p", 2), ("540p", 1)]
    assert doc["remaining_ptc"] == "0.35"


def test_validate_prints_table_places_and_json_names_the_column(tmp_path: Path) -> None:
    manifest = setup(tmp_path, "shots_from: t.csv\n", {"t.csv": "id,prompt, Seed\na,p,x\n"})
    result = CliRunner().invoke(cli, ["validate", str(manifest)])
    assert result.exit_code != 0
    # the column as its header is written; the field as pixrun names it
    assert f"{tmp_path / 't.csv'}:2:Seed:error shot a seed: 'x' is not a whole number" in (
        " ".join(result.output.split())
    )
    as_json = CliRunner().invoke(cli, ["validate", str(manifest), "--format", "json"])
    (problem,) = json.loads(as_json.stdout)
    assert (problem["file"], problem["line"], problem["column"], problem["field"]) == (
        str(tmp_path / "t.csv"),
        2,
        "Seed",
        "seed",
    )


def test_a_simulated_run_renders_table_shots_and_a_changed_row_is_a_changed_shot(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(render_time_s=(0.02, 0.05))
    batch = write_sim_manifest(tmp_path, 1)
    doc = yaml.safe_load(batch.manifest.read_text())
    doc["shots_from"] = ["rows.csv", "rows.jsonl", {"images": "img/*.png", "prompt": "a lake"}]
    image(tmp_path / "img" / "i1.png")
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "rows.csv").write_text("id,prompt\nc1,a lake shot c1\nc2,a lake shot c2\n")
    (tmp_path / "rows.jsonl").write_text('{"id": "j1", "prompt": "a lake shot j1"}\n')
    env = env_for(sim.base_url)
    result = pixrun(run_args(batch), env, cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    ids = ("s00", "c1", "c2", "j1", "i1")
    assert states(batch.ledger) == {s: "done" for s in ids}
    assert {p.name for p in batch.out.glob("*.mp4")} == {f"{s}.mp4" for s in ids}
    # edit one row, as one would edit a YAML shot: the plan sees a changed shot
    (tmp_path / "rows.csv").write_text("id,prompt\nc1,a lake shot c1\nc2,a river shot c2\n")
    plan = pixrun(["plan", str(batch.manifest), "--format", "json"], env, cwd=tmp_path)
    assert plan.returncode == 0, explain(plan)
    text_group = next(g for g in json.loads(plan.stdout)["groups"] if g["mode"] == "text")
    assert text_group["by_status"] == {"done": 3, "changed": 1}


# ---- problems, each located -------------------------------------------------------------


def test_csv_problems_are_located_by_row_and_header(tmp_path: Path) -> None:
    csv_text = (
        "id,prompt,seed,quality,generate_audio_switch,fusion,motion_scale,\n"
        "a,p,x,,,,,\n"  # 2: seed not a whole number
        "b,p,,999p,,,,\n"  # 3: not a quality
        "c,p,,,maybe,,,\n"  # 4: not a boolean
        "d,p,,,,a.png||b.png,,\n"  # 5: empty list item
        "e,p,,,,,{x,,\n"  # 6: not JSON
        "f,p,,,,,,stray\n"  # 7: a value under no header
        "g,p,,,,,,,,extra\n"  # 8: more cells than headers
        ",,,,,,,\n"  # 9: blank, skipped
        "bad id!,p,,,,,,\n"  # 10: not a valid id
    )
    manifest = setup(tmp_path, "shots_from: t.csv\n", {"t.csv": csv_text})
    assert located(problems_of(manifest)) == [
        ("t.csv:2:seed", "'x' is not a whole number"),
        ("t.csv:3:quality", "'999p' is not one of the allowed values"),
        ("t.csv:4:generate_audio_switch", "'maybe' is not true or false"),
        ("t.csv:5:fusion", "the list has an empty item"),
        (
            "t.csv:6:motion_scale",
            "not a JSON object: Expecting property name enclosed in double quotes",
        ),
        ("t.csv:7:H", "this cell is in a column without a header"),
        ("t.csv:8:J", "this row has 10 cells; the header names 8 columns"),
        ("t.csv:10:id", "'bad id!' is not a valid id"),
    ]


def test_a_quote_never_closed_is_an_error_not_a_cell_that_swallows_the_rows(
    tmp_path: Path,
) -> None:
    """It used to read as one shot whose prompt held every later row: valid, and the
    other shots silently gone."""
    csv_text = 'id,prompt\na,"a lake\nb,a street\nc,a field\n'
    manifest = setup(tmp_path, "shots_from: t.csv\n", {"t.csv": csv_text})
    assert located(problems_of(manifest)) == [
        ("t.csv:2", "cannot read this row: a quote opened in this row is never closed")
    ]


def test_a_wrong_header_is_reported_once_and_its_rows_are_not_read(tmp_path: Path) -> None:
    csv_text = "id,promt,Quality,quality,x-ok\na,p,360p,360p,\nb,p,,,\n"
    manifest = setup(tmp_path, "shots_from: t.csv\n", {"t.csv": csv_text})
    problems = problems_of(manifest)
    assert located(problems) == [
        ("t.csv:1:promt", "unknown column 'promt'"),
        ("t.csv:1:quality", "column 'quality' appears twice"),
    ]
    assert problems[0].hint == "did you mean 'prompt'?"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", ("t.csv", "the table is empty")),
        (b"id,prompt\n", ("t.csv:1", "the table has a header but no rows")),
        (b"x-a,x-b\n1,2\n", ("t.csv:1", "the header names no shot field")),
        (b"id,prompt\na,caf\xe9\n", ("t.csv:2", "not UTF-8 text")),
        (b'id,prompt\na,"' + b"x" * 200_000 + b'"\n', ("t.csv:2", "cannot read this row")),
    ],
)
def test_unreadable_tables_are_located(
    tmp_path: Path, content: bytes, expected: tuple[str, str]
) -> None:
    manifest = setup(tmp_path, "shots_from: t.csv\n", {"t.csv": content})
    (problem,) = problems_of(manifest)
    assert (Path(problem.location()).name, problem.message[: len(expected[1])]) == expected


def test_jsonl_problems_are_located_by_line_and_key(tmp_path: Path) -> None:
    text = (
        '{"id": "a", "prompt": "p", "seed": "7"}\n'  # 1: a string for an integer
        '{"id": "b", "promt": "p"}\n'  # 2: unknown key (and then no prompt)
        '  {"id": "c", "prompt": "p", "id": "d"}\n'  # 3: a key twice
        "[1, 2]\n"  # 4: not an object
        '  {"id": "e", prompt}\n'  # 5: not JSON: line and character (spaces count)
    )
    manifest = setup(tmp_path, "shots_from: t.jsonl\n", {"t.jsonl": text})
    assert located(problems_of(manifest)) == [
        ("t.jsonl:1:seed", "must be a whole number, not the text '7'"),
        ("t.jsonl:2:promt", "unknown key 'promt'"),
        ("t.jsonl:2", "prompt is required"),
        ("t.jsonl:3:id", "key 'id' appears twice on this line"),
        ("t.jsonl:4", "a line must hold a JSON object"),
        ("t.jsonl:5:15", "not valid JSON: Expecting property name enclosed in double quotes"),
    ]


def test_a_source_that_cannot_be_read_is_located_in_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "folder.csv").mkdir()
    manifest = setup(
        tmp_path,
        "shots:\n  - {id: y, prompt: p}\n"
        "shots_from:\n  - missing.csv\n  - notes.txt\n  - folder.csv\n"
        "  - {images: 'none/*.png', prompt: p}\n  - {images: 'img/*.png', quality: 9}\n"
        "  - 12\n",
        {},
    )
    got = [(p.line, p.field_path, p.message) for p in problems_of(manifest)]
    assert got == [
        (6, "shots_from[0]", "no such file: missing.csv"),
        (7, "shots_from[1]", "'notes.txt' is not a table pixrun reads"),
        (8, "shots_from[2]", "folder.csv is a folder"),
        (9, "shots_from[3].images", "no file matches 'none/*.png'"),
        # a refused field is left out; the rest of the spec is still used
        (10, "shots_from[4].images", "no file matches 'img/*.png'"),
        (10, "shots_from[4].quality", "must be text, not the number 9"),
        (11, "shots_from[5]", "must be text or a mapping, not the number 12"),
    ]


def test_neither_shots_nor_shots_from_is_an_error(tmp_path: Path) -> None:
    (problem,) = problems_of(setup(tmp_path, "name: x\n", {}))
    assert problem.message == "shots is required" and "shots_from" in (problem.hint or "")


def test_problems_of_image_shots_point_at_the_file_or_the_spec(tmp_path: Path) -> None:
    image(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    manifest = setup(
        tmp_path,
        "shots_from:\n  - images: img/*.png\n    prompt: p\n    style: no-such-style\n",
        {},
    )
    got = [
        (Path(p.file).name, p.line, p.field_path, p.message.split(";")[0])
        for p in problems_of(manifest)
    ]
    assert got[0][:3] == ("m.yaml", 6, "shots_from[0].style")
    assert got[1][:3] == ("broken.png", None, "image")


def test_duplicate_ids_across_yaml_and_tables_name_both_places(tmp_path: Path) -> None:
    image(tmp_path / "img" / "y.png")
    manifest = setup(
        tmp_path,
        "shots:\n  - {id: y, prompt: p}\n  - {prompt: same}\n"
        "shots_from: [t.csv, t.jsonl, {images: img/*.png, prompt: p}]\n",
        {"t.csv": "id,prompt\nc,p\ny,p\n,same\n", "t.jsonl": '{"id": "c", "prompt": "p"}\n'},
    )
    problems = problems_of(manifest)
    m = str(tmp_path / "m.yaml")
    t = str(tmp_path / "t.csv")
    assert [(Path(p.location()).name, p.severity, p.message) for p in problems] == [
        ("t.csv:3:id", "error", f"id 'y' is already used by shots[0] ({m}:4)"),
        (
            "t.csv:4",
            "warning",
            f"duplicate shot: identical to shots[1] ({m}:5); it is generated once",
        ),
        ("t.jsonl:1:id", "error", f"id 'c' is already used by {t}:2"),
        ("y.png", "error", f"id 'y' is already used by shots[0] ({m}:4)"),
    ]


def test_a_refused_cell_is_said_once(tmp_path: Path) -> None:
    """The fusion cell is refused, so the row has no fusion: that is not said again as
    "fusion is required", and the row gets no derived id of its own."""
    manifest = setup(
        tmp_path, "shots_from: t.csv\n", {"t.csv": "mode,prompt,fusion\nfusion,p,a.png||\n"}
    )
    problems = problems_of(manifest)
    assert located(problems) == [("t.csv:2:fusion", "the list has an empty item")]
    # an id-less row is named by its place alone (no "#N" counting YAML and tables)
    assert problems[0].shot_id is None


def test_tables_stop_at_the_shot_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runner.manifest.loader.MAX_SHOTS", 2)
    manifest = setup(tmp_path, "shots_from: t.csv\n", {"t.csv": "prompt\na\nb\nc\nd\n"})
    problem = problems_of(manifest)[0]
    assert (problem.line, problem.field_path) == (3, "shots_from")
    assert problem.message == "the tables hold more than 2 shots"
