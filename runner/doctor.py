"""``pixrun doctor``: prove a setup works and find the provider's routes, for free.

Each check is a record (name, ok | warn | fail, what was found, the fix); the CLI draws
them and exits with :attr:`DoctorReport.exit_code`.

Invariants:
- Free: nothing here can create a task. Fetches ask for a made-up task id; the one POST
  to the generate route carries a body the provider must refuse (no prompt, a model that
  does not exist). Should the answer carry a task id anyway, the check fails loudly and
  says that a task may have been created.
- Every reading of an answer goes through :func:`runner.provider.probe.classify`, the
  one rule for "this route exists" (and never through a guess of our own).
- Nothing prints, and every HTTP call goes through runner/provider/probe.py.

Size: about 550 lines, one module: the checks share one probe session and one report;
the spend check is in runner/doctor_spend.py.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import secrets
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from runner.errors import (
    AuthRefused,
    ContractMismatch,
    ExitCode,
    OutOfCredit,
    PixrunError,
    UsageError,
)
from runner.provider import ProviderConfig
from runner.provider.probe import (
    CONTROL_FETCH_ROUTE,
    FETCH_ROUTE_CANDIDATES,
    ProbeAnswer,
    Prober,
    Verdict,
    accepted_task,
    classify,
    dialect_of,
)
from runner.provider.verdicts import Op, error_for, read_envelope

#: the generate body the provider must refuse: no prompt, a model no provider has
PROBE_MODEL = "pixrun-doctor-probe"
#: free space under which the output folder is a warning
MIN_FREE_BYTES = 10**9
#: local clock further than this from the provider's is a warning
MAX_CLOCK_SKEW_S = 300.0
#: exit codes of failed checks, most telling first
_EXIT_PRIORITY = (ExitCode.AUTH, ExitCode.CONTRACT, ExitCode.INVALID)
_ROUTE_EXISTS = (Verdict.NO_SUCH_TASK, Verdict.ENVELOPE)


#: the checks, in the order they are shown
KEY = "key"
DIALECT = "dialect"
GENERATE = "generate route"
FETCH = "fetch route"
UPLOAD = "upload route"
DISK = "disk space"
LEDGER = "ledger folder"
CLOCK = "clock"


class Outcome(StrEnum):
    """A check's result."""

    OK = "ok"  #: proven to work
    WARN = "warn"  #: works, or could not be proven, with something to know
    FAIL = "fail"  #: will not work as configured


@dataclass(frozen=True)
class Check:
    """One check's record."""

    name: str
    outcome: Outcome
    #: what was found, in words (HTTP status, envelope, message)
    found: str
    #: what to do about it ("" when nothing)
    fix: str = ""
    #: the process exit code a failure stands for (only meaningful when FAIL)
    exit_code: int = ExitCode.OK
    #: provider settings that make this check pass (``pixrun doctor --save`` keeps them)
    remedy: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": self.outcome.value,
            "found": self.found,
            "fix": self.fix,
            "remedy": dict(self.remedy),
        }


