"""What a ledger says about a manifest's shots, as labels for :func:`runner.plan.build_plan`.

Invariant: only ``to_submit`` and ``changed`` shots will be paid for by the next run;
everything else is done, at the provider (already paid), parked or finished otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from runner.ledger import open_ledger
from runner.ledger.queries import hashes_and_states, uploaded_digests
from runner.model import Manifest, ShotState
from runner.plan import TO_SUBMIT

DONE = "done"
IN_FLIGHT = "in_flight"
PARKED = "parked"
FAILED = "failed"
CHANGED = "changed"

#: labels whose shots the next run submits (and pays for)
SPEND_LABELS = frozenset({TO_SUBMIT, CHANGED})

_LABEL_OF = {
    ShotState.PENDING: TO_SUBMIT,
    ShotState.SUBMITTING: PARKED,  # a crashed run's intent: parked by the next run
    ShotState.SUBMITTED: IN_FLIGHT,
    ShotState.RENDERED: IN_FLIGHT,
    ShotState.DOWNLOADING: IN_FLIGHT,
    ShotState.DONE: DONE,
    ShotState.AMBIGUOUS: PARKED,
    ShotState.FAILED: FAILED,
    ShotState.MODERATED: FAILED,
    ShotState.ABANDONED: FAILED,
}


async def ledger_labels(
    manifest: Manifest, ledger_path: Path
) -> tuple[Mapping[str, str], int, frozenset[str]]:
    """``(label per shot id, micro-PTC spent so far, digests of images already
    uploaded)``; shots the ledger lacks are new."""
    async with await open_ledger(ledger_path, writer=False) as ledger:
        known = await hashes_and_states(ledger)
        spent = await ledger.spent_uptc()
        uploaded = await uploaded_digests(ledger)
    labels: dict[str, str] = {}
    for shot in manifest.shots:
        entry = known.get(shot.shot_id)
        if entry is None:
            continue  # new: to submit
        digest, state = entry
        if digest != shot.request_hash and not state.at_provider:
            labels[shot.shot_id] = CHANGED
        else:
            labels[shot.shot_id] = _LABEL_OF[state]
    return labels, spent, uploaded
