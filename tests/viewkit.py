"""Ledgers in every state, built through the real write API, for the view tests.

Each shot is driven through the same calls the scheduler makes (begin_attempt,
attempt_accepted, attempt_finished, update_shot), and done shots get a real MP4 on
disk (runner/data/tiny.mp4), so views and reports see exactly what a run leaves.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from shots import make_shot

from runner.ledger import AttemptOutcome, EventKind, Ledger, open_ledger
from runner.model import ShotState

TINY_MP4 = Path(__file__).resolve().parent.parent / "runner" / "data" / "tiny.mp4"

HOSTILE_PROMPT = (
    '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> '
    "a fox & a hare </p></article>"
)


@dataclass(frozen=True)
class Spec:
    """One shot and where its story ends."""

    shot_id: str
    state: ShotState
    prompt: str | None = None
    price_ptc: Decimal | None = Decimal("0.15")
    error: str | None = None
    quality: str = "540p"
    #: write a poster frame beside the output (done shots only)
    poster: bool = False


@dataclass
class Batch:
    ledger_path: Path
    output_dir: Path
    manifest_path: Path
    specs: list[Spec] = field(default_factory=list)


def mixed_specs() -> list[Spec]:
    """A small batch with every state a person should be able to tell apart."""
    return [
        Spec("dawn-lake", ShotState.DONE, "a calm lake at dawn, mist over the water", poster=True),
        Spec(
            "city-night",
            ShotState.DONE,
            "neon city street at night, rain, reflections",
            poster=True,
        ),
        Spec("fox-hare", ShotState.DONE, HOSTILE_PROMPT),
        Spec("desert-wind", ShotState.DONE, "wind shaping dunes in a red desert", price_ptc=None),
        Spec(
            "blocked",
            ShotState.MODERATED,
            "something the moderator refuses",
            error="the prompt was refused by content moderation",
        ),
        Spec(
            "broken",
            ShotState.FAILED,
            "a render that keeps failing",
            error="generation failed (status 8) three times",
        ),
        Spec("lost-answer", ShotState.AMBIGUOUS, "a request whose answer never came"),
        Spec("in-render", ShotState.SUBMITTED, "a cat rendering right now"),
        Spec("to-fetch", ShotState.RENDERED, "a finished render waiting for download"),
        Spec("queued-1", ShotState.PENDING, "not sent yet"),
        Spec("queued-2", ShotState.PENDING, "not sent yet either", price_ptc=None),
    ]


#: sky top, sky bottom, sun, land: a few moods so a contact sheet looks like one
_PALETTES = (
    ((250, 180, 190), (255, 226, 196), (255, 244, 214), (70, 82, 110)),
    ((12, 20, 48), (40, 60, 120), (235, 240, 255), (18, 22, 36)),
    ((240, 140, 70), (250, 210, 140), (255, 250, 220), (170, 80, 40)),
    ((60, 110, 80), (170, 210, 160), (255, 250, 210), (28, 60, 40)),
    ((250, 170, 60), (255, 225, 150), (255, 245, 200), (40, 50, 70)),
    ((90, 150, 210), (200, 230, 250), (255, 255, 255), (120, 170, 210)),
    ((120, 60, 140), (240, 140, 120), (255, 220, 160), (40, 30, 60)),
)


def _poster(path: Path, seed: int) -> None:
    """A small landscape poster frame (16:9), different per seed."""
    from PIL import Image, ImageDraw

    w, h = 480, 270
    top, bottom, sun, land = _PALETTES[seed % len(_PALETTES)]
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / h
        draw.line(
            [(0, y), (w, y)],
            fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )
    sx, sy, r = 80 + (seed * 97) % 320, 60 + (seed * 41) % 70, 22 + seed % 3 * 8
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=sun)
    peaks = [(0, h)]
    for i in range(7):
        x = i * w / 6
        peaks.append((x, h * (0.55 + 0.18 * (((seed + 3) * (i + 5) * 37) % 10) / 10)))
    peaks.append((w, h))
    draw.polygon(peaks, fill=land)
    img.save(path, quality=88)


async def _drive(ledger: Ledger, spec: Spec, out: Path, n: int) -> None:
    if spec.state == ShotState.PENDING:
        return
    row = await ledger.get_shot(spec.shot_id)
    assert row is not None
    attempt_id = await ledger.begin_attempt(
        row, attempt_no=1, trace_id=f"trace-{spec.shot_id}", new_attempt=True
    )
    if spec.state == ShotState.SUBMITTING:
        return
    if spec.state == ShotState.AMBIGUOUS:
        message = spec.error or "timed out after the request was sent"
        await ledger.attempt_finished(
            spec.shot_id,
            attempt_id,
            AttemptOutcome.AMBIGUOUS,
            message=message,
            http_status=None,
            shot_fields={
                "state": ShotState.AMBIGUOUS,
                "error_kind": "ambiguous",
                "last_error": message,
            },
            event=(EventKind.SHOT_AMBIGUOUS, message),
        )
        return
    task_id = f"{400000 + n}"
    price = None if spec.price_ptc is None else int(spec.price_ptc * 1_000_000)
    await ledger.attempt_accepted(spec.shot_id, attempt_id, task_id, price, time.time() + 5)
    if spec.state == ShotState.SUBMITTED:
        return
    if spec.state in (ShotState.FAILED, ShotState.MODERATED):
        kind = "moderated" if spec.state == ShotState.MODERATED else "render_failed"
        message = spec.error or "failed"
        await ledger.update_shot(
            spec.shot_id,
            {"state": spec.state, "error_kind": kind, "last_error": message},
            event=(EventKind.SHOT_FAILED, message),
        )
        return
    await ledger.update_shot(
        spec.shot_id,
        {
            "state": ShotState.RENDERED,
            "video_url": f"https://media.example/{task_id}.mp4",
            "poster_url": f"https://media.example/{task_id}.jpg",
            "seed": 1000 + n,
            "width": 64,
            "height": 64,
            "rendered_at": time.time(),
        },
    )
    if spec.state == ShotState.RENDERED:
        return
    target = out / f"{spec.shot_id}.mp4"
    shutil.copyfile(TINY_MP4, target)
    if spec.poster:
        _poster(target.with_suffix(".jpg"), n + 3)
    data = target.read_bytes()
    await ledger.update_shot(
        spec.shot_id,
        {
            "state": ShotState.DONE,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "done_at": time.time(),
        },
    )


async def build_batch(
    tmp: Path, specs: list[Spec] | None = None, *, finish_run: bool = False, name: str = "demo"
) -> Batch:
    """A ledger (beside ``tmp/<name>.yaml``) and an output folder holding ``specs``."""
    specs = mixed_specs() if specs is None else specs
    manifest = tmp / f"{name}.yaml"
    manifest.write_text("# the views read the ledger only\n")
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    ledger_path = tmp / f"{name}.ledger.sqlite"
    shots = [
        make_shot(s.shot_id, prompt=s.prompt, price_ptc=s.price_ptc, quality=s.quality)
        for s in specs
    ]
    async with await open_ledger(ledger_path, writer=True) as ledger:
        await ledger.set_meta({"manifest": str(manifest), "name": name, "output_dir": str(out)})
        await ledger.sync_manifest(shots)
        await ledger.start_run()
        await asyncio.gather(*(_drive(ledger, s, out, i) for i, s in enumerate(specs)))
        if finish_run:
            await ledger.end_run(1, {"counts": {}})
    return Batch(ledger_path=ledger_path, output_dir=out, manifest_path=manifest, specs=specs)
