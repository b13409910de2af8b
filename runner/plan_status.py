"""What a ledger says about a manifest's shots, as labels for :func:`runner.plan.build_plan`.

Invariants:
- Each shot is labelled by what the next run's sync will make of it
  (:func:`runner.ledger.classify.classify`, the rule the sync itself follows), so the
  plan prices what the run will pay for: an abandoned shot back in the manifest is to
  submit, a changed one whose request may be at the provider is in flight or parked.
- Only ``to_submit`` and ``changed`` shots will be paid for by the next run; everything
  else is done, at the provider (already paid), parked or finished otherwise. A done
  shot whose request changed is ``changed``: the run re-renders it only if the user
  agrees (``--rerender-changed`` or the question), so the plan prices it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from runner.ledger import open_ledger
from runner.ledger.classify import KnownShot, SyncAction, classify, state_after_sync
from runner.ledger.queries import uploaded_digests
from runner.model import Manifest, ShotState
from runner.plan import TO_SUBMIT
from runner.sample import Sample, SampleSpec, select_sample

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
    # never the label of a manifest shot: the sync revives an abandoned one
    ShotState.ABANDONED: FAILED,
}


async def ledger_labels(
    manifest: Manifest, ledger_path: Path
) -> tuple[Mapping[str, str], int, frozenset[str]]:
    """``(label per shot id, micro-PTC spent so far, digests of images already
    uploaded)``; shots the ledger lacks are new."""
    async with await open_ledger(ledger_path, writer=False) as ledger:
        known = await ledger.known_shots()
        spent = await ledger.spent_uptc()
        uploaded = await uploaded_digests(ledger)
    labels: dict[str, str] = {}
    for shot in manifest.shots:
        entry = known.get(shot.shot_id)
        action = classify(shot.request_hash, entry)
        if action is SyncAction.NEW:
            continue  # unlabelled: to submit
        if action in (SyncAction.NEW_VERSION, SyncAction.RERENDER):
            labels[shot.shot_id] = CHANGED
        else:
            labels[shot.shot_id] = _LABEL_OF[state_after_sync(action, entry)]
    return labels, spent, uploaded


async def ledger_sample(manifest: Manifest, spec: SampleSpec, ledger_path: Path | None) -> Sample:
    """The sample ``pixrun run`` with the same options would pick, given the ledger at
    ``ledger_path`` (None: no ledger yet, every shot is new). Raises UsageError."""
    known: Mapping[str, KnownShot] = {}
    if ledger_path is not None:
        async with await open_ledger(ledger_path, writer=False) as ledger:
            known = await ledger.known_shots()
    return select_sample(manifest.shots, spec, known, name=manifest.name)
