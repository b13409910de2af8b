"""What the ledger keeps for provider callbacks: the secret of their URLs, and samples
of what they carried.

Invariants:
- The secret is made once per ledger (migration 3) and never changed, so a rerun
  recognises the callback URLs an earlier run handed out.
- A sample is an ordinary ``callback`` event; the caller caps its size.
"""

from __future__ import annotations

import sqlite3

from runner.errors import LedgerError, LedgerSchemaError
from runner.ledger import EventKind, Ledger

META_CALLBACK_SECRET = "callback_secret"


async def callback_secret(ledger: Ledger) -> str:
    """The ledger's callback secret (64 hex digits)."""
    try:
        rows = list(
            await ledger.connection.execute_fetchall(
                "SELECT value FROM meta WHERE key = ?", (META_CALLBACK_SECRET,)
            )
        )
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the ledger {ledger.path}: {exc}") from exc
    if not rows:
        raise LedgerSchemaError(f"the ledger {ledger.path} has no callback secret")
    return str(rows[0][0])


async def record_callback(ledger: Ledger, shot_id: str | None, sample: str) -> None:
    """Keep what one callback carried (already capped by the caller)."""
    await ledger.add_event(EventKind.CALLBACK, shot_id, sample)
