"""The command line: parse, call the core, map errors to exit codes. Nothing else.

Each command group lives in its own module; this one owns ``main`` and the one place
where errors become messages and exit codes. No SQL and no HTTP here.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from runner import __version__
from runner.errors import ExitCode, ManifestError, PixrunError

#: errors go to stderr; command output goes to stdout
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(exc: PixrunError) -> None:
    """The only place pixrun prints an error: message, then what to do about it."""
    if isinstance(exc, ManifestError):
        from runner.cli.render import print_problems

        print_problems(exc.problems, err_console)
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
    if exc.hint:
        err_console.print(f"  [dim]hint:[/] {escape(exc.hint)}")


class PixrunGroup(click.Group):
    """Maps every foreseeable failure to a message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PixrunError as exc:
            print_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            ctx.exit(ExitCode.INTERRUPTED)


@click.group(cls=PixrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pixrun")
def cli() -> None:
    """Turn a YAML manifest of video shots into finished MP4 files through PixVerse.

    Exit codes: 0 success; 1 finished but some shots did not succeed; 2 invalid input
    or usage; 3 the provider refused the API key; 4 out of money; 130 interrupted.
    """


def _register() -> None:
    # Imported here so that each command module can import ``cli`` from this package.
    from runner.cli import manifest_cmds, run_cmds, sim_cmd, view_cmds

    for module in (manifest_cmds, run_cmds, view_cmds, sim_cmd):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="pixrun", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C during shutdown
        sys.exit(ExitCode.INTERRUPTED)
