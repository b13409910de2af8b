"""What people do to a batch between runs: re-queue, re-roll and resolve shots.

Invariants:
- Nothing here sends a generate request; ``resolve`` makes one free fetch.
- A re-queued ambiguous shot repeats its attempt (same trace id); a resolved task is
  checked (unknown, another shot's, another prompt or seed: refused, nothing written).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import (
    RateLimited,
    TaskNotFound,
    TransientError,
    UsageError,
)
from runner.ledger import open_ledger
from runner.model import ShotState
from runner.provider import Provider, TaskState
from runner.run.guard import check_identity, provider_identity
from runner.run.setup import RunOverrides, SimulatorSettings, provider_for, real_config

#: a re-roll's seeds are drawn from the range PixVerse accepts
SEED_MAX = 2_147_483_647


#: what a re-roll may start from: a finished shot, never one that may be at the provider
_REROLLABLE = (ShotState.DONE, ShotState.FAILED, ShotState.MODERATED)


@dataclass(frozen=True)
class Reroll:
    """A shot re-rolled by ``pixrun retry --new-seed``."""

    shot_id: str
    seed: int
    version: int
    #: what its re-render costs; None when the price is not published
    price_uptc: int | None


async def requeue_shots(
    ledger_path: Path,
    *,
    failed: bool,
    ambiguous: bool,
    shot_ids: list[str],
    extra_attempts: int,
    moderated: bool = False,
) -> tuple[int, int]:
    """Re-queue shots. Returns ``(moved, of which ambiguous)``."""
    async with await open_ledger(ledger_path, writer=True) as ledger:
        chosen: list[str] = list(shot_ids)
        if failed:
            chosen += await ledger.shot_ids_in([ShotState.FAILED])
        if moderated:
            chosen += await ledger.shot_ids_in([ShotState.MODERATED])
        parked = await ledger.shot_ids_in([ShotState.AMBIGUOUS])
        if ambiguous:
            chosen += parked
        for sid in shot_ids:
            if await ledger.get_shot(sid) is None:
                raise UsageError(f"no shot {sid!r} in the ledger {ledger_path}")
        unique = list(dict.fromkeys(chosen))
        moved = await ledger.requeue(
            unique, "re-queued by pixrun retry", extra_attempts=extra_attempts
        )
        return moved, len(set(unique).intersection(parked))


async def reroll_shots(ledger_path: Path, shot_ids: list[str]) -> list[Reroll]:
    """Give each shot a fresh random seed as a new version (the old file is kept);
    the next ``pixrun run`` renders it. All are checked before any is changed."""
    async with await open_ledger(ledger_path, writer=True) as ledger:
        rows = []
        for sid in dict.fromkeys(shot_ids):
            row = await ledger.get_shot(sid)
            if row is None:
                raise UsageError(f"no shot {sid!r} in the ledger {ledger_path}")
            if row.state not in _REROLLABLE:
                raise UsageError(
                    f"shot {sid} is {row.state.value}; only a done, failed or moderated shot "
                    "can be re-rolled",
                    hint="let 'pixrun run' finish it first (a parked shot: 'pixrun resolve' "
                    "or 'pixrun retry --ambiguous')",
                )
            if not await ledger.in_manifest(sid):
                raise UsageError(
                    f"shot {sid} is no longer in the manifest, so no run would render it",
                    hint="put it back in the manifest, then re-roll it",
                )
            rows.append(row)
        made = []
        for row in rows:
            seed = secrets.randbelow(SEED_MAX + 1)
            version = await ledger.reroll(row.shot_id, seed)
            made.append(Reroll(row.shot_id, seed, version, row.price_uptc))
        return made


async def resolve_shot(
    ledger_path: Path,
    shot_id: str,
    task_id: str,
    overrides: RunOverrides | None = None,
    *,
    simulate: SimulatorSettings | None = None,
) -> None:
    """Tie a shot to a task found on the provider's side, once the task is verified:
    no other shot of the ledger has it, the provider knows it (one free fetch), and
    what the answer says of its prompt and seed matches the shot's request."""
    task_id = task_id.strip()
    if not task_id:
        raise UsageError("the task id is empty")
    overrides = overrides or RunOverrides()
    config = None if simulate is not None else real_config(overrides)
    async with await open_ledger(ledger_path, writer=True) as ledger:
        # a rehearsal's shot is never tied to a real task, nor a real one to the
        # simulator's: the task is looked up where the ledger's work went
        await check_identity(ledger, provider_identity(config), switch_provider=False)
        row = await ledger.get_shot(shot_id)
        if row is None:
            raise UsageError(f"no shot {shot_id!r} in the ledger {ledger_path}")
        if row.state not in (ShotState.AMBIGUOUS, ShotState.PENDING, ShotState.FAILED):
            raise UsageError(
                f"shot {shot_id} is {row.state.value}; only a parked (ambiguous), pending or "
                "failed shot can be tied to a task id"
            )
        owner = await ledger.task_owner(task_id)
        if owner is not None and owner != shot_id:
            raise UsageError(
                f"task {task_id} already belongs to shot {owner} in this ledger",
                hint="check the task id: each task renders one shot",
            )
        # a rehearsal's tasks live in its simulator's state file beside the ledger
        async with provider_for(overrides, simulate, config, ledger_path) as provider:
            state = await _fetch_for_resolve(provider, task_id)
        mismatch = _request_mismatch(row.request, state)
        if mismatch:
            raise UsageError(
                f"task {task_id} is not shot {shot_id}'s: its {mismatch}; nothing was written",
                hint="find the task whose prompt and seed are this shot's",
            )
        await ledger.resolve(shot_id, task_id)


async def _fetch_for_resolve(provider: Provider, task_id: str) -> TaskState:
    try:
        state = await provider.fetch(task_id)
    except TaskNotFound as exc:
        raise UsageError(
            f"the provider does not know task {task_id}; nothing was written",
            hint="check the task id on the provider's side",
        ) from exc
    except (TransientError, RateLimited) as exc:
        raise UsageError(
            f"cannot check task {task_id} with the provider ({exc}); nothing was written",
            hint="try again once the provider answers",
        ) from exc
    if state.task_id != task_id:
        raise UsageError(
            f"asked about task {task_id}, the provider answered about task "
            f"{state.task_id}; nothing was written",
            hint="check the task id, and the fetch route (--provider-option fetch_path=...)",
        )
    return state


def _request_mismatch(request: Mapping[str, Any], state: TaskState) -> str | None:
    """What in the fetch answer contradicts the shot's request (None: nothing known
    does). Only what the answer carries is compared; a seed only if the request set one."""
    prompt = request.get("prompt")
    if state.prompt is not None and state.prompt != prompt:
        return f"prompt is {state.prompt!r}, the shot's is {prompt!r}"
    seed = request.get("seed")
    if isinstance(seed, int) and state.seed is not None and state.seed != seed:
        return f"seed is {state.seed}, the shot's is {seed}"
    return None
