"""The settings file: provider settings that ``pixrun doctor --save`` found, per base URL.

Where: ``$PIXRUN_CONFIG`` when set (an empty value means: no settings file at all),
else ``config.toml`` in the OS's user config folder for pixrun (platformdirs; on Linux
``~/.config/pixrun/config.toml``). The format is TOML, one table per base URL::

    [providers."https://api.302.ai"]
    fetch_path = "/pix/fetch/{task_id}"

Invariants:
- Keys are :class:`~runner.provider.config.ProviderConfig` fields, never ``api_key`` or
  ``base_url`` (the key lives in the environment only); any other key is a UsageError
  naming the file and the key, so a typo is never silently ignored.
- Saved settings sit UNDER explicit ones: a ``--provider-option`` always wins.
- A write replaces the file atomically (temp file beside it, fsync, rename) and keeps
  every other table and key, so two base URLs never lose each other's settings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w

from runner.errors import UsageError
from runner.fileio import write_atomically

ENV_CONFIG = "PIXRUN_CONFIG"
_TABLE = "providers"
#: never read from (or written to) the file
_FORBIDDEN = frozenset({"api_key", "base_url"})


def settings_path() -> Path | None:
    """The settings file's path (it need not exist), or None when it is switched off."""
    value = os.environ.get(ENV_CONFIG)
    if value is not None:
        return Path(value).expanduser() if value.strip() else None
    return Path(platformdirs.user_config_dir("pixrun")) / "config.toml"


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"the settings file {path} is not valid TOML: {exc}",
            hint=f"fix or delete it; set {ENV_CONFIG}= (empty) to run without it",
        ) from exc
    except OSError as exc:
        raise UsageError(f"cannot read the settings file {path}: {exc.strerror or exc}") from exc


def _providers(doc: Mapping[str, Any], path: Path) -> dict[str, Any]:
    tables = doc.get(_TABLE, {})
    if not isinstance(tables, dict):
        raise UsageError(f"{path}: [{_TABLE}] must be a table of base URLs")
    return tables


def saved_settings(base_url: str, known: Collection[str]) -> dict[str, Any]:
    """The saved settings of ``base_url`` (empty without a file or a table for it).

    ``known`` are the setting names the adapter takes; any other key is refused.
    """
    path = settings_path()
    if path is None:
        return {}
    table = _providers(_read(path), path).get(base_url.rstrip("/"), {})
    if not isinstance(table, dict):
        raise UsageError(f'{path}: [{_TABLE}."{base_url}"] must be a table')
    unknown = sorted(k for k in table if k in _FORBIDDEN or k not in known)
    if unknown:
        raise UsageError(
            f'{path}: [{_TABLE}."{base_url}"] has unknown setting(s): {", ".join(unknown)}',
            hint="known settings: " + ", ".join(sorted(set(known) - _FORBIDDEN)),
        )
    # TOML arrays come back as lists; the adapter's settings are immutable (tuples)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}


def save_settings(base_url: str, settings: Mapping[str, Any]) -> Path:
    """Merge ``settings`` into the table of ``base_url``; the file's path."""
    path = settings_path()
    if path is None:
        raise UsageError(
            f"{ENV_CONFIG} is set to an empty value: there is no settings file to save to",
            hint=f"unset {ENV_CONFIG}, or set it to a file path",
        )
    bad = sorted(set(settings) & _FORBIDDEN)
    if bad:
        raise ValueError(f"never saved to the settings file: {', '.join(bad)}")
    doc = _read(path)
    tables = _providers(doc, path)
    table = dict(tables.get(base_url.rstrip("/"), {}))
    table.update({k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})
    tables[base_url.rstrip("/")] = table
    doc[_TABLE] = tables
    _write_settings(path, tomli_w.dumps(doc).encode("utf-8"))
    return path


def _write_settings(path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data)  # 0600: the settings are the user's own
    except OSError as exc:
        raise UsageError(
            f"cannot write the settings file {path}: {exc.strerror or exc}",
            hint=f"set {ENV_CONFIG} to a writable path",
        ) from exc
