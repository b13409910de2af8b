"""Shots from tables: ``shots_from`` turns CSV/TSV rows, JSONL lines and image files
into shot entries, as if each had been written under ``shots:``.

The loader then shape-checks, expands and finishes these entries together with the
YAML ones, so defaults, derived ids, duplicate checks, prices and output names follow
one code path. This module only reads the files and remembers where each entry came
from (:class:`TableIndex`).

Headers name shot fields (case and surrounding spaces ignored); a column whose header
starts with ``x-`` is ignored (notes); the delimiter (comma, semicolon or tab) is the
one the header line uses most (``.tsv``: tab). How a cell becomes a value (its syntax)
is in :mod:`runner.manifest.table_cells`.

Invariants:
- Positions are two integers per entry (source, row); a problem's file:row:column is
  worked out only when it is reported (CSV: the spreadsheet row, the header being row
  1, and the column's header; JSONL: the line and the key).
- A cell that cannot be read as its field's type is reported here and left out of its
  entry; its path is in :attr:`TableReader.bad`, so the loader treats it as the shape
  check treats a refused YAML value (said once, no "required" echo, no derived id).
- A file whose header is wrong gives header problems only: its rows are not read.
- Nothing raises for anything in a table; a missing or unreadable file is a problem at
  the ``shots_from`` entry that names it.

Size: about 500 lines, mostly :class:`TableReader`: its CSV, JSONL and image readers share
the index and the problem reporting; cell conversion is in ``table_cells``.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.manifest.contract import did_you_mean
from runner.manifest.images import NotRegularFile, TooLarge, read_capped
from runner.manifest.rules import Rules
from runner.manifest.schema import schema_of
from runner.manifest.table_cells import (
    CellError,
    Convert,
    as_text,
    column_letters,
    converter,
    image_id,
)
from runner.manifest.yaml_common import Path_

if TYPE_CHECKING:
    from runner.manifest.issues import Issues


#: a table larger than this is refused before reading (as a manifest is)
MAX_TABLE_BYTES = 256 * 1024 * 1024
CSV_DELIMITERS = {".csv": None, ".tsv": "\t"}
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
#: columns and keys starting with this are the user's own (notes): ignored
IGNORED_PREFIX = "x-"

# ---- where entries came from ---------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """A position in a table: its file as shown, the row (or line), the column (a
    header, a key, or a character number for a JSON syntax error)."""

    file: str
    line: int | None = None
    column: int | str | None = None


@dataclass
class Source:
    """One ``shots_from`` item."""

    #: the file as messages show it (the images spec: its pattern)
    file: str
    #: where the manifest names it: ("shots_from",) or ("shots_from", k)
    where: Path_
    kind: str  # "csv", "jsonl" or "images"
    #: field -> its column's header as written (CSV)
    columns: dict[str, str] = field(default_factory=dict)
    #: images: the fields written in the spec, and each shot's file as shown
    spec_fields: frozenset[str] = frozenset()
    files: list[str] = field(default_factory=list)


class TableIndex:
    """Which source and row each table entry came from; entries are numbered from
    ``first`` on, after the YAML shots."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.sources: list[Source] = []
        self._source_of = array("I")
        self._row_of = array("I")

    def add(self, source: int, row: int) -> None:
        self._source_of.append(source)
        self._row_of.append(row)

    def __len__(self) -> int:
        return len(self._row_of)

    def owns(self, index: int) -> bool:
        return self.first <= index < self.first + len(self._row_of)

    def place(self, index: int, rest: Path_) -> Place | Path_:
        """Where ``rest`` (a path inside entry ``index``) was written: a table place, or
        a manifest path (a field of an images spec)."""
        j = index - self.first
        source = self.sources[self._source_of[j]]
        row = self._row_of[j]
        name = rest[0] if rest else None
        if source.kind == "images":
            if isinstance(name, str) and name in source.spec_fields:
                return (*source.where, *rest)
            return Place(source.files[row])
        if not isinstance(name, str):
            return Place(source.file, row)
        return Place(source.file, row, source.columns.get(name, name))

    def label(self, index: int) -> str:
        """The entry's place in words, for messages naming two places."""
        place = self.place(index, ())
        assert isinstance(place, Place)
        return place.file if place.line is None else f"{place.file}:{place.line}"


