"""What a run's manifest sync does with one shot of the manifest, given the ledger's row
for it: the one rule behind the sync itself (:mod:`runner.ledger.sync`), the run's
preview of what it will pay for (:mod:`runner.run.preview`) and ``pixrun plan`` against
a ledger (:mod:`runner.plan_status`).

Invariant: pure (no SQL, no I/O): the three answer from the same rows
(:meth:`runner.ledger.Ledger.known_shots`) through :func:`classify`, so what ``pixrun
plan`` prices and what the run's preview asks about is what the run then does.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from runner.model import ShotState


class KnownShot(NamedTuple):
    """A shot as the ledger has it, for comparing with its manifest entry."""

    request_hash: str
    version: int
    state: ShotState
    seq: int
    in_manifest: int
    output_path: str
    #: the manifest request hash a re-roll was made from (None: not re-rolled)
    rerolled_from: str | None


class SyncAction(Enum):
    """What the sync does with a manifest shot."""

    NEW = "new"  #: not in the ledger: inserted as pending
    KEEP = "keep"  #: request unchanged: keeps its state
    #: request unchanged, but abandoned (dropped from a manifest while pending): back
    #: in the manifest, it is pending again
    REVIVE = "revive"
    NEW_VERSION = "new_version"  #: request changed: a new version, pending
    #: request changed since the shot was done: a new version only if the user agrees
    #: to pay again (else held: it stays done)
    RERENDER = "rerender"
    #: request changed while the shot's task may be at the provider (or mid-submit):
    #: left as it is, so what is already paid for is collected first
    DEFERRED = "deferred"


def classify(request_hash: str, known: KnownShot | None) -> SyncAction:
    """What the sync does with a manifest shot whose request hashes to ``request_hash``,
    given the ledger's row for it (None: the ledger lacks it)."""
    if known is None:
        return SyncAction.NEW
    # a re-rolled shot stays re-rolled while its manifest entry is what it re-rolled
    if request_hash in (known.request_hash, known.rerolled_from):
        return SyncAction.REVIVE if known.state == ShotState.ABANDONED else SyncAction.KEEP
    if known.state.at_provider or known.state == ShotState.SUBMITTING:
        return SyncAction.DEFERRED
    if known.state == ShotState.DONE:
        return SyncAction.RERENDER
    return SyncAction.NEW_VERSION


def state_after_sync(action: SyncAction, known: KnownShot | None) -> ShotState:
    """The state the sync leaves the shot in (a :attr:`SyncAction.RERENDER` as if the user
    agreed). The run then submits, and pays for, the pending ones; it parks a
    ``submitting`` one (:meth:`runner.ledger.Ledger.recover`)."""
    if action in (SyncAction.KEEP, SyncAction.DEFERRED):
        assert known is not None  # only a shot the ledger has is kept or deferred
        return known.state
    return ShotState.PENDING
