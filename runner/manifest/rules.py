"""The provider's request rules as data: runner/data/rules.json, or a user's copy.

Models per mode, durations per mode, qualities, motion modes, fields only some models
accept, rules across fields, text limits, fusion reference counts and image limits live
in a JSON file so that a provider change (a new model, a new limit) is an edit, not a
release (``--rules FILE``). runner/manifest/contract.py applies a :class:`Rules` value; the
request-field shapes (which fields exist, their JSON types) stay in code there.

Invariants:
- A :class:`Rules` value is immutable and compares by identity, so caches keyed by it
  (the jsonschema validator, the generated schema) hold one entry per loaded file.
- Every rule and limit in the file carries a non-empty ``source`` (where it is
  documented); a file without one is refused.
- :func:`parse_rules` checks the file's structure and raises :class:`UsageError` naming
  the file and the key path; runner/manifest/contract.py additionally checks that every field it
  names is a request field (it owns that list).

Size: a little over 400 lines, most of them :class:`_Parser`'s check of each section of
the file, kept next to the :class:`Rules` value it builds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.datafiles import parse_json, read_user_file
from runner.errors import UsageError
from runner.model import Mode

#: the format version this pixrun reads
RULES_VERSION = 1
_TOP_KEYS = frozenset(
    {
        "version",
        "description",
        "models",
        "durations_s",
        "qualities",
        "motion_modes",
        "model_only_fields",
        "combinations",
        "text_limits",
        "fusion_references",
        "images",
    }
)
#: what Pillow calls each image suffix's format
PILLOW_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


@dataclass(frozen=True, eq=False)
class ModelOnly:
    """A field only some models accept: ``models`` (allow list) or ``not_models``."""

    field: str
    models: tuple[str, ...] | None
    not_models: tuple[str, ...]
    source: str

    def accepts(self, model: str) -> bool:
        if self.models is not None:
            return model in self.models
        return model not in self.not_models


@dataclass(frozen=True, eq=False)
class Combination:
    """A rule across fields.

    Value form: when every field in ``when`` has one of its listed values, the fields in
    ``forbid`` may not have any of theirs. Presence form: when ``when_present`` is set,
    ``forbid_present`` may not be. Durations compare in seconds; absent duration and
    motion_mode count as the provider's defaults (5, normal).
    """

    id: str
    #: the request field a violation is reported against
    field: str
    message: str
    hint: str
    source: str
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    forbid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    when_present: str | None = None
    forbid_present: str | None = None

    def fields(self) -> tuple[str, ...]:
        """Every request field the rule names."""
        named = [name for name, _ in (*self.when, *self.forbid)]
        named += [n for n in (self.when_present, self.forbid_present) if n is not None]
        return tuple(named)


@dataclass(frozen=True, eq=False)
class ImageLimits:
    """What a local input image may be. ``None`` means: not checked."""

    suffixes: tuple[str, ...]
    max_bytes: int
    max_side_px: int | None
    min_side_px: int | None
    max_aspect: float | None
    #: key -> where the limit is documented
    sources: Mapping[str, str]

    def suffix_text(self) -> str:
        """``.jpg, .png or .webp``"""
        if len(self.suffixes) == 1:
            return self.suffixes[0]
        return ", ".join(self.suffixes[:-1]) + " or " + self.suffixes[-1]


@dataclass(frozen=True, eq=False)
class Rules:
    """One parsed rules file."""

    #: where it came from, for messages ("the packaged rules" or a path)
    origin: str
    models_by_mode: Mapping[Mode, tuple[str, ...]]
    durations_s_by_mode: Mapping[Mode, tuple[int, ...]]
    qualities: tuple[str, ...]
    motion_modes: tuple[str, ...]
    model_only: Mapping[str, ModelOnly]
    combinations: tuple[Combination, ...]
    #: field -> at most this many characters
    max_chars: Mapping[str, int]
    fusion_min: int
    fusion_max: int
    images: ImageLimits
    #: key path ("models.text", "combinations.1080p-no-fast") -> source
    sources: Mapping[str, str]

    @property
    def all_models(self) -> tuple[str, ...]:
        """Every model of any mode, once each, oldest version first (v3.5 ... v6)."""
        found = {model for mode in Mode for model in self.models_by_mode[mode]}
        return tuple(sorted(found, key=_version_key))

    @property
    def all_durations_s(self) -> tuple[int, ...]:
        return tuple(sorted({s for mode in Mode for s in self.durations_s_by_mode[mode]}))


def _version_key(model: str) -> tuple[tuple[int, ...], str]:
    return tuple(int(n) for n in re.findall(r"\d+", model)), model


# ---- reading ----------------------------------------------------------------------


def read_rules(path: Path) -> Rules:
    """Parse the rules file at ``path`` (UsageError when unreadable or malformed)."""
    text = read_user_file(path, what="the rules file", option="--rules")
    return parse_rules(text, origin=str(path))


def parse_rules(text: str, *, origin: str) -> Rules:
    """A :class:`Rules` value from the file's JSON text."""
    data = parse_json(text, lambda problem: _bad(origin, "", problem))
    return _Parser(origin).rules(data)


