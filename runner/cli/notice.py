"""``--notify`` and ``--on-finish`` of ``pixrun run``: the options, and the telling.

The summary and the sending are runner/notify.py's; this module only reads the options,
starts the sending once the run has ended, and says on stderr, once per target, what
could not be delivered. Nothing here changes an exit code.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.markup import escape

from runner import loops
from runner.cli.options import option_table
from runner.errors import PixrunError
from runner.text import plural

if TYPE_CHECKING:
    from runner.notify import Delivery
    from runner.run.batch import BatchOutcome
    from runner.run.multi import BatchEnd

F = TypeVar("F", bound=Callable[..., Any])


def _check_urls(
    ctx: click.Context, param: click.Parameter, urls: tuple[str, ...]
) -> tuple[str, ...]:
    from runner.notify import notify_url_fault

    for url in urls:
        fault = notify_url_fault(url)
        if fault is not None:
            raise click.BadParameter(f"{url[:60]!r} {fault}: give a full http(s) URL")
    return urls


def _check_command(ctx: click.Context, param: click.Parameter, command: str | None) -> str | None:
    from runner.notify import command_fault

    fault = None if command is None else command_fault(command)
    if fault is not None:
        raise click.BadParameter(f"{command!r} {fault}")
    return command


def notify_options(func: F) -> F:
    """``--notify URL`` (repeatable), ``--on-finish CMD`` and their hidden clocks; the
    command receives them as ``notify_urls``, ``on_finish``, ``notify_backoff_s``,
    ``notify_timeout_s`` and ``on_finish_timeout_s`` (see :meth:`Notice.of`)."""
    func = option_table(
        {
            "--notify-backoff-s": "First pause between notify tries (tests on a fast clock).",
            "--notify-timeout-s": "All tries of one notify URL together (tests on a fast clock).",
            "--on-finish-timeout-s": "How long --on-finish may take (tests on a fast clock).",
        },
        type=click.FloatRange(0.0, None),
        hidden=True,
    )(func)
    func = click.option(
        "--on-finish",
        metavar="CMD",
        callback=_check_command,
        help="Run CMD with the JSON summary on stdin when the run ends. CMD is split into "
        "words as a shell would, but run without one (write sh -c '...' for a pipeline); it "
        "does not get the API key, is stopped after 60 s, and its failure is reported, not "
        "fatal.",
    )(func)
    return click.option(
        "--notify",
        "notify_urls",
        multiple=True,
        metavar="URL",
        callback=_check_urls,
        help="POST a JSON summary (with a 'text' field for chat webhooks) to URL when the "
        "run ends, also when it stops early; adds to run.notify (repeatable). Retried a few "
        "times; never changes the exit code.",
    )(func)


class Notice:
    """Who is told that this run ended, and the telling: one summary per run, each
    target that could not be reached said once on stderr, the exit code kept."""

    def __init__(
        self,
        manifest: Path,
        urls: tuple[str, ...],
        on_finish: str | None,
        *,
        backoff_base_s: float | None = None,
        total_timeout_s: float | None = None,
        command_timeout_s: float | None = None,
    ) -> None:
        from runner.notify import NotifyPolicy

        default = NotifyPolicy()
        self.policy = NotifyPolicy(
            attempts=default.attempts,
            backoff_base_s=_or(backoff_base_s, default.backoff_base_s),
            attempt_timeout_s=default.attempt_timeout_s,
            total_timeout_s=_or(total_timeout_s, default.total_timeout_s),
            command_timeout_s=_or(command_timeout_s, default.command_timeout_s),
        )
        self.manifest = manifest
        self.name = manifest.stem
        self.urls = urls
        self.on_finish = on_finish
        self.started_s = time.monotonic()

    def like(self, manifest: Path) -> Notice:
        """The same command-line targets and clocks, for another manifest of the run."""
        other = copy.copy(self)
        other.manifest, other.name = manifest, manifest.stem
        return other

    def add(self, name: str, urls: tuple[str, ...]) -> None:
        """The manifest's own name and ``run.notify`` URLs, once it is loaded."""
        self.name = name
        self.urls = tuple(dict.fromkeys(urls + self.urls))

    @property
    def wanted(self) -> bool:
        return bool(self.urls) or self.on_finish is not None

    @contextlib.contextmanager
    def on_error(self) -> Iterator[None]:
        """Tell of a run that ends on an error (an invalid manifest, a plan over budget,
        a locked ledger...), then let the error go on to its message and exit code."""
        try:
            yield
        except PixrunError as exc:
            if self.wanted:
                from runner.notify import error_summary

                elapsed_s = time.monotonic() - self.started_s
                summary = error_summary(
                    exc,
                    manifest_name=self.name,
                    manifest_path=self.manifest,
                    exit_code=exc.exit_code,
                    elapsed_s=elapsed_s,
                )
                self._send(summary, None)
            raise

    def send_outcome(self, outcome: BatchOutcome) -> None:
        """Tell of a run that ended, finished or stopped early."""
        if self.wanted:
            self._send(None, outcome)

    async def tell_end(self, end: BatchEnd) -> None:
        """Tell of one manifest of several (``pixrun run a b``, ``pixrun watch``) that
        ended, ran or refused; what could not be delivered is said on stderr."""
        if not self.wanted:
            return
        summary = None
        if end.outcome is None:
            from runner.notify import error_summary

            error = end.error or PixrunError("not run")
            summary = error_summary(
                error,
                manifest_name=self.name,
                manifest_path=self.manifest,
                exit_code=end.exit_code,
                elapsed_s=time.monotonic() - self.started_s,
            )
        self.report(await self._tell(summary, end.outcome))

    def _send(self, summary: dict[str, Any] | None, outcome: BatchOutcome | None) -> None:
        from runner.cli import err_console

        try:
            deliveries = loops.run(self._tell(summary, outcome))
        except KeyboardInterrupt:
            err_console.print("[yellow]warning:[/] interrupted: the run's summary was not sent")
            return
        self.report(deliveries)

    def report(self, deliveries: list[Delivery]) -> None:
        """Say once per target what could not be delivered (the exit code stays)."""
        from runner.cli import err_console
        from runner.cli.views import clean

        for d in deliveries:
            if d.ok:
                continue
            if d.kind == "command":
                what = f"--on-finish command {d.target!r} failed"
            else:
                what = f"notify to {d.target} failed after {plural(d.attempts, 'try', 'tries')}"
            err_console.print(
                f"[yellow]warning:[/] {escape(clean(f'{what}: {d.error}'))} "
                "(the exit code is unchanged)"
            )

    async def _tell(
        self, summary: dict[str, Any] | None, outcome: BatchOutcome | None
    ) -> list[Delivery]:
        from runner.notify import deliver, summarise

        if summary is None:
            assert outcome is not None
            summary = await summarise(outcome, manifest_name=self.name, manifest_path=self.manifest)
        return await deliver(summary, self.urls, on_finish=self.on_finish, policy=self.policy)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
