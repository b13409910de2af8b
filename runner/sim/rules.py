"""What the simulated provider accepts in a generate body: request.schema.json, by hand.

The schema is written from the provider contract, not generated from runner/manifest/contract.py,
so the simulator can disagree with the client (that is the point of a test double that
checks anything). Nothing here imports the client's contract.

Invariants:
- One compiled validator per :class:`RequestRules` (building one costs far more than a
  validation).
- A problem broken inside a combination rule is reported in that rule's words (its
  ``description``, without the bracketed source); anything else in jsonschema's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMA_NAME = "request.schema.json"
#: how many problems an "Invalid parameter" message names
MAX_PROBLEMS_SHOWN = 3
#: the request fields that carry one image, and those that carry a list of them
IMAGE_FIELDS = ("image", "last_image")
IMAGE_LIST_FIELDS = ("image_list", "fusion")

#: a "bare" base64 image: long, and nothing but the base64 alphabet
_BARE_BASE64 = re.compile(r"[A-Za-z0-9+/=\r\n]{64,}")
_SOURCE = re.compile(r"\s*\[[^\]]*\]\s*$")


@cache
def request_schema() -> dict[str, Any]:
    """The packaged schema (runner/sim/request.schema.json)."""
    text = resources.files("runner.sim").joinpath(SCHEMA_NAME).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class RequestRules:
    """The compiled schema: ``problems(body)`` lists what is wrong, first few first."""

    def __init__(self) -> None:
        schema = request_schema()
        Draft202012Validator.check_schema(schema)
        self._schema = schema
        self._validator = Draft202012Validator(schema)

    def problems(self, body: Any, limit: int = MAX_PROBLEMS_SHOWN) -> list[str]:
        """Up to ``limit`` readable problems; empty when the body is acceptable."""
        out: list[str] = []
        for error in self._validator.iter_errors(body):
            text = self._describe(error, mode_of(body))
            if text not in out:
                out.append(text)
            if len(out) >= limit:
                break
        return out

    def _describe(self, error: ValidationError, mode: str) -> str:
        where = ".".join(str(p) for p in error.absolute_path) or "body"
        if "propertyNames" in error.absolute_schema_path:
            return f"{error.instance}: not accepted in {mode} mode"
        rule = self._rule_of(error)
        if rule is not None:
            return f"{where}: {rule}"
        return f"{where}: {error.message[:200]}"

    def _rule_of(self, error: ValidationError) -> str | None:
        """The description of the top-level ``allOf`` rule the error comes from."""
        path = list(error.absolute_schema_path)
        if len(path) < 2 or path[0] != "allOf":
            return None
        rule = self._schema["allOf"][int(path[1])]
        if rule.get("then", {}).get("$ref"):  # the mode rule: the mode's own words
            return None
        return _SOURCE.sub("", str(rule.get("description", ""))) or None


def mode_of(body: Any) -> str:
    """fusion if ``fusion`` is present, image if ``image`` is, else text (API.md)."""
    if isinstance(body, Mapping) and "fusion" in body:
        return "fusion"
    if isinstance(body, Mapping) and "image" in body:
        return "image"
    return "text"


def image_values(body: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field path, value) of every image reference in a body, e.g. ("fusion[1]", url)."""
    for name in IMAGE_FIELDS:
        value = body.get(name)
        if isinstance(value, str):
            yield name, value
    for name in IMAGE_LIST_FIELDS:
        values = body.get(name)
        if isinstance(values, list):
            for i, value in enumerate(values):
                if isinstance(value, str):
                    yield f"{name}[{i}]", value


def carries_image_bytes(body: Mapping[str, Any]) -> bool:
    """Whether an image field holds the image itself (a data: URI or bare base64)."""
    return any(
        value.startswith("data:") or _BARE_BASE64.fullmatch(value[:4096]) is not None
        for _, value in image_values(body)
    )
