"""Reports of a batch: records for table/CSV/JSON, and the HTML contact sheet.

Invariants:
- Pure functions from ledger rows to text; nothing here prints or queries the ledger.
  The contact sheet looks at the disk only to find outputs and poster frames.
- The contact sheet is one self-contained file: inline CSS and JS, no network (its
  Content-Security-Policy allows no connection and only our own script, by hash), and
  media referenced by paths relative to the HTML file, so it works from ``file://``
  and keeps working when the output folder is moved or copied as a whole.
- The page is the Jinja2 template ``runner/data/contact-sheet.html.j2``, rendered with
  autoescape on: every text that came from the manifest or the provider is escaped, so
  a prompt holding ``<script>`` or ``{{ }}`` is shown as text (no ``|safe`` on data).
  No data is embedded as JavaScript: cards are HTML and the filter reads ``data-*``
  attributes. This module turns rows into plain values; the template holds the markup.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from runner.ledger.queries import ReportRow
from runner.model import ShotState
from runner.money import format_ptc
from runner.text import json_safe, printable

__all__ = [
    "FIELDS",
    "ContactSheetInfo",
    "format_ptc",
    "render_contact_sheet",
    "row_record",
    "to_csv",
    "to_json",
]


#: the columns of CSV and JSON reports, in order
FIELDS: tuple[str, ...] = (
    "shot_id",
    "mode",
    "state",
    "prompt",
    "model",
    "quality",
    "duration",
    "motion_mode",
    "seed",
    "attempts",
    "price_ptc",
    "charged_ptc",
    "task_id",
    "output_file",
    "bytes",
    "sha256",
    "error_kind",
    "error",
    "poster_url",
    "width",
    "height",
    "version",
)

#: what a person calls each state in views (the ledger's word for "parked" is ambiguous)
STATE_LABELS: dict[ShotState, str] = {s: s.value for s in ShotState} | {
    ShotState.AMBIGUOUS: "parked"
}

_POSTER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def output_file(row: ReportRow, output_dir: Path | None) -> Path | None:
    """Where a shot's file is, once it has one."""
    if row.state != ShotState.DONE or not row.output_path:
        return None
    rel = Path(row.output_path)
    return rel if output_dir is None else output_dir / rel


def row_record(row: ReportRow, *, output_dir: Path | None) -> dict[str, Any]:
    """A report row as plain JSON-able values, keys in :data:`FIELDS` order."""
    path = output_file(row, output_dir)
    record: dict[str, Any] = {
        "shot_id": row.shot_id,
        "mode": row.mode,
        "state": row.state.value,
        "prompt": row.prompt,
        "model": row.model,
        "quality": row.quality,
        "duration": row.duration,
        "motion_mode": row.motion_mode,
        "seed": row.seed,
        "attempts": row.attempts,
        "price_ptc": None if row.price_uptc is None else format_ptc(row.price_uptc),
        "charged_ptc": format_ptc(row.charged_uptc),
        "task_id": row.task_id,
        "output_file": None if path is None else str(path),
        "bytes": row.bytes,
        "sha256": row.sha256,
        "error_kind": row.error_kind,
        "error": row.error,
        "poster_url": row.poster_url,
        "width": row.width,
        "height": row.height,
        "version": row.version,
    }
    return record


def to_json(rows: Sequence[ReportRow], *, output_dir: Path | None) -> str:
    """A JSON array of :func:`row_record` objects (money as decimal strings).

    Texts keep every character; control characters are escaped (:func:`json_safe`).
    """
    return json_safe(
        json.dumps(
            [row_record(r, output_dir=output_dir) for r in rows], indent=2, ensure_ascii=False
        )
    )


def to_csv(rows: Sequence[ReportRow], *, output_dir: Path | None) -> str:
    """CSV with a header row; empty cells for unknown values.

    CSV has no escape for control characters and is often looked at in a terminal, so
    texts lose them (:func:`printable`); newlines stay, in quoted cells.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        record = row_record(r, output_dir=output_dir)
        # one look per row: rows with a control character are rare
        texts = "".join(v for v in record.values() if isinstance(v, str))
        dirty = printable(texts, keep_newlines=True) != texts
        writer.writerow({k: _csv_cell(v, dirty) for k, v in record.items()})
    return buf.getvalue()


def _csv_cell(value: Any, dirty: bool) -> Any:
    if value is None:
        return ""
    if dirty and isinstance(value, str):
        return printable(value, keep_newlines=True)
    return value


# -- the contact sheet ---------------------------------------------------------------------


@dataclass(frozen=True)
class ContactSheetInfo:
    """What the page header says about the batch."""

    title: str
    planned_uptc: int | None = None
    spent_uptc: int | None = None
    generated_at: float | None = None
    #: the ledger's work went to the simulator: the title says so
    simulated: bool = False


#: what the contact sheet of simulated work says after its title
REHEARSAL_MARK = "(rehearsal, simulated provider)"


def _href(target: Path, html_dir: Path) -> str:
    """A relative URL from the HTML file's folder to ``target`` (the template escapes it)."""
    rel = os.path.relpath(target, html_dir)
    return quote(Path(rel).as_posix())


