"""The problems one read of a manifest finds, collected and then located.

Every step of the loader reports into one :class:`Issues` value, so a single pass
finds everything. Invariants:
- A problem is stored with its field path only; file:line:column is looked up in
  :meth:`Issues.problems`, once, for problems only (a valid manifest pays nothing).
- The same message at the same path is said once; the same message at more than
  :data:`MAX_SAME` places is said that many times and then only counted ("and 12 more
  like this"), so a bad image used by 10,000 shots gives a short report.
- Problems come out sorted by file (the manifest first, then tables as they were first
  reported), then by position, those without a position last.
- A shot entry that came from a table (``shots_from``) is located in its table
  (file:row:column, the column by its header or key) through a
  :class:`~runner.manifest.tables.TableIndex`; messages that name a second place name
  it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.errors import Problem
from runner.manifest.expand import SAFE_ID
from runner.manifest.tables import Place, TableIndex
from runner.manifest.yaml_common import Path_, PathPart
from runner.manifest.yaml_source import Mark, SourceMap
from runner.model import SourceMark

#: after this many problems with the same message, the rest are only counted
MAX_SAME = 20


@dataclass
class _Issue:
    path: Path_
    message: str
    hint: str
    shot_id: str | None = None
    severity: str = "error"
    at_key: bool = False
    mark: tuple[int | None, int | str | None] | None = None
    #: set for a problem in another file than the manifest (a table's header, say)
    file: str | None = None
    #: how many expanded shots share this exact problem
    times: int = 1


def field_path(path: Sequence[PathPart]) -> str:
    """``("shots", 3, "vary", "seed", 1)`` -> ``shots[3].vary.seed[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class Issues:
    """The problems of one manifest file, as they are reported."""

    def __init__(self, file: str, source: SourceMap) -> None:
        self.file = file
        self.source = source
        #: the parsed document and the marks of its shots (set once parsed)
        self.doc: Any = None
        self.shot_marks: list[Mark] = []
        #: every shot entry, the YAML ones then the tables' (set once read)
        self.entries: list[Any] | None = None
        #: where the tables' entries came from (None: no shots_from)
        self.tables: TableIndex | None = None
        self._issues: list[_Issue] = []
        self._seen: dict[tuple[Any, ...], _Issue] = {}
        self._message_count: dict[str, int] = {}
        self._by_message: dict[str, _Issue] = {}

    def report(
        self,
        path: Path_,
        message: str,
        hint: str,
        *,
        shot_id: str | None = None,
        at_key: bool = False,
        severity: str = "error",
        mark: tuple[int | None, int | str | None] | None = None,
        file: str | None = None,
    ) -> None:
        """Note one problem at ``path`` (``at_key``: the key itself is wrong); ``file``
        and ``mark`` place it in another file (a table) instead."""
        key = (path, message, severity, file, mark if file is not None else None)
        same = self._seen.get(key)
        if same is None:
            # one message at many places (a bad image used by every shot): show a few
            last = self._by_message.get(message)
            if last is not None and last.times >= MAX_SAME:
                same = last
        if same is not None:
            same.times += 1
            return
        issue = _Issue(path, message, hint, shot_id, severity, at_key, mark, file)
        self._seen[key] = issue
        self._issues.append(issue)
        count = self._message_count.get(message, 0) + 1
        self._message_count[message] = count
        if count >= MAX_SAME:
            self._by_message[message] = issue

    def problems(self) -> list[Problem]:
        """Everything reported, located and sorted by position."""
        out: list[Problem] = []
        for issue in self._issues:
            file, line, column, fld = self._where(issue)
            message = issue.message
            if issue.times > 1:
                message += f" (and {issue.times - 1} more like this)"
            out.append(
                Problem(
                    file=file,
                    line=line,
                    column=column,
                    message=message,
                    shot_id=issue.shot_id or self._shot_label(issue.path),
                    field_path=fld or None,
                    hint=issue.hint or None,
                    severity=issue.severity,
                )
            )
        rank: dict[str, int] = {self.file: 0}
        for p in out:
            rank.setdefault(p.file, len(rank))
        out.sort(
            key=lambda p: (
                rank[p.file],
                p.line is None,
                p.line or 0,
                p.column if isinstance(p.column, int) else 0,
            )
        )
        return out

    def _where(self, issue: _Issue) -> tuple[str, int | None, int | str | None, str]:
        """(file, line, column, field path) of one problem."""
        path = issue.path
        if issue.file is not None:
            line, column = issue.mark or (None, None)
            return issue.file, line, column, field_path(path)
        index = self._table_entry(path)
        if index is not None and issue.mark is None:
            assert self.tables is not None
            place = self.tables.place(index, path[2:])
            if isinstance(place, Place):
                return place.file, place.line, place.column, field_path(path[2:])
            path = place  # a field of an images spec: where the manifest has it
            found: tuple[int | None, int | str | None] | None = self.source.locate(
                path, at_key=issue.at_key
            )
        else:
            found = issue.mark or self._locate(path, issue.at_key)
        line, column = found if found else (None, None)
        return self.file, line, column, field_path(path)

    def _table_entry(self, path: Path_) -> int | None:
        """The entry index of a path into a shot that came from a table."""
        if self.tables is None or len(path) < 2 or path[0] != "shots":
            return None
        index = path[1]
        return index if isinstance(index, int) and self.tables.owns(index) else None

    def place(self, index: int, seen_from: int | None = None) -> str:
        """Where shot entry ``index`` was written, for a message about entry
        ``seen_from``: ``shots[3] (line 12)``, or a table's ``prompts.csv:4``."""
        if self.tables is not None and self.tables.owns(index):
            return self.tables.label(index)
        line = self.line_of(index)
        if seen_from is not None and self.tables is not None and self.tables.owns(seen_from):
            return f"shots[{index}] ({self.file}:{line})"
        return f"shots[{index}] (line {line})"

    def source_mark(self, index: int) -> SourceMark:
        """Where shot entry ``index`` starts, for ``Shot.mark``."""
        if self.tables is not None and self.tables.owns(index):
            place = self.tables.place(index, ())
            if isinstance(place, Place):
                line = place.line
                return SourceMark(place.file, line)
        line_column = self.shot_mark(index)
        if line_column is None:
            return SourceMark(self.file)
        return SourceMark(self.file, *line_column)

    def shot_mark(self, index: int) -> Mark | None:
        """Where the shots list's item ``index`` starts."""
        return self.shot_marks[index] if index < len(self.shot_marks) else None

    def line_of(self, index: int) -> int | str:
        """The line of shots[index], for messages ("?" when unknown)."""
        mark = self.shot_mark(index)
        return mark[0] if mark else "?"

    def _locate(self, path: Path_, at_key: bool) -> Mark | None:
        if len(path) == 2 and path[0] == "shots" and isinstance(path[1], int):
            mark = self.shot_mark(path[1])
            if mark is not None:
                return mark
        return self.source.locate(path, at_key=at_key)

    def _shot_label(self, path: Path_) -> str | None:
        if len(path) >= 2 and path[0] == "shots" and isinstance(path[1], int):
            shots = self.entries
            if shots is None:
                shots = self.doc.get("shots") if isinstance(self.doc, dict) else None
            entry = shots[path[1]] if isinstance(shots, list) and path[1] < len(shots) else None
            given = entry.get("id") if isinstance(entry, dict) else None
            if isinstance(given, str):
                return given if SAFE_ID.fullmatch(given) else repr(given)
            # a table's row is named by its place; a YAML entry by its number
            return None if self._table_entry(path) is not None else f"#{path[1] + 1}"
        return None
