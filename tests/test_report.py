"""Report formats: CSV and JSON records, and the HTML contact sheet as a document."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from viewkit import HOSTILE_PROMPT, Spec, build_batch

from runner.ledger import open_ledger
from runner.ledger.queries import ReportRow, report_rows
from runner.model import ShotState
from runner.report import (
    FIELDS,
    ContactSheetInfo,
    format_ptc,
    render_contact_sheet,
    to_csv,
    to_json,
)


async def _rows(ledger_path: Path) -> list[ReportRow]:
    async with await open_ledger(ledger_path, writer=False) as ledger:
        return await report_rows(ledger)


@pytest.mark.parametrize(
    ("uptc", "text"),
    [
        (0, "0.00"),
        (1_500_000, "1.50"),
        (150_000, "0.15"),
        (1_234_500, "1.2345"),
        (1_234_567, "1.2346"),
        (10_000, "0.01"),
        (50, "0.0001"),
        (123_456_000_000, "123456.00"),
        (None, "?"),
    ],
)
def test_money_shows_two_to_four_decimals(uptc: int | None, text: str) -> None:
    assert format_ptc(uptc) == text


async def test_csv_has_every_field_and_round_trips_awkward_text(tmp_path: Path) -> None:
    awkward = 'a "quoted", comma\nand a second line'
    batch = await build_batch(
        tmp_path,
        [
            Spec("a", ShotState.DONE, awkward),
            Spec("b", ShotState.FAILED, "x", error="bad, very bad"),
        ],
    )
    rows = await _rows(batch.ledger_path)
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows, output_dir=batch.output_dir))))
    assert list(parsed[0].keys()) == list(FIELDS)
    assert [p["shot_id"] for p in parsed] == ["a", "b"]
    assert parsed[0]["prompt"] == awkward
    assert parsed[0]["output_file"] == str(batch.output_dir / "a.mp4")
    assert parsed[0]["price_ptc"] == "0.15" and parsed[0]["attempts"] == "1"
    assert parsed[1]["output_file"] == "" and parsed[1]["error"] == "bad, very bad"


async def test_json_records_are_typed_and_complete(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    rows = await _rows(batch.ledger_path)
    records = json.loads(to_json(rows, output_dir=batch.output_dir))
    assert len(records) == len(rows) == 11
    assert all(list(r.keys()) == list(FIELDS) for r in records)
    by_id = {r["shot_id"]: r for r in records}
    done = by_id["dawn-lake"]
    assert done["state"] == "done" and done["seed"] == 1000 and done["bytes"] == 957
    assert Path(done["output_file"]).is_file()
    assert by_id["desert-wind"]["price_ptc"] is None
    assert by_id["fox-hare"]["prompt"] == HOSTILE_PROMPT
    assert by_id["in-render"]["output_file"] is None and by_id["in-render"]["task_id"]


class _Doc(HTMLParser):
    """Collects what a browser would load and run from the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._in = tag
            (self.scripts if tag == "script" else self.styles).append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts[-1] += data
        elif self._in == "style":
            self.styles[-1] += data
        else:
            self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def _sheet(rows: list[ReportRow], html_path: Path, output_dir: Path) -> tuple[str, _Doc]:
    html = render_contact_sheet(
        rows,
        html_path=html_path,
        output_dir=output_dir,
        info=ContactSheetInfo(
            title="night <b>shoot</b>", planned_uptc=1_350_000, spent_uptc=1_050_000, generated_at=0
        ),
    )
    html_path.write_text(html)
    doc = _Doc()
    doc.feed(html)
    return html, doc


