"""Builders of real model objects for tests (no mocks): shots, tiny manifests, and a
hot folder that only scans."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.model import Manifest, Mode, OutputSettings, PollSettings, RunSettings, Shot, SourceMark

if TYPE_CHECKING:
    from runner.run.watch import HotFolder


def make_shot(
    shot_id: str,
    *,
    prompt: str | None = None,
    quality: str = "360p",
    duration: int = 5,
    motion_mode: str = "normal",
    model: str = "v4.5",
    max_attempts: int = 3,
    price_ptc: Decimal | None = Decimal("0.1"),
    output: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Shot:
    request: dict[str, Any] = {
        "prompt": prompt or f"a calm lake at dawn, shot {shot_id}",
        "model": model,
        "quality": quality,
        "duration": duration,
        "motion_mode": motion_mode,
    }
    request.update(extra or {})
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    return Shot(
        shot_id=shot_id,
        mode=Mode.TEXT,
        request=request,
        request_hash=digest,
        output_relpath=output or f"{shot_id}.mp4",
        mark=SourceMark("test.yaml", 1, 1),
        price_ptc=price_ptc,
        max_attempts=max_attempts,
    )


def make_manifest(
    tmp: Path,
    shots: list[Shot],
    *,
    concurrency: int = 8,
    budget_ptc: Decimal | None = None,
    poll: PollSettings | None = None,
    requests_per_s: float = 1000.0,
) -> Manifest:
    return Manifest(
        path=tmp / "batch.yaml",
        name="test batch",
        shots=tuple(shots),
        output=OutputSettings(dir=tmp / "out"),
        run=RunSettings(
            concurrency=concurrency,
            budget_ptc=budget_ptc,
            download_concurrency=4,
            requests_per_s=requests_per_s,
            poll=poll
            or PollSettings(
                initial_delay_s=0.02, min_interval_s=0.01, max_interval_s=0.2, timeout_s=30
            ),
        ),
    )


def scanning_hot_folder(
    folder: Path, *, stable_s: float, on_news: Callable[[Any], None] = lambda news: None
) -> HotFolder:
    """A real ``HotFolder`` on ``folder`` for driving its scan by hand (``_stable``):
    it reports what it sees to ``on_news``; its batch callbacks do nothing."""
    # imported here, as the watch tests do: collecting a test file needs no watch code
    from runner.run.context import SharedFlow
    from runner.run.multi import BatchSettings
    from runner.run.watch import HotFolder

    return HotFolder(
        folder,
        SharedFlow(1, 1.0, None),
        BatchSettings(),
        lambda manifest: None,  # type: ignore[arg-type,return-value]
        lambda path: None,  # type: ignore[arg-type,return-value]
        on_news,
        stable_s=stable_s,
    )
