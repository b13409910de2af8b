"""What a run is about to spend, checked against the budget and put to the person
before anything is written.

Invariants:
- The preview is computed from the manifest and the ledger without writing either.
- The budget is checked before the question is asked, and again with the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from runner.errors import (
    BudgetExceeded,
)
from runner.ledger import Ledger
from runner.ledger.classify import KnownShot, SyncAction, classify, state_after_sync
from runner.model import Manifest, ShotState
from runner.money import to_uptc_or_none, uptc_text
from runner.pricing import unpriced_under_budget
from runner.text import plural


@dataclass(frozen=True)
class RunPreview:
    """What a run is about to spend, for the person to agree to (on a terminal)."""

    name: str
    simulated: bool
    #: shots the run will submit (and pay for), and what they cost (micro-PTC)
    to_submit: int
    to_submit_uptc: int
    #: of those, shots the price table cannot price (the budget cannot be checked)
    unpriced: int
    #: done shots whose request changed: re-rendering them pays again
    changed_done: tuple[str, ...]
    changed_done_uptc: int
    spent_uptc: int
    budget_uptc: int | None
    #: a sample run (--only/--limit): what it chose (the figures above are its own)
    sample: str | None = None


@dataclass(frozen=True)
class Decision:
    """The person's answer to a :class:`RunPreview`."""

    go: bool
    #: re-render (and pay again for) the done shots whose request changed
    rerender_changed: bool


#: asks, on a terminal, whether to go ahead and whether to re-render changed done shots
Confirm = Callable[[RunPreview], Decision]


async def preview_run(
    ledger: Ledger,
    manifest: Manifest,
    known: Mapping[str, KnownShot],
    budget_uptc: int | None,
    simulated: bool,
) -> RunPreview:
    """What syncing the manifest and running would submit, before anything is written;
    ``known`` is :meth:`Ledger.known_shots`, which the sync then works from too."""
    to_submit = to_submit_uptc = unpriced = 0
    changed_done: list[str] = []
    changed_done_uptc = 0
    for shot in manifest.shots:
        price = to_uptc_or_none(shot.price_ptc)
        entry = known.get(shot.shot_id)
        action = classify(shot.request_hash, entry)
        if action is SyncAction.RERENDER:
            changed_done.append(shot.shot_id)
            changed_done_uptc += price or 0
            continue
        if state_after_sync(action, entry) == ShotState.PENDING:
            to_submit += 1
            to_submit_uptc += price or 0
            unpriced += price is None
    return RunPreview(
        name=manifest.name,
        simulated=simulated,
        to_submit=to_submit,
        to_submit_uptc=to_submit_uptc,
        unpriced=unpriced,
        changed_done=tuple(changed_done),
        changed_done_uptc=changed_done_uptc,
        spent_uptc=await ledger.spent_uptc(),
        budget_uptc=budget_uptc,
    )


def check_budget(preview: RunPreview, *, rerender: bool) -> None:
    budget_uptc = preview.budget_uptc
    if budget_uptc is None:
        return
    if preview.unpriced:
        raise unpriced_under_budget(preview.unpriced)
    spent = preview.spent_uptc
    remaining = preview.to_submit_uptc + (preview.changed_done_uptc if rerender else 0)
    count = preview.to_submit + (len(preview.changed_done) if rerender else 0)
    if spent + remaining > budget_uptc:
        raise BudgetExceeded(
            f"the plan does not fit the budget: {uptc_text(spent)} PTC spent + "
            f"{uptc_text(remaining)} PTC for {plural(count, 'shot')} to submit = "
            f"{uptc_text(spent + remaining)} PTC > cap {uptc_text(budget_uptc)} PTC",
            hint="raise the cap (run.budget_ptc or --max-cost) or remove shots",
        )
