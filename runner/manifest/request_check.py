"""Checks of provider request bodies (wire form) against the contract and the rules.

:func:`check_request` says everything wrong with one request body; :func:`check_field`
one field's shape; :func:`check_combination` the rules across fields, which the
manifest loader applies to every expanded shot (their shapes were checked already by
the manifest schema). Field shapes and rule values come from
runner/manifest/contract.py; nothing here keeps its own list.

Invariants:
- Pure: no files, no network; a :class:`~runner.manifest.contract.Violation` names the
  request field to blame, what is wrong and how to fix it.
- ``rules=None`` means the packaged rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.manifest.contract import (
    DEFAULT_DURATION_S,
    DEFAULT_MOTION_MODE,
    FIELDS_BY_NAME,
    IMAGE_URI_PREFIXES,
    INTEGER_AXES,
    MODE_FIELD,
    MOTION_SCALE_AXES,
    REQUIRED_FIELDS,
    URL_PREFIXES,
    FieldSpec,
    Kind,
    Violation,
    choices_of,
    choices_text,
    did_you_mean,
    fields_for,
    or_default,
    suggest,
    type_name,
)
from runner.manifest.rules import Rules
from runner.model import Mode, duration_seconds

# ---- one field --------------------------------------------------------------------


def check_field(name: str, value: Any, mode: Mode, rules: Rules | None = None) -> Violation | None:
    """The wire shape of one field's value (type, allowed values, length) in ``mode``.

    Mode and model restrictions are not checked here (see :func:`check_combination`).
    """
    spec = FIELDS_BY_NAME[name]
    return _CHECKERS[spec.kind](spec, value, mode, or_default(rules))


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
        f"{hint}allowed: {choices_text(choices)}",
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
            f"write e.g. {{horizontal: 0.5}}; keys: {choices_text(MOTION_SCALE_AXES)}",
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
        shown = choices_text(allowed)
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


# ---- whole requests ---------------------------------------------------------------


def check_combination(
    mode: Mode, request: Mapping[str, Any], rules: Rules | None = None
) -> list[Violation]:
    """Rules across fields, on a request whose fields each have the right shape.

    Duration may be in either spelling here. Fields the mode does not accept are not
    reported (see :func:`check_request`).
    """
    rules = or_default(rules)
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
                f"use one of {choices_text(models)}",
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
            f"remove {name}, or use a model other than {choices_text(not_models)}",
        )
    only = choices_text(models)
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
    rules = or_default(rules)
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
        "model": f"add model: one of {choices_text(or_default(rules).models_by_mode[mode])}",
        "image": "add image: a URL or a local image path",
        "fusion": "add fusion: a list of subject images",
    }
    return Violation(name, f"{name} is required", hints.get(name, f"add {name}"))
