"""Plans: groups, totals with unknown prices, budgets, and the per-status extension."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from runner.manifest import load_manifest
from runner.model import Mode
from runner.plan import CSV_COLUMNS, TO_SUBMIT, Plan, build_plan

REPO = Path(__file__).parent.parent

MIXED = """version: 1
run: {budget_ptc: 1}
defaults: {model: v4.5, quality: 540p}
shots:
  - {id: a, prompt: p, count: 3}
  - {id: b, prompt: p, quality: 720p, duration: 8}
  - {id: c, prompt: p, duration: 10, count: 2}
  - {id: d, prompt: p, motion_mode: fast}
"""


def plan_of(tmp_path: Path, text: str = MIXED, **kw: Any) -> Plan:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return build_plan(load_manifest(path), **kw)


def test_groups_counts_and_total(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    rows = [
        (g.quality, g.duration_s, g.motion_mode, g.count, g.unit_price_ptc, g.subtotal_ptc)
        for g in plan.groups
    ]
    assert rows == [
        ("540p", 5, "normal", 3, Decimal("0.15"), Decimal("0.45")),
        ("540p", 5, "fast", 1, Decimal("0.30"), Decimal("0.30")),
        ("540p", 10, "normal", 2, None, None),
        ("720p", 8, "normal", 1, Decimal("0.4"), Decimal("0.4")),
    ]
    assert plan.shot_count == 7
    assert plan.total_ptc == Decimal("1.15")
    assert plan.unpriced_count == 2


def test_budget_fits_or_says_by_how_much(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    assert plan.budget_ptc == Decimal("1")
    assert plan.fits is False and plan.over_by_ptc == Decimal("0.15")
    roomy = plan_of(tmp_path, max_cost_ptc=Decimal("2"))
    assert roomy.fits is True and roomy.over_by_ptc is None
    none = plan_of(tmp_path, MIXED.replace("run: {budget_ptc: 1}\n", ""))
    assert none.fits is None


def test_json_and_csv_shapes(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["total_ptc"] == "1.15" and data["unpriced_count"] == 2
    assert data["fits"] is False and data["over_by_ptc"] == "0.15"
    assert data["groups"][2]["unit_price_ptc"] is None
    assert data["groups"][0]["unit_price_ptc"] == "0.15"
    rows = plan.rows()
    assert plan.csv_columns() == list(CSV_COLUMNS)
    assert rows[2]["unit_price_ptc"] == "" and rows[2]["count"] == 2


def test_group_order_is_mode_then_model_then_quality(tmp_path: Path) -> None:
    plan = build_plan(load_manifest(REPO / "manifests" / "example.yaml"))
    keys = [(g.mode, g.model, g.quality) for g in plan.groups]
    assert keys == sorted(keys, key=lambda k: (list(Mode).index(k[0]), k[1], k[2]))
    assert plan.shot_count == len(load_manifest(REPO / "manifests" / "example.yaml").shots)


def test_status_extension_plans_only_what_remains(tmp_path: Path) -> None:
    statuses = {"a.t1": "done", "a.t2": "in_flight", "d": "changed"}
    plan = plan_of(
        tmp_path,
        status_by_shot=statuses,
        spend_statuses={TO_SUBMIT, "changed"},
    )
    assert plan.statuses == (TO_SUBMIT, "done", "in_flight", "changed")
    first = plan.groups[0]
    assert dict(first.by_status) == {"done": 1, "in_flight": 1, TO_SUBMIT: 1}
    assert first.remaining_count == 1 and first.remaining_ptc == Decimal("0.15")
    # 0.15 (a.t3) + 0.30 (d, changed) + 0.4 (b); c is unpriced
    assert plan.remaining_ptc == Decimal("0.85") and plan.remaining_unpriced == 2
    assert plan.fits is True
    assert plan.csv_columns()[-4:] == [TO_SUBMIT, "done", "in_flight", "changed"]
