"""Options and arguments that several commands share, and where their ledger is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from runner.errors import UsageError
from runner.ledger import default_ledger_path

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(path_type=Path, dir_okay=False)


def ledger_option(func: F) -> F:
    return click.option(
        "--ledger",
        type=_FILE,
        help="Ledger file (default: beside the manifest, <name>.ledger.sqlite).",
    )(func)


def rules_option(func: F) -> F:
    return click.option(
        "--rules",
        type=_FILE,
        help="Provider rules JSON: models, durations, limits (default: the packaged "
        "runner/data/rules.json).",
    )(func)


def optional_manifest_argument(func: F) -> F:
    """MANIFEST, optional where --ledger alone says where the batch is."""
    return click.argument("manifest", required=False, type=_FILE)(func)


def existing_ledger(manifest: Path | None, ledger: Path | None) -> Path:
    """The ledger a reading command works on; a clear error when there is none."""
    if ledger is not None:
        if not ledger.exists():
            raise UsageError(f"no ledger at {ledger}", hint="check the path given to --ledger")
        return ledger
    if manifest is None:
        raise UsageError("give the manifest (or the ledger with --ledger PATH)")
    path = default_ledger_path(manifest)
    if not path.exists():
        raise UsageError(
            f"no ledger for {manifest}: expected {path}",
            hint=f"'pixrun run {manifest}' creates it; a ledger elsewhere: --ledger PATH",
        )
    return path
