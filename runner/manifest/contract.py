"""The provider's request-field contract: which fields exist, their shapes, and the rules.

This is the single source of truth for what a PixVerse generate request through 302.AI
may contain (see the provider contract document). The field shapes (:data:`FIELDS`) are
code; the values that change with the provider (models per mode, durations, qualities,
motion modes, model-only fields, rules across fields, text and image limits) come from
a :class:`~runner.manifest.rules.Rules` value: the packaged runner/data/rules.json by default,
or the user's file (``--rules``). The manifest loader, the JSON schema generator
(runner/manifest/schema.py), the price rule and the local simulator all read this module; none
of them keeps its own list of fields or values.

Invariants:
- :data:`FIELDS` lists every request field exactly once; :func:`fields_for` says which
  modes accept it. A field absent from :data:`FIELDS` is not part of the API.
- :func:`check_request` is pure: it never reads files or the network. Local images may
  appear as ``file://`` URIs (the provider adapter encodes them at send time) and are
  accepted like ``http(s)`` URLs and ``data:image/...`` URIs.
- Every function that applies a rule takes ``rules``; ``None`` means the packaged rules.
- Durations are seconds (``int``) for text and image, and the strings ``"5s"``/``"8s"``
  for fusion ("wire form"). The manifest's own spelling (numbers in every mode, switches
  as true/false too) is described by runner/manifest/schema.py, generated from :data:`FIELDS`,
  and converted to wire form by the manifest loader with :func:`wire_duration`.
"""

from __future__ import annotations

import datetime
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.manifest.rules import Rules, parse_rules, read_rules
from runner.model import Mode, duration_seconds

#: what the provider assumes when a field is left out (documented defaults only)
DEFAULT_DURATION_S = 5
DEFAULT_MOTION_MODE = "normal"

CAMERA_MOVEMENTS: tuple[str, ...] = (
    "horizontal_left",
    "horizontal_right",
    "vertical_up",
    "vertical_down",
    "crane_up",
    "hitchcock",
    "zoom_in",
    "zoom_out",
    "quickly_zoom_in",
    "quickly_zoom_out",
    "smooth_zoom_in",
    "super_dolly_out",
    "left_follow",
    "right_follow",
    "pan_left",
    "pan_right",
    "camera_rotation",
    "robo_arm",
    "whip_pan",
    "fix_bg",
)
STYLES: tuple[str, ...] = ("anime", "3d_animation", "comic", "cyberpunk", "clay")
RATIOS: tuple[str, ...] = ("16:9", "9:16", "4:3", "3:4", "1:1")
THINKING_TYPES: tuple[str, ...] = ("enabled", "disabled", "auto")
MOTION_SCALE_AXES: tuple[str, ...] = ("horizontal", "vertical", "roll", "zoom")
#: motion_scale axes the provider takes as integers (API.md: motion_scale.roll is an integer)
INTEGER_AXES: frozenset[str] = frozenset({"roll"})

SEED_MAX = 2**31 - 1

#: how an image reference may be spelled in a request body
IMAGE_URI_PREFIXES: tuple[str, ...] = ("http://", "https://", "file://", "data:image/")
URL_PREFIXES: tuple[str, ...] = ("http://", "https://")

ALL_MODES = frozenset(Mode)


class Kind(StrEnum):
    """The JSON shape of a request field."""

    TEXT = "text"  #: a non-empty string
    INT = "int"  #: an integer (never a boolean)
    NUMBER = "number"  #: an integer or a fraction (never a boolean)
    BOOL = "bool"  #: true or false
    SWITCH = "switch"  #: 0 or 1 on the wire; the manifest also accepts true/false
    CHOICE = "choice"  #: one of ``FieldSpec.choices``
    URL = "url"  #: an http(s) URL
    IMAGE = "image"  #: one image: a URL, or (in a manifest) a local file path
    IMAGES = "images"  #: a non-empty list of images
    MOTION_SCALE = "motion_scale"  #: numbers keyed by MOTION_SCALE_AXES (INTEGER_AXES: ints)
    DURATION = "duration"  #: seconds; see the module docstring for the two spellings


@dataclass(frozen=True)
class FieldSpec:
    """One request field: its shape, where it is allowed, and what it means."""

    name: str
    kind: Kind
    description: str
    modes: frozenset[Mode] = ALL_MODES
    #: fixed allowed values; model, quality and motion_mode take theirs from the rules
    choices: tuple[Any, ...] = ()
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class Violation:
    """One way a request breaks the contract. ``field`` is the request field to blame."""

    field: str
    message: str
    hint: str