@dataclass(frozen=True)
class DoctorReport:
    """Every check, the settings proven to work, and the raw answers behind them."""

    base_url: str
    checks: tuple[Check, ...]
    #: provider settings proven to work (fetch_path, generate_path): what --save keeps
    working: Mapping[str, str]
    answers: tuple[ProbeAnswer, ...] = ()

    @property
    def exit_code(self) -> int:
        codes = {c.exit_code for c in self.checks if c.outcome is Outcome.FAIL}
        for code in _EXIT_PRIORITY:
            if code in codes:
                return code
        return max(codes, default=ExitCode.OK)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.outcome is Outcome.FAIL]

    def problem(self) -> PixrunError | None:
        """The error the CLI exits with (None when every check passed or warned)."""
        code = self.exit_code
        failed = [c for c in self.failures() if c.exit_code == code]
        if not failed:
            return None
        fixes = "; ".join(dict.fromkeys(_option(c) or c.fix for c in failed if c.fix))
        names = ", ".join(c.name for c in failed)
        if code == ExitCode.AUTH:
            return AuthRefused(
                f"the provider at {self.base_url} refused the API key", hint=fixes or None
            )
        if code == ExitCode.CONTRACT:
            found = any(c.remedy for c in failed)
            return ContractMismatch(
                f"the configured routes do not match the provider at {self.base_url} "
                f"({names}): {fixes}",
                hint="pixrun doctor --save keeps the routes it found, for every later command"
                if found
                else None,
            )
        return UsageError(f"pixrun doctor: {names} failed", hint=fixes or None)

    def with_check(self, check: Check) -> DoctorReport:
        """The report with one more check at the end."""
        return replace(self, checks=(*self.checks, check))

    def with_saved(self, saved: Mapping[str, str], where: Path) -> DoctorReport:
        """The report once ``saved`` is in the settings file: a check that those
        settings fix passes, saying so."""
        checks = []
        for check in self.checks:
            if check.outcome is Outcome.FAIL and check.remedy and _within(check.remedy, saved):
                setting = ", ".join(f"{k}={v}" for k, v in check.remedy.items())
                check = replace(
                    check,
                    outcome=Outcome.OK,
                    found=f"{check.found}; saved {setting} to {where}",
                    fix="",
                    exit_code=ExitCode.OK,
                )
            checks.append(check)
        return replace(self, checks=tuple(checks))

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "exit_code": self.exit_code,
            "checks": [c.to_dict() for c in self.checks],
            "working": dict(self.working),
            "answers": [a.to_dict() for a in self.answers],
        }


def _option(check: Check) -> str:
    """The ``--provider-option`` flags that fix ``check`` ("" when none is known)."""
    return " ".join(f"--provider-option {k}={v}" for k, v in check.remedy.items())


def _within(small: Mapping[str, str], big: Mapping[str, str]) -> bool:
    return all(big.get(k) == v for k, v in small.items())


def made_up_task_id() -> str:
    """A task id no one has: 18 random digits, shaped like PixVerse's ids, so a
    provider that checks the shape still answers "no such task" rather than "invalid"."""
    return "9" + "".join(str(secrets.randbelow(10)) for _ in range(17))


def probe_generate_body() -> dict[str, Any]:
    """The generate request the provider must refuse."""
    return {"model": PROBE_MODEL}


# -- the run ------------------------------------------------------------------------------


async def diagnose(config: ProviderConfig, *, output_dir: Path, ledger_dir: Path) -> DoctorReport:
    """Run every check against the provider of ``config`` and this machine; free."""
    task_id = made_up_task_id()
    async with Prober(config) as prober:
        configured = await prober.get(config.fetch_url(task_id))
        first = classify(configured)
        if first in (Verdict.KEY_REFUSED, Verdict.NO_ANSWER):
            provider_checks = _stopped_early(configured, first)
            answers: list[ProbeAnswer] = [configured]
        else:
            others = [r for r in FETCH_ROUTE_CANDIDATES if r != config.fetch_path]
            generate, upload, control, *alternatives = await asyncio.gather(
                prober.post_json(
                    config.generate_url(), probe_generate_body(), trace_id=str(uuid.uuid4())
                ),
                prober.post_empty_form(config.upload_url()),
                prober.get(config.url_of(CONTROL_FETCH_ROUTE, task_id)),
                *(prober.get(config.url_of(r, task_id)) for r in others),
            )
            fetch_answers = {
                config.fetch_path: configured,
                **dict(zip(others, alternatives, strict=True)),
            }
            answers = [configured, generate, upload, control, *alternatives]
            provider_checks = [
                check_key(configured, answers),
                check_dialect(generate, _speaking(fetch_answers, configured)),
                check_generate(config, generate),
                check_fetch(config, fetch_answers, control),
                check_upload(upload),
            ]
    checks = [
        *provider_checks,
        check_disk(output_dir),
        check_ledger_folder(ledger_dir),
        check_clock(answers),
    ]
    return DoctorReport(
        base_url=config.base_url,
        checks=tuple(checks),
        working=_working(checks, config),
        answers=tuple(answers),
    )


