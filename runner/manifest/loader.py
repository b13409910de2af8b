"""Reading a manifest: YAML in, fully resolved shots out, or every problem at once.

Steps, each reporting into one :class:`~runner.manifest.issues.Issues` so a single pass
finds everything: safe YAML (``yaml_source``), shape (``validate``: jsonschema against
``schema``), settings, the rows of ``shots_from`` tables (``tables``: read into shot
entries after the YAML ones, shape-checked the same way), shot expansion and contract
rules (``expand``), local images (``images``), then ids, output names, hashes and
prices (``finish``).

Invariants:
- :func:`load_manifest` returns a :class:`~runner.model.Manifest` only when there is no
  error; otherwise it raises :class:`~runner.errors.ManifestError` carrying every error
  and warning found, each with file:line:column, shot id and field path. It never lets
  another exception out for anything in the file (a missing file is a UsageError).
- Positions are looked up only for problems (``yaml_source.SourceMap``), so a valid
  manifest pays nothing for them.
- A value the shape check refused is left out before expansion (defaults and shot
  keys alike), so one mistake is reported once, where it was written.

Size: about 480 lines, one module: ``_Reader`` is the single pass that carries one
``Issues`` through every step; the steps themselves live in their own modules.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from runner.errors import ManifestError, Problem, UsageError
from runner.manifest import output_names
from runner.manifest.contract import (
    URL_PREFIXES,
    default_rules,
)
from runner.manifest.expand import Draft, Expander
from runner.manifest.finish import Finisher
from runner.manifest.images import ImageChecker, NotRegularFile, TooLarge, read_capped
from runner.manifest.issues import Issues
from runner.manifest.rules import Rules
from runner.manifest.source import ManifestText
from runner.manifest.tables import TableReader
from runner.manifest.validate import schema_check
from runner.manifest.yaml_common import Path_
from runner.manifest.yaml_source import SourceMap, parse
from runner.model import (
    CallbackSettings,
    HaltSettings,
    Manifest,
    OutputSettings,
    PollSettings,
    RunSettings,
    Shot,
)
from runner.notify import notify_url_fault
from runner.pricing import PriceTable, default_price_table

#: a manifest larger than this is refused before parsing (the benchmark's is ~12 MB)
MAX_FILE_BYTES = 256 * 1024 * 1024
#: all entries together may not expand to more shots than this
MAX_SHOTS = 1_000_000


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building ~10^6 acyclic objects triggers collections that cost more than the
    work itself; collect once afterwards instead."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_manifest_bytes(path: Path) -> bytes:
    """The manifest file's bytes. Only a regular file is read, and no more than the
    limit: a FIFO would block and a link to /dev/zero fill the memory."""
    try:
        if path.is_dir():
            raise IsADirectoryError(path)
        return read_capped(path, MAX_FILE_BYTES)
    except TooLarge as exc:
        raise UsageError(
            f"{path} is over {MAX_FILE_BYTES // 1_000_000} MB; manifests over "
            f"{MAX_FILE_BYTES // 1_000_000} MB are refused",
            hint="split the batch into several manifests",
        ) from exc
    except NotRegularFile as exc:
        raise UsageError(str(exc.strerror), hint="give the manifest file") from exc
    except FileNotFoundError as exc:
        raise UsageError(f"no such manifest: {path}", hint="check the path") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{path} is a directory", hint="give the manifest file") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check the file") from exc


def load_manifest(
    path: Path | ManifestText,
    *,
    check_images: bool = True,
    price_table: PriceTable | None = None,
    rules: Rules | None = None,
) -> Manifest:
    """The manifest at ``path``, fully expanded; raises ManifestError listing every error.

    ``check_images=False`` skips opening local images (they are still hashed when
    readable). Warnings (duplicates and the like) are in ``Manifest.warnings``.
    ``rules`` are the provider's request rules (default: the packaged ones).
    A :class:`ManifestText` (stdin) is read as the file it stands for (runner.manifest.source).
    """
    data = path.data if isinstance(path, ManifestText) else read_manifest_bytes(path)
    with _gc_paused():
        reader = _Reader(
            path,
            data,
            check_images,
            price_table or default_price_table(),
            rules or default_rules(),
        )
        manifest = reader.read()
        problems = reader.issues.problems()
    if manifest is None or any(p.severity == "error" for p in problems):
        raise ManifestError(problems)
    return dataclasses.replace(manifest, warnings=tuple(problems), price_table=price_table)


@dataclass(frozen=True)
class FileReport:
    """What ``pixrun validate`` found in one file."""

    path: Path
    problems: tuple[Problem, ...]
    shot_count: int
    #: how to name it to a person: the path, or ``<stdin>``
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", str(self.path))

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def validate_file(
    path: Path | ManifestText, *, check_images: bool = True, rules: Rules | None = None
) -> FileReport:
    """Every problem in one manifest (a missing file is a problem here, not an error)."""
    where, label = (
        (path.path_for(None), path.label) if isinstance(path, ManifestText) else (path, str(path))
    )
    try:
        manifest = load_manifest(path, check_images=check_images, rules=rules)
    except ManifestError as exc:
        return FileReport(where, tuple(exc.problems), 0, label)
    except UsageError as exc:
        problem = Problem(label, None, None, exc.message, hint=exc.hint)
        return FileReport(where, (problem,), 0, label)
    return FileReport(manifest.path, tuple(manifest.warnings), len(manifest.shots), label)


def validate_files(
    paths: Iterable[Path | ManifestText],
    *,
    check_images: bool = True,
    rules: Rules | None = None,
) -> list[FileReport]:
    return [validate_file(p, check_images=check_images, rules=rules) for p in paths]


def _pruned(entry: dict[str, Any], keys: set[str], vary_keys: set[str]) -> dict[str, Any]:
    """``entry`` without the keys (and vary keys) whose values failed the shape check."""
    out = {k: v for k, v in entry.items() if k not in keys}
    vary = out.get("vary")
    if vary_keys and isinstance(vary, dict):
        out["vary"] = {k: v for k, v in vary.items() if k not in vary_keys}
    return out


class _Reader:
    """One read of one manifest file."""

    def __init__(
        self,
        source: Path | ManifestText,
        data: bytes,
        check_images: bool,
        table: PriceTable,
        rules: Rules,
    ) -> None:
        # text from stdin reads as the file it stands for (its name decides which)
        self.text = source if isinstance(source, ManifestText) else None
        self.path = source.path_for(None) if isinstance(source, ManifestText) else source
        self.rules = rules
        self.base_dir = self.path.absolute().parent
        self.check_images = check_images
        self.table = table
        self.data = data
        self.issues = Issues(
            source.label if isinstance(source, ManifestText) else str(source), SourceMap(data)
        )
        self.report = self.issues.report
        self.images = ImageChecker(rules.images)
        self.finisher = Finisher(self.issues, self.images, table)
        self._relative: dict[str, str] = {}

    # ---- the read -----------------------------------------------------------------

    def read(self) -> Manifest | None:
        parsed = parse(self.data)
        for yi in parsed.issues:
            mark = (yi.line, yi.column) if yi.line is not None and yi.column is not None else None
            self.report(yi.path, yi.message, yi.hint, mark=mark)
        if any(yi.fatal for yi in parsed.issues):
            return None
        self.issues.doc = doc = parsed.data
        self.issues.shot_marks = parsed.shot_marks
        if doc is None:
            self.report((), "the manifest is empty", "start with 'version: 1' and a 'shots:' list")
            return None
        shape = schema_check(self.rules).issues(doc)
        # a value the YAML step already refused (a tag, say) reads as null: say it once
        refused = {yi.path for yi in parsed.issues}
        for si in shape:
            if si.path not in refused:
                self.report(si.path, si.message, si.hint, at_key=si.at_key)
        if not isinstance(doc, dict):
            return None
        bad = {si.path for si in shape}
        if "shots" not in doc and "shots_from" not in doc:
            self.report(
                (),
                "shots is required",
                "add a 'shots:' list with at least one shot, or 'shots_from: prompts.csv'",
            )
        name = self._name(doc, bad)
        output = self._output(doc, name, bad)
        run = self._run(doc, bad)
        shots = self._shots(doc, bad, run, output, name)
        path = self.path if self.text is None else self.text.path_for(name)
        return Manifest(path, name, tuple(shots), output, run)

    def _name(self, doc: dict[str, Any], bad: set[Path_]) -> str:
        name = doc.get("name")
        return name if isinstance(name, str) and ("name",) not in bad else self.path.stem

    def _output(self, doc: dict[str, Any], name: str, bad: set[Path_]) -> OutputSettings:
        section = doc.get("output")
        section = section if isinstance(section, dict) and ("output",) not in bad else {}
        raw_dir = section.get("dir")
        if not isinstance(raw_dir, str) or ("output", "dir") in bad:
            raw_dir = f"out/{output_names.slug(name)}"
        out_dir = Path(os.path.expanduser(raw_dir))
        if not out_dir.is_absolute():
            out_dir = self.base_dir / out_dir
        pattern = section.get("filename")
        if not isinstance(pattern, str) or ("output", "filename") in bad:
            pattern = output_names.DEFAULT_FILENAME
        else:
            fault = output_names.check_pattern(pattern)
            if fault:
                self.report(("output", "filename"), *fault)
                pattern = output_names.DEFAULT_FILENAME
        sidecar = section.get("sidecar")
        embed = section.get("embed_metadata")
        return OutputSettings(
            dir=out_dir,
            filename=pattern,
            sidecar=sidecar if isinstance(sidecar, bool) else True,
            embed_metadata=embed if isinstance(embed, bool) else False,
        )

    def _run(self, doc: dict[str, Any], bad: set[Path_]) -> RunSettings:
        section = doc.get("run")
        section = section if isinstance(section, dict) and ("run",) not in bad else {}
        base = RunSettings()

        def pick(key: str, default: Any, *where: str) -> Any:
            holder: Any = section
            for part in where:
                holder = holder.get(part) if isinstance(holder, dict) else None
            value = holder.get(key) if isinstance(holder, dict) else None
            if value is None or ("run", *where, key) in bad:
                return default
            if isinstance(value, float) and not math.isfinite(value):
                self.report(
                    ("run", *where, key),
                    f"{value} is not a finite number",
                    "write an ordinary number",
                )
                return default
            return value

        poll_default = base.poll
        poll = PollSettings(
            initial_delay_s=float(pick("initial_delay_s", poll_default.initial_delay_s, "poll")),
            min_interval_s=float(pick("min_interval_s", poll_default.min_interval_s, "poll")),
            max_interval_s=float(pick("max_interval_s", poll_default.max_interval_s, "poll")),
            timeout_s=float(pick("timeout_s", poll_default.timeout_s, "poll")),
        )
        if poll.min_interval_s > poll.max_interval_s:
            self.report(
                ("run", "poll", "min_interval_s"),
                f"min_interval_s ({poll.min_interval_s:g}) is above max_interval_s "
                f"({poll.max_interval_s:g})",
                "make min_interval_s at most max_interval_s",
            )
        budget = pick("budget_ptc", None)
        return RunSettings(
            concurrency=int(pick("concurrency", base.concurrency)),
            max_attempts=int(pick("max_attempts", base.max_attempts)),
            budget_ptc=Decimal(str(budget)) if budget is not None else None,
            download_concurrency=int(pick("download_concurrency", base.download_concurrency)),
            requests_per_s=float(pick("requests_per_s", base.requests_per_s)),
            poll=poll,
            stall_timeout_s=float(pick("stall_timeout_s", base.stall_timeout_s)),
            outage_timeout_s=float(pick("outage_timeout_s", base.outage_timeout_s)),
            callback=_callback_settings(pick("callback", None)),
            halt=HaltSettings(
                failure_share=float(pick("failure_share", base.halt.failure_share, "halt")),
                window=int(pick("window", base.halt.window, "halt")),
            ),
            notify=self._notify_urls(pick("notify", None), bad),
            priority=int(pick("priority", base.priority)),
        )

    def _notify_urls(self, value: Any, bad: set[Path_]) -> tuple[str, ...]:
        """``run.notify``: one URL or a list (the schema has checked the shape), each a
        usable http(s) address, in order, without repeats."""
        listed = isinstance(value, list)
        urls: list[str] = []
        for index, url in enumerate(value if listed else [value]):
            where: Path_ = ("run", "notify", index) if listed else ("run", "notify")
            if not isinstance(url, str) or where in bad:
                continue
            fault = notify_url_fault(url)
            if fault is not None:
                self.report(
                    where,
                    f"{url[:60]!r} {fault}",
                    "write a full http:// or https:// URL, e.g. https://hooks.example.com/pixrun",
                )
                continue
            urls.append(url)
        return tuple(dict.fromkeys(urls))

    # ---- images -------------------------------------------------------------------

    def resolve_image(self, text: str, where: Path_) -> str:
        """URLs pass through; a local path becomes a checked ``file://`` URI."""
        if text.startswith(URL_PREFIXES) or text.startswith("data:image/"):
            return text
        if text.startswith("file://"):
            local = Path(unquote(urlsplit(text).path))
        elif "://" in text:
            self.report(
                where,
                f"{text[:60]!r} is neither an http(s) URL nor a local path",
                "use an https:// URL or a path relative to the manifest",
            )
            return text
        else:
            local = Path(os.path.expanduser(text))
        absolute = local if local.is_absolute() else self.base_dir / local
        absolute = Path(os.path.normpath(absolute))
        uri = absolute.as_uri()
        if uri not in self._relative:
            self._relative[uri] = text if not local.is_absolute() else str(absolute)
        if self.check_images:
            fault = self.images.fault(absolute)
            if fault is not None:
                self.report(where, fault.message, fault.hint)
        return uri

    def relative_image(self, uri: str) -> str:
        return self._relative.get(uri, uri)

    # ---- shots --------------------------------------------------------------------

    def _tables(
        self, value: Any, entries: list[Any], bad: set[Path_]
    ) -> tuple[list[Any], set[Path_]]:
        """The YAML entries followed by the tables' rows, and the refused paths of both:
        from here on a table row is a shot entry like any other."""
        reader = TableReader(
            self.path,
            first=len(entries),
            rules=self.rules,
            issues=self.issues,
            max_entries=MAX_SHOTS,
        )
        reader.read(value, bad)
        self.issues.tables = reader.index
        if not reader.entries:
            return entries, bad
        bad = bad | reader.bad
        first = len(entries)
        # the rows' shape, checked as the shots list is; paths moved to their place
        for si in schema_check(self.rules).issues({"version": 1, "shots": reader.entries}):
            path = ("shots", first + int(si.path[1]), *si.path[2:])
            self.report(path, si.message, si.hint, at_key=si.at_key)
            bad.add(path)
        return entries + reader.entries, bad

    def _shots(
        self,
        doc: dict[str, Any],
        bad: set[Path_],
        run: RunSettings,
        output: OutputSettings,
        name: str,
    ) -> list[Shot]:
        entries = doc.get("shots")
        if not isinstance(entries, list) or ("shots",) in bad:
            entries = []
        if "shots_from" in doc and ("shots_from",) not in bad:
            entries, bad = self._tables(doc["shots_from"], entries, bad)
        self.issues.entries = entries
        bad_keys: dict[int, set[str]] = {}
        bad_vary: dict[int, set[str]] = {}
        whole: set[int] = set()
        bad_defaults: set[str] = set()
        bad_default_vary: set[str] = set()
        for path in bad:
            if len(path) >= 2 and path[0] == "shots" and isinstance(path[1], int):
                if len(path) == 2:
                    whole.add(path[1])
                elif len(path) >= 4 and path[2] == "vary":
                    bad_vary.setdefault(path[1], set()).add(str(path[3]))
                else:
                    bad_keys.setdefault(path[1], set()).add(str(path[2]))
            elif len(path) >= 4 and path[0] == "defaults" and path[1] == "vary":
                bad_default_vary.add(str(path[2]))
            elif len(path) >= 2 and path[0] == "defaults":
                bad_defaults.add(str(path[1]))
        defaults = doc.get("defaults")
        if not isinstance(defaults, dict) or ("defaults",) in bad:
            defaults = {}
        elif bad_defaults or bad_default_vary:
            defaults = _pruned(defaults, bad_defaults, bad_default_vary)
        bad_defaults |= bad_default_vary
        expander = Expander(
            defaults,
            run_max_attempts=run.max_attempts,
            resolve_image=self.resolve_image,
            relative_image=self.relative_image,
            issues=self.issues,
            bad_defaults=frozenset(bad_defaults),
            rules=self.rules,
        )
        self.finisher.reused_ids(entries, whole, bad_keys)
        drafts: list[Draft] = []
        for index, entry in enumerate(entries):
            if index in whole or not isinstance(entry, dict):
                continue
            keys = bad_keys.get(index, set())
            vary_keys = bad_vary.get(index, set())
            if keys or vary_keys:
                entry = _pruned(entry, keys, vary_keys)
            drafts.extend(expander.expand(index, entry, frozenset(keys | vary_keys)))
            if len(drafts) > MAX_SHOTS:
                self.report(
                    ("shots", index),
                    f"the manifest expands to more than {MAX_SHOTS} shots",
                    "split it into several manifests",
                )
                return []
        return self.finisher.shots(drafts, output, name)


def _callback_settings(section: Any) -> CallbackSettings | None:
    """``run.callback`` (the schema has checked its shape)."""
    if not isinstance(section, dict) or not isinstance(section.get("listen"), str):
        return None
    url = section.get("url")
    return CallbackSettings(listen=section["listen"], url=url if isinstance(url, str) else None)
