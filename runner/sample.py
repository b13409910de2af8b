"""Sample first: which shots a ``--only PATTERN`` / ``--limit N`` run submits, and what
``pixrun plan`` prices with the same options.

Invariants:
- Pure (no SQL, no I/O): chosen from the manifest and the ledger's rows
  (:meth:`runner.ledger.Ledger.known_shots`) through
  :func:`runner.ledger.classify.classify`, the rule of the sync, so ``pixrun plan --only
  X --limit N`` prices exactly the shots ``pixrun run --only X --limit N`` submits.
- ``--only`` patterns are shell globs over shot ids (an id is a glob that matches
  itself; ``hero`` also matches its takes ``hero.t1``, ``hero.t2``, ...); a shot in the
  sample matches any of them. A pattern that matches no shot is a usage error (with
  several manifests in one run: no shot of any of them).
- ``--limit N`` keeps the first N shots the run would submit (pending after the sync:
  new, pending, changed, revived), in manifest order, among those ``--only`` matched;
  with several manifests in one run, N of each.
  Done, failed, parked and in-flight shots are never counted against N, and a done
  shot whose request changed is not picked either (it is re-rendered only on request).
- Shots outside the sample are synced into the ledger as usual and stay pending for a
  later run: nothing about them is sent, priced, or abandoned. A done shot outside the
  sample whose request changed stays done (held, unasked) until a run that includes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

from runner.errors import UsageError
from runner.ledger.classify import KnownShot, SyncAction, classify, state_after_sync
from runner.model import Manifest, Shot, ShotState
from runner.text import plural

#: ids named as examples when a pattern matches nothing, and in the summary
_SHOWN = 5


@dataclass(frozen=True)
class SampleSpec:
    """``--only`` patterns (empty: every shot) and ``--limit`` (None: no limit)."""

    only: tuple[str, ...] = ()
    limit: int | None = None
    #: several manifests in one run: a pattern need only match shots of one of them
    #: (checked over all by :func:`unmatched`), so a manifest it misses has no sample
    each_may_miss: bool = False

    @property
    def active(self) -> bool:
        return bool(self.only) or self.limit is not None

    def flags(self) -> str:
        """The options as typed, for messages."""
        words = [f"--only {p}" for p in self.only]
        if self.limit is not None:
            words.append(f"--limit {self.limit}")
        return " ".join(words)


@dataclass(frozen=True)
class Sample:
    """The shots a sample run deals with."""

    spec: SampleSpec
    #: every shot of the sample (what ``plan`` prices, what the run may submit)
    ids: frozenset[str]
    #: of those, the ones the run will submit, in manifest order
    to_submit: tuple[str, ...]
    #: shots the run would submit without the sample options: left pending for later
    left_pending: int
    #: done shots outside the sample whose request changed: kept as they are
    changed_done_outside: frozenset[str]

    def describe(self) -> str:
        """What was chosen, in one line."""
        shown = ", ".join(self.to_submit[:_SHOWN]) + (
            " ..." if len(self.to_submit) > _SHOWN else ""
        )
        chosen = (
            f"{plural(len(self.to_submit), 'shot')} to submit ({shown})"
            if self.to_submit
            else "nothing to submit"
        )
        later = (
            f"; {plural(self.left_pending, 'other shot')} stay pending for a later run"
            if self.left_pending
            else ""
        )
        return f"sample ({self.spec.flags()}): {chosen}{later}"


def will_submit(shot: Shot, known: KnownShot | None) -> bool:
    """Whether the next run submits (and pays for) this shot unasked."""
    action = classify(shot.request_hash, known)
    if action is SyncAction.RERENDER:
        return False
    return state_after_sync(action, known) == ShotState.PENDING


def _matches(shot_id: str, pattern: str) -> bool:
    return fnmatchcase(shot_id, pattern) or fnmatchcase(shot_id, pattern + ".t*")


def select_sample(
    shots: Sequence[Shot], spec: SampleSpec, known: Mapping[str, KnownShot], *, name: str = ""
) -> Sample:
    """The sample ``spec`` picks from ``shots`` given the ledger's ``known`` rows.
    Raises UsageError for a pattern that matches no shot."""
    matched: list[Shot] = []
    hits = dict.fromkeys(spec.only, 0)
    for shot in shots:
        if not spec.only:
            matched.append(shot)
            continue
        hit = False
        for pattern in spec.only:
            if _matches(shot.shot_id, pattern):
                hits[pattern] += 1
                hit = True
        if hit:
            matched.append(shot)
    for pattern, n in hits.items():
        if n == 0 and not spec.each_may_miss:
            examples = ", ".join(s.shot_id for s in shots[:_SHOWN])
            where = f" of {name}" if name else ""
            raise UsageError(
                f"--only {pattern!r} matches no shot{where}",
                hint=f"give a shot id or a glob over ids (e.g. 's0*'); ids here: {examples}"
                + (" ..." if len(shots) > _SHOWN else ""),
            )
    pending = [s.shot_id for s in matched if will_submit(s, known.get(s.shot_id))]
    if spec.limit is not None:
        pending = pending[: spec.limit]
        ids = frozenset(pending)
    else:
        ids = frozenset(s.shot_id for s in matched)
    left = sum(1 for s in shots if s.shot_id not in ids and will_submit(s, known.get(s.shot_id)))
    outside = frozenset(
        s.shot_id
        for s in shots
        if s.shot_id not in ids
        and classify(s.request_hash, known.get(s.shot_id)) is SyncAction.RERENDER
    )
    return Sample(
        spec=spec,
        ids=ids,
        to_submit=tuple(pending),
        left_pending=left,
        changed_done_outside=outside,
    )


def unmatched(spec: SampleSpec, shot_ids: Iterable[str]) -> list[str]:
    """The ``--only`` patterns that match none of ``shot_ids`` (all of several
    manifests' shots: a pattern has to pick something somewhere)."""
    left = list(spec.only)
    for shot_id in shot_ids:
        if not left:
            break
        left = [p for p in left if not _matches(shot_id, p)]
    return left


def cut(manifest: Manifest, sample: Sample) -> Manifest:
    """The manifest cut down to a sample's shots (what is priced and asked about)."""
    return replace(manifest, shots=tuple(s for s in manifest.shots if s.shot_id in sample.ids))