def _only(
    mode: Mode, name: str, kind: Kind, description: str, choices: tuple[str, ...] = ()
) -> FieldSpec:
    """A field only ``mode`` accepts; a choice field's description lists its choices."""
    if choices:
        description += ": " + ", ".join(choices[:-1]) + f" or {choices[-1]}."
    return FieldSpec(name, kind, description, modes=frozenset({mode}), choices=choices)


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("prompt", Kind.TEXT, "What the video shows. Required."),
    FieldSpec("model", Kind.CHOICE, "PixVerse model. Required."),
    FieldSpec(
        "quality",
        Kind.CHOICE,
        "Output resolution. Price multiplier: 360p x1, 540p x1.5, 720p x2, 1080p x4.",
    ),
    FieldSpec(
        "duration",
        Kind.DURATION,
        "Length in seconds. Write a number in every mode; fusion shots are sent as "
        '"5s"/"8s". Default 5. The price of 10 s is not published.',
    ),
    FieldSpec(
        "motion_mode",
        Kind.CHOICE,
        "normal or fast (fast costs x2). Default normal.",
    ),
    FieldSpec(
        "seed",
        Kind.INT,
        "Random seed (0..2147483647); the same seed and parameters give a similar video.",
        minimum=0,
        maximum=SEED_MAX,
    ),
    FieldSpec("template_id", Kind.INT, "Effect template id. Not with last_image.", minimum=0),
    FieldSpec(
        "image",
        Kind.IMAGE,
        "Image-to-video: the first frame (required there, optional in text and fusion). "
        "An http(s) URL, or a local image path relative to the manifest.",
    ),
    _only(
        Mode.FUSION,
        "fusion",
        Kind.IMAGES,
        "Multi-subject reference: a list of subject images (URLs or local paths).",
    ),
    FieldSpec(
        "last_image",
        Kind.IMAGE,
        "The last frame (URL or local path).",
    ),
    FieldSpec("image_list", Kind.IMAGES, "A list of images (URLs or local paths)."),
    FieldSpec(
        "camera_movement",
        Kind.CHOICE,
        "Camera movement preset.",
        choices=CAMERA_MOVEMENTS,
    ),
    FieldSpec("motion_strength", Kind.NUMBER, "How strongly things move."),
    FieldSpec(
        "motion_scale",
        Kind.MOTION_SCALE,
        "Per-axis motion: numbers for horizontal, vertical and zoom; a whole number for roll.",
    ),
    FieldSpec("sound_effect_switch", Kind.SWITCH, "1 (or true) to add sound effects."),
    FieldSpec("sound_effect_content", Kind.TEXT, "What the sound effects should be."),
    FieldSpec("lip_sync_tts_speaker_id", Kind.TEXT, "Voice of the lip-sync speech."),
    FieldSpec("lip_sync_tts_content", Kind.TEXT, "Text spoken with lip sync."),
    FieldSpec("callback", Kind.URL, "URL the provider POSTs the result to."),
    _only(Mode.IMAGE, "audio", Kind.SWITCH, "Image-to-video: 1 (or true) to generate audio."),
    _only(Mode.IMAGE, "style", Kind.CHOICE, "Image-to-video style", STYLES),
    _only(Mode.TEXT, "ratio", Kind.CHOICE, "Text-to-video aspect ratio", RATIOS),
    _only(Mode.TEXT, "generate_audio_switch", Kind.BOOL, "Text-to-video: generate audio."),
    _only(
        Mode.TEXT, "generate_multi_clip_switch", Kind.BOOL, "Text-to-video: generate several clips."
    ),
    _only(
        Mode.TEXT, "thinking_type", Kind.CHOICE, "Text-to-video prompt reasoning", THINKING_TYPES
    ),
)

FIELDS_BY_NAME: dict[str, FieldSpec] = {f.name: f for f in FIELDS}
#: fields every request must carry, besides the mode's own (image / fusion)
REQUIRED_FIELDS: tuple[str, ...] = ("prompt", "model")
#: the field whose presence selects the mode
MODE_FIELD: dict[Mode, str | None] = {Mode.TEXT: None, Mode.IMAGE: "image", Mode.FUSION: "fusion"}
_FIELDS_FOR: dict[Mode, frozenset[str]] = {
    m: frozenset(f.name for f in FIELDS if m in f.modes) for m in Mode
}


# ---- the rules --------------------------------------------------------------------


