"""Reading a manifest: YAML in, fully resolved shots out, or every problem at once.

Steps, each reporting into one list so a single pass finds everything: safe YAML
(runner/yaml_source.py), shape (runner/shape.py compiled from runner/schema.py),
settings, shot expansion and contract rules (runner/expand.py), duplicates, local
images (runner/images.py), output names (runner/output_names.py), hashes and prices.

Invariants:
- :func:`load_manifest` returns a :class:`~runner.model.Manifest` only when there is no
  error; otherwise it raises :class:`~runner.errors.ManifestError` carrying every error
  and warning found, each with file:line:column, shot id and field path. It never lets
  another exception out for anything in the file (a missing file is a UsageError).
- Positions are looked up only for problems (runner/yaml_source.SourceMap), so a valid
  manifest pays nothing for them.
- ``Shot.request_hash`` is the sha256 of the canonical JSON of the request with every
  ``file://`` image replaced by the hash of its content.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from runner import output_names
from runner.contract import DEFAULT_MOTION_MODE, URL_PREFIXES, default_rules, duration_seconds
from runner.errors import ManifestError, Problem, UsageError
from runner.expand import SAFE_ID, Draft, Expander
from runner.images import ImageChecker
from runner.model import (
    CallbackSettings,
    Manifest,
    OutputSettings,
    PollSettings,
    RunSettings,
    Shot,
    SourceMark,
)
from runner.pricing import PriceTable, default_price_table, price_of
from runner.rules import Rules
from runner.schema import schema_of
from runner.shape import Check, ShapeIssue, compile_manifest_check
from runner.yaml_source import Mark, SourceMap, parse

PathPart = str | int
Path_ = tuple[PathPart, ...]

#: a manifest larger than this is refused before parsing (the benchmark's is ~12 MB)
MAX_FILE_BYTES = 256 * 1024 * 1024
#: all entries together may not expand to more shots than this
MAX_SHOTS = 1_000_000
#: after this many problems with the same message, the rest are only counted
_MAX_SAME = 20


@lru_cache(maxsize=8)
def _shape_check(rules: Rules) -> Check:
    """Compiled once per Rules object (they compare by identity)."""
    return compile_manifest_check(schema_of(rules))


@dataclass
class _Issue:
    path: Path_
    message: str
    hint: str
    shot_id: str | None = None
    severity: str = "error"
    at_key: bool = False
    mark: Mark | None = None
    #: how many expanded shots share this exact problem
    times: int = 1


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


def field_path(path: Sequence[PathPart]) -> str:
    """``("shots", 3, "vary", "seed", 1)`` -> ``shots[3].vary.seed[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def read_manifest_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UsageError(
                f"{path} is {size // 1_000_000} MB; manifests over "
                f"{MAX_FILE_BYTES // 1_000_000} MB are refused",
                hint="split the batch into several manifests",
            )
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"no such manifest: {path}", hint="check the path") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{path} is a directory", hint="give the manifest file") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check the file") from exc


def load_manifest(
    path: Path,
    *,
    check_images: bool = True,
    price_table: PriceTable | None = None,
    rules: Rules | None = None,
) -> Manifest:
    """The manifest at ``path``, fully expanded; raises ManifestError listing every error.

    ``check_images=False`` skips opening local images (they are still hashed when
    readable). Warnings (duplicates and the like) are in ``Manifest.warnings``.
    ``rules`` are the provider's request rules (default: the packaged ones).
    """
    data = read_manifest_bytes(path)
    with _gc_paused():
        reader = _Reader(
            path,
            data,
            check_images,
            price_table or default_price_table(),
            rules or default_rules(),
        )
        manifest = reader.read()
        problems = reader.problems()
    if manifest is None or any(p.severity == "error" for p in problems):
        raise ManifestError(problems)
    return dataclasses.replace(manifest, warnings=tuple(problems), price_table=price_table)


