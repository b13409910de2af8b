"""Reports of a batch: records for table/CSV/JSON, and the HTML contact sheet.

Invariants:
- Pure functions from ledger rows to text; nothing here prints or queries the ledger.
  The contact sheet looks at the disk only to find outputs and poster frames.
- The contact sheet is one self-contained file: inline CSS and JS, no network (its
  Content-Security-Policy allows no connection and only our own script, by hash), and
  media referenced by paths relative to the HTML file, so it works from ``file://``
  and keeps working when the output folder is moved or copied as a whole.
- Every text that came from the manifest or the provider is escaped with
  :func:`html.escape`; a prompt holding ``<script>`` is shown as text. No data is
  embedded as JavaScript: cards are HTML and the filter reads ``data-*`` attributes.
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
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
    """A relative URL from the HTML file's folder to ``target``, escaped for an attribute."""
    rel = os.path.relpath(target, html_dir)
    return escape(quote(Path(rel).as_posix()), quote=True)


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


def _media(row: ReportRow, index: int, output_dir: Path, html_dir: Path) -> str:
    video = output_file(row, output_dir)
    if video is None:
        label = STATE_LABELS[row.state]
        note = "no file yet" if not row.state.is_final else "no file"
        return (
            f'<div class="placeholder"><span class="big">{escape(label)}</span>'
            f"<span>{note}</span></div>"
        )
    if not video.is_file():
        return (
            '<div class="placeholder"><span class="big">missing</span>'
            f"<span>{escape(str(row.output_path))} is not on disk</span></div>"
        )
    poster = _local_poster(video)
    poster_attr = "" if poster is None else f' poster="{_href(poster, html_dir)}"'
    # The first screenful loads its metadata at once; the rest when scrolled near.
    preload = "metadata" if index < 24 else "none"
    lazy = "" if index < 24 else " data-lazy"
    return (
        f'<video controls loop playsinline tabindex="0" preload="{preload}"{lazy}{poster_attr} '
        f'src="{_href(video, html_dir)}"></video>'
    )