@cache
def default_rules() -> Rules:
    """The rules shipped with pixrun (runner/data/rules.json), parsed once."""
    text = resources.files("runner.data").joinpath("rules.json").read_text(encoding="utf-8")
    return _checked(parse_rules(text, origin="the packaged rules (runner/data/rules.json)"))


def load_rules(path: Path | None = None) -> Rules:
    """The rules file at ``path``; ``None`` gives the packaged rules. UsageError when bad."""
    if path is None:
        return default_rules()
    return _checked(read_rules(path))


def _checked(rules: Rules) -> Rules:
    """Every field a rule names must be a request field (this module owns that list)."""
    named: list[tuple[str, str]] = [(f"model_only_fields.{n}", n) for n in rules.model_only]
    named += [(f"combinations.{c.id}", n) for c in rules.combinations for n in c.fields()]
    named += [(f"text_limits.{n}", n) for n in rules.max_chars]
    for key, name in named:
        if name not in FIELDS_BY_NAME:
            raise UsageError(
                f"rules file {rules.origin} at {key}: {name!r} is not a request field",
                hint=did_you_mean(name, FIELDS_BY_NAME, "see the README for the request fields"),
            )
    for name in rules.max_chars:
        if FIELDS_BY_NAME[name].kind is not Kind.TEXT:
            raise UsageError(
                f"rules file {rules.origin} at text_limits.{name}: {name} is not a text field",
                hint="text limits apply to text fields only",
            )
    return rules


def _or_default(rules: Rules | None) -> Rules:
    return rules if rules is not None else default_rules()


def choices_of(spec: FieldSpec, rules: Rules | None = None) -> tuple[Any, ...]:
    """The allowed values of a choice field (model, quality, motion_mode: the rules')."""
    rules = _or_default(rules)
    if spec.name == "model":
        return rules.all_models
    if spec.name == "quality":
        return rules.qualities
    if spec.name == "motion_mode":
        return rules.motion_modes
    return spec.choices


def fields_for(mode: Mode) -> frozenset[str]:
    """Names of the request fields the provider accepts in ``mode``."""
    return _FIELDS_FOR[mode]


def mode_of_request(request: Mapping[str, Any]) -> Mode:
    """fusion if ``fusion`` is set, image if ``image`` is set, else text."""
    if request.get("fusion") is not None:
        return Mode.FUSION
    if request.get("image") is not None:
        return Mode.IMAGE
    return Mode.TEXT


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to a likely typo, or None."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, candidates: Iterable[str], fallback: str) -> str:
    """'did you mean ...?' with the one or two closest candidates, else ``fallback``."""
    found = difflib.get_close_matches(word, list(candidates), n=2, cutoff=0.6)
    if not found:
        return fallback
    return "did you mean " + " or ".join(repr(f) for f in found) + "?"


