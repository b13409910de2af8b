"""Output file names from the manifest's ``output.filename`` pattern.

Invariants:
- A name produced here is a relative POSIX path inside the output directory: never
  absolute, never with an empty, "." or ".." component, never with a backslash or a
  colon (drive letters, alternate streams), and it ends with ".mp4".
- Placeholders are plain names from :data:`PLACEHOLDERS` (format specs such as
  ``{take:03d}`` are fine; attribute and index lookups are refused), and every value
  substituted is itself a safe token (ids, enum values, numbers, hex).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from runner.manifest.contract import did_you_mean

DEFAULT_FILENAME = "{shot_id}.mp4"
SUFFIX = ".mp4"
MAX_PART_CHARS = 255

PLACEHOLDERS: dict[str, str] = {
    "shot_id": "the shot's id",
    "take": "take number (1 when the shot has no count)",
    "model": "model, e.g. v4.5",
    "quality": "quality, e.g. 540p",
    "duration": "duration in seconds",
    "mode": "text, image or fusion",
    "motion_mode": "normal or fast",
    "seed": "seed, or 'random' when none is set",
    "name": "the manifest's name",
    "hash": "first 12 hex digits of the request hash",
}

#: example values to try a pattern with before any shot is named
_SAMPLE: dict[str, Any] = {
    "shot_id": "shot-1.t1",
    "take": 1,
    "model": "v4.5",
    "quality": "540p",
    "duration": 5,
    "mode": "text",
    "motion_mode": "normal",
    "seed": 7,
    "name": "batch",
    "hash": "0123456789ab",
}

_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, fallback: str = "batch") -> str:
    """A file-name-safe token for free text (manifest names)."""
    out = re.sub(r"\.{2,}", ".", _SLUG_BAD.sub("-", text)).strip("-.")
    return out[:64] or fallback


def check_pattern(pattern: str) -> tuple[str, str] | None:
    """(message, hint) when ``pattern`` cannot name outputs safely, else None."""
    try:
        fields = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        return f"{pattern!r} is not a valid pattern: {exc}", "write '{{' and '}}' for braces"
    for _, name, _, conversion in fields:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            return (
                f"unknown placeholder {{{name}}}",
                did_you_mean(
                    name,
                    PLACEHOLDERS,
                    "placeholders: " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS),
                ),
            )
        if conversion:
            return f"{{{name}!{conversion}}} conversions are not allowed", f"write {{{name}}}"
    try:
        sample = pattern.format_map(_SAMPLE)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return f"{pattern!r} cannot be formatted: {exc}", "check the format specs after ':'"
    if not sample.endswith(SUFFIX):
        return f"{pattern!r} does not end with {SUFFIX}", f"end the pattern with {SUFFIX}"
    if not is_safe_relpath(sample):
        return (
            f"{pattern!r} could write outside the output directory",
            "use a relative pattern without '..', '\\', ':' or a leading '/'",
        )
    return None


def is_safe_relpath(rel: str) -> bool:
    """True when ``rel`` stays inside the directory it is joined to."""
    if not rel or rel[0] == "/" or "\\" in rel or ":" in rel or "\x00" in rel:
        return False
    for part in rel.split("/"):
        if part in ("", ".", "..") or len(part) > MAX_PART_CHARS:
            return False
    return True


def render(pattern: str, values: Mapping[str, Any]) -> str:
    """The file name for one shot (the pattern was accepted by :func:`check_pattern`)."""
    return pattern.format_map(values)
