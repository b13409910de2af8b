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
- Checking a request body against all this is runner/manifest/request_check.py's job
  (pure: no files, no network). Local images may appear there as ``file://`` URIs (the
  provider adapter encodes them at send time), accepted like ``http(s)`` URLs and
  ``data:image/...`` URIs.
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
from runner.model import Mode

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


def or_default(rules: Rules | None) -> Rules:
    return rules if rules is not None else default_rules()


def choices_of(spec: FieldSpec, rules: Rules | None = None) -> tuple[Any, ...]:
    """The allowed values of a choice field (model, quality, motion_mode: the rules')."""
    rules = or_default(rules)
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


def choices_text(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


# ---- durations --------------------------------------------------------------------


def wire_duration(mode: Mode, seconds: int) -> int | str:
    """The duration as the provider expects it in ``mode``."""
    return f"{seconds}s" if mode is Mode.FUSION else seconds


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
