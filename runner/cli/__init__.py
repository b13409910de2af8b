"""The command line: parse, call the core, map errors to exit codes. Nothing else.

Each command group lives in its own module; this one owns ``main`` and the one place
where errors become messages and exit codes. No SQL and no HTTP here.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
from rich.markup import escape

from runner import __version__
from runner.cli.consoles import make_console, turn_colour_off
from runner.errors import ExitCode, ManifestError, PixrunError

#: errors go to stderr; command output goes to stdout (remade by --no-color)
err_console = make_console(stderr=True, soft_wrap=True)


def _no_color(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--no-color``: before anything prints, for every Console (runner.cli.consoles)."""
    global err_console
    if value:
        turn_colour_off()
        err_console = make_console(stderr=True, soft_wrap=True)


_NO_COLOR: dict[str, Any] = {
    "is_flag": True,
    "is_eager": True,
    "expose_value": False,
    "callback": _no_color,
    "help": "No colour or other styling in the output (as NO_COLOR=1 does).",
}


def print_error(exc: PixrunError) -> None:
    """The only place pixrun prints an error: message, then what to do about it."""
    from runner.cli.views import clean  # a provider's message may carry escapes

    if isinstance(exc, ManifestError):
        from runner.cli.render import print_problems

        print_problems(exc.problems, err_console)
    err_console.print(f"[bold red]error:[/] {escape(clean(str(exc)))}")
    if exc.hint:
        err_console.print(f"  [dim]hint:[/] {escape(clean(exc.hint))}")


#: command name -> the module that defines it (in its ``COMMANDS``). A command's module
#: is imported only when that command runs: ``pixrun run`` does not pay for the report
#: and table code, nor ``pixrun status --watch`` for the manifest loader.
_COMMAND_MODULES = {
    "validate": "runner.cli.manifest_cmds",
    "plan": "runner.cli.manifest_cmds",
    "schema": "runner.cli.manifest_cmds",
    "run": "runner.cli.run_cmds",
    "retry": "runner.cli.run_cmds",
    "resolve": "runner.cli.run_cmds",
    "status": "runner.cli.view_cmds",
    "report": "runner.cli.view_cmds",
    "sim": "runner.cli.sim_cmd",
    "doctor": "runner.cli.doctor_cmd",
    "watch": "runner.cli.multi_cmds",
}


class PixrunGroup(click.Group):
    """Loads each command on demand, and maps every foreseeable failure to a message
    and an exit code, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(_COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = _COMMAND_MODULES.get(cmd_name)
        if module_name is not None and cmd_name not in self.commands:
            module = importlib.import_module(module_name)
            for loaded in module.COMMANDS:
                self.commands.setdefault(loaded.name or "", loaded)
        command: click.Command | None = self.commands.get(cmd_name)
        if command is not None and not any(p.name == "no_color" for p in command.params):
            # after the command's name too (`pixrun status --no-color`), on every command,
            # whichever module defines it
            command.params.append(click.Option(["--no-color"], **_NO_COLOR))
        return command

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
@click.option("--no-color", **_NO_COLOR)
def cli() -> None:
    """Turn a YAML manifest of video shots into finished MP4 files through PixVerse.

    Exit codes: 0 success; 1 finished but some shots did not succeed; 2 invalid input
    or usage; 3 the provider refused the API key; 4 out of money; 5 the provider
    answered in a way pixrun does not recognise (run pixrun doctor); 130 interrupted.
    """


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="pixrun", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C during shutdown
        sys.exit(ExitCode.INTERRUPTED)
