"""What a run is told (its options), why it may stop, and what it reports at the end.

Invariants:
- Every default of a run setting that a manifest can also give is declared once, in
  :class:`runner.model.RunSettings`; :class:`SchedulerOptions` takes it from there.
- :func:`exit_code_for` is the one place a run's outcome becomes a process exit code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from runner.errors import ExitCode
from runner.model import PollSettings, RunSettings, ShotState

_RUN = RunSettings()


class StopReason(str, Enum):
    """Why a run stopped submitting before the manifest was exhausted."""

    INTERRUPTED = "interrupted"  #: Ctrl-C or SIGTERM
    AUTH = "auth"  #: the provider refused the key
    OUT_OF_CREDIT = "out_of_credit"  #: the account is empty
    #: the account cannot pay, and the provider refuses even the free fetches: nothing
    #: in flight can be collected until it is topped up
    LOCKED_OUT = "locked_out"
    BUDGET = "budget"  #: the cost cap would be passed
    AMBIGUOUS_STREAK = "ambiguous_streak"  #: too many ambiguous submits in a row
    DISK_FULL = "disk_full"  #: the disk is full
    LEDGER = "ledger"  #: the ledger cannot be written
    CONTRACT = "contract"  #: the provider answered in a way pixrun does not recognise
    OUTAGE = "outage"  #: the provider stayed unreachable past run.outage_timeout_s
    UNREACHABLE = "unreachable"  #: the provider never answered at all (a typo'd URL?)
    STALLED = "stalled"  #: nothing progressed for run.stall_timeout_s
    #: too many of the latest finished renders failed (run.halt); in-flight ones collected
    BRAKE = "brake"
    #: its manifest left the watched folder (``pixrun watch``); in-flight ones collected
    WITHDRAWN = "withdrawn"


#: stop reasons after which nothing more may happen at all (not even collecting)
HARD_STOPS = frozenset(
    {
        StopReason.INTERRUPTED,
        StopReason.AUTH,
        StopReason.LOCKED_OUT,
        StopReason.DISK_FULL,
        StopReason.LEDGER,
        StopReason.CONTRACT,
        StopReason.OUTAGE,
        StopReason.UNREACHABLE,
        StopReason.STALLED,
    }
)

#: hard stops about the account or the provider, not one manifest: a refused key or an
#: answer pixrun does not recognise holds for every batch on the same provider, so with
#: several manifests one batch's stop stops them all before they pay for more tasks
ACCOUNT_STOPS = frozenset({StopReason.AUTH, StopReason.LOCKED_OUT, StopReason.CONTRACT})

_EXIT_FOR_STOP = {
    StopReason.INTERRUPTED: ExitCode.INTERRUPTED,
    StopReason.AUTH: ExitCode.AUTH,
    StopReason.OUT_OF_CREDIT: ExitCode.MONEY,
    StopReason.LOCKED_OUT: ExitCode.MONEY,
    StopReason.BUDGET: ExitCode.MONEY,
    StopReason.AMBIGUOUS_STREAK: ExitCode.SHOTS_FAILED,
    StopReason.DISK_FULL: ExitCode.SHOTS_FAILED,
    StopReason.LEDGER: ExitCode.SHOTS_FAILED,
    StopReason.CONTRACT: ExitCode.CONTRACT,
    StopReason.OUTAGE: ExitCode.SHOTS_FAILED,
    StopReason.UNREACHABLE: ExitCode.INVALID,
    StopReason.STALLED: ExitCode.SHOTS_FAILED,
    StopReason.BRAKE: ExitCode.SHOTS_FAILED,
    StopReason.WITHDRAWN: ExitCode.SHOTS_FAILED,
}


def exit_code_for(
    stop: StopReason | None,
    counts: dict[ShotState, int],
    *,
    held_changed: int = 0,
    pending_later: int = 0,
) -> int:
    """The process exit code of a run that ended with ``stop`` and ``counts``;
    ``pending_later`` pending shots were left for a later run on purpose (a sample)."""
    if stop is not None:
        return _EXIT_FOR_STOP[stop]
    left = dict(counts)
    left[ShotState.PENDING] = left.get(ShotState.PENDING, 0) - pending_later
    if held_changed or any(n for s, n in left.items() if s != ShotState.DONE and n > 0):
        return ExitCode.SHOTS_FAILED
    return ExitCode.OK


@dataclass(frozen=True)
class SchedulerOptions:
    output_dir: Path
    concurrency: int = _RUN.concurrency
    download_concurrency: int = _RUN.download_concurrency
    requests_per_s: float = _RUN.requests_per_s
    poll: PollSettings = field(default_factory=PollSettings)
    budget_uptc: int | None = None
    sidecar: bool = True
    #: write the shot's metadata into each file as MP4 tags (runner/mp4tags.py), and
    #: the batch name they carry
    embed_metadata: bool = False
    batch_name: str | None = None
    #: this many ambiguous submits in a row stop submitting
    ambiguous_streak_limit: int = 5
    #: consecutive transient submit failures (provider otherwise up) before giving up
    #: on a shot for this run; it stays pending
    max_transient_tries: int = 8
    #: a download that keeps failing (refused, reset, 5xx, cut short) fetches the task
    #: again for a fresh URL after this many failures in a row, and gives up (the shot
    #: stays collectable, its task id kept) after ``download_give_up_s`` or
    #: ``max_download_failures``, whichever comes first
    download_refresh_after: int = 2
    download_give_up_s: float = 120.0
    max_download_failures: int = 12
    #: this many shots given up on in a row, none downloaded in between, mean the
    #: download host is down: until a download works again, each shot gets only its
    #: tries up to one fresh URL (the night goes on at render speed, not two minutes a
    #: shot)
    downloads_down_after: int = 5
    #: a provider that answered nothing at all for this long since the first call is
    #: taken to be a wrong address (exit 2)
    unreachable_grace_s: float = 60.0
    #: a provider that answered before and then went away is waited for this long
    outage_timeout_s: float = _RUN.outage_timeout_s
    #: nothing progressed (no submit, state change, byte downloaded or task answer) for
    #: this long, outside an outage: stop, say what was stuck
    stall_timeout_s: float = _RUN.stall_timeout_s
    snapshot_interval_s: float = 0.5
    #: what one upload of a local image costs (the price table's upload_ptc)
    upload_price_uptc: int = 1_000
    #: exponential back-off of retried calls: first delay and ceiling
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    #: on a stop, how long generate calls already under way may take to answer; well
    #: under the 2 s in which Ctrl-C must end the process (shutdown needs the rest)
    stop_grace_s: float = 1.0
    #: the failure-rate brake (run.halt): more than this share of the last ``halt_window``
    #: finished renders failed or moderated stops submitting; 1 turns it off
    halt_failure_share: float = _RUN.halt.failure_share
    halt_window: int = _RUN.halt.window
    #: sample first (--only/--limit): only these shots are submitted; None: every one.
    #: The others stay pending in the ledger for a later run.
    submit_only: frozenset[str] | None = None
    #: who renders this run's videos (``{"simulated", "base_url"}``), written into each
    #: sidecar: a lost ledger's rerun adopts only files its own provider made, so a
    #: simulator's clips never become a real run's deliverables
    provider: Mapping[str, Any] | None = None


@dataclass
class RunResult:
    exit_code: int
    stop_reason: StopReason | None
    message: str | None
    counts: dict[ShotState, int]
    spent_uptc: int
    elapsed_s: float
    calls: dict[str, int]
    ledger_commits: int
    #: provider callbacks received, by verdict (valid, duplicate, late, wrong_secret, ...)
    callbacks: dict[str, int] = field(default_factory=dict)
    #: shots whose download this run gave up on: rendered and paid for, their task id
    #: kept, counted as "downloading" until a rerun fetches them (free)
    not_downloaded: int = 0