def _speaking(answers: Mapping[str, ProbeAnswer], configured: ProbeAnswer) -> ProbeAnswer:
    """The fetch answer that tells the dialect: the configured route's, else the first
    other route's in a provider envelope (a wrong fetch_path says nothing about it)."""
    if dialect_of(configured) is not None:
        return configured
    return next((a for a in answers.values() if dialect_of(a) is not None), configured)


def _working(checks: Iterable[Check], config: ProviderConfig) -> dict[str, str]:
    """The routes the checks proved: the configured ones that passed, or a found one."""
    working: dict[str, str] = {}
    for check in checks:
        if check.name == GENERATE and check.outcome is Outcome.OK:
            working["generate_path"] = config.generate_path
        if check.name == FETCH:
            if check.outcome is Outcome.OK:
                working["fetch_path"] = config.fetch_path
            elif "fetch_path" in check.remedy:
                working["fetch_path"] = check.remedy["fetch_path"]
    return working


def _stopped_early(answer: ProbeAnswer, verdict: Verdict) -> list[Check]:
    """The key was refused, or nothing answered: the route checks cannot say anything."""
    key = check_key(answer, [answer])
    why = "the key was refused" if verdict is Verdict.KEY_REFUSED else "the provider did not answer"
    skipped = [
        Check(name, Outcome.WARN, f"not checked: {why}")
        for name in (DIALECT, GENERATE, FETCH, UPLOAD)
    ]
    return [key, *skipped]


# -- provider checks ----------------------------------------------------------------------


def _where(answer: ProbeAnswer) -> str:
    return f"{answer.request.get('method', '?')} {_path(answer.url)}"


def _path(url: str) -> str:
    """The path and query of a URL (the base URL is in the report's title)."""
    rest = url.split("://", 1)[-1]
    cut = rest.find("/")
    return rest[cut:] if cut >= 0 else "/"


def check_key(primary: ProbeAnswer, answers: Sequence[ProbeAnswer]) -> Check:
    """401/403 anywhere: refused. A recognised envelope anywhere: accepted."""
    if classify(primary) is Verdict.NO_ANSWER:
        return Check(
            KEY,
            Outcome.FAIL,
            f"{_where(primary)}: {primary.error}",
            "check the network, and the base URL (PIXRUN_BASE_URL or --base-url)",
            exit_code=ExitCode.INVALID,
        )
    refused = [a for a in answers if classify(a) is Verdict.KEY_REFUSED]
    if refused:
        return Check(
            KEY,
            Outcome.FAIL,
            f"refused: {_where(refused[0])} answered {refused[0].summary()}",
            "check PIXRUN_API_KEY: it must be a key of this provider, not revoked",
            exit_code=ExitCode.AUTH,
        )
    recognised = [a for a in answers if dialect_of(a) is not None]
    if recognised:
        return Check(
            KEY,
            Outcome.OK,
            f"accepted: {_where(recognised[0])} answered {recognised[0].summary()}",
        )
    return Check(
        KEY,
        Outcome.WARN,
        "not proven: no route answered in a provider envelope, so the key was never read",
        "fix the routes below first",
    )


def check_dialect(generate: ProbeAnswer, fetch: ProbeAnswer) -> Check:
    """Which envelope family the API speaks (pixrun reads both, per answer)."""
    seen = {
        name: d
        for name, d in (("generate", dialect_of(generate)), ("fetch", dialect_of(fetch)))
        if d
    }
    families = set(seen.values())
    if not families:
        return Check(
            DIALECT,
            Outcome.FAIL,
            "no answer came in a known envelope (PixVerse ErrCode/ErrMsg/Resp, "
            "or gateway code/msg/data)",
            "check that the base URL is the 302.AI API (PIXRUN_BASE_URL or --base-url)",
            exit_code=ExitCode.CONTRACT,
        )
    if len(families) == 1:
        family = families.pop()
        shape = "ErrCode/ErrMsg/Resp" if family == "pixverse" else "code/msg/data"
        return Check(DIALECT, Outcome.OK, f"{family} ({shape}), from {' and '.join(seen)}")
    mixed = ", ".join(f"{name} answers {d}" for name, d in seen.items())
    return Check(DIALECT, Outcome.OK, f"mixed: {mixed} (pixrun reads both)")