def _card(row: ReportRow, index: int, output_dir: Path, html_dir: Path) -> str:
    search = " ".join(
        t
        for t in (
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
        if t
    ).lower()
    params = "".join(f"<li>{escape(k)} <b>{escape(v)}</b></li>" for k, v in _params(row))
    error = ""
    if row.error:
        kind = f"<b>{escape(row.error_kind)}</b> " if row.error_kind else ""
        tone = " warn" if row.state == ShotState.AMBIGUOUS else ""
        error = f'<div class="error{tone}">{kind}{escape(row.error)}</div>'
    foot_left = ""
    video = output_file(row, output_dir)
    if video is not None:
        sha = f"sha256 {row.sha256}" if row.sha256 else ""
        foot_left = (
            f'<a href="{_href(video, html_dir)}" title="{escape(sha, quote=True)}">'
            f"{escape(video.name)}</a> {escape(_human_bytes(row.bytes))}"
        )
    task = f'<span class="mono" title="task id">{escape(row.task_id)}</span>' if row.task_id else ""
    state = row.state.value
    return (
        f'<article class="card" data-state="{escape(state, quote=True)}" '
        f'data-search="{escape(search, quote=True)}">'
        f'<div class="media">{_media(row, index, output_dir, html_dir)}</div>'
        '<div class="body">'
        f'<div class="head"><span class="id" title="{escape(row.shot_id, quote=True)}">'
        f"{escape(row.shot_id)}</span>"
        f'<span class="badge s-{escape(state, quote=True)}">'
        f"{escape(STATE_LABELS[row.state])}</span></div>"
        f'<p class="prompt" title="click to expand">{escape(row.prompt)}</p>'
        f'<ul class="params">{params}</ul>'
        f"{error}"
        f'<div class="foot"><span>{foot_left}</span>{task}</div>'
        "</div></article>"
    )


_CSS = """
:root{color-scheme:light dark;--bg:#f5f6f8;--fg:#1b2230;--muted:#667085;--card:#fff;
--line:#e3e6eb;--media:#0d1014;--chip:#fff;
--ok:#157f3b;--ok-bg:#dcfce7;--bad:#b42318;--bad-bg:#fee4e2;--warn:#a15c07;--warn-bg:#fef0c7;
--info:#1d4ed8;--info-bg:#dbe8fe;--mod:#7a2ec4;--mod-bg:#f1e6ff;--idle:#475467;--idle-bg:#eaecf0}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6e9ef;--muted:#98a2b3;
--card:#151a22;--line:#29303b;--media:#06080a;--chip:#1b212b;
--ok:#5ee08b;--ok-bg:#12361f;--bad:#ff8a80;--bad-bg:#3d1517;--warn:#fcc55b;--warn-bg:#3a2907;
--info:#9cc1ff;--info-bg:#142748;--mod:#d6b4ff;--mod-bg:#2e1a48;--idle:#c9d1dc;--idle-bg:#262d38}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.top{padding:22px 24px 10px}
h1{font-size:21px;margin:0 0 4px;font-weight:650;letter-spacing:-.01em}
.sub{color:var(--muted);font-size:13px}
.sub b{color:var(--fg);font-weight:600}
.bar{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:8px;align-items:center;
padding:10px 24px;background:var(--bg);border-bottom:1px solid var(--line)}
.chip{font:inherit;font-size:13px;border:1px solid var(--line);background:var(--chip);
color:var(--fg);border-radius:999px;padding:4px 12px;cursor:pointer}
.chip .n{color:var(--muted);margin-left:4px}
.chip[aria-pressed=true]{background:var(--fg);color:var(--bg);border-color:var(--fg)}
.chip[aria-pressed=true] .n{color:inherit;opacity:.75}
.tools{margin-left:auto;display:flex;gap:12px;align-items:center;color:var(--muted);font-size:13px}
input[type=search]{font:inherit;width:300px;max-width:60vw;padding:6px 12px;
border:1px solid var(--line);border-radius:8px;background:var(--card);color:var(--fg)}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:16px;
padding:18px 24px 48px}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;overflow:hidden;
display:flex;flex-direction:column;box-shadow:0 1px 2px rgba(16,24,40,.05)}
.card[hidden]{display:none}
.media{position:relative;aspect-ratio:16/9;background:var(--media);display:flex;
align-items:center;justify-content:center}
.media video{position:absolute;inset:0;width:100%;height:100%;object-fit:contain;
display:block;background:var(--media)}
.media video:focus-visible{outline:3px solid var(--info);outline-offset:-3px}
.media:has(video):not(.live)::after{content:"";position:absolute;left:12px;bottom:12px;
width:30px;height:30px;border-radius:50%;background:rgba(0,0,0,.55) no-repeat 11px 8px/12px 14px
url("PLAY_ICON");pointer-events:none}
.placeholder{display:flex;flex-direction:column;align-items:center;gap:2px;color:#8a94a6;
font-size:12px;text-align:center;padding:12px}
.placeholder .big{font-size:15px;font-weight:600;text-transform:uppercase;letter-spacing:.08em}
.body{padding:12px 14px 12px;display:flex;flex-direction:column;gap:8px;flex:1}
.head{display:flex;justify-content:space-between;gap:8px;align-items:center}
.id,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace}
.id{font-weight:600;font-size:13px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.badge{font-size:11px;font-weight:650;text-transform:uppercase;letter-spacing:.05em;
padding:2px 9px;border-radius:999px;white-space:nowrap;color:var(--idle);background:var(--idle-bg)}
.s-done{color:var(--ok);background:var(--ok-bg)}
.s-failed{color:var(--bad);background:var(--bad-bg)}
.s-moderated{color:var(--mod);background:var(--mod-bg)}
.s-ambiguous{color:var(--warn);background:var(--warn-bg)}
.s-submitting,.s-submitted,.s-rendered,.s-downloading{color:var(--info);background:var(--info-bg)}
.prompt{margin:0;white-space:pre-wrap;overflow-wrap:anywhere;display:-webkit-box;
-webkit-line-clamp:4;-webkit-box-orient:vertical;overflow:hidden;cursor:pointer}
.prompt.open{display:block}
.params{display:flex;flex-wrap:wrap;gap:4px 6px;margin:0;padding:0;list-style:none}
.params li{font-size:12px;color:var(--muted);border:1px solid var(--line);border-radius:6px;
padding:1px 6px}
.params b{color:var(--fg);font-weight:600}
.error{font-size:12.5px;color:var(--bad);background:var(--bad-bg);border-radius:8px;
padding:6px 9px;white-space:pre-wrap;overflow-wrap:anywhere}
.error.warn{color:var(--warn);background:var(--warn-bg)}
.foot{margin-top:auto;display:flex;justify-content:space-between;gap:10px;font-size:12px;
color:var(--muted);border-top:1px solid var(--line);padding-top:8px}
.foot a{color:inherit}
.foot>span{min-width:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.foot .mono{flex:0 1 auto;max-width:45%}
.empty{grid-column:1/-1;text-align:center;color:var(--muted);padding:48px 0}
.empty[hidden]{display:none}
"""

#: a small white triangle: the "this is a clip" badge on each frame
_PLAY_ICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 12 14'%3E"
    "%3Cpath d='M0 0l12 7-12 7z' fill='white'/%3E%3C/svg%3E"
)
_CSS = _CSS.replace("PLAY_ICON", _PLAY_ICON)

