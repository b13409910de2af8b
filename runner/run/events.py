"""What a run tells whoever watches it: events as they happen, snapshots on a clock.

The scheduler calls a :class:`RunObserver`; the CLI decides how to show it (live
display, plain lines, JSON lines, nothing). Observers must be quick and must not raise:
they run on the scheduler's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from runner.model import ShotState


class RunEventKind(str, Enum):
    """Things worth telling a person (or a log pipeline) about."""

    SUBMITTED = "submitted"  #: the provider accepted a generate request
    RENDERED = "rendered"  #: the provider finished a render
    DONE = "done"  #: the file is on disk
    FAILED = "failed"  #: a shot failed for good
    MODERATED = "moderated"  #: a shot was refused by moderation
    AMBIGUOUS = "ambiguous"  #: a shot was parked: its request may have been charged
    RETRY = "retry"  #: a render failed and will be tried again
    THROTTLED = "throttled"  #: the provider limited rate or concurrency
    URL_REFRESHED = "url_refreshed"  #: an expired download URL was fetched again
    OUT_OF_CREDIT = "out_of_credit"  #: the account is empty: no more submissions
    BUDGET_REACHED = "budget_reached"  #: the cost cap stops further submissions
    PROVIDER_DOWN = "provider_down"  #: the provider is unreachable; backing off
    DOWNLOADS_DOWN = "downloads_down"  #: downloads keep failing: few tries per shot
    STOPPING = "stopping"  #: the run is stopping (signal or fatal error)
    CHANGED = "changed"  #: a done shot's request changed (re-rendered or held)
    INFO = "info"  #: anything else worth a line


@dataclass(frozen=True)
class RunEvent:
    kind: RunEventKind
    message: str
    shot_id: str | None = None
    state: ShotState | None = None
    task_id: str | None = None
    attempt: int | None = None
    #: seconds since the run started
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class RunSnapshot:
    """Where the run stands; sent every ``snapshot_interval_s`` and once at the end."""

    total: int
    counts: dict[ShotState, int]
    in_flight: int
    target_concurrency: int
    downloading: int
    spent_uptc: int
    planned_uptc: int
    elapsed_s: float
    done_per_s: float
    eta_s: float | None
    fetch_calls: int = 0
    generate_calls: int = 0
    recent: tuple[RunEvent, ...] = field(default_factory=tuple)


class RunObserver(Protocol):
    def event(self, event: RunEvent) -> None: ...

    def snapshot(self, snapshot: RunSnapshot) -> None: ...
