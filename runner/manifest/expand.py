"""From one manifest shot entry to the concrete shots it stands for.

Merges defaults, infers the mode, normalises values to the provider's wire form,
expands ``vary`` (cross product) and ``count`` (takes), gives every result a stable id
and checks the contract's combination rules on each.

Invariants:
- Deterministic: the same manifest text always yields the same ids, seeds and requests,
  in the same order (no clocks, no randomness, no dependence on absolute paths).
- Seeds of takes come from the shot's base id and the take number, so variations of one
  shot share their seeds take by take (seeds x qualities compare like with like), and
  editing a prompt does not reshuffle the seeds of a shot that has an explicit id.
- Problems are reported into the read's :class:`~runner.manifest.issues.Issues` with
  the manifest path of the value to blame; nothing here raises for bad input.

Size: about 460 lines, kept whole because merging defaults, inferring the mode,
converting to wire form and deriving ids all read one :class:`Expander`'s per-manifest
state; the id and request checks it leads to live in finish.py and request_check.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.manifest.contract import (
    DEFAULT_DURATION_S,
    DEFAULT_MOTION_MODE,
    FIELDS_BY_NAME,
    INTEGER_AXES,
    MODE_FIELD,
    REQUIRED_FIELDS,
    SEED_MAX,
    Kind,
    fields_for,
    wire_duration,
)
from runner.manifest.request_check import check_combination, not_in_mode
from runner.manifest.rules import Rules
from runner.manifest.yaml_common import Path_
from runner.model import Mode, duration_seconds

if TYPE_CHECKING:
    from runner.manifest.issues import Issues


#: any id, explicit or made here: file-name safe, never "..", never ending in "."
SAFE_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?")
#: a single entry may not stand for more shots than this (count x vary product)
MAX_EXPANSION = 10_000
#: the manifest requires these besides the mode's own image/fusion; quality sets the price
REQUIRED = (*REQUIRED_FIELDS, "quality")

_LABEL_MAX = 24
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._]+")
_DOTS = re.compile(r"\.{2,}")
_WORD = re.compile(r"[a-z0-9]+")


#: resolve_image(text as written, where it was written) -> the request's image reference
ResolveImage = Callable[[str, Path_], str]


@dataclass(frozen=True)
class Draft:
    """A concrete shot before hashing, pricing and naming its output."""

    shot_id: str
    mode: Mode
    #: wire form; local images as file:// URIs
    request: dict[str, Any]
    take: int
    #: position of the entry in the manifest's shots list
    index: int
    max_attempts: int
    #: the id was derived from the parameters (so equal ids mean identical shots)
    derived: bool


@dataclass(frozen=True)
class _Variant:
    suffix: str
    overrides: dict[str, Any]
    #: field -> where its value was written (inside vary)
    origins: dict[str, Path_]


class Expander:
    """Expands shot entries against one manifest's defaults."""

    def __init__(
        self,
        defaults: Mapping[str, Any],
        *,
        run_max_attempts: int,
        resolve_image: ResolveImage,
        relative_image: Callable[[str], str],
        issues: Issues,
        bad_defaults: frozenset[str] = frozenset(),
        rules: Rules,
    ) -> None:
        self._rules = rules
        self._report = issues.report
        self._bad_defaults = bad_defaults
        self._resolve_image = resolve_image
        self._relative_image = relative_image
        self._run_max_attempts = run_max_attempts
        self._defaults = defaults
        self._default_fields: dict[Mode, dict[str, Any]] = {}
        for mode in Mode:
            accepted = fields_for(mode)
            self._default_fields[mode] = {
                name: self._normalise(name, value, ("defaults", name))
                for name, value in defaults.items()
                if name in accepted
            }
        raw_vary = defaults.get("vary")
        self._default_vary: dict[str, Any] = raw_vary if isinstance(raw_vary, dict) else {}

    # ---- values -------------------------------------------------------------------

    def _normalise(self, name: str, value: Any, where: Path_) -> Any:
        """The wire spelling of a shape-checked manifest value (duration: seconds)."""
        kind = _KINDS[name]
        if kind in _AS_WRITTEN:
            return value
        if kind is Kind.NUMBER:
            self._finite(value, where)
            return value
        if kind is Kind.MOTION_SCALE:
            self._finite(value, where)
            # the shape check lets 1.0 through as a whole number; the wire wants 1
            return {k: int(v) if k in INTEGER_AXES else v for k, v in value.items()}
        if kind is Kind.DURATION:
            return duration_seconds(value)
        if kind is Kind.SWITCH or kind is Kind.INT:
            return int(value)
        if kind is Kind.IMAGE:
            return self._resolve_image(value, where)
        if kind is Kind.IMAGES:
            return [self._resolve_image(item, (*where, i)) for i, item in enumerate(value)]
        return value

    def _finite(self, value: Any, where: Path_) -> None:
        """JSON has no NaN or infinity: the provider could not be sent them."""
        if isinstance(value, dict):
            for key, item in value.items():
                self._finite(item, (*where, key))
        elif isinstance(value, float) and not math.isfinite(value):
            self._report(where, f"{value} is not a finite number", "write an ordinary number")

    # ---- one entry ----------------------------------------------------------------

    def _mode(self, own: Mapping[str, Any]) -> Mode:
        # fusion wins over image: image is optional in fusion mode (API.md)
        for source in (own, self._defaults):
            explicit = source.get("mode")
            if isinstance(explicit, str):
                return Mode(explicit)
            if "fusion" in source:
                return Mode.FUSION
            if "image" in source:
                return Mode.IMAGE
        return Mode.TEXT

    def expand(self, index: int, own: Mapping[str, Any], bad: frozenset[str]) -> list[Draft]:
        """The shots of entry ``index``; ``bad`` names keys whose values failed the shape
        check (already reported, left out here, still count as present)."""
        mode = self._mode(own)
        accepted = fields_for(mode)
        request = dict(self._default_fields[mode])
        where = ("shots", index)
        for name, value in own.items():
            if name in accepted:
                if _KINDS[name] in _AS_WRITTEN:
                    request[name] = value
                else:
                    request[name] = self._normalise(name, value, (*where, name))
            elif name in FIELDS_BY_NAME:
                # reported and left out; the rest of the entry is still checked
                v = not_in_mode(name, mode)
                self._report((*where, name), v.message, v.hint, at_key=True)
        vary = self._vary(index, own, mode) if "vary" in own or self._default_vary else {}
        ok = self._required(index, mode, request, bad, vary)
        count = own.get("count", self._defaults.get("count"))
        if count is not None and "seed" in vary:
            self._report(
                (*where, "count"),
                "count and vary.seed both choose seeds",
                "use either count (seeds are derived) or vary: {seed: [...]}",
            )
            ok = False
        if not ok:
            return []
        drafts = self._expand(index, own, mode, request, vary, count)
        # a refused id must not be replaced by a derived one (spurious duplicates)
        return [] if "id" in bad else drafts

    def _required(
        self,
        index: int,
        mode: Mode,
        request: Mapping[str, Any],
        bad: frozenset[str],
        vary: Mapping[str, Any],
    ) -> bool:
        mode_field = MODE_FIELD[mode]
        required = (*REQUIRED, mode_field) if mode_field else REQUIRED
        ok = True
        for name in required:
            if name in request or name in vary or name in bad or name in self._bad_defaults:
                continue
            self._report(
                ("shots", index),
                f"{name} is required (here or in defaults)",
                FIELDS_BY_NAME[name].description,
            )
            ok = False
        return ok

    def _vary(self, index: int, own: Mapping[str, Any], mode: Mode) -> dict[str, Any]:
        """Merged vary lists: name -> (normalised values, where written)."""
        own_vary = own.get("vary")
        merged: dict[str, Any] = {}
        origin: dict[str, Path_] = {}
        accepted = fields_for(mode)
        for name, values in self._default_vary.items():
            if name in accepted:
                merged[name] = values
                origin[name] = ("defaults", "vary", name)
        if isinstance(own_vary, dict):
            for name, values in own_vary.items():
                if name not in FIELDS_BY_NAME:
                    continue  # reported by the shape check
                if name not in accepted:
                    v = not_in_mode(name, mode)
                    self._report(("shots", index, "vary", name), v.message, v.hint, at_key=True)
                    continue
                merged[name] = values
                origin[name] = ("shots", index, "vary", name)
        out: dict[str, Any] = {}
        for name, values in merged.items():
            normal: list[Any] = []
            seen: set[str] = set()
            for i, value in enumerate(values):
                item = self._normalise(name, value, (*origin[name], i))
                key = canonical_json(item)
                if key in seen:
                    self._report(
                        (*origin[name], i),
                        f"vary.{name} lists the same value twice",
                        "remove the repeated value",
                    )
                    continue
                seen.add(key)
                normal.append(item)
            out[name] = (normal, origin[name])
        return out

    # ---- expansion ----------------------------------------------------------------

    def _expand(
        self,
        index: int,
        own: Mapping[str, Any],
        mode: Mode,
        request: dict[str, Any],
        vary: dict[str, Any],
        count: int | None,
    ) -> list[Draft]:
        where = ("shots", index)
        takes = int(count) if count is not None else 0
        size = max(takes, 1)
        for normal, _ in vary.values():
            size *= len(normal)
        if size > MAX_EXPANSION:
            self._report(
                (*where, "vary") if vary else (*where, "count"),
                f"this entry expands to {size} shots; at most {MAX_EXPANSION} are allowed",
                "split it into several entries, or list fewer values",
            )
            return []
        explicit = own.get("id")
        derived = not isinstance(explicit, str)
        base_id = (
            explicit if isinstance(explicit, str) else self._derived_id(mode, request, vary, takes)
        )
        max_attempts = int(own.get("max_attempts", self._defaults.get("max_attempts", 0)))
        max_attempts = max_attempts or self._run_max_attempts
        drafts: list[Draft] = []
        allowed = self._rules.durations_s_by_mode[mode]
        for variant in _variants(vary) if vary else _NO_VARIANTS:
            merged = {**request, **variant.overrides} if variant.overrides else request
            seconds = merged.get("duration", DEFAULT_DURATION_S)
            shot_id = base_id + variant.suffix
            fits = seconds in allowed or self._duration_fits(index, own, mode, seconds, variant)
            if not self._rules_hold(index, mode, merged, own, variant, shot_id) or not fits:
                continue
            if merged is request and len(vary) == 0:
                merged["duration"] = wire_duration(mode, seconds)
            else:
                merged = {**merged, "duration": wire_duration(mode, seconds)}
            if not takes:
                drafts.append(Draft(shot_id, mode, merged, 1, index, max_attempts, derived))
                continue
            base_seed = merged.get("seed")
            for take in range(1, takes + 1):
                seed = (
                    (base_seed + take - 1) % (SEED_MAX + 1)
                    if isinstance(base_seed, int)
                    else take_seed(base_id, take)
                )
                drafts.append(
                    Draft(
                        f"{shot_id}.t{take}",
                        mode,
                        {**merged, "seed": seed},
                        take,
                        index,
                        max_attempts,
                        derived,
                    )
                )
        return drafts

    def _duration_fits(
        self, index: int, own: Mapping[str, Any], mode: Mode, seconds: int, variant: _Variant
    ) -> bool:
        """Reports a duration the mode does not offer; always False."""
        allowed = self._rules.durations_s_by_mode[mode]
        path = variant.origins.get("duration") or self._origin(index, own, "duration")
        shown = " or ".join(str(s) for s in allowed)
        self._report(
            path,
            f"{mode.value} mode supports {shown} s, not {seconds} s",
            f"use duration {shown}",
        )
        return False

    def _rules_hold(
        self,
        index: int,
        mode: Mode,
        request: Mapping[str, Any],
        own: Mapping[str, Any],
        variant: _Variant,
        shot_id: str,
    ) -> bool:
        violations = check_combination(mode, request, self._rules)
        for v in violations:
            path = variant.origins.get(v.field) or self._origin(index, own, v.field)
            self._report(path, v.message, v.hint, shot_id=shot_id)
        return not violations

    def _origin(self, index: int, own: Mapping[str, Any], name: str) -> Path_:
        """Where the value of ``name`` in entry ``index`` was written."""
        if name in own:
            return ("shots", index, name)
        if name in self._defaults:
            return ("defaults", name)
        return ("shots", index)

    def _derived_id(
        self, mode: Mode, request: Mapping[str, Any], vary: Mapping[str, Any], takes: int
    ) -> str:
        """``<mode>-<prompt words>-<hash>``: the same parameters always give the same id."""
        effective = self._id_basis(request)
        effective.setdefault("duration", DEFAULT_DURATION_S)
        effective.setdefault("motion_mode", DEFAULT_MOTION_MODE)
        basis = {
            "mode": mode.value,
            "request": effective,
            "vary": {
                k: [with_local_images(v, self._relative_image) for v in vals]
                for k, (vals, _) in vary.items()
            },
            "count": takes,
        }
        digest = hashlib.sha256(canonical_json(basis).encode()).hexdigest()[:10]
        prompt = request.get("prompt")
        words = _WORD.findall(prompt.lower()) if isinstance(prompt, str) else []
        slug = "-".join(words[:5])[:32].strip("-") or "shot"
        return f"{mode.value}-{slug}-{digest}"

    def _id_basis(self, request: Mapping[str, Any]) -> dict[str, Any]:
        # ids must not change when the project moves: local images by relative path
        return {k: with_local_images(v, self._relative_image) for k, v in request.items()}


