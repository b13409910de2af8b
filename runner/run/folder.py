"""The layout of a watched folder (``pixrun watch DIR``), for the watch and for the
commands that read a batch of it (status, report, retry, resolve). Light on purpose:
no HTTP client, so ``pixrun status`` still starts fast.

Invariants: a manifest's ledger lives in ``DIR/ledgers/`` under the manifest's file
name, wherever the manifest is in the folder's life (``DIR/``, ``DIR/done/``,
``DIR/rejected/``), so it is found from any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runner.ledger import default_ledger_path

DONE, REJECTED, LEDGERS = "done", "rejected", "ledgers"


def ledger_in(folder: Path, *, simulated: bool) -> Callable[[Path], Path]:
    """Where a manifest's ledger lives in the hot folder ``folder``."""
    ledgers = folder / LEDGERS

    def ledger_for(manifest_path: Path) -> Path:
        return ledgers / default_ledger_path(manifest_path, simulated=simulated).name

    return ledger_for


def watched_ledger(manifest_path: Path, *, simulated: bool) -> Path | None:
    """The ledger of a manifest that ran in a watched folder (it is in DIR, DIR/done/
    or DIR/rejected/ and DIR/ledgers/ holds its ledger); None otherwise."""
    parent = manifest_path.parent
    folder = parent.parent if parent.name in (DONE, REJECTED) else parent
    ledger = ledger_in(folder, simulated=simulated)(manifest_path)
    return ledger if ledger.is_file() else None