# ---- reading ------------------------------------------------------------------------


class TableReader:
    """Reads every ``shots_from`` source of one manifest into entries."""

    def __init__(
        self,
        manifest: Path,
        *,
        first: int,
        rules: Rules,
        issues: Issues,
        max_entries: int,
    ) -> None:
        self.index = TableIndex(first)
        self.entries: list[dict[str, Any]] = []
        #: ("shots", i, field) of every cell left out because it could not be read
        self.bad: set[Path_] = set()
        self._base_dir = manifest.absolute().parent
        self._shown_dir = manifest.parent
        self._issues = issues
        self._max_entries = max_entries
        props = schema_of(rules)["properties"]["shots"]["items"]["properties"]
        self._fields: dict[str, Convert] = {name: converter(p) for name, p in props.items()}

    # ---- sources ----------------------------------------------------------------------

    def read(self, value: Any, refused: set[Path_]) -> None:
        """Reads ``shots_from`` (shape-checked; ``refused`` holds the paths the shape
        check refused, whose sources are skipped or whose spec fields are left out)."""
        if isinstance(value, list):
            for k, item in enumerate(value):
                self._source(item, ("shots_from", k), refused)
        else:
            self._source(value, ("shots_from",), refused)

    def _source(self, value: Any, where: Path_, refused: set[Path_]) -> None:
        if where in refused:
            return
        if isinstance(value, str):
            self._table(value, where)
        elif isinstance(value, dict):
            n = len(where)
            wrong = {str(p[n]) for p in refused if len(p) > n and p[:n] == where}
            if "images" not in wrong and isinstance(value.get("images"), str):
                spec = {k: v for k, v in value.items() if k not in wrong}
                self._images(spec, where)

    def _report(self, where: Path_, message: str, hint: str) -> None:
        self._issues.report(where, message, hint)

    def _at(self, place: Place, message: str, hint: str) -> None:
        self._issues.report((), message, hint, file=place.file, mark=(place.line, place.column))

    def _shown(self, text: str) -> tuple[Path, str]:
        """The file a manifest names (absolute) and as messages show it."""
        local = Path(os.path.expanduser(text))
        if local.is_absolute():
            return local, str(local)
        return self._base_dir / local, str(self._shown_dir / local)

    def _full(self, where: Path_) -> bool:
        if len(self.entries) < self._max_entries:
            return False
        self._report(
            where,
            f"the tables hold more than {self._max_entries} shots",
            "split the batch into several manifests",
        )
        return True

    def _add(self, source: int, row: int, entry: dict[str, Any]) -> int:
        """Appends ``entry``; its index among all shots."""
        index = self.index.first + len(self.entries)
        self.entries.append(entry)
        self.index.add(source, row)
        return index

    def _table(self, text: str, where: Path_) -> None:
        path, shown = self._shown(text)
        suffix = path.suffix.lower()
        if suffix not in CSV_DELIMITERS and suffix not in JSONL_SUFFIXES:
            self._report(
                where,
                f"{text!r} is not a table pixrun reads",
                "name a .csv, .tsv or .jsonl file, or write {images: 'img/*.png', ...}",
            )
            return
        data = self._bytes(path, text, where)
        if data is None:
            return
        try:
            content = data.decode("utf-8-sig")  # a BOM, as Excel writes it, is dropped
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            self._at(
                Place(shown, line),
                f"not UTF-8 text (byte {exc.start + 1})",
                "save the file as UTF-8 (Excel: 'CSV UTF-8')",
            )
            return
        source = len(self.index.sources)
        if suffix in JSONL_SUFFIXES:
            self.index.sources.append(Source(shown, where, "jsonl"))
            self._jsonl(content, source, shown, where)
        else:
            self.index.sources.append(Source(shown, where, "csv"))
            self._csv(content, CSV_DELIMITERS[suffix], source, shown, where)

    def _bytes(self, path: Path, text: str, where: Path_) -> bytes | None:
        # only a regular file, and no more than the limit: a FIFO would block the read
        # and a link to /dev/zero fill the memory
        try:
            if path.is_dir():
                raise IsADirectoryError(path)
            return read_capped(path, MAX_TABLE_BYTES)
        except TooLarge:
            self._report(
                where,
                f"{text} is over {MAX_TABLE_BYTES // 1_000_000} MB",
                "split it into several tables",
            )
        except NotRegularFile as exc:
            kind = str(exc.strerror).rsplit(" is ", 1)[-1]
            self._report(where, f"{text} is {kind}", "name a table file (.csv, .tsv or .jsonl)")
        except FileNotFoundError:
            self._report(where, f"no such file: {text}", "the path is relative to the manifest")
        except IsADirectoryError:
            self._report(
                where, f"{text} is a folder", "name a table file, or write {images: 'DIR/*.png'}"
            )
        except OSError as exc:
            self._report(where, f"cannot read {text}: {exc.strerror}", "check the file")
        return None

    # ---- CSV ----------------------------------------------------------------------

    def _csv(
        self, content: str, delimiter: str | None, source: int, shown: str, where: Path_
    ) -> None:
        if delimiter is None:
            head = content.split("\n", 1)[0]
            delimiter = max(",;\t", key=head.count)  # ties: the comma (first)
        # strict: a quote opened and never closed is an error, never a cell that
        # swallows every later row (their shots silently gone)
        rows = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True)
        row_no = 0
        columns: list[tuple[str, str, Convert] | None] = []
        try:
            for row_no, cells in enumerate(rows, start=1):
                if row_no == 1:
                    header = self._header(cells, source, shown)
                    if header is None:
                        return
                    columns = header
                    continue
                if not any(cells) or all(not c.strip() for c in cells):
                    continue  # a blank row, as spreadsheets leave them
                if self._full(where):
                    return
                self._row(cells, columns, source, row_no, shown)
        except csv.Error as exc:
            why = str(exc)
            if "unexpected end of data" in why:
                why = "a quote opened in this row is never closed (the rest would be one cell)"
            self._at(
                Place(shown, row_no + 1),
                f"cannot read this row: {why}",
                'check the quotes in this row (a quote inside a cell is written twice: "")',
            )
            return
        if row_no == 0:
            self._at(
                Place(shown), "the table is empty", "write a header row, then one row per shot"
            )
        elif row_no == 1:
            self._at(Place(shown, 1), "the table has a header but no rows", "add one row per shot")

    def _header(
        self, cells: list[str], source: int, shown: str
    ) -> list[tuple[str, str, Convert] | None] | None:
        """Per position: (field, header as written, converter), or None to ignore; None
        when the header is wrong (reported)."""
        out: list[tuple[str, str, Convert] | None] = []
        seen: dict[str, str] = {}
        ok = True
        labels = self.index.sources[source].columns
        for position, cell in enumerate(cells):
            label = cell.strip()
            name = label.lower()
            if not label:
                # values under a nameless column are refused row by row
                out.append(("", column_letters(position), as_text))
                continue
            if name.startswith(IGNORED_PREFIX):
                out.append(None)
                continue
            convert = self._fields.get(name)
            if convert is None:
                hint = did_you_mean(
                    name,
                    self._fields,
                    f"name a shot field ({', '.join(sorted(self._fields))}), or start "
                    f"the header with {IGNORED_PREFIX!r} to keep the column as notes",
                )
                self._at(Place(shown, 1, label), f"unknown column {label!r}", hint)
                ok = False
                continue
            if name in seen:
                self._at(
                    Place(shown, 1, label),
                    f"column {label!r} appears twice (also {seen[name]!r})",
                    "keep one of them",
                )
                ok = False
                continue
            seen[name] = label
            labels[name] = label
            out.append((name, label, convert))
        if not seen and ok:
            self._at(
                Place(shown, 1), "the header names no shot field", "name columns id, prompt, ..."
            )
            ok = False
        return out if ok else None

    def _row(
        self,
        cells: list[str],
        columns: list[tuple[str, str, Convert] | None],
        source: int,
        row_no: int,
        shown: str,
    ) -> None:
        extra = [k for k in range(len(columns), len(cells)) if cells[k].strip()]
        if extra:
            self._at(
                Place(shown, row_no, column_letters(extra[0])),
                f"this row has {len(cells)} cells; the header names {len(columns)} columns",
                "add a header for the extra cells, or remove them",
            )
            return
        entry: dict[str, Any] = {}
        index = self._add(source, row_no, entry)
        for cell, column in zip(cells, columns, strict=False):
            if column is None:
                continue
            # a line break inside a quoted cell is the file's own: CRLF in a file saved
            # on Windows, LF elsewhere; one spelling, so the request (and its hash) is
            # the same whichever way the file was saved
            text = cell.strip().replace("\r\n", "\n")
            if not text:
                continue
            name, label, convert = column
            if not name:
                self._at(
                    Place(shown, row_no, label),
                    "this cell is in a column without a header",
                    "write the field's name in row 1, or empty the cell",
                )
                continue
            try:
                entry[name] = convert(text)
            except CellError as exc:
                self._issues.report(("shots", index, name), exc.message, exc.hint)
                self.bad.add(("shots", index, name))

    # ---- JSONL --------------------------------------------------------------------

    def _jsonl(self, content: str, source: int, shown: str, where: Path_) -> None:
        found = False
        for line_no, line in enumerate(content.split("\n"), start=1):
            text = line.strip()
            if not text:
                continue
            found = True
            value = self._json_line(text, line, line_no, shown)
            if value is None:
                continue
            if self._full(where):
                return
            self._add(
                source,
                line_no,
                {
                    k: v
                    for k, v in value.items()
                    if v is not None and not k.startswith(IGNORED_PREFIX)
                },
            )
        if not found:
            self._at(Place(shown), "the file has no lines", "write one JSON object per line")

    def _json_line(self, text: str, line: str, line_no: int, shown: str) -> dict[str, Any] | None:
        """The object on one line, or None (reported)."""
        try:
            value = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            indent = len(line) - len(line.lstrip())
            self._at(
                Place(shown, line_no, exc.colno + indent),
                f"not valid JSON: {exc.msg}",
                'write one JSON object per line, e.g. {"id": "a", "prompt": "..."}',
            )
            return None
        except _DuplicateKey as exc:
            self._at(
                Place(shown, line_no, exc.key),
                f"key {exc.key!r} appears twice on this line",
                "keep one of them",
            )
            return None
        except RecursionError:
            self._at(Place(shown, line_no), "nested too deeply", "flatten this line")
            return None
        if not isinstance(value, dict):
            self._at(
                Place(shown, line_no),
                f"a line must hold a JSON object ({{...}}), not {_json_kind(value)}",
                "write one JSON object per line",
            )
            return None
        return value

    # ---- images -------------------------------------------------------------------

    def _images(self, spec: dict[str, Any], where: Path_) -> None:
        pattern = os.path.expanduser(spec.pop("images"))
        found = sorted(
            m
            for m in glob.glob(pattern, root_dir=self._base_dir, recursive=True)
            if (self._base_dir / m).is_file()
        )
        if not found:
            self._report(
                (*where, "images"),
                f"no file matches {pattern!r}",
                "the pattern is relative to the manifest, e.g. img/*.png",
            )
            return
        shown = [m if os.path.isabs(m) else str(self._shown_dir / m) for m in found]
        source = len(self.index.sources)
        self.index.sources.append(
            Source(pattern, where, "images", spec_fields=frozenset(spec), files=shown)
        )
        for row, name in enumerate(found):
            if self._full(where):
                return
            shot_id = image_id(name)
            if not shot_id:
                self._at(
                    Place(shown[row]),
                    "no shot id can be made from this file's name",
                    "rename the file with letters or digits",
                )
                continue
            self._add(source, row, {**spec, "id": shot_id, "image": name})


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return "a number"
