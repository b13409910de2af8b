"""The problems one read of a manifest finds, collected and then located.

Every step of the loader reports into one :class:`Issues` value, so a single pass
finds everything. Invariants:
- A problem is stored with its field path only; file:line:column is looked up in
  :meth:`Issues.problems`, once, for problems only (a valid manifest pays nothing).
- The same message at the same path is said once; the same message at more than
  :data:`MAX_SAME` places is said that many times and then only counted ("and 12 more
  like this"), so a bad image used by 10,000 shots gives a short report.
- Problems come out sorted by position, those without a position last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.errors import Problem
from runner.manifest.expand import SAFE_ID
from runner.manifest.yaml_source import Mark, SourceMap

PathPart = str | int
Path_ = tuple[PathPart, ...]

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
    mark: Mark | None = None
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
        self._issues: list[_Issue] = []
        self._seen: dict[tuple[Path_, str, str], _Issue] = {}
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
        mark: Mark | None = None,
    ) -> None:
        """Note one problem at ``path`` (``at_key``: the key itself is wrong)."""
        key = (path, message, severity)
        same = self._seen.get(key)
        if same is None:
            # one message at many places (a bad image used by every shot): show a few
            last = self._by_message.get(message)
            if last is not None and last.times >= MAX_SAME:
                same = last
        if same is not None:
            same.times += 1
            return
        issue = _Issue(path, message, hint, shot_id, severity, at_key, mark)
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
            mark = issue.mark or self._locate(issue.path, issue.at_key)
            message = issue.message
            if issue.times > 1:
                message += f" (and {issue.times - 1} more like this)"
            out.append(
                Problem(
                    file=self.file,
                    line=mark[0] if mark else None,
                    column=mark[1] if mark else None,
                    message=message,
                    shot_id=issue.shot_id or self._shot_label(issue.path),
                    field_path=field_path(issue.path) or None,
                    hint=issue.hint or None,
                    severity=issue.severity,
                )
            )
        out.sort(key=lambda p: (p.line is None, p.line or 0, p.column or 0))
        return out

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
            shots = self.doc.get("shots") if isinstance(self.doc, dict) else None
            entry = shots[path[1]] if isinstance(shots, list) and path[1] < len(shots) else None
            given = entry.get("id") if isinstance(entry, dict) else None
            if isinstance(given, str):
                return given if SAFE_ID.fullmatch(given) else repr(given)
            return f"#{path[1] + 1}"
        return None
