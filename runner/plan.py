"""What a manifest will cost: shots grouped by what sets their price, totals, budget.

Invariants:
- Money is Decimal PTC. A shot without a known price is counted in ``unpriced``, never
  as zero; totals are sums of known prices only and say how many were left out.
- Groups are keyed by (mode, model, quality, duration, motion mode, unit price) and
  sorted the same way every time; all shots of a group cost the same.
- Extension point for the run capability: ``status_by_shot`` gives each shot a status
  label (default :data:`TO_SUBMIT`); every group counts shots per status, and only shots
  whose status is in ``spend_statuses`` count towards ``remaining_ptc``, which is what
  the budget is checked against. With no statuses, every shot is still to submit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from runner.errors import BudgetExceeded
from runner.manifest.contract import (
    DEFAULT_DURATION_S,
    DEFAULT_MOTION_MODE,
    default_rules,
)
from runner.manifest.images import UPLOAD_MAX_BYTES, local_image_digests
from runner.model import Manifest, Mode, duration_seconds
from runner.money import ptc_text
from runner.pricing import manifest_price_table, unpriced_under_budget

#: the status of a shot nothing is known about yet: it will be submitted (and paid for)
TO_SUBMIT = "to_submit"
DEFAULT_SPEND_STATUSES: frozenset[str] = frozenset({TO_SUBMIT})

CSV_COLUMNS: tuple[str, ...] = (
    "mode",
    "model",
    "quality",
    "duration_s",
    "motion_mode",
    "count",
    "unit_price_ptc",
    "subtotal_ptc",
    "remaining_ptc",
)

_MODE_ORDER = {m: i for i, m in enumerate(Mode)}


def _order(values: tuple[str, ...], value: str) -> tuple[int, str]:
    return (values.index(value) if value in values else len(values), value)


@dataclass(frozen=True)
class PlanGroup:
    """Shots that cost the same for the same reasons."""

    mode: Mode
    model: str
    quality: str
    duration_s: int
    motion_mode: str
    count: int
    #: None when the price table cannot price this combination
    unit_price_ptc: Decimal | None
    #: shots per status label (see the module docstring)
    by_status: Mapping[str, int] = field(default_factory=dict)
    #: shots of this group still to be paid for
    remaining_count: int = 0

    @property
    def subtotal_ptc(self) -> Decimal | None:
        return None if self.unit_price_ptc is None else self.unit_price_ptc * self.count

    @property
    def remaining_ptc(self) -> Decimal | None:
        if self.unit_price_ptc is None:
            return None
        return self.unit_price_ptc * self.remaining_count

    def sort_key(self) -> tuple[Any, ...]:
        # the packaged rules' order; values only a user's rules know sort after, by name
        rules = default_rules()
        return (
            _MODE_ORDER[self.mode],
            _order(rules.all_models, self.model),
            _order(rules.qualities, self.quality),
            self.duration_s,
            _order(rules.motion_modes, self.motion_mode),
            self.unit_price_ptc is None,
            self.unit_price_ptc or 0,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "model": self.model,
            "quality": self.quality,
            "duration_s": self.duration_s,
            "motion_mode": self.motion_mode,
            "count": self.count,
            "unit_price_ptc": ptc_text(self.unit_price_ptc),
            "subtotal_ptc": ptc_text(self.subtotal_ptc),
            "remaining_count": self.remaining_count,
            "remaining_ptc": ptc_text(self.remaining_ptc),
            "by_status": dict(self.by_status),
        }


@dataclass(frozen=True)
class Plan:
    manifest_name: str
    manifest_path: str
    groups: tuple[PlanGroup, ...]
    #: the cap the plan is checked against (--max-cost, else run.budget_ptc), or None
    budget_ptc: Decimal | None
    #: status labels in the order they were first seen (TO_SUBMIT first)
    statuses: tuple[str, ...] = (TO_SUBMIT,)
    currency: str = "PTC"
    #: already charged by earlier runs (from the ledger); counts against the budget
    spent_ptc: Decimal = Decimal(0)
    #: distinct local images the shots to submit still need uploaded (not cached in the
    #: ledger), and what one upload costs (None: unknown)
    uploads_to_make: int = 0
    upload_unit_ptc: Decimal | None = None

    @property
    def uploads_ptc(self) -> Decimal:
        return self.uploads_to_make * (self.upload_unit_ptc or Decimal(0))

    @property
    def shot_count(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def total_ptc(self) -> Decimal:
        """Sum of the known prices of every shot."""
        return sum((g.subtotal_ptc for g in self.groups if g.subtotal_ptc is not None), Decimal(0))

    @property
    def unpriced_count(self) -> int:
        return sum(g.count for g in self.groups if g.unit_price_ptc is None)

    @property
    def remaining_ptc(self) -> Decimal:
        """Known cost of the shots (and uploads) still to be paid for (what the budget
        must cover)."""
        shots = sum(
            (g.remaining_ptc for g in self.groups if g.remaining_ptc is not None), Decimal(0)
        )
        return shots + self.uploads_ptc

    @property
    def remaining_count(self) -> int:
        return sum(g.remaining_count for g in self.groups)

    @property
    def remaining_unpriced(self) -> int:
        return sum(g.remaining_count for g in self.groups if g.unit_price_ptc is None)

    @property
    def fits(self) -> bool | None:
        """None without a budget; else whether the known remaining cost is within it."""
        if self.budget_ptc is None:
            return None
        return self.spent_ptc + self.remaining_ptc <= self.budget_ptc

    @property
    def over_by_ptc(self) -> Decimal | None:
        if self.budget_ptc is None or self.fits:
            return None
        return self.spent_ptc + self.remaining_ptc - self.budget_ptc

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": {"name": self.manifest_name, "path": self.manifest_path},
            "currency": self.currency,
            "groups": [g.to_dict() for g in self.groups],
            "statuses": list(self.statuses),
            "shot_count": self.shot_count,
            "total_ptc": ptc_text(self.total_ptc),
            "unpriced_count": self.unpriced_count,
            "remaining_count": self.remaining_count,
            "remaining_ptc": ptc_text(self.remaining_ptc),
            "remaining_unpriced": self.remaining_unpriced,
            "spent_ptc": ptc_text(self.spent_ptc),
            "budget_ptc": ptc_text(self.budget_ptc),
            "fits": self.fits,
            "over_by_ptc": ptc_text(self.over_by_ptc),
            "uploads": {
                "count": self.uploads_to_make,
                "unit_ptc": ptc_text(self.upload_unit_ptc),
                "subtotal_ptc": ptc_text(self.uploads_ptc),
            },
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per group for CSV: :data:`CSV_COLUMNS`, then one per status."""
        out = []
        for g in self.groups:
            d = g.to_dict()
            row = {key: d[key] if d[key] is not None else "" for key in CSV_COLUMNS}
            if self.statuses != (TO_SUBMIT,):
                row.update({status: g.by_status.get(status, 0) for status in self.statuses})
            out.append(row)
        return out

    def csv_columns(self) -> list[str]:
        extra = [] if self.statuses == (TO_SUBMIT,) else list(self.statuses)
        return [*CSV_COLUMNS, *extra]


