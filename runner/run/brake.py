"""The failure-rate brake: a manifest whose renders keep failing stops spending.

A render counts once it has ended for good in this run: rendered (a success), or
failed, moderated, timed out or deleted with no attempt left to retry (a failure). A
render that failed and is tried again does not count yet, nor does a request the
provider refused before rendering (an invalid request costs nothing and fails alone).

Invariants:
- The brake looks at the last ``window`` counted renders only (a sliding window) and
  trips only once ``window`` of them have ended, when more than ``failure_share`` of
  them failed; it trips at most once per run. ``failure_share`` 1 never trips.
- It only says so: the scheduler stops submitting (a soft stop), so tasks in flight are
  collected and nothing already paid for is lost; the shots left are still pending for
  the next run.
"""

from __future__ import annotations

import re
from collections import Counter, deque

from runner.text import plural

#: the attempt count a final render failure's message ends with: not part of the error
_ATTEMPT_SUFFIX = re.compile(r"\s*\(attempt \d+ of \d+\)$")
#: how many of the most common errors the stop message names
TOP_ERRORS = 3


class FailureBrake:
    """Counts how the latest renders ended; says when too many failed."""

    def __init__(self, failure_share: float, window: int) -> None:
        self.failure_share = failure_share
        self.window = max(1, window)
        #: None for a render that succeeded, else its error
        self._recent: deque[str | None] = deque(maxlen=self.window)
        self.tripped = False

    def record(self, error: str | None) -> str | None:
        """A render ended (``error`` None: it succeeded). The stop message when this
        one trips the brake, else None."""
        # failure_share 1 never trips: no share of a window is more than all of it
        if self.tripped:
            return None
        self._recent.append(None if error is None else _ATTEMPT_SUFFIX.sub("", error))
        if len(self._recent) < self.window:
            return None
        errors = [e for e in self._recent if e is not None]
        if len(errors) <= self.failure_share * self.window:
            return None
        self.tripped = True
        return self._message(errors)

    def _message(self, errors: list[str]) -> str:
        common = Counter(errors).most_common(TOP_ERRORS)
        named = "; ".join(f"{n}x {_short(text)!r}" for text, n in common)
        others = len(errors) - sum(n for _, n in common)
        if others:
            named += f"; {others}x other errors"
        return (
            f"brake: {len(errors)} of the last {plural(self.window, 'finished render')} "
            f"failed or were moderated (over run.halt.failure_share {self.failure_share:g}). "
            f"Most common: {named}. No more submissions; the renders in flight are "
            "collected. Fix the manifest and run again to continue "
            "(run.halt.failure_share: 1 turns the brake off)"
        )


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
