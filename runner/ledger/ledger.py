"""The :class:`Ledger` class, put together from the parts that each do one job."""

from __future__ import annotations

from runner.ledger.actions import UserActions
from runner.ledger.reads import LedgerReads
from runner.ledger.run_writes import RunWrites
from runner.ledger.sync import ManifestSync


class Ledger(ManifestSync, RunWrites, UserActions, LedgerReads):
    """A batch's ledger. Create with :func:`runner.ledger.open_ledger`; use as an async
    context manager.

    Its methods come from: :class:`~runner.ledger.core.LedgerBase` (life cycle, meta),
    :class:`~runner.ledger.sync.ManifestSync` (the manifest sync),
    :class:`~runner.ledger.run_writes.RunWrites` (what a run records),
    :class:`~runner.ledger.actions.UserActions` (requeue, reroll, resolve) and
    :class:`~runner.ledger.reads.LedgerReads` (what the scheduler reads).
    """

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
