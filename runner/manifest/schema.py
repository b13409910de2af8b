"""The manifest's shape as JSON Schema 2020-12, generated from the request contract.

:func:`manifest_schema` is the one description of what a manifest may contain: the
request fields come from :data:`runner.manifest.contract.FIELDS` and the values that change
with the provider (models, qualities, durations, text limits, ...) from a
:class:`~runner.manifest.rules.Rules` value (default: the packaged rules); the rest (top level,
output, run, shot extras) is declared here. The committed
``schemas/manifest.schema.json`` is this function's output (a test keeps them equal;
``pixrun schema`` prints it), and the loader's jsonschema validator (``validate``)
checks against the same dict, so editors, the schema file and ``pixrun validate``
cannot drift apart.

Invariants:
- Every property has a ``description``; every object has ``additionalProperties: false``.
- Only this keyword subset is used, because runner/manifest/validate.py words exactly it:
  type, enum, const, minimum, maximum, exclusiveMinimum, minLength, maxLength,
  pattern, items, minItems, maxItems, properties, patternProperties,
  additionalProperties, required; and ``$ref`` into ``$defs``, which only says where
  keywords are written.
- Rules across fields (models per mode, 1080p limits, duplicates, ...) are not here;
  the loader checks them with runner/manifest/contract.py after this shape check passes.

Size: about 490 lines, nearly all declarations (every setting with its description);
splitting them would scatter the one description of a manifest.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

from runner.manifest.contract import (
    FIELDS,
    INTEGER_AXES,
    MOTION_SCALE_AXES,
    FieldSpec,
    Kind,
    choices_of,
    default_rules,
    fields_for,
)
from runner.manifest.rules import Rules
from runner.model import Mode

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: explicit shot ids: file-name safe, never "..", never ending in "."
ID_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9_-])?$"
ID_HINT = (
    "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit "
    "and not ending with '.'"
)
URL_PATTERN = r"^https?://."
NOT_BLANK = r"\S"
#: what to tell a user whose value does not match a pattern: (problem, fix)
PATTERN_HINTS: dict[str, tuple[str, str]] = {
    ID_PATTERN: ("is not a valid id", ID_HINT),
    URL_PATTERN: ("is not an http(s) URL", "write a full http:// or https:// URL"),
    NOT_BLANK: ("is blank", "write some text here"),
}

MAX_COUNT = 10_000
MAX_ATTEMPTS = 100


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, **schema}


def _object(
    properties: dict[str, dict[str, Any]], description: str, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = list(required)
    return out


def _image_schema() -> dict[str, Any]:
    return {"type": "string", "pattern": NOT_BLANK}


def _images_schema(spec: FieldSpec, rules: Rules) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "minItems": 1, "items": _image_schema()}
    if spec.name == "fusion":
        out["minItems"] = rules.fusion_min
        out["maxItems"] = rules.fusion_max
    return out


def _motion_scale_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            axis: {
                "description": f"Motion along {axis}"
                + (" (a whole number)." if axis in INTEGER_AXES else "."),
                "type": "integer" if axis in INTEGER_AXES else "number",
            }
            for axis in MOTION_SCALE_AXES
        },
        "additionalProperties": False,
    }


def field_value_schema(spec: FieldSpec, rules: Rules) -> dict[str, Any]:
    """The manifest spelling of one request field's value (no description)."""
    kind = spec.kind
    if kind is Kind.TEXT:
        out: dict[str, Any] = {"type": "string"}
        if spec.name == "prompt":
            out["pattern"] = NOT_BLANK
        max_chars = rules.max_chars.get(spec.name)
        if max_chars is not None:
            out["maxLength"] = max_chars
        return out
    if kind in (Kind.INT, Kind.NUMBER):
        out = {"type": "integer" if kind is Kind.INT else "number"}
        if spec.minimum is not None:
            out["minimum"] = spec.minimum
        if spec.maximum is not None:
            out["maximum"] = spec.maximum
        return out
    if kind is Kind.BOOL:
        return {"type": "boolean"}
    if kind is Kind.SWITCH:
        return {"enum": [0, 1, False, True]}
    if kind is Kind.CHOICE:
        return {"type": "string", "enum": list(choices_of(spec, rules))}
    if kind is Kind.URL:
        return {"type": "string", "pattern": URL_PATTERN}
    if kind is Kind.IMAGE:
        return _image_schema()
    if kind is Kind.IMAGES:
        return _images_schema(spec, rules)
    if kind is Kind.MOTION_SCALE:
        return _motion_scale_schema()
    if kind is Kind.DURATION:
        seconds = rules.all_durations_s
        return {"enum": [*seconds, *(f"{s}s" for s in seconds)]}
    raise AssertionError(f"no schema for {kind}")  # pragma: no cover - every Kind is handled


