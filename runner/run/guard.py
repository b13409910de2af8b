"""Whose a ledger is: the provider its work went to, and the batch it records.

Invariants:
- A ledger's work goes to one provider: a rehearsal's ledger never meets the real
  provider, a real one never takes a rehearsal, and a real one stays with its base URL,
  unless the person says so (``--switch-provider``).
- A ledger that records another batch (another manifest name) is refused unless
  ``--force``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.errors import LedgerOfAnotherBatch, UsageError
from runner.ledger import META_PROVIDER, Ledger
from runner.model import Manifest
from runner.provider import ProviderConfig

#: a ledger's first run with this many done shots whose videos are 64x64 (the
#: simulator's clips) and no recorded provider was a rehearsal (pixrun before 0.2)
SIM_CLIP_PX = 64


def provider_identity(config: ProviderConfig | None) -> dict[str, Any]:
    """Who a ledger's work goes to: the simulator (any port) or a real base URL."""
    if config is None:
        return {"simulated": True, "base_url": None, "dialect": None}
    return {"simulated": False, "base_url": config.base_url, "dialect": None}


async def check_identity(
    ledger: Ledger, identity: dict[str, Any], *, switch_provider: bool
) -> dict[str, Any]:
    """A ledger's work goes to one provider: a rehearsal's never meets the real one.
    The identity to record: this run's, keeping the dialect a same provider answered in."""
    meta = await ledger.get_meta()
    raw = meta.get(META_PROVIDER)
    if raw is None:
        if meta.get("name") is None:
            return identity  # a new ledger: this run's provider becomes its own
        recorded = {"simulated": await ledger.looks_simulated(SIM_CLIP_PX), "base_url": None}
        if not recorded["simulated"]:
            return identity  # an earlier pixrun's real ledger: it stays with this provider
    else:
        try:
            recorded = json.loads(raw)
        except ValueError:
            recorded = {}
    same = bool(recorded.get("simulated")) == identity["simulated"] and (
        identity["simulated"] or recorded.get("base_url") in (None, identity["base_url"])
    )
    if same:
        return {**identity, "dialect": recorded.get("dialect")}
    if switch_provider:
        return identity
    if recorded.get("simulated"):
        raise UsageError(
            f"the ledger {ledger.path} holds a rehearsal (--simulate): its shots were "
            "rendered by the simulator, and running it against the real provider would "
            "deliver the simulator's clips or pay twice",
            hint="resume the rehearsal with --simulate; a real run uses its own ledger "
            "(drop --ledger), or --switch-provider to take this ledger over on purpose",
        )
    if identity["simulated"]:
        raise UsageError(
            f"the ledger {ledger.path} holds real work (sent to {recorded.get('base_url')}); "
            "a rehearsal must not write into it",
            hint="drop --ledger: --simulate uses its own ledger (NAME.sim.ledger.sqlite)",
        )
    raise UsageError(
        f"the ledger {ledger.path} holds work sent to {recorded.get('base_url')}, not to "
        f"{identity['base_url']}: that provider does not know its tasks",
        hint="use the same --base-url / PIXRUN_BASE_URL, another ledger, or "
        "--switch-provider (tasks in flight at the old provider will be parked)",
    )


def check_ledger_owner(
    meta: Mapping[str, str], manifest: Manifest, ledger_path: Path, *, force: bool
) -> str | None:
    """Refuse a ledger that records another batch (its ``meta`` names another manifest
    name) unless ``force``; returns a warning when only the manifest's path moved."""
    name, where = meta.get("name"), meta.get("manifest")
    if name is not None and name != manifest.name and not force:
        raise LedgerOfAnotherBatch(
            f"the ledger {ledger_path} belongs to the batch {name!r} ({where}), not to "
            f"{manifest.name!r} ({manifest.path})",
            hint="point --ledger at this batch's own ledger (or leave it out), or pass "
            "--force to take this ledger over for this manifest",
        )
    if name == manifest.name and where and Path(where).resolve() != manifest.path.resolve():
        return (
            f"the ledger {ledger_path} was last used with the manifest at {where}; "
            f"continuing with {manifest.path} (same batch name {name!r})"
        )
    return None