@dataclass(frozen=True)
class FileReport:
    """What ``pixrun validate`` found in one file."""

    path: Path
    problems: tuple[Problem, ...]
    shot_count: int

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def validate_file(
    path: Path, *, check_images: bool = True, rules: Rules | None = None
) -> FileReport:
    """Every problem in one manifest (a missing file is a problem here, not an error)."""
    try:
        manifest = load_manifest(path, check_images=check_images, rules=rules)
    except ManifestError as exc:
        return FileReport(path, tuple(exc.problems), 0)
    except UsageError as exc:
        return FileReport(path, (Problem(str(path), None, None, exc.message, hint=exc.hint),), 0)
    return FileReport(path, tuple(manifest.warnings), len(manifest.shots))


def validate_files(
    paths: Iterable[Path], *, check_images: bool = True, rules: Rules | None = None
) -> list[FileReport]:
    return [validate_file(p, check_images=check_images, rules=rules) for p in paths]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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
        self, path: Path, data: bytes, check_images: bool, table: PriceTable, rules: Rules
    ) -> None:
        self.path = path
        self.rules = rules
        self.file = str(path)
        self.base_dir = path.absolute().parent
        self.check_images = check_images
        self.table = table
        self.source = SourceMap(data)
        self.data = data
        self.issues: list[_Issue] = []
        self._seen: dict[tuple[Path_, str, str], _Issue] = {}
        self._message_count: dict[str, int] = {}
        self._by_message: dict[str, _Issue] = {}
        self.images = ImageChecker(rules.images)
        self._relative: dict[str, str] = {}
        self._shot_marks: list[Mark] = []
        #: entries whose explicit id repeats an earlier entry's (already reported)
        self._reused: set[int] = set()
        self._doc: Any = None

    # ---- reporting ----------------------------------------------------------------

    def report(
        self,
        path: Path_,
        message: str,
        hint: str,
        *,
        shot_id: str | None = None,
        at_key: bool = False,
        severity: str = "error",
        mark: Mark | None = None,
    ) -> None:
        key = (path, message, severity)
        same = self._seen.get(key)
        if same is None:
            # one message at many places (a bad image used by every shot): show a few
            last = self._by_message.get(message)
            if last is not None and last.times >= _MAX_SAME:
                same = last
        if same is not None:
            same.times += 1
            return
        issue = _Issue(path, message, hint, shot_id, severity, at_key, mark)
        self._seen[key] = issue
        self.issues.append(issue)
        count = self._message_count.get(message, 0) + 1
        self._message_count[message] = count
        if count >= _MAX_SAME:
            self._by_message[message] = issue

    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        for issue in self.issues:
            mark = issue.mark or self._locate(issue.path, issue.at_key)
            message = issue.message
            if issue.times > 1:
                message += f" (and {issue.times - 1} more like this)"
            out.append(
                Problem(
                    file=self.file,
                    line=mark[0] if mark else None,
                    column=mark[1] if mark else None,
                    message=message,
                    shot_id=issue.shot_id or self._shot_label(issue.path),
                    field_path=field_path(issue.path) or None,
                    hint=issue.hint or None,
                    severity=issue.severity,
                )
            )
        out.sort(key=lambda p: (p.line is None, p.line or 0, p.column or 0))
        return out

    def _locate(self, path: Path_, at_key: bool) -> Mark | None:
        if (
            len(path) == 2
            and path[0] == "shots"
            and isinstance(path[1], int)
            and path[1] < len(self._shot_marks)
        ):
            return self._shot_marks[path[1]]
        return self.source.locate(path, at_key=at_key)

    def _shot_label(self, path: Path_) -> str | None:
        if len(path) >= 2 and path[0] == "shots" and isinstance(path[1], int):
            shots = self._doc.get("shots") if isinstance(self._doc, dict) else None
            entry = shots[path[1]] if isinstance(shots, list) and path[1] < len(shots) else None
            given = entry.get("id") if isinstance(entry, dict) else None
            if isinstance(given, str):
                return given if SAFE_ID.fullmatch(given) else repr(given)
            return f"#{path[1] + 1}"
        return None

    # ---- the read -----------------------------------------------------------------

    def read(self) -> Manifest | None:
        parsed = parse(self.data)
        for yi in parsed.issues:
            mark = (yi.line, yi.column) if yi.line is not None and yi.column is not None else None
            self.report(yi.path, yi.message, yi.hint, mark=mark)
        if any(yi.fatal for yi in parsed.issues):
            return None
        self._doc = doc = parsed.data
        self._shot_marks = parsed.shot_marks
        if doc is None:
            self.report((), "the manifest is empty", "start with 'version: 1' and a 'shots:' list")
            return None
        shape: list[ShapeIssue] = []
        _shape_check(self.rules)(doc, (), shape)
        # a value the YAML step already refused (a tag, say) reads as null: say it once
        refused = {yi.path for yi in parsed.issues}
        for si in shape:
            if si.path not in refused:
                self.report(si.path, si.message, si.hint, at_key=si.at_key)
        if not isinstance(doc, dict):
            return None
        bad = {si.path for si in shape}
        name = self._name(doc, bad)
        output = self._output(doc, name, bad)
        run = self._run(doc, bad)
        shots = self._shots(doc, bad, run, output, name)
        return Manifest(self.path, name, tuple(shots), output, run)

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
        return OutputSettings(
            dir=out_dir,
            filename=pattern,
            sidecar=sidecar if isinstance(sidecar, bool) else True,
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
        )

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
            return []
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
            report=self.report,
            bad_defaults=frozenset(bad_defaults),
            rules=self.rules,
        )
        self._reused_ids(entries, whole, bad_keys)
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
        drafts = self._unique(drafts)
        return self._finish(drafts, output, name)

    def _reused_ids(
        self, entries: list[Any], whole: set[int], bad_keys: dict[int, set[str]]
    ) -> None:
        """Explicit ids given twice, found before expansion so that it is reported even
        when either entry has other errors."""
        first: dict[str, int] = {}
        for index, entry in enumerate(entries):
            if index in whole or not isinstance(entry, dict) or "id" in bad_keys.get(index, ()):
                continue
            given = entry.get("id")
            if not isinstance(given, str):
                continue
            earlier = first.setdefault(given, index)
            if earlier != index:
                self._reused.add(index)
                self.report(
                    ("shots", index, "id"),
                    f"id {given!r} is already used by shots[{earlier}] "
                    f"(line {self._line_of(earlier)})",
                    "give each shot its own id",
                    shot_id=given,
                )

    def _unique(self, drafts: list[Draft]) -> list[Draft]:
        """Drops repeats of identical derived shots (warning); refuses reused ids."""
        first: dict[str, Draft] = {}
        kept: list[Draft] = []
        for draft in drafts:
            if not SAFE_ID.fullmatch(draft.shot_id) or ".." in draft.shot_id:
                self.report(
                    ("shots", draft.index, "id"),
                    f"id {draft.shot_id!r} is not safe as a file name",
                    "use letters, digits, '.', '_' and '-' only, without '..'",
                    shot_id=repr(draft.shot_id),
                )
                continue
            earlier = first.get(draft.shot_id)
            if earlier is None:
                first[draft.shot_id] = draft
                kept.append(draft)
                continue
            if draft.index in self._reused:
                continue
            line = self._line_of(earlier.index)
            if draft.derived and earlier.derived:
                self.report(
                    ("shots", draft.index),
                    f"duplicate shot: identical to shots[{earlier.index}] (line {line}); "
                    "it is generated once",
                    "remove it, or use count: N for several takes",
                    shot_id=draft.shot_id,
                    severity="warning",
                )
            else:
                self.report(
                    ("shots", draft.index, "id") if not draft.derived else ("shots", draft.index),
                    f"id {draft.shot_id!r} is already used by shots[{earlier.index}] (line {line})",
                    "give each shot its own id",
                    shot_id=draft.shot_id,
                )
        return kept

    def _line_of(self, index: int) -> int | str:
        return self._shot_marks[index][0] if index < len(self._shot_marks) else "?"

    def _finish(self, drafts: list[Draft], output: OutputSettings, name: str) -> list[Shot]:
        marks: dict[int, SourceMark] = {}
        name_slug = output_names.slug(name)
        pattern = output.filename
        simple = pattern == output_names.DEFAULT_FILENAME
        taken: dict[str, str] = {}
        folded: dict[str, str] = {}
        shots: list[Shot] = []
        table = self.table
        for draft in drafts:
            request = draft.request
            request_hash = self.request_hash(request)
            rel: str | None = (
                draft.shot_id + output_names.SUFFIX
                if simple
                else self._render(pattern, draft, request_hash, name_slug)
            )
            if rel is None:
                continue
            clash = None if simple else taken.get(rel)  # ids are unique already
            if clash is not None:
                self.report(
                    ("output", "filename"),
                    f"shots {clash} and {draft.shot_id} would both be written to {rel}",
                    "put {shot_id} in output.filename",
                    shot_id=draft.shot_id,
                )
                continue
            if not simple:
                taken[rel] = draft.shot_id
            low = rel.casefold()
            if low in folded and folded[low] != rel:
                self.report(
                    ("shots", draft.index),
                    f"{rel} and {folded[low]} differ only in letter case; on macOS and "
                    "Windows they are the same file",
                    "rename one of the shots",
                    shot_id=draft.shot_id,
                    severity="warning",
                )
            folded.setdefault(low, rel)
            mark = marks.get(draft.index)
            if mark is None:
                line, column = (
                    self._shot_marks[draft.index]
                    if draft.index < len(self._shot_marks)
                    else (None, None)
                )
                mark = marks[draft.index] = SourceMark(self.file, line, column)
            shots.append(
                Shot(
                    shot_id=draft.shot_id,
                    mode=draft.mode,
                    request=request,
                    request_hash=request_hash,
                    output_relpath=rel,
                    mark=mark,
                    take=draft.take,
                    price_ptc=price_of(request, table),
                    max_attempts=draft.max_attempts,
                )
            )
        return shots

    def _render(self, pattern: str, draft: Draft, request_hash: str, name: str) -> str | None:
        request = draft.request
        seed = request.get("seed")
        values = {
            "shot_id": draft.shot_id,
            "take": draft.take,
            "model": request.get("model"),
            "quality": request.get("quality"),
            "duration": duration_seconds(request.get("duration")),
            "mode": draft.mode.value,
            "motion_mode": request.get("motion_mode", DEFAULT_MOTION_MODE),
            "seed": seed if seed is not None else "random",
            "name": name,
            "hash": request_hash[:12],
        }
        try:
            rel = output_names.render(pattern, values)
        except (ValueError, TypeError) as exc:
            self.report(
                ("output", "filename"),
                f"cannot name the output of {draft.shot_id}: {exc}",
                "check the format specs after ':' in output.filename",
                shot_id=draft.shot_id,
            )
            return None
        if not output_names.is_safe_relpath(rel):
            self.report(
                ("output", "filename"),
                f"{rel!r} (shot {draft.shot_id}) would leave the output directory",
                "use a relative pattern without '..', '\\', ':' or a leading '/'",
                shot_id=draft.shot_id,
            )
            return None
        return rel

    def request_hash(self, request: dict[str, Any]) -> str:
        """sha256 of the canonical request, local images by content."""
        text = _canonical(request)
        if "file://" in text:
            text = _canonical({k: self._by_content(v) for k, v in request.items()})
        return hashlib.sha256(text.encode()).hexdigest()

    def _by_content(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("file://"):
            return self._content_id(value)
        if isinstance(value, list):
            return [self._by_content(v) for v in value]
        return value

    def _content_id(self, uri: str) -> str:
        return self.images.content_id(Path(unquote(urlsplit(uri).path)))


def _callback_settings(section: Any) -> CallbackSettings | None:
    """``run.callback`` (the schema has checked its shape)."""
    if not isinstance(section, dict) or not isinstance(section.get("listen"), str):
        return None
    url = section.get("url")
    return CallbackSettings(listen=section["listen"], url=url if isinstance(url, str) else None)
