"""Text for people: counts that read right, and strings that are safe to show.

Invariants:
- :func:`printable` returns text without any C0 or C1 control character (nor DEL):
  whole escape sequences (CSI ``ESC [ ... final``, OSC ``ESC ] ... BEL|ST`` and the
  two-byte ``ESC x``) are dropped, layout controls (tab, newline, CR, VT, FF) become a
  space, every other control is dropped. A prompt or a provider message can then
  neither clear a screen, retitle a window nor hide text in a terminal or a log.
- :func:`json_safe` keeps the data: it only spells as ``\\u00XX`` the controls that
  ``json.dumps(..., ensure_ascii=False)`` leaves raw (DEL and C1), so the document is
  still valid JSON and decodes to the same strings.

A regular expression does this job; the libraries that strip "ANSI codes" (click's
``unstyle``, rich's ``strip_control_codes``) each cover only a few sequences.
"""

from __future__ import annotations

import os
import re

__all__ = ["duration_text", "json_safe", "plural", "printable", "scrub"]

#: environment variables whose values are secrets, never to be shown or sent
SECRET_ENV = ("PIXRUN_API_KEY",)

# ESC followed by a CSI (parameters, intermediates, final byte), an OSC/DCS/PM/APC/SOS
# string (ended by BEL or ST, or running to the end), or a single character
_ESCAPE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]?"
    r"|[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|.?)",
    re.DOTALL,
)
# the 8-bit forms: CSI, and OSC/DCS/PM/APC/SOS strings
_C1_ESCAPE = re.compile(r"\x9b[0-?]*[ -/]*[@-~]?|[\x9d\x90\x98\x9e\x9f][^\x07\x1b\x9c]*[\x07\x9c]?")
_LAYOUT = re.compile(r"[\t\n\r\x0b\x0c]")
_LAYOUT_NO_NEWLINE = re.compile(r"[\t\r\x0b\x0c]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_NO_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_JSON_RAW = re.compile(r"[\x7f-\x9f]")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with no control character (see the module docstring).

    ``keep_newlines`` keeps ``\\n`` (a CSV cell or a multi-line message may hold one);
    otherwise it becomes a space like the other layout controls.
    """
    if not _CONTROL.search(text):
        return text
    text = _C1_ESCAPE.sub("", _ESCAPE.sub("", text))
    if keep_newlines:
        text = text.replace("\r\n", "\n")
        return _CONTROL_NO_NEWLINE.sub("", _LAYOUT_NO_NEWLINE.sub(" ", text))
    return _CONTROL.sub("", _LAYOUT.sub(" ", text))


def json_safe(document: str) -> str:
    """A JSON document with DEL and C1 characters spelled ``\\u00XX`` (same data)."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", document)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 shot``, ``2 shots``, ``0 shots``; ``many`` for irregular words."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def duration_text(seconds: float | None) -> str:
    """12s, 4m 05s, 2h 03m: coarse enough to read at a glance (a terminal or a message)."""
    if seconds is None:
        return "–"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def scrub(text: str) -> str:
    """``text`` without the API key, whatever echoed it (a provider error, a URL).

    Keeps control characters: for whole JSON or CSV documents, whose encoders deal with
    them. Anything shown on a terminal or written to a plain log goes through
    :func:`printable` as well (``runner.cli.views.clean``).
    """
    for name in SECRET_ENV:
        secret = os.environ.get(name, "")
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text