def check_plan_budget(plan: Plan) -> None:
    """BudgetExceeded where ``pixrun run`` would refuse to start for money reasons."""
    if plan.budget_ptc is not None and plan.remaining_unpriced:
        raise unpriced_under_budget(plan.remaining_unpriced)
    if plan.fits is False:
        raise BudgetExceeded(
            f"the plan costs {ptc_text(plan.remaining_ptc)} PTC, over the budget of "
            f"{ptc_text(plan.budget_ptc)} PTC by {ptc_text(plan.over_by_ptc)} PTC",
            hint="raise run.budget_ptc or --max-cost, or plan fewer or cheaper shots",
        )


def build_plan(
    manifest: Manifest,
    *,
    max_cost_ptc: Decimal | None = None,
    status_by_shot: Mapping[str, str] | None = None,
    spend_statuses: Collection[str] = DEFAULT_SPEND_STATUSES,
    spent_ptc: Decimal = Decimal(0),
    uploaded: Collection[str] = (),
) -> Plan:
    """Group and price the manifest's shots.

    ``max_cost_ptc`` overrides ``run.budget_ptc``. ``status_by_shot`` (shot id -> label)
    and ``spend_statuses`` let a caller that knows what is already done plan only what
    remains; shots missing from the mapping are :data:`TO_SUBMIT`.
    """
    counts: dict[tuple[Any, ...], dict[str, int]] = {}
    statuses: dict[str, None] = {TO_SUBMIT: None}
    for shot in manifest.shots:
        request = shot.request
        seconds = duration_seconds(request.get("duration", DEFAULT_DURATION_S))
        key = (
            shot.mode,
            str(request.get("model")),
            str(request.get("quality")),
            seconds if seconds is not None else 0,
            str(request.get("motion_mode", DEFAULT_MOTION_MODE)),
            shot.price_ptc,
        )
        status = status_by_shot.get(shot.shot_id, TO_SUBMIT) if status_by_shot else TO_SUBMIT
        per_status = counts.get(key)
        if per_status is None:
            per_status = counts[key] = {}
        per_status[status] = per_status.get(status, 0) + 1
        if status not in statuses:
            statuses[status] = None
    groups = [
        PlanGroup(
            mode=mode,
            model=model,
            quality=quality,
            duration_s=duration_s,
            motion_mode=motion_mode,
            count=sum(per_status.values()),
            unit_price_ptc=price,
            by_status=per_status,
            remaining_count=sum(n for s, n in per_status.items() if s in spend_statuses),
        )
        for (mode, model, quality, duration_s, motion_mode, price), per_status in counts.items()
    ]
    groups.sort(key=PlanGroup.sort_key)
    budget = max_cost_ptc if max_cost_ptc is not None else manifest.run.budget_ptc
    # local images go once each through the provider's upload (image_encoding=upload):
    # those the ledger has not uploaded yet, for the shots still to be paid for
    to_pay = (
        s.request
        for s in manifest.shots
        if (status_by_shot.get(s.shot_id, TO_SUBMIT) if status_by_shot else TO_SUBMIT)
        in spend_statuses
    )
    digests = local_image_digests(to_pay, UPLOAD_MAX_BYTES)
    return Plan(
        manifest_name=manifest.name,
        manifest_path=str(manifest.path),
        groups=tuple(groups),
        budget_ptc=budget,
        statuses=tuple(statuses),
        spent_ptc=spent_ptc,
        uploads_to_make=len(set(digests) - set(uploaded)),
        upload_unit_ptc=manifest_price_table(manifest).upload_ptc,
    )