def _no_verdict(name: str, where: str, answer: ProbeAnswer) -> Check:
    """An answer that proves nothing either way (a busy gateway): try again later."""
    found = f"no verdict: {where} answered {answer.summary()}"
    return Check(name, Outcome.WARN, found, "run pixrun doctor again in a minute")


#: answers that fail the generate check outright: what was found, the fix, the exit code
_GENERATE_FAILS: dict[Verdict, tuple[str, str, int]] = {
    Verdict.KEY_REFUSED: (
        "{where}: the key was refused ({summary})",
        "check PIXRUN_API_KEY",
        ExitCode.AUTH,
    ),
    Verdict.ROUTE_LEVEL: (
        "{where} is not the API: {summary}",
        "--provider-option generate_path=PATH (the text-to-video path in 302.AI's docs)",
        ExitCode.CONTRACT,
    ),
}


def check_generate(config: ProviderConfig, answer: ProbeAnswer) -> Check:
    """The generate route refuses a request that cannot be valid, in an envelope."""
    name = GENERATE
    verdict = classify(answer)
    task = accepted_task(answer) if verdict in _ROUTE_EXISTS else None
    if task is not None:
        return Check(
            name,
            Outcome.FAIL,
            f"A TASK MAY HAVE BEEN CREATED: {_where(answer)} accepted a request with no "
            f"prompt and model {PROBE_MODEL!r} (task id {task}): {answer.summary()}",
            "look for the task in your 302.AI dashboard, and report this answer "
            "(pixrun doctor --format json shows it whole)",
            exit_code=ExitCode.CONTRACT,
        )
    if verdict in _GENERATE_FAILS:
        found, fix, code = _GENERATE_FAILS[verdict]
        text = found.format(where=_where(answer), summary=answer.summary())
        return Check(name, Outcome.FAIL, text, fix, exit_code=code)
    if verdict in (Verdict.INCONCLUSIVE, Verdict.NO_ANSWER):
        return _no_verdict(name, _where(answer), answer)
    err = error_for(Op.GENERATE, answer.status or 0, answer.headers, answer.body)
    if isinstance(err, ContractMismatch):
        # read as a run reads it: a "not found" names no task here, the route is missing
        found, fix, code = _GENERATE_FAILS[Verdict.ROUTE_LEVEL]
        text = found.format(where=_where(answer), summary=answer.summary())
        return Check(name, Outcome.FAIL, text, fix, exit_code=code)
    if isinstance(err, OutOfCredit):
        return Check(
            name,
            Outcome.WARN,
            f"{_where(answer)} answers, but the account is out of credit: {answer.summary()}",
            "top up the 302.AI account before a run",
        )
    status = answer.status or 0
    refused = status in (400, 422) or (200 <= status < 300 and not read_envelope(answer.body).ok)
    if refused:
        return Check(
            name, Outcome.OK, f"{_where(answer)} refused an empty request: {answer.summary()}"
        )
    return Check(
        name,
        Outcome.WARN,
        f"{_where(answer)} answers in the provider's envelope, but not with a refusal: "
        f"{answer.summary()}",
        "run pixrun doctor again; if it stays, report this answer",
    )


def check_fetch(
    config: ProviderConfig, answers: Mapping[str, ProbeAnswer], control: ProbeAnswer
) -> Check:
    """Which fetch routes exist: a "no such task" (or a task) in an envelope says yes."""
    name = FETCH
    configured = config.fetch_path
    mine = answers[configured]
    if classify(control) in _ROUTE_EXISTS:
        return Check(
            name,
            Outcome.WARN,
            f"cannot tell: a route no API has ({_path(control.url)}) answers like a real "
            f"one ({control.summary()}), so no route is proven by a made-up task id",
            "pixrun doctor --spend proves the fetch route with one real task (0.1 PTC)",
        )
    verdict = classify(mine)
    if verdict in _ROUTE_EXISTS:
        return Check(name, Outcome.OK, f"{configured} answers: {mine.summary()}")
    if verdict in (Verdict.INCONCLUSIVE, Verdict.NO_ANSWER):
        return _no_verdict(name, configured, mine)
    found = [r for r, a in answers.items() if r != configured and classify(a) in _ROUTE_EXISTS]
    if not found:
        return Check(
            name,
            Outcome.FAIL,
            f"no fetch route answered in a provider envelope: tried {len(answers)} routes; "
            f"{configured} answered {mine.summary()}",
            "ask 302.AI for the fetch URL of its PixVerse API, then "
            "--provider-option fetch_path=PATH (with {task_id} where the id goes)",
            exit_code=ExitCode.CONTRACT,
        )
    best = found[0]
    also = f" (also: {', '.join(found[1:])})" if len(found) > 1 else ""
    return Check(
        name,
        Outcome.FAIL,
        f"{configured} is not the API ({mine.summary()}); {best} answers: "
        f"{answers[best].summary()}{also}",
        f"--provider-option fetch_path={best}, or pixrun doctor --save to keep it",
        exit_code=ExitCode.CONTRACT,
        remedy={"fetch_path": best},
    )


