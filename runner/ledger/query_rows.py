"""What the read-only queries answer with: the rows of ``pixrun status`` and ``pixrun
report`` (see :mod:`runner.ledger.queries`).

Invariant: plain values, detached from the ledger: holding one keeps no connection
open, and nothing here reads or writes a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.ledger.rows import META_PROVIDER
from runner.model import ShotState


@dataclass(frozen=True)
class RunInfo:
    """One row of the ``runs`` table."""

    run_id: int
    started_at: float
    ended_at: float | None
    pid: int
    exit_code: int | None
    summary: dict[str, Any] | None

    @property
    def active(self) -> bool:
        """The run has not recorded its end and its process is alive on this machine.

        A run killed with ``kill -9`` never records its end; its pid is gone, so it
        shows as interrupted rather than running forever.
        """
        return self.ended_at is None and _pid_alive(self.pid)


@dataclass(frozen=True)
class ShotIssue:
    """A shot that needs a person: failed for good, or parked as ambiguous."""

    shot_id: str
    state: ShotState
    attempts: int
    task_id: str | None
    error_kind: str | None
    message: str | None
    updated_at: float


@dataclass(frozen=True)
class EventRow:
    """One row of the ``events`` table."""

    event_id: int
    at: float
    kind: str
    shot_id: str | None
    message: str


@dataclass(frozen=True)
class StatusSummary:
    """Where a batch stands, as ``pixrun status`` shows it.

    Counts and money cover the shots of the current manifest; shots dropped from the
    manifest are counted in ``removed`` only (their in-flight tasks still count in
    ``in_flight``, since a run still collects them).
    """

    total: int
    counts: dict[ShotState, int]
    removed: int
    in_flight: int
    planned_uptc: int
    spent_uptc: int
    #: what pending (and mid-submit) shots will cost, at one attempt each
    remaining_uptc: int
    unknown_price: int
    unknown_price_remaining: int
    #: shots a run still has to finish (not final, not parked)
    unfinished: int
    done_in_window: int
    window_s: float | None
    done_per_min: float | None
    eta_s: float | None
    failures: list[ShotIssue]
    failures_total: int
    parked: list[ShotIssue]
    parked_total: int
    last_run: RunInfo | None
    run_active: bool
    recent_events: list[EventRow]
    meta: dict[str, str] = field(default_factory=dict)
    generated_at: float = 0.0

    def count(self, *states: ShotState) -> int:
        return sum(self.counts.get(s, 0) for s in states)

    @property
    def simulated(self) -> bool:
        """The ledger's work went to the simulator (see :func:`is_simulated`)."""
        return is_simulated(self.meta)


def is_simulated(meta: Mapping[str, str]) -> bool:
    """Whether the ledger's meta says its work went to the simulator.

    Reads the :data:`~runner.ledger.META_PROVIDER` record; a ledger without it (older
    than the record) or with a value that is not a JSON object was not simulated.
    """
    raw = meta.get(META_PROVIDER)
    if not raw:
        return False
    try:
        record = json.loads(raw)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("simulated") is True


@dataclass(frozen=True)
class ReportRow:
    """One shot as a report shows it."""

    shot_id: str
    version: int
    mode: str
    state: ShotState
    prompt: str
    model: str | None
    quality: str | None
    #: seconds; the ledger holds the request's spelling ("5", or "5s" for fusion)
    duration: int | None
    motion_mode: str | None
    seed: int | None
    attempts: int
    price_uptc: int | None
    charged_uptc: int
    task_id: str | None
    output_path: str
    bytes: int | None
    sha256: str | None
    error_kind: str | None
    error: str | None
    poster_url: str | None
    width: int | None
    height: int | None
    done_at: float | None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except OSError:
        return False
    return True
