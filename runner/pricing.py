"""The price of a generation, from 302.AI's published rule kept in an editable data file.

price = ``base_ptc`` x one multiplier per parameter listed in the table's
``multipliers`` (quality, duration, motion_mode by default).

Invariants:
- Money is :class:`~decimal.Decimal` in PTC, or ``int`` micro-PTC (uptc) where it is
  stored; never a float.
- An unknown price is ``None``, never zero: a multiplier that is ``null`` in the file,
  a parameter value the table does not list, or a missing parameter without a default.
- Durations are priced by seconds, so fusion's "5s"/"8s" and 5/8 cost the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from runner.datafiles import parse_json, read_user_file
from runner.errors import BudgetExceeded, UsageError
from runner.model import Manifest, duration_seconds
from runner.text import plural


@dataclass(frozen=True)
class PriceTable:
    """A loaded price rule. ``multipliers[param][value]`` is None when unknown."""

    base_ptc: Decimal
    multipliers: Mapping[str, Mapping[str, Decimal | None]]
    #: the value assumed for a parameter the request leaves out
    defaults: Mapping[str, str]
    #: where the table came from, for messages
    source: str
    currency: str = "PTC"
    #: what one upload of a local image costs ("upload_ptc"); None when the table does not say
    upload_ptc: Decimal | None = None
    _memo: dict[tuple[str | None, ...], Decimal | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(self.multipliers)


def price_key(request: Mapping[str, Any], table: PriceTable) -> tuple[str | None, ...]:
    """The values of the priced parameters, normalised (durations in seconds)."""
    key: list[str | None] = []
    for param in table.multipliers:
        value = request.get(param)
        if value is None:
            key.append(table.defaults.get(param))
        elif param == "duration":
            seconds = duration_seconds(value)
            key.append(None if seconds is None else str(seconds))
        else:
            key.append(str(value))
    return tuple(key)


def price_of(request: Mapping[str, Any], table: PriceTable | None = None) -> Decimal | None:
    """What one generate request costs in PTC, or None when the table cannot say."""
    table = table or default_price_table()
    key = price_key(request, table)
    try:
        return table._memo[key]
    except KeyError:
        pass
    price: Decimal | None = table.base_ptc
    for param, value in zip(table.multipliers, key, strict=True):
        factor = table.multipliers[param].get(value) if value is not None else None
        if factor is None or price is None:
            price = None
            break
        price *= factor
    table._memo[key] = price
    return price


@cache
def default_price_table() -> PriceTable:
    """The table shipped with pixrun (runner/data/prices.json)."""
    text = resources.files("runner.data").joinpath("prices.json").read_text(encoding="utf-8")
    return parse_price_table(text, source="the packaged price table")


def load_price_table(path: Path | None = None) -> PriceTable:
    """Read a price table file; ``None`` gives the packaged default."""
    if path is None:
        return default_price_table()
    text = read_user_file(path, what="the price table", option="--prices")
    return parse_price_table(text, source=str(path))


def parse_price_table(text: str, *, source: str) -> PriceTable:
    """A price table from its JSON text; :class:`UsageError` says what is wrong."""
    data = parse_json(text, lambda problem: _bad(source, problem))
    if not isinstance(data, dict):
        raise _bad(source, "the top level must be a JSON object")
    base = _decimal(data.get("base_ptc"), source, "base_ptc")
    if base is None:
        raise _bad(source, 'base_ptc is required (e.g. "0.1")')
    raw_mult = data.get("multipliers")
    if not isinstance(raw_mult, dict):
        raise _bad(source, 'multipliers must be an object like {"quality": {"360p": 1}}')
    multipliers: dict[str, dict[str, Decimal | None]] = {}
    for param, table in raw_mult.items():
        if not isinstance(table, dict):
            raise _bad(source, f"multipliers.{param} must be an object of value -> multiplier")
        multipliers[param] = {
            str(value): _decimal(factor, source, f"multipliers.{param}.{value}")
            for value, factor in table.items()
        }
    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise _bad(source, "defaults must be an object of parameter -> value")
    currency = data.get("currency", "PTC")
    return PriceTable(
        base_ptc=base,
        multipliers=multipliers,
        defaults={str(k): str(v) for k, v in raw_defaults.items()},
        source=source,
        currency=str(currency),
        upload_ptc=_decimal(data.get("upload_ptc"), source, "upload_ptc"),
    )


def _decimal(value: Any, source: str, where: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad(source, f"{where} must be a number, a numeric string or null")
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise _bad(source, f"{where}: {value!r} is not a number") from exc
    if not number.is_finite() or number < 0:
        raise _bad(source, f"{where}: {value!r} must be a finite number >= 0")
    return number


def _bad(source: str, what: str) -> UsageError:
    return UsageError(
        f"the price table {source} is not usable: {what}",
        hint="fix the file, or leave out --prices to use the packaged table",
    )


def manifest_price_table(manifest: Manifest) -> PriceTable:
    """The manifest's price table (``--prices``), or the built-in one."""
    table = manifest.price_table
    return table if isinstance(table, PriceTable) else default_price_table()


def unpriced_under_budget(count: int) -> BudgetExceeded:
    """The refusal when a budget is set and ``count`` shots to submit have no price:
    ``pixrun plan`` and ``pixrun run`` say it in the same words."""
    return BudgetExceeded(
        f"{plural(count, 'shot')} to submit "
        f"{'has' if count == 1 else 'have'} no published price, so the budget "
        "cannot be checked",
        hint="add their price to the price table, or drop the budget (run.budget_ptc / --max-cost)",
    )
