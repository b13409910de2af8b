"""Cells of a ``shots_from`` table: how a CSV/TSV cell becomes a shot field's value,
and the names a table gives to places (spreadsheet columns, ids from image names).

Split from :mod:`runner.manifest.tables` (which reads the files) so each stays one job:
this module holds no state and reads nothing; every function is pure text in, value
out.

Cell syntax (CSV/TSV cells are text; JSONL values are already typed):

- an empty cell (or one of only spaces) means "not set"; other cells are stripped;
- whole numbers, numbers and true/false (also yes/no, 1/0) by the field's type;
- a list (``fusion``, ``image_list``): items separated by ``|`` (``a.png | b.png``),
  or a JSON list when the cell starts with ``[``;
- an object (``motion_scale``, ``vary``): a JSON object (``{"x": 2}``);

A cell that cannot be read as its field's type raises :class:`CellError`, which
the reader turns into a located problem; nothing else raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

#: items of a list cell are separated by this (``a.png | b.png``)
LIST_SEPARATOR = "|"

_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")


class CellError(Exception):
    """A cell that is not its field's type. Control flow inside the manifest package
    only: the table reader turns it into a located problem, so it never reaches a
    caller and stays outside :mod:`runner.errors`."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


Convert = Callable[[str], Any]


def as_text(cell: str) -> str:
    return cell


def _integer(cell: str) -> int:
    if not _INTEGER.fullmatch(cell):
        raise CellError(f"{cell[:40]!r} is not a whole number", "write a whole number, e.g. 3")
    return int(cell)


def _number(cell: str) -> int | float:
    if _INTEGER.fullmatch(cell):
        return int(cell)
    if not _NUMBER.fullmatch(cell):
        raise CellError(f"{cell[:40]!r} is not a number", "write a number, e.g. 0.5")
    return float(cell)


def _boolean(cell: str) -> bool:
    flag = _BOOLEANS.get(cell.lower())
    if flag is None:
        raise CellError(f"{cell[:40]!r} is not true or false", "write true or false")
    return flag


def _json(cell: str, kind: type, example: str) -> Any:
    what = "a JSON list" if kind is list else "a JSON object"
    try:
        value = json.loads(cell)
    except json.JSONDecodeError as exc:
        raise CellError(
            f"not {what}: {exc.msg} (character {exc.pos + 1})", f"write {what}, e.g. {example}"
        ) from exc
    except RecursionError as exc:
        raise CellError(f"{what} nested too deeply", "flatten it") from exc
    if not isinstance(value, kind):
        raise CellError(f"must be {what}", f"write {what}, e.g. {example}")
    return value


def _json_object(cell: str) -> Any:
    return _json(cell, dict, '{"x": 2}')


def _list_of(item: Convert) -> Convert:
    def convert(cell: str) -> list[Any]:
        if cell.startswith("["):
            return [item(v) if isinstance(v, str) else v for v in _json(cell, list, '["a.png"]')]
        parts = [part.strip() for part in cell.split(LIST_SEPARATOR)]
        if "" in parts:
            raise CellError(
                "the list has an empty item",
                f"separate items with {LIST_SEPARATOR!r}: a.png {LIST_SEPARATOR} b.png",
            )
        return [item(part) for part in parts]

    return convert


def _spelling(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _choice_of(values: list[Any]) -> Convert:
    """A field whose values mix kinds (duration: 5 or "5s"): the value a cell spells;
    anything else is left as text for the shape check to refuse with the choices."""
    spelled = {_spelling(v).lower(): v for v in values}

    def convert(cell: str) -> Any:
        return spelled.get(cell.lower(), cell)

    return convert


def converter(prop: Mapping[str, Any]) -> Convert:
    """How a cell becomes the value of a shot field with the schema ``prop``."""
    kind = prop.get("type")
    if kind == "string":
        choices = prop.get("enum")
        if choices:
            # the schema's own string objects: one for every row that uses a choice
            known = {c: c for c in choices}
            return lambda cell: known.get(cell, cell)
        return as_text
    if kind == "integer":
        return _integer
    if kind == "number":
        return _number
    if kind == "boolean":
        return _boolean
    if kind == "array":
        return _list_of(converter(prop.get("items", {})))
    if kind == "object":
        return _json_object
    if "enum" in prop:
        return _choice_of(list(prop["enum"]))
    return as_text


def column_letters(position: int) -> str:
    """A spreadsheet's name for the column at 0-based ``position``: A, B, ..., AA."""
    out = ""
    n = position + 1
    while n:
        n, rest = divmod(n - 1, 26)
        out = chr(ord("A") + rest) + out
    return out


def image_id(path: str) -> str:
    """A shot id from an image file's name: its stem, with anything an id cannot hold
    (spaces, accents, ...) as '-'; '' when nothing is left."""
    stem = PurePath(path).stem
    return _DOTS.sub(".", _NOT_ID.sub("-", stem)).strip("-.")