def _choices_text(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


# ---- durations --------------------------------------------------------------------


def wire_duration(mode: Mode, seconds: int) -> int | str:
    """The duration as the provider expects it in ``mode``."""
    return f"{seconds}s" if mode is Mode.FUSION else seconds


# ---- one field --------------------------------------------------------------------


def check_field(name: str, value: Any, mode: Mode, rules: Rules | None = None) -> Violation | None:
    """The wire shape of one field's value (type, allowed values, length) in ``mode``.

    Mode and model restrictions are not checked here (see :func:`check_combination`).
    """
    spec = FIELDS_BY_NAME[name]
    return _CHECKERS[spec.kind](spec, value, mode, _or_default(rules))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_text(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    if not isinstance(value, str):
        return Violation(
            spec.name, f"must be text, not {type_name(value)}", "write it as text in quotes"
        )
    if spec.name == "prompt" and not value.strip():
        return Violation(spec.name, "is empty", "describe what the video should show")
    max_chars = rules.max_chars.get(spec.name)
    if max_chars is not None and len(value) > max_chars:
        return Violation(
            spec.name,
            f"is {len(value)} characters long; at most {max_chars} are allowed",
            f"shorten it by {len(value) - max_chars} characters",
        )
    return None


def _not_numeric(where: str, value: Any, whole: bool, example: str) -> Violation | None:
    """Why ``value`` is not a number (a whole one when ``whole``); None when it is."""
    if _is_int(value) if whole else _is_number(value):
        return None
    word = "a whole number" if whole else "a number"
    return Violation(where, f"must be {word}, not {type_name(value)}", f"write e.g. {example}")


def _check_numeric(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    whole = spec.kind is Kind.INT
    wrong = _not_numeric(spec.name, value, whole, "42" if whole else "0.5")
    return wrong or _check_range(spec, value)


def _check_range(spec: FieldSpec, value: int | float) -> Violation | None:
    low, high = spec.minimum, spec.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"{low if low is not None else '...'}..{high if high is not None else '...'}"
        return Violation(spec.name, f"{value} is out of range {span}", f"use a value in {span}")
    return None


def _check_bool(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    if not isinstance(value, bool):
        return Violation(spec.name, f"must be true or false, not {value!r}", "write true or false")
    return None


def _check_switch(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    if _is_int(value) and value in (0, 1):
        return None
    return Violation(spec.name, f"must be 0 or 1, not {value!r}", "write 0 or 1")


def _check_choice(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    choices = choices_of(spec, rules)
    if isinstance(value, str) and value in choices:
        return None
    guess = suggest(str(value), [str(c) for c in choices])
    hint = f"did you mean {guess!r}? " if guess else ""
    return Violation(
        spec.name,
        f"{value!r} is not one of the allowed values",
        f"{hint}allowed: {_choices_text(choices)}",
    )


def _check_url(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    if isinstance(value, str) and value.startswith(URL_PREFIXES) and len(value) > 8:
        return None
    return Violation(spec.name, f"must be an http(s) URL, not {value!r}", "write https://...")


def _image_ref_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be an image URL, not {type_name(value)}"
    if not value.startswith(IMAGE_URI_PREFIXES):
        return f"{value[:60]!r} is not an image URL (http, https, file or data:image)"
    return None


_IMAGE_HINT = "give an https:// URL or a local image path"


def _check_image(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    problem = _image_ref_problem(value)
    if problem:
        return Violation(spec.name, problem, _IMAGE_HINT)
    return None


def _check_images(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    if not isinstance(value, list) or not value:
        return Violation(
            spec.name,
            f"must be a non-empty list of images, not {type_name(value)}",
            "write a YAML list: [a.png, b.png]",
        )
    if spec.name == "fusion" and not rules.fusion_min <= len(value) <= rules.fusion_max:
        return Violation(
            spec.name,
            f"lists {len(value)} images; {rules.fusion_min} to {rules.fusion_max} are allowed",
            f"give {rules.fusion_min} to {rules.fusion_max} subject images",
        )
    for i, item in enumerate(value):
        problem = _image_ref_problem(item)
        if problem:
            return Violation(f"{spec.name}[{i}]", problem, _IMAGE_HINT)
    return None


def _check_motion_scale(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    if not isinstance(value, dict):
        return Violation(
            spec.name,
            f"must be a mapping of numbers, not {type_name(value)}",
            f"write e.g. {{horizontal: 0.5}}; keys: {_choices_text(MOTION_SCALE_AXES)}",
        )
    for key, item in value.items():
        if key not in MOTION_SCALE_AXES:
            return Violation(
                f"{spec.name}.{key}",
                f"{key!r} is not a motion_scale axis",
                did_you_mean(str(key), MOTION_SCALE_AXES, "keys: " + ", ".join(MOTION_SCALE_AXES)),
            )
        whole = key in INTEGER_AXES
        wrong = _not_numeric(f"{spec.name}.{key}", item, whole, "1" if whole else "0.5")
        if wrong:
            return wrong
    return None


def _check_duration(spec: FieldSpec, value: Any, mode: Mode, rules: Rules) -> Violation | None:
    allowed = rules.durations_s_by_mode[mode]
    if mode is Mode.FUSION:
        ok = isinstance(value, str) and value in tuple(f"{s}s" for s in allowed)
        shown = ", ".join(f'"{s}s"' for s in allowed)
    else:
        ok = _is_int(value) and value in allowed
        shown = _choices_text(allowed)
    if ok:
        return None
    return Violation(
        "duration", f"{value!r} is not allowed in {mode.value} mode", f"use one of {shown}"
    )


_CHECKERS = {
    Kind.TEXT: _check_text,
    Kind.INT: _check_numeric,
    Kind.NUMBER: _check_numeric,
    Kind.BOOL: _check_bool,
    Kind.SWITCH: _check_switch,
    Kind.CHOICE: _check_choice,
    Kind.URL: _check_url,
    Kind.IMAGE: _check_image,
    Kind.IMAGES: _check_images,
    Kind.MOTION_SCALE: _check_motion_scale,
    Kind.DURATION: _check_duration,
}


def type_name(value: Any) -> str:
    """A word for a YAML/JSON value's type, for messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"the date {value.isoformat()} (quote it to keep it as text)"
    return type(value).__name__


# ---- whole requests ---------------------------------------------------------------


def check_combination(
    mode: Mode, request: Mapping[str, Any], rules: Rules | None = None
) -> list[Violation]:
    """Rules across fields, on a request whose fields each have the right shape.

    Duration may be in either spelling here. Fields the mode does not accept are not
    reported (see :func:`check_request`).
    """
    rules = _or_default(rules)
    out: list[Violation] = []
    model = request.get("model")
    models = rules.models_by_mode[mode]
    if isinstance(model, str) and model not in models:
        out.append(
            Violation(
                "model",
                f"model {model} is not available for {mode.value}-to-video"
                if mode is not Mode.FUSION
                else f"model {model} is not available for fusion (multi-subject reference)",
                f"use one of {_choices_text(models)}",
            )
        )
    if isinstance(model, str):
        for name in request:
            only = rules.model_only.get(name)
            if only is None or mode not in FIELDS_BY_NAME[name].modes or only.accepts(model):
                continue
            out.append(_model_only_violation(name, model, only.models, only.not_models))
    out.extend(_combination_rules(request, rules))
    return out


def _model_only_violation(
    name: str, model: str, models: tuple[str, ...] | None, not_models: tuple[str, ...]
) -> Violation:
    if models is None:
        return Violation(
            name,
            f"{name} is not supported by model {model}",
            f"remove {name}, or use a model other than {_choices_text(not_models)}",
        )
    only = _choices_text(models)
    return Violation(
        name,
        f"{name} is not supported by model {model} (only {only})",
        f"remove {name}, or use model {only}"
        if len(models) == 1
        else f"remove {name}, or use a model other than {model}",
    )


def _effective(request: Mapping[str, Any], name: str) -> Any:
    """A field's value as rules compare it: durations in seconds, defaults filled in."""
    if name == "duration":
        return duration_seconds(request.get("duration", DEFAULT_DURATION_S))
    if name == "motion_mode":
        return request.get("motion_mode", DEFAULT_MOTION_MODE)
    return request.get(name)


def _combination_rules(request: Mapping[str, Any], rules: Rules) -> list[Violation]:
    out: list[Violation] = []
    for rule in rules.combinations:
        if rule.when_present is not None:
            broken = rule.when_present in request and rule.forbid_present in request
        else:
            broken = all(_effective(request, n) in vals for n, vals in rule.when) and any(
                _effective(request, n) in vals for n, vals in rule.forbid
            )
        if broken:
            out.append(Violation(rule.field, rule.message, rule.hint))
    return out


def check_request(
    mode: Mode, request: Mapping[str, Any], rules: Rules | None = None
) -> list[Violation]:
    """Everything wrong with a provider request body in ``mode``; empty when acceptable.

    ``request`` is the wire form: durations as ints (text, image) or "5s"/"8s" (fusion),
    switches as 0/1; images as http(s), ``file://`` or ``data:image/`` URIs.
    """
    rules = _or_default(rules)
    out: list[Violation] = []
    accepted = fields_for(mode)
    for name, value in request.items():
        if name not in FIELDS_BY_NAME:
            out.append(
                Violation(
                    str(name),
                    f"{name!r} is not a request field",
                    did_you_mean(str(name), FIELDS_BY_NAME, "remove it"),
                )
            )
            continue
        if name not in accepted:
            out.append(not_in_mode(name, mode))
            continue
        bad = check_field(name, value, mode, rules)
        if bad is not None:
            out.append(bad)
    required = [*REQUIRED_FIELDS]
    mode_field = MODE_FIELD[mode]
    if mode_field is not None:
        required.append(mode_field)
    for name in required:
        if name not in request:
            out.append(missing(name, mode, rules))
    out.extend(check_combination(mode, request, rules))
    return out


def not_in_mode(name: str, mode: Mode) -> Violation:
    spec = FIELDS_BY_NAME[name]
    where = " and ".join(m.value for m in Mode if m in spec.modes)
    return Violation(
        name,
        f"{name} is not accepted in {mode.value} mode (only {where})",
        f"remove {name}",
    )


def missing(name: str, mode: Mode, rules: Rules | None = None) -> Violation:
    hints = {
        "prompt": "add a prompt describing the video",
        "model": f"add model: one of {_choices_text(_or_default(rules).models_by_mode[mode])}",
        "image": "add image: a URL or a local image path",
        "fusion": "add fusion: a list of subject images",
    }
    return Violation(name, f"{name} is required", hints.get(name, f"add {name}"))
