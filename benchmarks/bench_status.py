"""How fast `pixrun status` and `pixrun report` answer on a 100,000-shot ledger.

The ledger is built through the real write API (sync_manifest, begin_attempt,
attempt_accepted, update_shot), with a night's mix of states: most done, some pending,
some in flight, a few failed and parked. Target: status in under a second.

Not in ``make bench``'s default set (bench_scale times status on a real run's ledger);
``python -m benchmarks.run_all --only status`` or ``python -m benchmarks.bench_status
[--quick] [--shots N]`` (``--quick``: 10,000 shots); ``main()`` returns the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.machine import bench_dir
from runner.ledger import EventKind, Ledger, open_ledger
from runner.ledger.queries import report_rows, status_summary
from runner.model import Mode, Shot, ShotState, SourceMark
from runner.report import ContactSheetInfo, render_contact_sheet

#: fraction of shots that end in each state (the rest stay pending)
MIX = {
    ShotState.DONE: 0.60,
    ShotState.FAILED: 0.01,
    ShotState.AMBIGUOUS: 0.002,
    ShotState.SUBMITTED: 0.005,
}


def _shot(i: int) -> Shot:
    request: dict[str, Any] = {
        "prompt": f"shot {i}: a slow pan across a misty valley at dawn, birds, soft light",
        "model": "v4.5",
        "quality": "540p",
        "duration": 5,
        "motion_mode": "normal",
        "seed": i,
    }
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    return Shot(
        shot_id=f"shot-{i:06d}",
        mode=Mode.TEXT,
        request=request,
        request_hash=digest,
        output_relpath=f"shot-{i:06d}.mp4",
        mark=SourceMark("bench.yaml", i + 1, 1),
        price_ptc=Decimal("0.15"),
    )


async def _drive(ledger: Ledger, shot_id: str, state: ShotState, n: int) -> None:
    row = await ledger.get_shot(shot_id)
    assert row is not None
    attempt = await ledger.begin_attempt(row, attempt_no=1, trace_id=f"t{n}", new_attempt=True)
    if state == ShotState.AMBIGUOUS:
        await ledger.update_shot(
            shot_id,
            {"state": state, "error_kind": "ambiguous", "last_error": "no answer"},
            event=(EventKind.SHOT_AMBIGUOUS, "no answer"),
        )
        return
    await ledger.attempt_accepted(shot_id, attempt, str(10_000_000 + n), 150_000, time.time())
    if state == ShotState.FAILED:
        await ledger.update_shot(
            shot_id,
            {"state": state, "error_kind": "render_failed", "last_error": "failed"},
            event=(EventKind.SHOT_FAILED, "failed"),
        )
    elif state == ShotState.DONE:
        await ledger.update_shot(
            shot_id,
            {
                "state": state,
                "bytes": 1_000_000,
                "sha256": "0" * 64,
                "seed": n,
                "width": 1280,
                "height": 720,
                "done_at": time.time(),
            },
        )


async def build(path: Path, shots: int) -> float:
    t0 = time.perf_counter()
    plan: list[tuple[str, ShotState]] = []
    cursor = 0
    for state, share in MIX.items():
        count = int(shots * share)
        plan += [(f"shot-{i:06d}", state) for i in range(cursor, cursor + count)]
        cursor += count
    async with await open_ledger(path, writer=True) as ledger:
        await ledger.set_meta({"name": "bench", "output_dir": str(path.parent)})
        await ledger.sync_manifest([_shot(i) for i in range(shots)])
        await ledger.start_run()
        for start in range(0, len(plan), 2000):
            chunk = plan[start : start + 2000]
            await asyncio.gather(
                *(_drive(ledger, sid, st, start + k) for k, (sid, st) in enumerate(chunk))
            )
    return time.perf_counter() - t0


async def measure(path: Path, repeat: int = 5) -> dict[str, float]:
    status_s = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        async with await open_ledger(path, writer=False) as ledger:
            summary = await status_summary(ledger)
        status_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    async with await open_ledger(path, writer=False) as ledger:
        rows = await report_rows(ledger)
    report_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    async with await open_ledger(path, writer=False) as ledger:
        failed = await report_rows(ledger, states={ShotState.FAILED})
    failed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    html = render_contact_sheet(
        rows,
        html_path=path.parent / "sheet.html",
        output_dir=path.parent,
        info=ContactSheetInfo(title="bench"),
    )
    html_s = time.perf_counter() - t0
    return {
        "shots": float(summary.total),
        "status_median_s": statistics.median(status_s),
        "status_max_s": max(status_s),
        "report_all_rows_s": report_s,
        "report_failed_rows_s": failed_s,
        "failed_rows": float(len(failed)),
        "contact_sheet_s": html_s,
        "contact_sheet_mb": len(html) / 1e6,
    }


def main(quick: bool = False, shots: int | None = None) -> dict[str, float]:
    shots = shots or (10_000 if quick else 100_000)
    with tempfile.TemporaryDirectory(prefix="pixrun-bench-status-", dir=bench_dir()) as tmp:
        path = Path(tmp) / "bench.ledger.sqlite"
        build_s = asyncio.run(build(path, shots))
        result = asyncio.run(measure(path))
        result["build_s"] = build_s
        result["ledger_mb"] = path.stat().st_size / 1e6
    for key, value in result.items():
        print(f"{key:>22}: {value:.3f}")
    target = "ok" if result["status_max_s"] < 1.0 else "MISSED"
    print(f"status under 1 s on {shots} shots: {target}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 shots")
    parser.add_argument("--shots", type=int)
    args = parser.parse_args()
    main(quick=args.quick, shots=args.shots)