async def test_contact_sheet_has_a_card_per_shot_and_plays_local_files(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    rows = await _rows(batch.ledger_path)
    html_path = batch.output_dir / "contact-sheet.html"
    _, doc = _sheet(rows, html_path, batch.output_dir)
    cards = [a for a in doc.all("article") if "card" in (a.get("class") or "")]
    assert len(cards) == 11
    assert [c["data-state"] for c in cards] == [r.state.value for r in rows]
    videos = doc.all("video")
    assert len(videos) == 4  # one per done shot
    for video in videos:
        src = video["src"] or ""
        assert not urlsplit(src).scheme, "media must be a relative path"
        assert (html_path.parent / unquote(src)).is_file()
    posters = [v["poster"] for v in videos if v.get("poster")]
    assert sorted(posters) == ["city-night.jpg", "dawn-lake.jpg"]  # local posters only


async def test_contact_sheet_escapes_every_text_and_loads_nothing_remote(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    rows = await _rows(batch.ledger_path)
    html, doc = _sheet(rows, batch.output_dir / "sheet.html", batch.output_dir)
    assert len(doc.scripts) == 1, "only our own script"
    assert not doc.all("img"), "the hostile prompt's <img> must not become an element"
    assert "window.__pwned=1" not in doc.scripts[0]
    assert HOSTILE_PROMPT in "".join(doc.text)  # shown as text, exactly
    assert "night <b>shoot</b>" in "".join(doc.text)
    assert "<b>shoot</b>" not in html
    assert "media.example" not in html  # remote poster_url is never referenced
    for _tag, attrs in doc.tags:
        for name in ("src", "href", "poster"):
            value = attrs.get(name)
            if value:
                assert not urlsplit(value).scheme, f"{name}={value} would leave the page"


#: template syntax and markup in data: a template engine must show them, not run them
TEMPLATE_PROMPT = "<script>alert(1)</script> {{ 7*7 }} {% if true %}yes{% endif %} {# c #}"


async def test_template_syntax_in_a_prompt_is_shown_literally(tmp_path: Path) -> None:
    specs = [
        Spec("tpl-done", ShotState.DONE, TEMPLATE_PROMPT),
        Spec("tpl-failed", ShotState.FAILED, TEMPLATE_PROMPT, error="{{ oops }} <i>x</i>"),
    ]
    batch = await build_batch(tmp_path, specs)
    rows = await _rows(batch.ledger_path)
    html, doc = _sheet(rows, batch.output_dir / "sheet.html", batch.output_dir)
    text = "".join(doc.text)
    assert text.count(TEMPLATE_PROMPT) == 2  # each card's prompt, character for character
    assert "{{ oops }} <i>x</i>" in text
    # what is left once the literal prompts and the clock are out: no rendered 7*7 or if
    rest = re.sub(r"generated [\d: -]+", "", text.replace(TEMPLATE_PROMPT, ""))
    assert "49" not in rest and "yes" not in rest
    assert len(doc.scripts) == 1 and "alert" not in doc.scripts[0]
    assert not doc.all("i")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ 7*7 }} {% if true %}" in html
    searches = [a["data-search"] or "" for a in doc.all("article")]
    assert all(TEMPLATE_PROMPT.lower() in s for s in searches)


async def test_csp_allows_exactly_our_script_and_style(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path, [Spec("a", ShotState.DONE, "x")])
    rows = await _rows(batch.ledger_path)
    _, doc = _sheet(rows, batch.output_dir / "sheet.html", batch.output_dir)
    csp = (
        next(
            a["content"]
            for a in doc.all("meta")
            if a.get("http-equiv") == "Content-Security-Policy"
        )
        or ""
    )

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert f"'sha256-{digest(doc.scripts[0])}'" in csp
    assert f"'sha256-{digest(doc.styles[0])}'" in csp
    assert "connect-src 'none'" in csp and "unsafe-inline" not in csp


async def test_links_are_relative_to_where_the_sheet_is_written(tmp_path: Path) -> None:
    specs = [Spec("my clip #1", ShotState.DONE, "odd name", poster=True)]
    batch = await build_batch(tmp_path, specs)
    rows = await _rows(batch.ledger_path)
    elsewhere = tmp_path / "reports" / "deep" / "sheet.html"
    elsewhere.parent.mkdir(parents=True)
    _, doc = _sheet(rows, elsewhere, batch.output_dir)
    (video,) = doc.all("video")
    src = video["src"] or ""
    assert src.startswith("../../out/") and "%20" in src and "%23" in src
    assert (elsewhere.parent / unquote(src)).resolve() == batch.output_dir / "my clip #1.mp4"
    assert (elsewhere.parent / unquote(video["poster"] or "")).is_file()


async def test_a_done_shot_whose_file_is_gone_says_so(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path, [Spec("gone", ShotState.DONE, "x")])
    (batch.output_dir / "gone.mp4").unlink()
    rows = await _rows(batch.ledger_path)
    html, doc = _sheet(rows, batch.output_dir / "sheet.html", batch.output_dir)
    assert not doc.all("video")
    assert re.search(r"missing</span><span>gone\.mp4 is not on disk", html)


async def test_state_filter_chips_list_the_states_present(tmp_path: Path) -> None:
    batch = await build_batch(tmp_path)
    rows = await _rows(batch.ledger_path)
    _, doc = _sheet(rows, batch.output_dir / "sheet.html", batch.output_dir)
    chips = [a["data-state"] for a in doc.all("button")]
    assert chips == [
        "all",
        "pending",
        "submitted",
        "rendered",
        "done",
        "ambiguous",
        "failed",
        "moderated",
    ]
