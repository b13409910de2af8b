"""Options and arguments that several commands share, and where their ledger is."""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from runner.errors import UsageError
from runner.ledger import default_ledger_path
from runner.stdin import STDIN_LABEL, is_stdin

if TYPE_CHECKING:
    # runner.manifest (and the loader with it) is imported only where a command reads
    # a manifest: `pixrun status` starts without it
    from runner.manifest.source import ManifestText
    from runner.model import Manifest

F = TypeVar("F", bound=Callable[..., Any])

#: a file option's type: a Path, never a folder
FILE = click.Path(path_type=Path, dir_okay=False)


def _file_option(name: str, help_text: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        return click.option(name, type=FILE, help=help_text)(func)

    return decorate


ledger_option = _file_option(
    "--ledger",
    "Ledger file (default: beside the manifest, <name>.ledger.sqlite; for '-', in the "
    "current folder).",
)
rules_option = _file_option(
    "--rules",
    "Provider rules JSON: models, durations, limits (default: the packaged "
    "runner/data/rules.json).",
)


class _Ptc(click.ParamType[Decimal]):
    """An amount of PTC (``12.5``), kept exact as a Decimal; never negative."""

    name = "ptc"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            self.fail(f"{value!r} is not an amount of PTC (write e.g. 12.5)", param, ctx)
        if not amount.is_finite() or amount < 0:
            self.fail(f"{value!r}: an amount of PTC is a number >= 0", param, ctx)
        return amount


#: an amount of PTC on the command line: --max-cost, the simulator's balance and prices
PTC = _Ptc()


def max_cost_option(help_text: str) -> Callable[[F], F]:
    """``--max-cost PTC``, as ``max_cost`` (a Decimal or None): what it caps is the
    command's to say (one plan, one run, several runs together)."""

    def decorate(func: F) -> F:
        return click.option("--max-cost", metavar="PTC", type=PTC, help=help_text)(func)

    return decorate


def format_option(*choices: str, help_text: str | None = None) -> Callable[[F], F]:
    """``--format``, as ``fmt``: one of ``choices``, the first by default."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help=help_text,
    )


def option_table(helps: Mapping[str, str], **common: Any) -> Callable[[F], F]:
    """One option per ``{"--name": help}`` entry, in that order, all made with ``common``
    (``is_flag=True``, a type, ``hidden=True``...): a run of alike options as one table."""

    def decorate(func: F) -> F:
        for name, help_text in reversed(list(helps.items())):
            func = click.option(name, help=help_text, **common)(func)
        return func

    return decorate


def _render_range(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        low, _, high = value.partition(",")
        pair = (float(low), float(high or low))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: expected MIN,MAX seconds, e.g. 1,3") from exc
    if pair[0] < 0 or pair[1] < pair[0]:
        raise click.BadParameter(f"{value!r}: need 0 <= MIN <= MAX")
    return pair


def sim_render_time_option(func: F) -> F:
    """``--sim-render-time MIN,MAX``, given to the command as ``(min_s, max_s)``."""
    return click.option(
        "--sim-render-time",
        default="1,3",
        show_default=True,
        metavar="MIN,MAX",
        callback=_render_range,
        help="With --simulate: render time in seconds, uniform between MIN and MAX.",
    )(func)


def optional_manifest_argument(func: F) -> F:
    """MANIFEST, optional where --ledger alone says where the batch is."""
    return click.argument("manifest", required=False, type=FILE)(func)


# -- '-': the manifest on standard input ---------------------------------------------------


@functools.cache
def _stdin_manifest() -> ManifestText:
    """Standard input, read once per process however many times it is asked for."""
    from runner.manifest.loader import MAX_FILE_BYTES
    from runner.manifest.source import read_manifest_stream

    stream = sys.stdin.buffer
    if stream.isatty():
        click.echo(f"reading the manifest from {STDIN_LABEL} (end it with Ctrl-D)", err=True)
    return read_manifest_stream(stream, folder=Path.cwd(), max_bytes=MAX_FILE_BYTES)


def manifest_source(path: Path) -> Path | ManifestText:
    """A MANIFEST argument as the loader takes it: ``-`` is the text on standard input,
    standing for a file in the current folder (runner.manifest.source)."""
    return _stdin_manifest() if is_stdin(path) else path


def check_one_stdin(paths: Iterable[Path]) -> None:
    """Several MANIFEST arguments: ``-`` at most once (standard input reads once)."""
    if sum(1 for p in paths if is_stdin(p)) > 1:
        raise UsageError(
            "'-' (the manifest on standard input) can be given only once",
            hint="save the other manifests as files",
        )


def manifest_sources(paths: Iterable[Path]) -> list[Path | ManifestText]:
    """Several MANIFEST arguments as the loader takes them (see :func:`check_one_stdin`)."""
    paths = list(paths)
    check_one_stdin(paths)
    return [manifest_source(p) for p in paths]


def manifest_loader(prices: Path | None, rules: Path | None) -> Callable[[Path], Manifest]:
    """Loads MANIFEST arguments (``-`` included) under one price table and rules file,
    each read once; a file that is not there is a usage error naming it."""
    from runner.manifest import load_manifest
    from runner.manifest.contract import load_rules
    from runner.pricing import load_price_table

    table = load_price_table(prices) if prices else None
    loaded_rules = load_rules(rules)

    def load(path: Path) -> Manifest:
        if not is_stdin(path) and not path.exists():
            raise UsageError(f"no manifest at {path}")
        return load_manifest(manifest_source(path), price_table=table, rules=loaded_rules)

    return load


def manifest_label(path: Path) -> str:
    """How messages name a MANIFEST argument: its path, or ``<stdin>``."""
    return STDIN_LABEL if is_stdin(path) else str(path)


def manifest_location(path: Path) -> Path:
    """The file a MANIFEST argument is, or stands for (``-``): where its ledger is."""
    return _stdin_manifest().path if is_stdin(path) else path


def simulate_option(func: F) -> F:
    return click.option(
        "--simulate",
        is_flag=True,
        help="The rehearsal's ledger (<name>.sim.ledger.sqlite), as 'pixrun run --simulate' "
        "keeps it.",
    )(func)


def sample_options(verb: str) -> Callable[[F], F]:
    """``--only PATTERN`` (repeatable) and ``--limit N``, as ``only`` and ``limit``: a
    sample of the manifest (see runner/sample.py); ``verb`` starts their help."""

    def decorate(func: F) -> F:
        func = click.option(
            "--limit",
            type=click.IntRange(0, None),
            metavar="N",
            help=f"{verb} the first N shots still to submit (in manifest order, after "
            "--only); the rest stays pending for a later run.",
        )(func)
        return click.option(
            "--only",
            multiple=True,
            metavar="PATTERN",
            help=f"{verb} the shots whose id matches: an id or a glob such as 'hero*' "
            "(repeatable; an id also matches its takes ID.t1, ID.t2, ...).",
        )(func)

    return decorate


def provider_settings(func: F) -> F:
    """``--base-url`` and ``--provider-option``: run, watch and resolve reach the provider
    alike (as ``base_url`` and ``provider_options``; see :func:`provider_options`)."""
    func = click.option(
        "--provider-option",
        "provider_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Provider adapter setting, e.g. read_timeout_s=30 or "
        "max_download_bytes=1000000000 (repeatable; wins over what 'pixrun doctor --save' "
        "kept).",
    )(func)
    return click.option(
        "--base-url", help="Provider base URL (default: $PIXRUN_BASE_URL or api.302.ai)."
    )(func)


def callback_options(func: F) -> F:
    """``--callback-listen`` and ``--callback-url`` (run and watch), as ``callback_listen``
    and ``callback_url``."""
    func = click.option(
        "--callback-url",
        metavar="URL",
        help="The public address of the receiver, as the provider reaches it (a reverse "
        "proxy or tunnel; default http://HOST:PORT of --callback-listen).",
    )(func)
    return click.option(
        "--callback-listen",
        metavar="HOST:PORT",
        help="Receive the provider's callbacks here (overrides run.callback.listen): a "
        "finished render is then collected at once and polled only as a safety net. "
        "Several manifests share the one receiver (one port to open).",
    )(func)


def provider_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--provider-option KEY=VALUE`` pairs, checked by the adapter (names, and each
    value made its setting's type). Raises UsageError."""
    from runner.provider.config import checked_settings

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE")
        options[key.strip()] = value
    return checked_settings(options)


def existing_ledger(manifest: Path | None, ledger: Path | None, *, simulated: bool = False) -> Path:
    """The ledger a reading command works on; a clear error when there is none.

    ``simulated`` picks the rehearsal's ledger beside the manifest (``--ledger`` wins).
    """
    if ledger is not None:
        if not ledger.exists():
            raise UsageError(f"no ledger at {ledger}", hint="check the path given to --ledger")
        return ledger
    if manifest is None:
        raise UsageError("give the manifest (or the ledger with --ledger PATH)")
    path = default_ledger_path(manifest_location(manifest), simulated=simulated)
    if not path.exists() and not is_stdin(manifest):
        from runner.run.folder import watched_ledger

        # a manifest of a watched folder (DIR/done/x.yaml): its ledger is in DIR/ledgers/
        path = watched_ledger(manifest, simulated=simulated) or path
    if not path.exists():
        raise UsageError(
            f"no {'rehearsal ' if simulated else ''}ledger for {manifest_label(manifest)}: "
            f"expected {path}",
            hint=missing_ledger_hint(manifest, simulated=simulated),
        )
    return path


def rerun_command(manifest: Path | None, ledger_path: Path, *, simulated: bool) -> str:
    """The ``pixrun run`` that picks up what a command queued on ``ledger_path``, with
    the flags that matter: ``--simulate`` for a rehearsal, ``--ledger`` when it is not
    the one beside the manifest (a bare ``pixrun run`` is refused, or opens another)."""
    words = ["pixrun", "run", "MANIFEST" if manifest is None else str(manifest)]
    if simulated:
        words.append("--simulate")
    # text from stdin is fed again to the rerun, which then finds the ledger by --ledger,
    # as the run summary's hints do
    beside = (
        None
        if manifest is None or is_stdin(manifest)
        else default_ledger_path(manifest, simulated=simulated)
    )
    if beside is None or beside.resolve() != ledger_path.resolve():
        words += ["--ledger", str(ledger_path)]
    return " ".join(w if w == "MANIFEST" else shlex.quote(w) for w in words)


def missing_ledger_hint(manifest: Path, *, simulated: bool) -> str:
    """What to do when the ledger beside ``manifest`` is missing: the other one may exist."""
    from runner.run.folder import watched_ledger

    where = manifest_location(manifest)

    def exists(sim: bool) -> bool:
        if default_ledger_path(where, simulated=sim).exists():
            return True
        return not is_stdin(manifest) and watched_ledger(where, simulated=sim) is not None

    if not simulated and exists(True):
        return "a rehearsal ledger exists: add --simulate"
    if simulated and exists(False):
        return "only the real ledger exists: drop --simulate"
    run = f"pixrun run {manifest}{' --simulate' if simulated else ''}"
    return f"'{run}' creates it; a ledger elsewhere: --ledger PATH"