def with_local_images(value: Any, replace: Callable[[str], str]) -> Any:
    """``value`` with its ``file://`` image URIs (alone or in a list) as ``replace`` has
    them; anything else as it is."""
    if isinstance(value, str) and value.startswith("file://"):
        return replace(value)
    if isinstance(value, list):
        return [with_local_images(v, replace) for v in value]
    return value


_NO_VARIANTS = (_Variant("", {}, {}),)
_KINDS: dict[str, Kind] = {name: spec.kind for name, spec in FIELDS_BY_NAME.items()}
#: kinds whose manifest spelling is already the wire spelling
_AS_WRITTEN = frozenset({Kind.TEXT, Kind.CHOICE, Kind.BOOL, Kind.URL})


def take_seed(base_id: str, take: int) -> int:
    """The seed of take ``take`` of a shot whose base id is ``base_id``."""
    digest = hashlib.sha256(f"{base_id}#take{take}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (SEED_MAX + 1)


def canonical_json(value: Any) -> str:
    """One text per value (sorted keys, no spaces): equal requests hash equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _labels(name: str, values: list[Any]) -> list[str]:
    """Readable id suffix parts for a vary list: the value when short, else its position."""
    labels: list[str] = []
    for value in values:
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, (int, float, str)) and not (
            isinstance(value, str) and value.startswith("file://")
        ):
            text = str(value)
        else:
            text = ""
        label = _DOTS.sub(".", _NOT_LABEL.sub("-", text)).strip("-.")
        labels.append(label if 0 < len(label) <= _LABEL_MAX else "")
    if "" in labels or len(set(labels)) != len(labels):
        return [str(i) for i in range(1, len(values) + 1)]
    return labels


def _variants(vary: Mapping[str, Any]) -> list[_Variant]:
    names = list(vary)
    columns = []
    for name in names:
        normal, origin = vary[name]
        labels = _labels(name, normal)
        columns.append(
            [
                (value, f".{name}-{label}", (*origin, i))
                for i, (value, label) in enumerate(zip(normal, labels, strict=True))
            ]
        )
    out: list[_Variant] = []
    for combo in itertools.product(*columns):
        out.append(
            _Variant(
                "".join(part for _, part, _ in combo),
                {name: value for name, (value, _, _) in zip(names, combo, strict=True)},
                {name: where for name, (_, _, where) in zip(names, combo, strict=True)},
            )
        )
    return out