def _bad(origin: str, key: str, problem: str, hint: str | None = None) -> UsageError:
    where = f" at {key}" if key else ""
    return UsageError(
        f"rules file {origin}{where}: {problem}",
        hint=hint or "compare with the packaged runner/data/rules.json",
    )


class _Parser:
    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.sources: dict[str, str] = {}

    def fail(self, key: str, problem: str, hint: str | None = None) -> UsageError:
        return _bad(self.origin, key, problem, hint)

    def obj(self, value: Any, key: str, allowed: frozenset[str] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a JSON object")
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise self.fail(
                    f"{key}.{unknown[0]}" if key else unknown[0],
                    "is not a known key",
                    "known keys: " + ", ".join(sorted(allowed)),
                )
        return value

    def need(self, holder: dict[str, Any], name: str, key: str) -> Any:
        if name not in holder:
            raise self.fail(f"{key}.{name}" if key else name, "is missing")
        return holder[name]

    def source(self, holder: dict[str, Any], key: str) -> str:
        value = holder.get("source")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(
                key, "has no source", 'add "source": where this is documented (a URL or API.md)'
            )
        self.sources[key] = value
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be non-empty text")
        return value

    def int_(self, value: Any, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be a whole number >= {minimum}, not {value!r}")
        return value

    def texts(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, "must be a non-empty list")
        out = tuple(self.text(v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(set(out)) != len(out):
            raise self.fail(key, "lists a value twice")
        return out

    def values(self, value: Any, key: str) -> tuple[str, ...]:
        """``{"values": [...], "source": ...}`` of texts."""
        holder = self.obj(value, key, frozenset({"values", "source"}))
        self.source(holder, key)
        return self.texts(self.need(holder, "values", key), f"{key}.values")

    def per_mode(self, value: Any, key: str) -> dict[Mode, Any]:
        holder = self.obj(value, key, frozenset(m.value for m in Mode))
        return {mode: self.need(holder, mode.value, key) for mode in Mode}

    # ---- sections -----------------------------------------------------------------

    def rules(self, data: Any) -> Rules:
        top = self.obj(data, "", _TOP_KEYS)
        version = self.need(top, "version", "")
        if version != RULES_VERSION:
            raise self.fail("version", f"is {version!r}; this pixrun reads version {RULES_VERSION}")
        models = {
            mode: self.values(raw, f"models.{mode.value}")
            for mode, raw in self.per_mode(self.need(top, "models", ""), "models").items()
        }
        durations = {
            mode: self.durations(raw, f"durations_s.{mode.value}")
            for mode, raw in self.per_mode(self.need(top, "durations_s", ""), "durations_s").items()
        }
        model_only = self.model_only(top.get("model_only_fields", []))
        fusion_min, fusion_max = self.fusion(top)
        return Rules(
            origin=self.origin,
            models_by_mode=models,
            durations_s_by_mode=durations,
            qualities=self.values(self.need(top, "qualities", ""), "qualities"),
            motion_modes=self.values(self.need(top, "motion_modes", ""), "motion_modes"),
            model_only=model_only,
            combinations=self.combinations(top.get("combinations", [])),
            max_chars=self.text_limits(top.get("text_limits", {})),
            fusion_min=fusion_min,
            fusion_max=fusion_max,
            images=self.images(self.need(top, "images", "")),
            sources=self.sources,
        )

    def durations(self, value: Any, key: str) -> tuple[int, ...]:
        holder = self.obj(value, key, frozenset({"values", "source"}))
        self.source(holder, key)
        raw = self.need(holder, "values", key)
        if not isinstance(raw, list) or not raw:
            raise self.fail(f"{key}.values", "must be a non-empty list of seconds")
        out = tuple(self.int_(v, f"{key}.values[{i}]", 1) for i, v in enumerate(raw))
        if len(set(out)) != len(out):
            raise self.fail(f"{key}.values", "lists a value twice")
        return out

    def model_only(self, value: Any) -> dict[str, ModelOnly]:
        if not isinstance(value, list):
            raise self.fail("model_only_fields", "must be a list")
        out: dict[str, ModelOnly] = {}
        for i, raw in enumerate(value):
            key = f"model_only_fields[{i}]"
            item = self.obj(raw, key, frozenset({"field", "models", "not_models", "source"}))
            field = self.text(self.need(item, "field", key), f"{key}.field")
            if ("models" in item) == ("not_models" in item):
                raise self.fail(key, 'needs exactly one of "models" and "not_models"')
            if field in out:
                raise self.fail(f"{key}.field", f"{field!r} is listed twice")
            source = self.source(item, f"model_only_fields.{field}")
            if "models" in item:
                out[field] = ModelOnly(
                    field, self.texts(item["models"], f"{key}.models"), (), source
                )
            else:
                not_models = self.texts(item["not_models"], f"{key}.not_models")
                out[field] = ModelOnly(field, None, not_models, source)
        return out

    def combinations(self, value: Any) -> tuple[Combination, ...]:
        if not isinstance(value, list):
            raise self.fail("combinations", "must be a list")
        out: list[Combination] = []
        ids: set[str] = set()
        allowed = frozenset(
            {"id", "field", "when", "forbid", "when_present", "forbid_present"}
            | {"message", "hint", "source"}
        )
        for i, raw in enumerate(value):
            key = f"combinations[{i}]"
            item = self.obj(raw, key, allowed)
            rule_id = self.text(self.need(item, "id", key), f"{key}.id")
            if rule_id in ids:
                raise self.fail(f"{key}.id", f"{rule_id!r} is used twice")
            ids.add(rule_id)
            source = self.source(item, f"combinations.{rule_id}")
            message = self.text(self.need(item, "message", key), f"{key}.message")
            hint = self.text(self.need(item, "hint", key), f"{key}.hint")
            by_value = "when" in item or "forbid" in item
            by_presence = "when_present" in item or "forbid_present" in item
            if by_value == by_presence:
                raise self.fail(
                    key,
                    'needs either "when" and "forbid", or "when_present" and "forbid_present"',
                )
            when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
            forbid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
            present = banned = None
            if by_value:
                when = self.conditions(self.need(item, "when", key), f"{key}.when")
                forbid = self.conditions(self.need(item, "forbid", key), f"{key}.forbid")
                named = [name for name, _ in (*when, *forbid)]
            else:
                present = self.text(self.need(item, "when_present", key), f"{key}.when_present")
                banned = self.text(self.need(item, "forbid_present", key), f"{key}.forbid_present")
                named = [present, banned]
            field = self.text(
                item.get("field", forbid[0][0] if forbid else present), f"{key}.field"
            )
            if field not in named:
                raise self.fail(
                    f"{key}.field", f"{field!r} is not one of the fields the rule names"
                )
            out.append(
                Combination(rule_id, field, message, hint, source, when, forbid, present, banned)
            )
        return tuple(out)

    def conditions(self, value: Any, key: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        holder = self.obj(value, key)
        if not holder:
            raise self.fail(key, "names no field")
        out: list[tuple[str, tuple[Any, ...]]] = []
        for name, raw in holder.items():
            if not isinstance(raw, list) or not raw:
                raise self.fail(f"{key}.{name}", "must be a non-empty list of values")
            for j, item in enumerate(raw):
                if not isinstance(item, (str, int)) or isinstance(item, bool):
                    raise self.fail(f"{key}.{name}[{j}]", "must be text or a whole number")
            out.append((name, tuple(raw)))
        return tuple(out)

    def text_limits(self, value: Any) -> dict[str, int]:
        holder = self.obj(value, "text_limits")
        out: dict[str, int] = {}
        for name, raw in holder.items():
            key = f"text_limits.{name}"
            item = self.obj(raw, key, frozenset({"max_chars", "source"}))
            self.source(item, key)
            out[name] = self.int_(self.need(item, "max_chars", key), f"{key}.max_chars", 1)
        return out

    def fusion(self, top: dict[str, Any]) -> tuple[int, int]:
        key = "fusion_references"
        item = self.obj(self.need(top, key, ""), key, frozenset({"min", "max", "source"}))
        self.source(item, key)
        low = self.int_(self.need(item, "min", key), f"{key}.min", 1)
        high = self.int_(self.need(item, "max", key), f"{key}.max", 1)
        if high < low:
            raise self.fail(f"{key}.max", f"{high} is below min {low}")
        return low, high

    def images(self, value: Any) -> ImageLimits:
        names = frozenset({"suffixes", "max_bytes", "max_side_px", "min_side_px", "max_aspect"})
        holder = self.obj(value, "images", names)
        limits: dict[str, Any] = {}
        for name in sorted(names - {"suffixes"}):
            key = f"images.{name}"
            item = self.obj(self.need(holder, name, "images"), key, frozenset({"value", "source"}))
            self.source(item, key)
            raw = self.need(item, "value", key)
            if raw is None and name != "max_bytes":
                limits[name] = None
            elif name == "max_aspect":
                if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 1:
                    raise self.fail(f"{key}.value", f"must be a number >= 1 or null, not {raw!r}")
                limits[name] = float(raw)
            else:
                limits[name] = self.int_(raw, f"{key}.value", 1)
        suffixes = tuple(
            s.lower()
            for s in self.values(self.need(holder, "suffixes", "images"), "images.suffixes")
        )
        for i, suffix in enumerate(suffixes):
            if suffix not in PILLOW_FORMATS:
                raise self.fail(
                    f"images.suffixes.values[{i}]",
                    f"{suffix!r} is not an image type pixrun can check",
                    "use some of: " + ", ".join(PILLOW_FORMATS),
                )
        return ImageLimits(
            suffixes=suffixes,
            max_bytes=limits["max_bytes"],
            max_side_px=limits["max_side_px"],
            min_side_px=limits["min_side_px"],
            max_aspect=limits["max_aspect"],
            sources={
                k.removeprefix("images."): v
                for k, v in self.sources.items()
                if k.startswith("images.")
            },
        )
