"""What the ledger keeps for provider callbacks: the secret of their URLs.

Invariant: the secret is made once per ledger (migration 3) and never changed, so a
rerun recognises the callback URLs an earlier run handed out. (Samples of what callbacks
carried are ordinary ``callback`` events, capped by the caller.)
"""

from __future__ import annotations

from runner.ledger import Ledger

META_CALLBACK_SECRET = "callback_secret"


async def callback_secret(ledger: Ledger) -> str:
    """The ledger's callback secret (64 hex digits)."""
    return await ledger.meta_value(META_CALLBACK_SECRET, "callback secret")
