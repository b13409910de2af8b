"""The one exception hierarchy of pixrun.

Every exception pixrun raises on purpose derives from :class:`PixrunError`, and every
class carries the process exit code the CLI maps it to. Library exceptions (yaml,
aiohttp, sqlite3, OSError, ...) are translated at the module boundary that meets them,
with ``raise ... from exc``; only the CLI prints errors.

::

    PixrunError (exit 2 unless a subclass says otherwise)
    ├── UsageError                 bad command-line usage or a missing file (2)
    ├── ManifestError              the manifest cannot be used; carries every Problem (2)
    ├── BudgetExceeded             the plan or the run would pass the cost cap (4)
    ├── LedgerError                the ledger cannot be opened, read or written (2)
    │   ├── LedgerLocked           another pixrun run holds the ledger (2)
    │   └── LedgerSchemaError      the ledger is newer than this pixrun, or corrupt (2)
    ├── ProviderError              anything the provider said or failed to say
    │   ├── AuthRefused            401/403: bad or revoked key; stop everything (3)
    │   ├── OutOfCredit            402 or a balance message; stop submitting (4)
    │   ├── RateLimited            429 with Retry-After; wait, never a shot failure
    │   │   └── ConcurrencyLimited the account's concurrent-generation cap was hit
    │   ├── TransientError         5xx, refused/reset before the request was written
    │   │   └── UnknownProviderError an error code pixrun does not know, on HTTP 2xx
    │   ├── AmbiguousSubmit        timeout/reset AFTER a generate request was written
    │   ├── InvalidRequest         400/422 or a parameter ErrCode; the shot is invalid
    │   ├── TaskNotFound           a recognised envelope says: no such task
    │   ├── ContractMismatch       an answer pixrun does not recognise (a wrong route,
    │   │                          HTML, a redirect, no known envelope): stop all (5)
    │   └── DownloadError          a download could not be completed
    │       ├── UrlExpired         403/404 on a signed URL: fetch the task again
    │       ├── DownloadCorrupt    short body, not an MP4, checksum mismatch
    │       └── DownloadTooLarge   the body is larger than the configured cap
    ├── OutputConflict             a different file already exists at an output path
    ├── DiskFull                   ENOSPC while writing an output
    ├── BatchDefect                an unexpected exception ended one batch of several;
    │                              the others go on (1)
    └── Interrupted                Ctrl-C or SIGTERM (130)

Control-flow signals are not errors and do not live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from runner.text import plural


class ExitCode:
    """Process exit codes, documented in the README."""

    OK = 0  #: everything asked for succeeded
    SHOTS_FAILED = 1  #: the run finished but some shots did not succeed
    INVALID = 2  #: invalid input or usage
    AUTH = 3  #: the provider refused the API key
    MONEY = 4  #: budget cap or account balance
    CONTRACT = 5  #: the provider answered in a way pixrun does not recognise
    INTERRUPTED = 130  #: Ctrl-C or SIGTERM


class PixrunError(Exception):
    """Base of every error pixrun raises on purpose."""

    exit_code: int = ExitCode.INVALID

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: what the user can do about it, shown under the message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(PixrunError):
    """The command line asks for something impossible (a missing file, bad flags)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, located as precisely as we can."""

    file: str
    line: int | None
    #: a number, or a table column's name (CSV header, JSONL key): file:row:column
    column: int | str | None
    message: str
    shot_id: str | None = None
    field_path: str | None = None
    hint: str | None = None
    #: "error" stops a run; "warning" (duplicates and the like) does not
    severity: str = "error"
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    def location(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "shot_id": self.shot_id,
            "field": self.field_path,
            "message": self.message,
            "hint": self.hint,
        }


class BrakeHeld(PixrunError):
    """A watched manifest stopped by the failure-rate brake and not saved since: not
    run again as it is (exit 1)."""

    exit_code = ExitCode.SHOTS_FAILED


class CallbackPortBusy(UsageError):
    """The callback receiver cannot bind its HOST:PORT (another program holds it)."""


class LedgerOfAnotherBatch(UsageError):
    """The ledger found for a manifest records another batch (another ``name``)."""


class OutputsBusy(UsageError):
    """A batch would write files another batch of the same run is writing (exit 2)."""


class ManifestError(PixrunError):
    """The manifest cannot be used; ``problems`` lists every error found in one pass."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        n = sum(1 for p in problems if p.severity == "error")
        super().__init__(f"{plural(n, 'problem')} in the manifest")
        self.problems = list(problems)


