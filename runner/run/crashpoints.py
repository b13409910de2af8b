"""Named crash points for crash tests: ``PIXRUN_CRASH_AT=name`` or ``name:N``.

When the environment names a point, the process kills itself with SIGKILL the N-th time
(default first) it passes that point: no cleanup, no flush, exactly like a power cut
from the ledger's point of view. Unset (always, outside tests), a point costs one dict
lookup.
"""

from __future__ import annotations

import os
import signal
from enum import Enum


class CrashPoint(str, Enum):
    """Every step of a shot's lifecycle where a crash test may kill the runner."""

    AFTER_INTENT = "after_intent"  #: intent committed, request not yet sent
    AFTER_SUBMIT_SENT = "after_submit_sent"  #: the provider answered; task id not stored
    AFTER_TASK_COMMITTED = "after_task_committed"  #: task id durable
    AFTER_POLL = "after_poll"  #: a fetch answered, before its result is stored
    AFTER_RENDERED = "after_rendered"  #: rendered state durable, download not started
    AFTER_TAGGED = "after_tagged"  #: embed_metadata: temporary file tagged, not published
    MID_DOWNLOAD = "mid_download"  #: file downloaded, not yet recorded as done
    AFTER_DONE = "after_done"  #: done committed


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count) if count.isdigit() else 1


_TARGET = _parse(os.environ.get("PIXRUN_CRASH_AT"))
_seen = 0


def reached(point: CrashPoint) -> None:
    global _seen
    if _TARGET is None or _TARGET[0] != point.value:
        return
    _seen += 1
    if _seen >= _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