def _join(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def field_description(spec: FieldSpec, rules: Rules) -> str:
    """The field's description with what the rules say about it."""
    parts = [spec.description]
    by_mode = rules.models_by_mode
    if spec.name == "model":
        parts.append("; ".join(f"{m.value}: {_join(by_mode[m])}" for m in Mode).capitalize() + ".")
    elif spec.name == "duration":
        seconds = rules.durations_s_by_mode
        parts.append(
            "Seconds allowed: " + "; ".join(f"{m.value} {_join(seconds[m])}" for m in Mode) + "."
        )
    elif spec.name in ("image", "fusion", "last_image", "image_list"):
        limits = rules.images
        text = f"Local files: {limits.suffix_text()}, at most {limits.max_bytes // 2**20} MB"
        if limits.max_side_px is not None:
            text += f", sides at most {limits.max_side_px} px"
        if limits.min_side_px is not None:
            text += f", sides at least {limits.min_side_px} px"
        if limits.max_aspect is not None:
            text += f", aspect within {limits.max_aspect:g}:1"
        parts.append(text + ".")
        if spec.name == "fusion":
            parts.append(f"{rules.fusion_min} to {rules.fusion_max} images.")
    max_chars = rules.max_chars.get(spec.name)
    if max_chars is not None:
        parts.append(f"At most {max_chars} characters.")
    only = rules.model_only.get(spec.name)
    if only is not None:
        parts.append(
            f"Only with model {_join(only.models)}."
            if only.models is not None
            else f"Not with model {_join(only.not_models)}."
        )
    for rule in rules.combinations:
        if rule.field == spec.name:
            parts.append(rule.message + ".")
    return " ".join(parts)


def _request_properties(rules: Rules) -> dict[str, dict[str, Any]]:
    return {
        spec.name: _described(field_value_schema(spec, rules), field_description(spec, rules))
        for spec in FIELDS
    }


def _vary_schema(rules: Rules) -> dict[str, Any]:
    props = {
        spec.name: {
            "description": f"Values of {spec.name} to try; one shot per combination.",
            "type": "array",
            "minItems": 1,
            "items": field_value_schema(spec, rules),
        }
        for spec in FIELDS
    }
    return _object(
        props,
        "Cross product of listed values: one shot per combination (e.g. seeds x qualities). "
        "Expanded ids get a readable suffix such as .quality-540p.seed-7.",
    )


def _shot_properties(rules: Rules, *, with_id: bool) -> dict[str, dict[str, Any]]:
    props: dict[str, dict[str, Any]] = {}
    if with_id:
        props["id"] = {
            "description": "Stable id of the shot (ledger key and {shot_id}). When absent, "
            "one is derived from the effective parameters; identical shots are then "
            "reported as duplicates. Allowed: " + ID_HINT.removeprefix("use ") + ".",
            "type": "string",
            "pattern": ID_PATTERN,
        }
    props["mode"] = {
        "description": "text, image or fusion. Optional: image when `image` is set, fusion "
        "when `fusion` is set, text otherwise.",
        "type": "string",
        "enum": [m.value for m in Mode],
    }
    props["count"] = {
        "description": "Number of takes, each with its own deterministic seed (seed, seed+1, "
        "... when a seed is given). Ids get .t1, .t2, ...",
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_COUNT,
    }
    props["vary"] = _vary_schema(rules)
    props["max_attempts"] = {
        "description": "How many times a failed render of this shot is tried (overrides "
        "run.max_attempts).",
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_ATTEMPTS,
    }
    props.update(_request_properties(rules))
    return props


def _run_schema() -> dict[str, Any]:
    seconds = {"type": "number", "exclusiveMinimum": 0}
    poll = _object(
        {
            "initial_delay_s": _described(
                {"type": "number", "minimum": 0},
                "Seconds before the first status check of a task (default 20).",
            ),
            "min_interval_s": _described(seconds, "Shortest wait between checks (default 2)."),
            "max_interval_s": _described(seconds, "Longest wait between checks (default 30)."),
            "timeout_s": _described(seconds, "Give up on a task after this long (default 1800)."),
        },
        "How tasks are polled. Fractions of seconds are allowed.",
    )
    return _object(
        {
            "concurrency": _described(
                {"type": "integer", "minimum": 1}, "Generations in flight at once (default 8)."
            ),
            "max_attempts": _described(
                {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS},
                "Tries per shot before it is marked failed (default 3).",
            ),
            "budget_ptc": _described(
                {"type": "number", "minimum": 0},
                "Cost cap in PTC: plan exits 4 above it and run stops submitting at it.",
            ),
            "download_concurrency": _described(
                {"type": "integer", "minimum": 1}, "Downloads at once (default 4)."
            ),
            "requests_per_s": _described(
                {"type": "number", "exclusiveMinimum": 0},
                "Provider calls per second, generate and fetch together (default 20).",
            ),
            "poll": poll,
            "priority": _described(
                {"type": "integer"},
                "With several manifests in one run (pixrun run a.yaml b.yaml, pixrun watch): "
                "higher goes first for the account's shared slots; equal priorities go in "
                "the order given (default 0).",
            ),
            "stall_timeout_s": _described(
                seconds,
                "Stop (exit 1, resumable) when nothing has progressed for this long: no "
                "submit, state change, byte downloaded or answer about a task (default 900). "
                "A provider outage is not a stall: see outage_timeout_s.",
            ),
            "outage_timeout_s": _described(
                seconds,
                "How long a provider that answered and then went away is waited for before "
                "the run stops, resumable (default 21600, six hours).",
            ),
            "callback": _object(
                {
                    "listen": _described(
                        {"type": "string", "pattern": NOT_BLANK},
                        "HOST:PORT where pixrun's callback receiver binds.",
                    ),
                    "url": _described(
                        {"type": "string", "pattern": "^https?://"},
                        "Public address of the receiver as the provider reaches it "
                        "(default http://<listen>).",
                    ),
                },
                "Receive the provider's callbacks: finished renders are collected at once, "
                "polling stays the safety net.",
                required=("listen",),
            ),
            "halt": _object(
                {
                    "failure_share": _described(
                        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                        "Stop submitting when more than this share of the last `window` "
                        "finished renders failed or were moderated; in-flight tasks are "
                        "collected, then the run exits 1 naming the common errors (default "
                        "0.5; 1 turns the brake off).",
                    ),
                    "window": _described(
                        {"type": "integer", "minimum": 1},
                        "How many of the latest finished renders the brake looks at "
                        "(default 20); it acts only once that many have finished.",
                    ),
                },
                "The failure-rate brake: a manifest whose renders keep failing stops "
                "before it spends more. A rerun (after fixing the manifest) continues.",
            ),
            "notify": _described(
                {
                    "type": ["string", "array"],
                    "pattern": URL_PATTERN,
                    "items": {"type": "string", "pattern": URL_PATTERN},
                    "minItems": 1,
                },
                "http(s) URL, or a list of them, that gets one JSON summary POSTed when the "
                "run ends or stops early (with a 'text' field for chat webhooks).",
            ),
        },
        "How the batch runs.",
    )


def _output_schema() -> dict[str, Any]:
    return _object(
        {
            "dir": _described(
                {"type": "string", "pattern": NOT_BLANK},
                "Output directory, relative to the manifest (default out/<name>).",
            ),
            "filename": _described(
                {"type": "string", "pattern": NOT_BLANK},
                "File name pattern inside dir, ending in .mp4 (default {shot_id}.mp4). "
                "Placeholders: {shot_id} {take} {model} {quality} {duration} {mode} "
                "{motion_mode} {seed} {name} {hash}; '/' makes subfolders, '..' is refused.",
            ),
            "sidecar": _described(
                {"type": "boolean"},
                "Write a .json sidecar with the request and provider answer next to each "
                "video (default true).",
            ),
            "embed_metadata": _described(
                {"type": "boolean"},
                "Write the prompt, seed, model, shot id and task id into each video as MP4 "
                "tags, without re-encoding (default false).",
            ),
        },
        "Where finished videos go.",
    )


#: where the images spec's keys are declared once, for both places it may appear
IMAGES_SPEC_REF = "#/$defs/images_spec"


def _images_spec_schema(rules: Rules) -> dict[str, Any]:
    """The object form of a ``shots_from`` source (no ``type``: the places that refer to
    it say which forms they allow)."""
    accepted = fields_for(Mode.IMAGE) | {"mode", "count", "vary", "max_attempts"}
    props: dict[str, dict[str, Any]] = {
        "images": _described(
            {"type": "string", "pattern": NOT_BLANK},
            "Glob of image files, relative to the manifest (img/*.png, frames/**/*.jpg): "
            "one image-to-video shot per file, in sorted order, its id from the file name "
            "without extension.",
        )
    }
    for name, prop in _shot_properties(rules, with_id=False).items():
        if name in accepted and name != "image":
            props[name] = prop
    props["mode"] = {**props["mode"], "enum": [Mode.IMAGE.value]}
    return {
        "description": "A folder of images: {images: GLOB} and the fields every one of its "
        "shots shares (prompt, model, ...).",
        "properties": props,
        "additionalProperties": False,
        "required": ["images"],
    }


def _shots_from_schema() -> dict[str, Any]:
    """``shots_from``: a table's path, an images spec, or a list of them. A list of types
    (no oneOf): the spec's keywords apply to the object form only, ``items`` to the list
    form only, ``pattern`` to the text form only."""
    return {
        "description": "More shots, from tables: a .csv/.tsv file (one shot per row, "
        "columns named like shot fields), a .jsonl file (one JSON object per line), a "
        "folder of images ({images: 'img/*.png', prompt: ...}), or a list of these. "
        "Paths are relative to the manifest. Defaults apply as to the shots above.",
        "type": ["string", "object", "array"],
        "pattern": NOT_BLANK,
        "$ref": IMAGES_SPEC_REF,
        "minItems": 1,
        "items": {
            "description": "A table (.csv, .tsv or .jsonl file) or an images spec.",
            "type": ["string", "object"],
            "pattern": NOT_BLANK,
            "$ref": IMAGES_SPEC_REF,
        },
    }


@lru_cache(maxsize=8)
def _schema(rules: Rules) -> dict[str, Any]:
    """Cached per Rules object (they compare by identity)."""
    shot = _object(
        _shot_properties(rules, with_id=True), "One shot (or, with count/vary, several)."
    )
    defaults = _object(
        _shot_properties(rules, with_id=False),
        "Values every shot starts from; a shot's own values win. Fields that do not apply "
        "to a shot's mode are skipped for that shot.",
    )
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "pixrun manifest",
        "description": "A batch of PixVerse video shots for pixrun. Generated by "
        "`pixrun schema`; do not edit by hand.",
        "type": "object",
        "properties": {
            "version": {"description": "Manifest format version. Always 1.", "const": 1},
            "name": {
                "description": "Name of the batch ({name} in file names; default: the file "
                "name without extension).",
                "type": "string",
                "pattern": NOT_BLANK,
            },
            "defaults": defaults,
            "output": _output_schema(),
            "run": _run_schema(),
            "shots": {
                "description": "The shots to generate (shots or shots_from, or both).",
                "type": "array",
                "minItems": 1,
                "items": shot,
            },
            "shots_from": _shots_from_schema(),
        },
        "patternProperties": {
            "^x-": {
                "description": "Free space, ignored by pixrun: a place for YAML anchors "
                "(&name) to reuse with merge keys (<<: *name)."
            }
        },
        "additionalProperties": False,
        # shots or shots_from: the loader says so when neither is there
        "required": ["version"],
        "$defs": {"images_spec": _images_spec_schema(rules)},
    }


def manifest_schema(rules: Rules | None = None) -> dict[str, Any]:
    """The manifest JSON Schema under ``rules`` (default: the packaged rules); a fresh
    copy that callers may change."""
    return copy.deepcopy(schema_of(rules))


def schema_of(rules: Rules | None = None) -> dict[str, Any]:
    """The cached schema itself: callers must not change it."""
    return _schema(rules if rules is not None else default_rules())


def manifest_schema_json(rules: Rules | None = None) -> str:
    """The schema file's exact text."""
    return json.dumps(schema_of(rules), indent=2, ensure_ascii=False) + "\n"
