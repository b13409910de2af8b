"""Money, in one place.

Invariants:
- Money is stored and added as integer micro-PTC (``uptc``); it is :class:`Decimal` PTC
  only at the edges (price tables, what people type and read); never a float.
- One rounding rule: PTC to micro-PTC rounds half-even at the sixth decimal.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

UPTC_PER_PTC = 1_000_000
_UPTC = Decimal(UPTC_PER_PTC)


def to_uptc(ptc: Decimal) -> int:
    """PTC to integer micro-PTC (rounded half-even at the sixth decimal)."""
    return int((ptc * _UPTC).to_integral_value())


def to_uptc_or_none(ptc: Decimal | None) -> int | None:
    return None if ptc is None else to_uptc(ptc)


def from_uptc(uptc: int) -> Decimal:
    """Integer micro-PTC to PTC, exactly."""
    return Decimal(uptc) / _UPTC


def ptc_text(value: Decimal | None) -> str | None:
    """Plain decimal text (no exponent, no trailing zeros); None stays None."""
    if value is None:
        return None
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def uptc_text(uptc: int | None) -> str | None:
    """Micro-PTC as plain PTC text: 100000 -> "0.1"."""
    return None if uptc is None else ptc_text(from_uptc(uptc))


def format_ptc(uptc: int | None) -> str:
    """Micro-PTC as PTC with 2 to 4 decimals, for tables: 1500000 -> "1.50"."""
    if uptc is None:
        return "?"
    value = from_uptc(uptc).quantize(Decimal("0.0001"), ROUND_HALF_UP)
    text = f"{value:.4f}"
    while text.endswith("0") and len(text.split(".")[1]) > 2:
        text = text[:-1]
    return text
