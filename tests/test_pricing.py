"""302.AI's price rule from the editable data file; unknown is None, never zero."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from runner.errors import UsageError
from runner.money import from_uptc, to_uptc
from runner.pricing import load_price_table, price_of


@pytest.mark.parametrize(
    ("quality", "duration", "motion", "expected"),
    [
        ("360p", 5, "normal", "0.1"),
        ("540p", 5, "normal", "0.15"),
        ("720p", 5, "normal", "0.2"),
        ("1080p", 5, "normal", "0.4"),
        ("720p", 8, "normal", "0.4"),  # the published example
        ("360p", 8, "fast", "0.4"),
        ("540p", 8, "fast", "0.6"),
        ("540p", "5s", "fast", "0.3"),  # fusion spelling
        ("720p", "8s", "normal", "0.4"),
    ],
)
def test_published_rule(quality: str, duration: object, motion: str, expected: str) -> None:
    price = price_of({"quality": quality, "duration": duration, "motion_mode": motion})
    assert isinstance(price, Decimal)
    assert price == Decimal(expected)


def test_defaults_for_left_out_parameters() -> None:
    assert price_of({"quality": "540p"}) == Decimal("0.15")


@pytest.mark.parametrize(
    "request_",
    [
        {"quality": "360p", "duration": 10},
        {"quality": "360p", "duration": "10s"},
        {"duration": 5},
        {"quality": "4k", "duration": 5},
        {"quality": "360p", "motion_mode": "turbo"},
        {"quality": "360p", "duration": "soon"},
    ],
)
def test_unknown_prices_are_none_not_zero(request_: dict[str, object]) -> None:
    assert price_of(request_) is None


def test_micro_ptc_round_trip() -> None:
    assert to_uptc(Decimal("0.15")) == 150_000
    assert to_uptc(Decimal("12.5")) == 12_500_000
    assert from_uptc(150_000) == Decimal("0.15")
    for uptc in (0, 1, 99_999, 400_000, 10**12):
        assert to_uptc(from_uptc(uptc)) == uptc


def test_edited_table_prices_ten_seconds(tmp_path: Path) -> None:
    data = json.loads(load_price_table_text())
    data["multipliers"]["duration"]["10"] = "3"
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    table = load_price_table(path)
    assert price_of({"quality": "720p", "duration": 10}, table) == Decimal("0.6")
    assert price_of({"quality": "720p", "duration": 10}) is None  # the default is untouched


def load_price_table_text() -> str:
    from importlib import resources

    return resources.files("runner.data").joinpath("prices.json").read_text()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"multipliers": {}}', "base_ptc is required"),
        ('{"base_ptc": "x", "multipliers": {}}', "not a number"),
        ('{"base_ptc": "0.1", "multipliers": []}', "multipliers must be an object"),
        ('{"base_ptc": "0.1", "multipliers": {"quality": 2}}', "multipliers.quality"),
        ('{"base_ptc": "0.1", "multipliers": {"quality": {"360p": -1}}}', ">= 0"),
        ('{"base_ptc": "0.1", "multipliers": {"quality": {"360p": true}}}', "must be a number"),
    ],
)
def test_bad_tables_are_usage_errors(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(UsageError) as info:
        load_price_table(path)
    assert words in info.value.message and str(path) in info.value.message
    assert info.value.hint


def test_missing_table_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the price table"):
        load_price_table(tmp_path / "none.json")
