"""What the ledger's rows are: shot rows, outcomes, event kinds, and the statements
every writer shares (the event INSERT, archiving a shot's version).

Money is integer micro-PTC (``*_uptc``); times are unix seconds (REAL).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from runner.model import Shot, ShotState
from runner.money import to_uptc_or_none

#: one SQL statement and its parameters, as the writers queue them
Statement = tuple[str, Sequence[Any]]


class AttemptOutcome(str, Enum):
    """What became of one generate call."""

    SENDING = "sending"  #: committed before the request; the request may be on the wire
    ACCEPTED = "accepted"  #: the provider answered with a task id (charged)
    TRANSIENT = "transient"  #: 5xx or a connection failure before sending; retried
    RATE_LIMITED = "rate_limited"  #: 429 (rate or concurrency); retried later
    INVALID = "invalid"  #: the provider refused the parameters
    NO_CREDIT = "no_credit"  #: the account is empty
    AUTH = "auth"  #: the key was refused
    AMBIGUOUS = "ambiguous"  #: sent, no answer: may have been accepted and charged
    RESOLVED = "resolved"  #: an ambiguous attempt tied to a task id by the user
    MISMATCH = "mismatch"  #: an answer pixrun does not recognise (a wrong route): the run stopped


class EventKind(str, Enum):
    """Notable things that happened during a run (the ``events`` table)."""

    RUN_STARTED = "run_started"  #: a run took the ledger
    RUN_ENDED = "run_ended"  #: a run let it go
    SHOT_FAILED = "shot_failed"  #: a shot reached failed or moderated
    SHOT_AMBIGUOUS = "shot_ambiguous"  #: a shot was parked as ambiguous
    RETRY = "retry"  #: a render failed and the shot was re-queued
    THROTTLED = "throttled"  #: the provider limited rate or concurrency
    URL_REFRESHED = "url_refreshed"  #: an expired download URL was fetched again
    OUT_OF_CREDIT = "out_of_credit"  #: the account ran dry
    CHANGED = "changed"  #: a shot's request changed: a new version
    REQUEUED = "requeued"  #: the user re-queued a shot
    RESOLVED = "resolved"  #: the user tied a parked shot to a task id
    CONTRACT_MISMATCH = "contract_mismatch"  #: the provider answered unrecognisably: stopped
    #: the fetch route said "no such task" for a task accepted moments ago (message: the
    #: route): until a fetch on it finds a task, its "no such task" proves nothing
    ROUTE_UNPROVEN = "route_unproven"
    ROUTE_PROVEN = "route_proven"  #: a fetch on that route found a task after all
    PROVIDER_DOWN = "provider_down"  #: the provider stopped answering (once per outage)
    PROVIDER_BACK = "provider_back"  #: the provider answers again after an outage
    #: shots given up on in a row (the download host is down): one try each from then on
    DOWNLOADS_DOWN = "downloads_down"
    DOWNLOADS_BACK = "downloads_back"  #: a download worked again after that
    STALLED = "stalled"  #: nothing progressed for run.stall_timeout_s: stopped
    ADOPTED = "adopted"  #: a file already on disk was taken as the shot's output
    DOWNLOAD_FAILED = "download_failed"  #: a paid render could not be downloaded (kept)
    REROLLED = "rerolled"  #: the user asked for a new take with a fresh seed
    CALLBACK = "callback"  #: what a provider callback carried (size-capped), as a sample
    CALLBACKS_SILENT = "callbacks_silent"  #: callbacks stopped arriving: polling in full
    UNTAGGED = "untagged"  #: output.embed_metadata: a file could not be tagged (kept as is)


#: columns a caller may set through ``update_shot``; anything else is a bug
SHOT_COLUMNS = frozenset(
    {
        "state",
        "attempts",
        "task_id",
        "video_url",
        "poster_url",
        "seed",
        "width",
        "height",
        "bytes",
        "sha256",
        "poll_count",
        "next_poll_at",
        "not_before",
        "submitted_at",
        "rendered_at",
        "done_at",
        "error_kind",
        "last_error",
        "output_path",
    }
)


@dataclass
class ShotRow:
    """A shot as the ledger knows it: what the scheduler works from."""

    shot_id: str
    version: int
    seq: int
    mode: str
    request_json: str
    request_hash: str
    output_path: str
    price_uptc: int | None
    max_attempts: int
    state: ShotState
    attempts: int
    task_id: str | None
    video_url: str | None
    poster_url: str | None
    seed: int | None
    poll_count: int
    next_poll_at: float | None
    not_before: float | None
    submitted_at: float | None
    rendered_at: float | None
    bytes: int | None
    sha256: str | None
    prompt: str
    error_kind: str | None

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> ShotRow:
        values = dict(zip(ROW_COLUMNS, row, strict=True))
        values["state"] = ShotState(values["state"])
        return cls(**values)

    @functools.cached_property
    def request(self) -> Mapping[str, Any]:
        """The request body, decoded once per row (read-only: callers copy to change it)."""
        result: dict[str, Any] = json.loads(self.request_json)
        return result


#: the columns of ``shots`` a :class:`ShotRow` holds, in its field order
ROW_COLUMNS = tuple(f.name for f in fields(ShotRow))
ROW_SELECT = "SELECT " + ", ".join(ROW_COLUMNS) + " FROM shots"


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`Ledger.sync_manifest` found, comparing the manifest with the ledger."""

    new: int
    changed: tuple[str, ...]
    unchanged: int
    removed: tuple[str, ...]


