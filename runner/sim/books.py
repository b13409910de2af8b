"""The simulated provider's memory: tasks, money and counters. No HTTP here.

Invariants:
- A task's status is computed from the clock when asked (created + render time), never
  by a timer, so 100,000 tasks cost memory and nothing else.
- Every accepted task is charged exactly once, at creation; a deduplicated generate
  returns the existing task and charges nothing. A failed or moderated render is
  refunded (when configured) the first time the books are settled after it ends.
- ``balance_uptc`` = initial balance - charges - upload charges + refunds, at every settle.
- With a journal, every change above (a task, a refund, an upload) is appended to it in
  the same call that makes it, and :meth:`Books.replay` rebuilds the same books from it.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from runner.money import from_uptc, to_uptc
from runner.pricing import default_price_table
from runner.sim.config import SimConfig
from runner.sim.journal import Journal
from runner.sim.media import task_mp4, untaggable_mp4

#: the simulator's own status words (mapped to each dialect's codes by the server)
QUEUED, RENDERING, SUCCEEDED, FAILED, MODERATED, DELETED = (
    "queued",
    "rendering",
    "succeeded",
    "failed",
    "moderated",
    "deleted",
)
#: an upload's price when neither the config nor the price table ("upload_ptc") says
DEFAULT_UPLOAD_UPTC = 1_000
#: the first part of a render is reported as queued
QUEUED_SHARE = 0.2

PIXVERSE_FIRST_ID = 315033920339584


@dataclass(slots=True)
class SimTask:
    task_id: str
    #: the id as the dialect sends it (int for PixVerse, str for the gateway)
    wire_id: int | str
    trace_id: str | None
    shot_key: str
    prompt: str
    seed: int
    created_s: float
    render_s: float
    #: what the render will end as: succeeded, failed or moderated
    outcome: str
    price_uptc: int | None
    charged_uptc: int
    created_wall_s: float
    truncate_next: bool = False
    #: a succeeded render that reports "deleted" once it ends
    deleted: bool = False
    #: every fetch answers "no such task"
    forgotten: bool = False
    #: serves a file mutagen cannot read (see media.untaggable_mp4)
    untaggable: bool = False
    refunded: bool = False
    fetches: int = 0
    downloads: int = 0
    #: the last URL handed out pointed at a dead host (the next one is live)
    dead_url_last: bool = False
    _sha256: str | None = field(default=None, repr=False)

    def status_at(self, now_s: float) -> str:
        elapsed = now_s - self.created_s
        if elapsed >= self.render_s:
            return DELETED if self.deleted else self.outcome
        return QUEUED if elapsed < self.render_s * QUEUED_SHARE else RENDERING

    @property
    def finish_s(self) -> float:
        return self.created_s + self.render_s

    def mp4(self) -> bytes:
        return untaggable_mp4(self.task_id) if self.untaggable else task_mp4(self.task_id)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.mp4()).hexdigest()
        return self._sha256


def shot_key_of(trace_id: str | None, request: Mapping[str, Any]) -> str:
    """Which shot a generate belongs to, to recognise a shot's first attempt.

    pixrun's Ai-trace-id is a UUIDv8 whose top 96 bits name the shot and low 32 bits the
    attempt; any other trace id (or none) falls back to the request body's digest.
    """
    if trace_id:
        try:
            parsed = uuid.UUID(trace_id)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.version == 8:
            return parsed.hex[:24]
    body = json.dumps(request, sort_keys=True, default=str).encode("utf-8")
    return "body:" + hashlib.sha256(body).hexdigest()[:24]


class Books:
    """Tasks by id, the balance, and every counter the stats endpoint reports."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.tasks: dict[str, SimTask] = {}
        self.by_trace: dict[str, str] = {}
        self.attempts_by_shot: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.violations: list[str] = []
        self.charged_uptc = 0
        self.refunded_uptc = 0
        self.unpriced = 0
        self.initial_uptc = None if config.balance_ptc is None else to_uptc(config.balance_ptc)
        self.balance_uptc = self.initial_uptc
        #: stored uploads by name (``<sha256><ext>``), and their counters
        self.uploads: dict[str, bytes] = {}
        self.upload_count = 0
        self.upload_bytes = 0
        self.upload_charged_uptc = 0
        #: generate calls whose body carried image bytes, and the largest body
        self.inline_image_generates = 0
        self.max_generate_body_bytes = 0
        #: (finish time, task id) of renders not yet settled
        self._in_flight: list[tuple[float, str]] = []
        self.journal = None if config.state_path is None else Journal(config.state_path)
        self._replayed = False

    # ---- decisions ------------------------------------------------------------------

    def chance(self, share: float) -> bool:
        """One draw of the seeded RNG; a share of 0 draws nothing (keeps runs stable)."""
        return share > 0 and self.rng.random() < share

    def settle(self, now_s: float) -> int:
        """Retire renders that have ended (refunding failures); renders still in flight."""
        heap = self._in_flight
        while heap and heap[0][0] <= now_s:
            _, task_id = heapq.heappop(heap)
            task = self.tasks[task_id]
            if task.outcome != SUCCEEDED and self.config.refund_failed and not task.refunded:
                self._refund(task)
                self._log({"t": "refund", "task_id": task.task_id})
        return len(heap)

    def _refund(self, task: SimTask) -> None:
        task.refunded = True
        self.refunded_uptc += task.charged_uptc
        if self.balance_uptc is not None:
            self.balance_uptc += task.charged_uptc

    def price_uptc(self, price_ptc: Any) -> tuple[int | None, int]:
        """(list price, amount to charge) in micro-PTC for a price from the table."""
        if price_ptc is not None:
            uptc = to_uptc(price_ptc)
            return uptc, uptc
        unknown = self.config.unknown_price_ptc
        return None, (0 if unknown is None else to_uptc(unknown))

    def can_pay(self, charge_uptc: int) -> bool:
        return self.balance_uptc is None or self.balance_uptc >= charge_uptc

    # ---- the one write ------------------------------------------------------------------

    def create(
        self,
        request: Mapping[str, Any],
        trace_id: str | None,
        *,
        now_s: float,
        wall_s: float,
        price_uptc: int | None,
        charge_uptc: int,
    ) -> SimTask:
        """Accept a task: charge it, decide its fate, remember it."""
        cfg = self.config
        prompt = str(request.get("prompt", ""))
        shot_key = shot_key_of(trace_id, request)
        first_attempt = self.attempts_by_shot[shot_key] == 0
        self.attempts_by_shot[shot_key] += 1
        low, high = cfg.render_time_s
        render_s = self.rng.uniform(low, high)
        if any(word in prompt.lower() for word in cfg.moderated_words):
            outcome = MODERATED
        elif first_attempt and self.chance(cfg.fail_first_attempt_share):
            outcome = FAILED
        else:
            outcome = SUCCEEDED
        succeeded = outcome == SUCCEEDED
        seed = request.get("seed")
        task_id, wire_id = self._new_id()
        task = SimTask(
            task_id=task_id,
            wire_id=wire_id,
            trace_id=trace_id,
            shot_key=shot_key,
            prompt=prompt,
            seed=seed if isinstance(seed, int) else self.rng.randrange(2**31),
            created_s=now_s,
            render_s=render_s,
            outcome=outcome,
            price_uptc=price_uptc,
            charged_uptc=charge_uptc,
            created_wall_s=wall_s,
            truncate_next=self.chance(cfg.truncate_share),
            deleted=succeeded and self.chance(cfg.deleted_share),
            forgotten=self.chance(cfg.forget_share),
            untaggable=any(word in prompt.lower() for word in cfg.untaggable_words),
        )
        self._remember(task)
        self._log({"t": "task", **_task_record(task)})
        return task

    def _remember(self, task: SimTask) -> None:
        self.tasks[task.task_id] = task
        if task.trace_id:
            self.by_trace.setdefault(task.trace_id, task.task_id)
        heapq.heappush(self._in_flight, (task.finish_s, task.task_id))
        self.charged_uptc += task.charged_uptc
        if task.price_uptc is None:
            self.unpriced += 1
        if self.balance_uptc is not None:
            self.balance_uptc -= task.charged_uptc

    def upload_price_uptc(self) -> int:
        configured = self.config.upload_price_uptc
        if configured is not None:
            return configured
        table = self.config.price_table
        listed = (table or default_price_table()).upload_ptc
        return DEFAULT_UPLOAD_UPTC if listed is None else to_uptc(listed)

    def store_upload(self, name: str, data: bytes, charge_uptc: int) -> None:
        """Keep an upload's bytes under ``name`` and charge it."""
        if self.journal is not None:
            self.journal.store_upload(name, data)
        self._count_upload(name, data, len(data), charge_uptc)
        self._log(
            {"t": "upload", "name": name, "size_bytes": len(data), "charged_uptc": charge_uptc}
        )

    def _count_upload(
        self, name: str, data: bytes | None, size_bytes: int, charge_uptc: int
    ) -> None:
        if data is not None:
            self.uploads[name] = data
        self.upload_count += 1
        self.upload_bytes += size_bytes
        self.upload_charged_uptc += charge_uptc
        if self.balance_uptc is not None:
            self.balance_uptc -= charge_uptc

    # ---- the state file -------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal.append(record)

    def replay(self) -> int:
        """Rebuild the books from the state file (once per Books); records read."""
        if self.journal is None or self._replayed:
            return 0
        self._replayed = True
        count = 0
        for record in self.journal.records():
            count += 1
            kind = record.get("t")
            if kind == "task":
                task = SimTask(**{k: v for k, v in record.items() if k in _TASK_FIELDS})
                self.attempts_by_shot[task.shot_key] += 1
                self._remember(task)
            elif kind == "refund" and record.get("task_id") in self.tasks:
                self._refund(self.tasks[record["task_id"]])
            elif kind == "upload":
                name = str(record["name"])
                self._count_upload(
                    name,
                    self.journal.read_upload(name),
                    int(record["size_bytes"]),
                    int(record["charged_uptc"]),
                )
        return count

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def _new_id(self) -> tuple[str, int | str]:
        if self.config.dialect in ("pixverse", "web"):
            number = PIXVERSE_FIRST_ID + len(self.tasks)
            return str(number), number
        while True:
            text = f"pix_{self.rng.getrandbits(64):016x}"
            if text not in self.tasks:
                return text, text

    # ---- reporting ----------------------------------------------------------------------

    def stats(self, *, now_s: float, with_tasks: bool = True) -> dict[str, Any]:
        in_flight = self.settle(now_s)
        out: dict[str, Any] = {
            "accepted_tasks": len(self.tasks),
            "in_flight": in_flight,
            "uploads": {
                "count": self.upload_count,
                "bytes": self.upload_bytes,
                "charged_uptc": self.upload_charged_uptc,
                "distinct": len(self.uploads),
            },
            "inline_image_generates": self.inline_image_generates,
            "max_generate_body_bytes": self.max_generate_body_bytes,
            "charges": {
                "count": len(self.tasks),
                "sum_uptc": self.charged_uptc,
                "sum_ptc": str(from_uptc(self.charged_uptc)),
                "refunded_uptc": self.refunded_uptc,
                "refunded_ptc": str(from_uptc(self.refunded_uptc)),
                "net_uptc": self.charged_uptc - self.refunded_uptc,
                "net_ptc": str(from_uptc(self.charged_uptc - self.refunded_uptc)),
                "unpriced": self.unpriced,
            },
            "calls": dict(self.calls),
            "refusals": dict(self.refusals),
            "faults": dict(self.faults),
            "balance_uptc": self.balance_uptc,
            "balance_ptc": None if self.balance_uptc is None else str(from_uptc(self.balance_uptc)),
            "violations": list(self.violations),
        }
        if with_tasks:
            out["tasks"] = [self._record(t, now_s) for t in self.tasks.values()]
        return out

    @staticmethod
    def _record(task: SimTask, now_s: float) -> dict[str, Any]:
        return {
            "task_id": task.task_id,
            "trace_id": task.trace_id,
            "shot_key": task.shot_key,
            "prompt": task.prompt,
            "price_uptc": task.price_uptc,
            "price_ptc": None if task.price_uptc is None else str(from_uptc(task.price_uptc)),
            "charged_uptc": task.charged_uptc,
            "charged_ptc": str(from_uptc(task.charged_uptc)),
            # a task is charged once, at creation; dedup hits are not new charges
            "charged": 1,
            "refunded": task.refunded,
            "status": task.status_at(now_s),
            "outcome": task.outcome,
            "deleted": task.deleted,
            "forgotten": task.forgotten,
            "render_s": task.render_s,
            "created_s": task.created_s,
            "fetches": task.fetches,
            "downloads": task.downloads,
            "sha256": task.sha256,
        }


#: what a task record in the state file carries (its counters are not books)
_TASK_FIELDS = (
    "task_id",
    "wire_id",
    "trace_id",
    "shot_key",
    "prompt",
    "seed",
    "created_s",
    "render_s",
    "outcome",
    "price_uptc",
    "charged_uptc",
    "created_wall_s",
    "truncate_next",
    "deleted",
    "forgotten",
)


def _task_record(task: SimTask) -> dict[str, Any]:
    full = asdict(task)
    return {name: full[name] for name in _TASK_FIELDS}