def _local_poster(video: Path) -> Path | None:
    """A poster frame saved beside the output (``<stem>.jpg`` and the like), if any.

    A remote ``poster_url`` is never used: the sheet must not touch the network.
    """
    for suffix in _POSTER_SUFFIXES:
        candidate = video.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _params(row: ReportRow) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    if row.model:
        items.append(("model", row.model))
    if row.quality:
        items.append(("quality", row.quality))
    if row.duration:
        items.append(("duration", f"{row.duration} s"))
    if row.motion_mode:
        items.append(("motion", row.motion_mode))
    items.append(("mode", row.mode))
    if row.seed is not None:
        items.append(("seed", str(row.seed)))
    if row.width and row.height:
        items.append(("size", f"{row.width}×{row.height}"))
    items.append(("attempts", str(row.attempts)))
    items.append(("price", f"{format_ptc(row.price_uptc)} PTC"))
    if row.version > 1:
        items.append(("version", str(row.version)))
    return items


@dataclass(frozen=True)
class _Card:
    """What the template shows of one shot: plain text, escaped by the template."""

    state: str
    label: str
    search: str
    shot_id: str
    prompt: str
    params: list[tuple[str, str]]
    error_kind: str | None
    error: str | None
    warn: bool
    task_id: str | None
    #: the relative link to the video, when it is on disk; else the placeholder's texts
    video_src: str | None = None
    poster_src: str | None = None
    placeholder: tuple[str, str] = ("", "")
    file_href: str | None = None
    file_name: str = ""
    file_size: str = ""
    sha: str = ""


def _card(row: ReportRow, output_dir: Path, html_dir: Path) -> _Card:
    texts = (
        row.shot_id,
        row.prompt,
        row.state.value,
        STATE_LABELS[row.state],
        row.mode,
        row.model,
        row.quality,
        row.motion_mode,
        row.task_id,
        row.error_kind,
        row.error,
        row.output_path,
    )
    card = _Card(
        state=row.state.value,
        label=STATE_LABELS[row.state],
        search=" ".join(t for t in texts if t).lower(),
        shot_id=row.shot_id,
        prompt=row.prompt,
        params=_params(row),
        error_kind=row.error_kind,
        error=row.error,
        warn=row.state == ShotState.AMBIGUOUS,
        task_id=row.task_id,
    )
    video = output_file(row, output_dir)
    if video is None:
        note = "no file yet" if not row.state.is_final else "no file"
        return replace(card, placeholder=(STATE_LABELS[row.state], note))
    href = _href(video, html_dir)
    link = replace(
        card,
        file_href=href,
        file_name=video.name,
        file_size=_human_bytes(row.bytes),
        sha=f"sha256 {row.sha256}" if row.sha256 else "",
    )
    if not video.is_file():
        return replace(link, placeholder=("missing", f"{row.output_path} is not on disk"))
    poster = _local_poster(video)
    return replace(
        link,
        video_src=href,
        poster_src=None if poster is None else _href(poster, html_dir),
    )


def _csp_hash(text: str) -> Markup:
    """A CSP source for the page's own style or script (our text, never data)."""
    digest = hashlib.sha256(str(text).encode()).digest()
    return Markup("'sha256-" + base64.b64encode(digest).decode() + "'")


@cache
def _template() -> jinja2.Template:
    """The page, loaded once. Autoescape is on: no data reaches the page unescaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("runner", "data"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["csp_hash"] = _csp_hash
    return env.get_template("contact-sheet.html.j2")


def _summary(rows: Sequence[ReportRow], info: ContactSheetInfo) -> list[tuple[str, str, str]]:
    """The header's figures, as (text before, the figure in bold, text after)."""
    counts = Counter(r.state for r in rows)
    shots = "shot" if len(rows) == 1 else "shots"
    sub = [("", str(len(rows)), f" {shots}"), ("", str(counts.get(ShotState.DONE, 0)), " done")]
    failed = counts.get(ShotState.FAILED, 0) + counts.get(ShotState.MODERATED, 0)
    if failed:
        sub.append(("", str(failed), " failed"))
    if counts.get(ShotState.AMBIGUOUS):
        sub.append(("", str(counts[ShotState.AMBIGUOUS]), " parked"))
    if info.planned_uptc is not None:
        sub.append(("planned ", format_ptc(info.planned_uptc), " PTC"))
    if info.spent_uptc is not None:
        sub.append(("spent ", format_ptc(info.spent_uptc), " PTC"))
    return sub


def _chips(rows: Sequence[ReportRow]) -> list[dict[str, Any]]:
    counts = Counter(r.state for r in rows)
    chips = [{"state": "all", "label": "all", "count": len(rows)}]
    for state in ShotState:  # lifecycle order, so the bar reads the same in every report
        if counts.get(state):
            chips.append(
                {"state": state.value, "label": STATE_LABELS[state], "count": counts[state]}
            )
    return chips


def render_contact_sheet(
    rows: Sequence[ReportRow],
    *,
    html_path: Path,
    output_dir: Path,
    info: ContactSheetInfo,
) -> str:
    """The contact sheet for ``rows``, to be written at ``html_path``.

    ``output_dir`` is the folder the ledger's output paths are relative to; media links
    are made relative to ``html_path``'s folder.
    """
    html_dir = html_path.parent.resolve()
    output_dir = output_dir.resolve()
    generated = time.strftime(
        "%Y-%m-%d %H:%M", time.localtime(info.generated_at if info.generated_at else None)
    )
    return _template().render(
        title=info.title + (f" {REHEARSAL_MARK}" if info.simulated else ""),
        summary=_summary(rows, info),
        generated=generated,
        chips=_chips(rows),
        cards=[_card(r, output_dir, html_dir) for r in rows],
    )
