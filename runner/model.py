"""Plain data shared by the layers: what a manifest expands to, and the shot states.

Invariants:
- A :class:`Shot` is immutable and fully resolved: defaults merged, takes and variations
  expanded, local image paths absolute (as ``file://`` URIs in ``request``), the output
  path relative to the output directory and never escaping it.
- ``Shot.request`` is exactly the JSON body the provider is sent, except that local
  images are ``file://`` URIs that the provider adapter encodes at send time.
- ``Shot.request_hash`` changes if and only if what would be sent changes (local images
  are hashed by content, not by path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any


class Mode(str, Enum):
    """How a shot is generated."""

    TEXT = "text"  #: text-to-video
    IMAGE = "image"  #: image-to-video (``image`` set)
    FUSION = "fusion"  #: multi-subject reference (``fusion`` set)


def duration_seconds(value: Any) -> int | None:
    """Seconds from either spelling (5, "5", "5s"); None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        text = text.removesuffix("s")
        if text.isdigit():
            return int(text)
    return None


class ShotState(str, Enum):
    """A shot's place in its lifecycle, as the ledger records it."""

    PENDING = "pending"  #: not yet sent (or re-queued)
    SUBMITTING = "submitting"  #: intent committed; the generate request may be on the wire
    SUBMITTED = "submitted"  #: task id known; rendering at the provider
    RENDERED = "rendered"  #: the provider has a video URL for it
    DOWNLOADING = "downloading"  #: the file is being written
    DONE = "done"  #: the file is on disk, verified
    AMBIGUOUS = "ambiguous"  #: parked: the request may have been accepted and charged
    FAILED = "failed"  #: final: failed with a reason
    MODERATED = "moderated"  #: final: refused by content moderation
    ABANDONED = "abandoned"  #: final: dropped from the manifest or given up by the user

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def at_provider(self) -> bool:
        """The provider holds a task for this shot that we still have to collect."""
        return self in (ShotState.SUBMITTED, ShotState.RENDERED, ShotState.DOWNLOADING)


class ErrorKind(str, Enum):
    """Why a shot is not done (the ledger's ``error_kind``)."""

    TRANSIENT = "transient"  #: the provider erred or was unreachable; retried
    RATE_LIMITED = "rate_limited"  #: the provider throttled the submit; retried
    AUTH = "auth"  #: the key was refused while submitting
    NO_CREDIT = "no_credit"  #: the account was empty when submitting
    INVALID = "invalid"  #: the provider refused the parameters
    MODERATED = "moderated"  #: refused by content moderation
    RENDER_FAILED = "render_failed"  #: the provider's render failed
    TIMEOUT = "timeout"  #: the render did not finish before poll.timeout_s
    TASK_LOST = "task_lost"  #: the provider says it does not know the task: parked
    DELETED = "deleted"  #: rendered, then deleted at the provider before it was saved
    AMBIGUOUS = "ambiguous"  #: the request may have been accepted and charged
    RETRY_SAME_ATTEMPT = "retry_same_attempt"  #: re-queued ambiguous: same trace id
    DOWNLOAD = "download"  #: the file could not be downloaded (collectable)
    DISK_FULL = "disk_full"  #: the disk filled while writing (collectable)
    OUTPUT_CONFLICT = "output_conflict"  #: a different file sits at the output path


FINAL_STATES = frozenset(
    {ShotState.DONE, ShotState.FAILED, ShotState.MODERATED, ShotState.ABANDONED}
)


@dataclass(frozen=True)
class HaltSettings:
    """The failure-rate brake: stop submitting when more than ``failure_share`` of the
    last ``window`` finished renders failed or were moderated (1: never)."""

    failure_share: float = 0.5
    window: int = 20


@dataclass(frozen=True)
class PollSettings:
    """How tasks are polled. Fractions of seconds are allowed (compressed clocks)."""

    initial_delay_s: float = 20.0
    min_interval_s: float = 2.0
    max_interval_s: float = 30.0
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class RunSettings:
    concurrency: int = 8
    max_attempts: int = 3
    budget_ptc: Decimal | None = None
    download_concurrency: int = 4
    #: all calls to the provider, per second (generate, fetch; downloads excluded)
    requests_per_s: float = 20.0
    poll: PollSettings = field(default_factory=PollSettings)
    #: nothing progressed this long (outside an outage): stop and say what is stuck
    stall_timeout_s: float = 900.0
    #: a provider that answered and then went away is waited for this long
    outage_timeout_s: float = 6 * 3600.0
    #: where the provider's callbacks are received; None: poll only
    callback: CallbackSettings | None = None
    #: the failure-rate brake (``run.halt``)
    halt: HaltSettings = field(default_factory=HaltSettings)
    #: where a JSON summary is POSTed when the run ends (runner/notify.py)
    notify: tuple[str, ...] = ()
    #: with several manifests in one run: higher goes first for the shared slots
    priority: int = 0


@dataclass(frozen=True)
class CallbackSettings:
    """Where pixrun's callback receiver binds (``listen``, ``HOST:PORT``) and the
    public address the provider POSTs to (``url``; None: ``http://<listen>``)."""

    listen: str
    url: str | None = None


@dataclass(frozen=True)
class OutputSettings:
    dir: Path
    filename: str = "{shot_id}.mp4"
    sidecar: bool = True
    #: write the prompt, seed, model, shot and task id into each file as MP4 tags
    embed_metadata: bool = False


@dataclass(frozen=True)
class SourceMark:
    """Where something came from in the manifest file (1-based line and column)."""

    file: str
    line: int | None = None
    column: int | None = None


@dataclass(frozen=True)
class Shot:
    shot_id: str
    mode: Mode
    request: dict[str, Any]
    request_hash: str
    output_relpath: str
    mark: SourceMark
    #: which take of ``count`` this is (1-based); 1 when the shot has no count
    take: int = 1
    #: None when the price table has no entry for this combination
    price_ptc: Decimal | None = None
    max_attempts: int = 3

    @property
    def prompt(self) -> str:
        return str(self.request.get("prompt", ""))


@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    shots: tuple[Shot, ...]
    output: OutputSettings
    run: RunSettings
    #: warnings found while loading (duplicates and the like); errors raise instead
    warnings: tuple[Any, ...] = ()
    #: the price table it was priced with (a runner.pricing.PriceTable); None: packaged
    price_table: Any = None