class BudgetExceeded(PixrunError):
    """The plan, or the run so far plus what is in flight, would pass the cost cap."""

    exit_code = ExitCode.MONEY


class LedgerError(PixrunError):
    """The ledger cannot be opened, read or written."""


class LedgerLocked(LedgerError):
    """Another ``pixrun run`` holds this ledger's lock."""


class LedgerSchemaError(LedgerError):
    """The ledger was written by a newer pixrun, or is not a pixrun ledger."""


class ProviderError(PixrunError):
    """Anything the provider said, or failed to say. ``status`` is the HTTP status."""

    exit_code = ExitCode.SHOTS_FAILED

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        provider_code: int | str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.provider_code = provider_code


class AuthRefused(ProviderError):
    """401/403 on an API call: the key is wrong or revoked. Stop the run at once."""

    exit_code = ExitCode.AUTH


class OutOfCredit(ProviderError):
    """402, or a message about credits/balance: stop submitting, collect in-flight."""

    exit_code = ExitCode.MONEY


class RateLimited(ProviderError):
    """429: wait ``retry_after_s`` (when the provider said) and try again."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class ConcurrencyLimited(RateLimited):
    """The account's concurrent-generation cap was hit: lower in-flight target."""


class TransientError(ProviderError):
    """Safe to retry: 5xx, or a connection that failed before the request was written."""


class UnknownProviderError(TransientError):
    """A provider envelope on HTTP 2xx with an error code pixrun does not know. The
    provider answered (no outage to wait out) and made nothing: a bounded number of
    tries, never an hours-long back-off."""


class AmbiguousSubmit(ProviderError):
    """A generate request was written but no answer came: the task may exist and cost."""


class InvalidRequest(ProviderError):
    """The provider rejected the parameters; permanent for this shot."""


class TaskNotFound(ProviderError):
    """The provider does not know the task id."""


class ContractMismatch(ProviderError):
    """The provider answered in a way pixrun does not recognise: a route-level 404/405,
    a redirect, HTML or other non-JSON, or JSON in neither known envelope. Never read
    as "task gone": the run stops at once, nothing is marked failed, task ids are kept.
    ``shot_charged`` is True when the answer came to a generate request that may have
    created (and charged) a task."""

    exit_code = ExitCode.CONTRACT

    def __init__(self, message: str, *, shot_charged: bool = False, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.shot_charged = shot_charged


class DownloadError(ProviderError):
    """A download could not be completed."""


class UrlExpired(DownloadError):
    """The signed URL answered 403/404: fetch the task again for a fresh URL."""


class DownloadCorrupt(DownloadError):
    """The body was short, not an MP4, or otherwise unusable; nothing was kept."""


class DownloadTooLarge(DownloadError):
    """The body is larger than the configured cap; nothing was kept."""


class OutputConflict(PixrunError):
    """A different file already exists where an output would go; never overwritten."""

    exit_code = ExitCode.SHOTS_FAILED


class DiskFull(PixrunError):
    """The disk filled while writing an output; free space and rerun."""

    exit_code = ExitCode.SHOTS_FAILED


class BatchDefect(PixrunError):
    """An unexpected exception (a defect) ended one batch of several (``pixrun run a b``,
    ``pixrun watch``): that batch is told and reported as ended, and the others go on.
    Its ledger is consistent at every commit, so a rerun resumes it."""

    exit_code = ExitCode.SHOTS_FAILED

    @classmethod
    def of(cls, exc: BaseException) -> BatchDefect:
        defect = cls(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="a rerun resumes it from its ledger; please report this with the message",
        )
        defect.__cause__ = exc
        return defect


class Interrupted(PixrunError):
    """Ctrl-C or SIGTERM."""

    exit_code = ExitCode.INTERRUPTED