#: what a ledger's work cost: accepted generates net of refunds, plus uploads
SPENT_SQL = (
    "SELECT (SELECT COALESCE(SUM(charged_uptc), 0) - COALESCE(SUM(refunded_uptc), 0) "
    "FROM attempts WHERE outcome IN (?, ?)) "
    "+ (SELECT COALESCE(SUM(charged_uptc), 0) FROM uploads)"
)
SPENT_PARAMS = (AttemptOutcome.ACCEPTED.value, AttemptOutcome.RESOLVED.value)

#: states whose output file exists (or is being written) under its recorded name
HAS_FILE = frozenset({ShotState.DONE, ShotState.DOWNLOADING})


#: meta key: who the ledger's work was sent to, as JSON ``{"simulated": bool,
#: "base_url": str | None, "dialect": str | None}`` (see runner.batch)
META_PROVIDER = "provider"
#: meta key: the random secret every Ai-trace-id of this ledger derives from (hex)
META_TRACE_SECRET = "trace_secret"
#: a rehearsal's ledger and outputs carry this infix, so they never mix with real work
SIM_INFIX = ".sim"


def now() -> float:
    return time.time()


def event_insert(at: float, kind: EventKind, shot_id: str | None, message: str) -> Statement:
    """The statement that records one event (every writer logs events through it)."""
    return (
        "INSERT INTO events (at, kind, shot_id, message) VALUES (?, ?, ?, ?)",
        (at, kind.value, shot_id, message),
    )


def archive_version(at: float, shot_id: str) -> Statement:
    """Copy a shot's current version into ``shot_versions`` (its file is kept)."""
    return (
        "INSERT OR REPLACE INTO shot_versions (shot_id, version, request_json, "
        "request_hash, state, task_id, output_path, bytes, sha256, archived_at) "
        "SELECT shot_id, version, request_json, request_hash, state, task_id, "
        "output_path, bytes, sha256, ? FROM shots WHERE shot_id = ?",
        (at, shot_id),
    )


#: SET clause that forgets everything a shot's render produced: a new version starts
#: again as pending with no attempts
RESET_RENDER = (
    "attempts = 0, task_id = NULL, video_url = NULL, poster_url = NULL, seed = NULL, "
    "width = NULL, height = NULL, bytes = NULL, sha256 = NULL, poll_count = 0, "
    "next_poll_at = NULL, not_before = NULL, submitted_at = NULL, rendered_at = NULL, "
    "done_at = NULL, error_kind = NULL, last_error = NULL"
)


def request_json(request: Mapping[str, Any]) -> str:
    """A request as the ledger stores it: canonical JSON, so equal requests are equal text."""
    return json.dumps(request, sort_keys=True, separators=(",", ":"))


def shot_columns(shot: Shot) -> dict[str, Any]:
    """The columns of ``shots`` that a manifest entry sets."""
    req = shot.request
    duration = req.get("duration")
    return {
        "mode": shot.mode.value,
        "prompt": shot.prompt,
        "model": req.get("model"),
        "quality": req.get("quality"),
        "duration": None if duration is None else str(duration),
        "motion_mode": req.get("motion_mode"),
        "request_json": request_json(req),
        "request_hash": shot.request_hash,
        "output_path": shot.output_relpath,
        "price_uptc": to_uptc_or_none(shot.price_ptc),
        "max_attempts": shot.max_attempts,
    }