_JS = """
(() => {
  "use strict";
  const cards = Array.from(document.querySelectorAll("article.card"));
  const chips = Array.from(document.querySelectorAll("button.chip"));
  const search = document.getElementById("q");
  const shown = document.getElementById("shown");
  const empty = document.getElementById("empty");
  let state = "all";
  function apply() {
    const terms = search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let n = 0;
    for (const card of cards) {
      const ok = (state === "all" || card.dataset.state === state) &&
        terms.every((t) => card.dataset.search.includes(t));
      card.hidden = !ok;
      if (ok) n += 1;
    }
    shown.textContent = String(n);
    empty.hidden = n !== 0;
    for (const chip of chips) {
      chip.setAttribute("aria-pressed", String(chip.dataset.state === state));
    }
  }
  function setState(s) { state = s; apply(); }
  for (const chip of chips) chip.addEventListener("click", () => setState(chip.dataset.state));
  search.addEventListener("input", apply);
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== search) { e.preventDefault(); search.focus(); }
    if (e.key === "Escape" && document.activeElement === search) { search.value = ""; apply(); }
  });
  for (const p of document.querySelectorAll("p.prompt")) {
    p.addEventListener("click", () => p.classList.toggle("open"));
  }
  // A clean grid of frames: controls appear when the pointer or focus is on a clip.
  for (const v of document.querySelectorAll("video")) {
    const media = v.parentElement;
    const show = () => { v.controls = true; media.classList.add("live"); };
    const hide = () => { if (v.paused) { v.controls = false; media.classList.remove("live"); } };
    v.controls = false;
    media.addEventListener("mouseenter", show);
    media.addEventListener("mouseleave", hide);
    v.addEventListener("focus", show);
    v.addEventListener("blur", hide);
    v.addEventListener("pause", () => { if (!media.matches(":hover")) hide(); });
  }
  const lazy = document.querySelectorAll("video[data-lazy]");
  if ("IntersectionObserver" in window) {
    const io = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (!e.isIntersecting) continue;
        io.unobserve(e.target);
        e.target.preload = "metadata";
        e.target.load();
      }
    }, { rootMargin: "600px" });
    lazy.forEach((v) => io.observe(v));
  }
  // A link like contact-sheet.html#state=failed&q=cat opens filtered.
  const wanted = new URLSearchParams(location.hash.slice(1));
  if (wanted.has("q")) search.value = wanted.get("q");
  if (wanted.has("state") && chips.some((c) => c.dataset.state === wanted.get("state"))) {
    state = wanted.get("state");
  }
  window.pixrunSheet = { setState, setQuery: (q) => { search.value = q; apply(); } };
  apply();
})();
"""


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


_CSP = (
    "default-src 'none'; "
    f"script-src {_csp_hash(_JS)}; "
    f"style-src {_csp_hash(_CSS)}; "
    "media-src 'self' file: data: blob:; img-src 'self' file: data:; "
    "connect-src 'none'; form-action 'none'; base-uri 'none'"
)


def _state_chips(rows: Sequence[ReportRow]) -> str:
    counts = Counter(r.state for r in rows)
    chips = [
        '<button class="chip" type="button" data-state="all" aria-pressed="true">'
        f'all<span class="n">{len(rows)}</span></button>'
    ]
    for state in ShotState:  # lifecycle order, so the bar reads the same in every report
        if counts.get(state):
            chips.append(
                f'<button class="chip" type="button" data-state="{state.value}" '
                f'aria-pressed="false">{escape(STATE_LABELS[state])}'
                f'<span class="n">{counts[state]}</span></button>'
            )
    return "".join(chips)


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
    counts = Counter(r.state for r in rows)
    shots = "shot" if len(rows) == 1 else "shots"
    sub = [f"<b>{len(rows)}</b> {shots}", f"<b>{counts.get(ShotState.DONE, 0)}</b> done"]
    failed = counts.get(ShotState.FAILED, 0) + counts.get(ShotState.MODERATED, 0)
    if failed:
        sub.append(f"<b>{failed}</b> failed")
    if counts.get(ShotState.AMBIGUOUS):
        sub.append(f"<b>{counts[ShotState.AMBIGUOUS]}</b> parked")
    if info.planned_uptc is not None:
        sub.append(f"planned <b>{format_ptc(info.planned_uptc)}</b> PTC")
    if info.spent_uptc is not None:
        sub.append(f"spent <b>{format_ptc(info.spent_uptc)}</b> PTC")
    sub.append(f"generated {escape(generated)}")
    cards = "\n".join(_card(r, i, output_dir, html_dir) for i, r in enumerate(rows))
    title = escape(info.title + (f" {REHEARSAL_MARK}" if info.simulated else ""))
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{title} · pixrun contact sheet</title>\n"
        f"<style>{_CSS}</style>\n"
        "</head><body>\n"
        f'<header class="top"><h1>{title}</h1><div class="sub">{" · ".join(sub)}</div>'
        "</header>\n"
        f'<nav class="bar">{_state_chips(rows)}<div class="tools">'
        f'<span><span id="shown">{len(rows)}</span> of {len(rows)}</span>'
        '<input id="q" type="search" placeholder="Search prompt, id, model, error…  ( / )" '
        'aria-label="search" autocomplete="off"></div></nav>\n'
        f"<main>\n{cards}\n"
        '<p class="empty" id="empty" hidden>No shot matches.</p></main>\n'
        f"<script>{_JS}</script>\n"
        "</body></html>\n"
    )