def check_upload(answer: ProbeAnswer) -> Check:
    """The upload route refuses an empty form in an envelope: it exists."""
    name = UPLOAD
    verdict = classify(answer)
    fix = "--provider-option image_encoding=data_uri sends local images inside the request"
    missing = isinstance(
        error_for(Op.UPLOAD, answer.status or 0, answer.headers, answer.body), ContractMismatch
    )
    if verdict in _ROUTE_EXISTS and not missing:
        return Check(
            name, Outcome.OK, f"{_where(answer)} refused an empty form: {answer.summary()}"
        )
    if missing:
        verdict = Verdict.ROUTE_LEVEL
    if verdict is Verdict.ROUTE_LEVEL:
        return Check(name, Outcome.WARN, f"{_where(answer)} is missing: {answer.summary()}", fix)
    return Check(
        name, Outcome.WARN, f"no verdict: {_where(answer)} answered {answer.summary()}", fix
    )


# -- machine checks -----------------------------------------------------------------------


def _existing_ancestor(folder: Path) -> Path:
    path = folder.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(folder: Path) -> Check:
    """Free space where the videos will go."""
    name = DISK
    try:
        free = shutil.disk_usage(_existing_ancestor(folder)).free
    except OSError as exc:
        return Check(
            name,
            Outcome.FAIL,
            f"cannot read the free space of {folder}: {exc.strerror or exc}",
            "check the output folder (output.dir in the manifest)",
            exit_code=ExitCode.INVALID,
        )
    shown = f"{free / 10**9:.1f} GB free for {folder}"
    if free < MIN_FREE_BYTES:
        return Check(
            name, Outcome.WARN, shown, "free some space, or set output.dir to another disk"
        )
    return Check(name, Outcome.OK, shown)


def check_ledger_folder(folder: Path) -> Check:
    """The ledger's folder takes a new file (created, written, deleted)."""
    name = LEDGER
    probe = folder / f".pixrun-doctor-{secrets.token_hex(4)}.probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"pixrun doctor\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        return Check(
            name,
            Outcome.FAIL,
            f"cannot write in {folder}: {exc.strerror or exc}",
            "run from a writable folder, or keep the ledger elsewhere with --ledger PATH",
            exit_code=ExitCode.INVALID,
        )
    return Check(name, Outcome.OK, f"{folder} is writable")


def check_clock(answers: Sequence[ProbeAnswer]) -> Check:
    """The local clock against the provider's ``Date`` header."""
    name = CLOCK
    for answer in answers:
        value = answer.headers.get("Date")
        if not value:
            continue
        try:
            provider_s = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            continue
        skew_s = answer.received_at_s - provider_s
        if abs(skew_s) > MAX_CLOCK_SKEW_S:
            return Check(
                name,
                Outcome.WARN,
                f"the local clock is {skew_s:+.0f} s off the provider's ({value})",
                "sync the clock (NTP): expiring download URLs and Retry-After dates need it",
            )
        return Check(name, Outcome.OK, f"within {max(abs(skew_s), 1):.0f} s of the provider's")
    return Check(
        name, Outcome.WARN, "not compared: no answer carried a Date header", "run doctor again"
    )
