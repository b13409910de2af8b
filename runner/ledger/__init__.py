"""The ledger: one SQLite file per batch that records everything a run does.

All SQL of pixrun lives in this package. The scheduler calls the methods of
:class:`Ledger`; reports and status views call :mod:`runner.ledger.queries`.

The package, by job: ``rows`` (what a row is), ``batcher`` (every write transaction),
``lock`` and ``opening`` (the run lock, migrations), ``sync`` (manifest sync) and
``classify`` (its rule, shared with the run's preview and ``pixrun plan``),
``run_writes``, ``actions`` and ``reads`` (the parts of :class:`Ledger`), ``queries``
(read-only views for status, report and plan).

Invariants (the promises every other module relies on):

1. **Intent before bytes.** A shot moves ``pending -> submitting`` together with a new
   ``attempts`` row (outcome ``sending``) in one committed transaction, and
   :meth:`Ledger.begin_attempt` returns only after that commit is durable. The
   scheduler sends no byte of a generate request before it returns.
2. **Task ids are committed the moment they are known.** :meth:`Ledger.attempt_accepted`
   returns only after the commit that stores the task id.
3. **A shot found in ``submitting`` when a run starts is ambiguous**: its request may
   have reached the provider and been charged. :meth:`Ledger.recover` parks it; nothing
   resubmits it without an explicit ``pixrun retry --ambiguous`` or ``pixrun resolve``.
4. **One writer.** A run holds an exclusive OS file lock on ``<ledger>.lock``
   (``flock``, or ``LockFileEx`` on Windows, taken through ``filelock``; never a soft
   lock), which the kernel releases even on ``kill -9``. Readers (status, report,
   plan) never take it and never write.
5. **Durable and consistent at every commit.** WAL journal with ``synchronous=FULL``
   (asserted at open), ``BEGIN IMMEDIATE`` for every write transaction. Writes from many
   concurrent shots are grouped into one transaction by the write batcher, which only
   ever delays a commit, never reorders the writes of one shot.
6. **The API key is never written here.** Requests are stored as sent, without headers.

Money is stored as integer micro-PTC (``*_uptc``); times are unix seconds (REAL).
"""

from runner.ledger.ledger import Ledger
from runner.ledger.opening import default_ledger_path, move_ledger, open_ledger
from runner.ledger.rows import (
    META_PROVIDER,
    META_TRACE_SECRET,
    SIM_INFIX,
    SPENT_PARAMS,
    SPENT_SQL,
    AttemptOutcome,
    EventKind,
    ShotRow,
    SyncResult,
)

__all__ = [
    "META_PROVIDER",
    "META_TRACE_SECRET",
    "SIM_INFIX",
    "SPENT_PARAMS",
    "SPENT_SQL",
    "AttemptOutcome",
    "EventKind",
    "Ledger",
    "ShotRow",
    "SyncResult",
    "default_ledger_path",
    "move_ledger",
    "open_ledger",
]
