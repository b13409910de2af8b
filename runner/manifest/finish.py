"""Concrete shots from drafts: unique ids, output file names, request hashes, prices.

Invariants:
- An explicit id given to two entries is an error at the later one; two derived ids
  that are equal mean identical shots, kept once with a warning.
- Every output path is relative, stays inside the output directory, and belongs to one
  shot; two paths that differ only in letter case are a warning (one file on macOS).
- ``Shot.request_hash`` is the sha256 of the canonical JSON of the request with every
  ``file://`` image replaced by the hash of its content.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from runner.manifest import output_names
from runner.manifest.contract import DEFAULT_MOTION_MODE
from runner.manifest.expand import SAFE_ID, Draft, canonical_json, with_local_images
from runner.manifest.images import ImageChecker
from runner.manifest.issues import Issues
from runner.model import OutputSettings, Shot, SourceMark, duration_seconds
from runner.pricing import PriceTable, price_of


class Finisher:
    """Turns one manifest's drafts into shots, reporting into its issues."""

    def __init__(self, issues: Issues, images: ImageChecker, table: PriceTable) -> None:
        self.issues = issues
        self.images = images
        self.table = table
        #: entries whose explicit id repeats an earlier entry's (already reported)
        self._reused: set[int] = set()

    def reused_ids(
        self, entries: list[Any], whole: set[int], bad_keys: dict[int, set[str]]
    ) -> None:
        """Explicit ids given twice, found before expansion so that it is reported even
        when either entry has other errors."""
        first: dict[str, int] = {}
        for index, entry in enumerate(entries):
            if index in whole or not isinstance(entry, dict) or "id" in bad_keys.get(index, ()):
                continue
            given = entry.get("id")
            if not isinstance(given, str):
                continue
            earlier = first.setdefault(given, index)
            if earlier != index:
                self._reused.add(index)
                self.issues.report(
                    ("shots", index, "id"),
                    f"id {given!r} is already used by {self.issues.place(earlier, index)}",
                    "give each shot its own id",
                    shot_id=given,
                )

    def _unique(self, drafts: list[Draft]) -> list[Draft]:
        """Drops repeats of identical derived shots (warning); refuses reused ids."""
        first: dict[str, Draft] = {}
        kept: list[Draft] = []
        for draft in drafts:
            if not SAFE_ID.fullmatch(draft.shot_id) or ".." in draft.shot_id:
                self.issues.report(
                    ("shots", draft.index, "id"),
                    f"id {draft.shot_id!r} is not safe as a file name",
                    "use letters, digits, '.', '_' and '-' only, without '..'",
                    shot_id=repr(draft.shot_id),
                )
                continue
            earlier = first.get(draft.shot_id)
            if earlier is None:
                first[draft.shot_id] = draft
                kept.append(draft)
                continue
            if draft.index in self._reused:
                continue
            place = self.issues.place(earlier.index, draft.index)
            if draft.derived and earlier.derived:
                self._warn(
                    draft,
                    f"duplicate shot: identical to {place}; it is generated once",
                    "remove it, or use count: N for several takes",
                )
            else:
                self.issues.report(
                    ("shots", draft.index, "id") if not draft.derived else ("shots", draft.index),
                    f"id {draft.shot_id!r} is already used by {place}",
                    "give each shot its own id",
                    shot_id=draft.shot_id,
                )
        return kept

    def shots(self, drafts: list[Draft], output: OutputSettings, name: str) -> list[Shot]:
        """The shots of ``drafts`` (unique ids), each hashed, priced and named."""
        return self._finish(self._unique(drafts), output, name)

    def _finish(self, drafts: list[Draft], output: OutputSettings, name: str) -> list[Shot]:
        marks: dict[int, SourceMark] = {}
        name_slug = output_names.slug(name)
        pattern = output.filename
        simple = pattern == output_names.DEFAULT_FILENAME
        taken: dict[str, str] = {}
        folded: dict[str, str] = {}
        shots: list[Shot] = []
        table = self.table
        for draft in drafts:
            request = draft.request
            request_hash = self.request_hash(request)
            rel: str | None = (
                draft.shot_id + output_names.SUFFIX
                if simple
                else self._render(pattern, draft, request_hash, name_slug)
            )
            if rel is None:
                continue
            clash = None if simple else taken.get(rel)  # ids are unique already
            if clash is not None:
                self._bad_name(
                    draft,
                    f"shots {clash} and {draft.shot_id} would both be written to {rel}",
                    "put {shot_id} in output.filename",
                )
                continue
            if not simple:
                taken[rel] = draft.shot_id
            low = rel.casefold()
            if low in folded and folded[low] != rel:
                self._warn(
                    draft,
                    f"{rel} and {folded[low]} differ only in letter case; on macOS and "
                    "Windows they are the same file",
                    "rename one of the shots",
                )
            folded.setdefault(low, rel)
            mark = marks.get(draft.index)
            if mark is None:
                mark = marks[draft.index] = self.issues.source_mark(draft.index)
            shots.append(
                Shot(
                    shot_id=draft.shot_id,
                    mode=draft.mode,
                    request=request,
                    request_hash=request_hash,
                    output_relpath=rel,
                    mark=mark,
                    take=draft.take,
                    price_ptc=price_of(request, table),
                    max_attempts=draft.max_attempts,
                )
            )
        return shots

    def _render(self, pattern: str, draft: Draft, request_hash: str, name: str) -> str | None:
        request = draft.request
        seed = request.get("seed")
        values = {
            "shot_id": draft.shot_id,
            "take": draft.take,
            "model": request.get("model"),
            "quality": request.get("quality"),
            "duration": duration_seconds(request.get("duration")),
            "mode": draft.mode.value,
            "motion_mode": request.get("motion_mode", DEFAULT_MOTION_MODE),
            "seed": seed if seed is not None else "random",
            "name": name,
            "hash": request_hash[:12],
        }
        try:
            rel = output_names.render(pattern, values)
        except (ValueError, TypeError) as exc:
            problem = f"cannot name the output of {draft.shot_id}: {exc}"
            self._bad_name(draft, problem, "check the format specs after ':' in output.filename")
            return None
        if not output_names.is_safe_relpath(rel):
            problem = f"{rel!r} (shot {draft.shot_id}) would leave the output directory"
            hint = "use a relative pattern without '..', '\\', ':' or a leading '/'"
            self._bad_name(draft, problem, hint)
            return None
        return rel

    def _warn(self, draft: Draft, message: str, hint: str) -> None:
        """A warning about the shot of ``draft``, at its entry."""
        self.issues.report(
            ("shots", draft.index), message, hint, shot_id=draft.shot_id, severity="warning"
        )

    def _bad_name(self, draft: Draft, message: str, hint: str) -> None:
        """A shot whose output cannot be named by output.filename."""
        self.issues.report(("output", "filename"), message, hint, shot_id=draft.shot_id)

    def request_hash(self, request: dict[str, Any]) -> str:
        """sha256 of the canonical request, local images by content."""
        text = canonical_json(request)
        if "file://" in text:
            by_content = {k: with_local_images(v, self._content_id) for k, v in request.items()}
            text = canonical_json(by_content)
        return hashlib.sha256(text.encode()).hexdigest()

    def _content_id(self, uri: str) -> str:
        return self.images.content_id(Path(unquote(urlsplit(uri).path)))
