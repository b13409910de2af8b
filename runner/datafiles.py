"""Reading the JSON data files a user may name (``--rules``, ``--prices``).

Invariant: an unreadable file, bytes that are not UTF-8 and text that is not JSON each
become a :class:`~runner.errors.UsageError` that names the file; the caller checks the
structure of what comes back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.errors import UsageError


def read_user_file(path: Path, *, what: str, option: str) -> str:
    """The UTF-8 text of a file named on the command line with ``option``."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read {what} {path}: {exc}", hint=f"check the path given with {option}"
        ) from exc


def parse_json(text: str, bad: Callable[[str], UsageError]) -> Any:
    """The JSON document in ``text``; ``bad(problem)`` is raised when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg} at line {exc.lineno})") from exc
