"""The simulator's videos: one tiny real MP4 shipped as package data, made unique per task.

Invariant: a task's bytes are the packaged MP4 followed by one top-level ``free`` box
carrying the task id, so every task has distinct bytes that still play (players skip
``free`` boxes) and the same task always serves the same bytes. No ffmpeg at run time.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

TINY_MP4_NAME = "tiny.mp4"
#: what the packaged clip is (64x64 pixels, 1 s, H.264)
TINY_WIDTH_PX = 64
TINY_HEIGHT_PX = 64


@cache
def tiny_mp4() -> bytes:
    """The packaged clip (runner/data/tiny.mp4)."""
    return resources.files("runner.data").joinpath(TINY_MP4_NAME).read_bytes()


def task_mp4(task_id: str) -> bytes:
    """The bytes the simulator serves for ``task_id``."""
    payload = f"pixrun-sim task {task_id}".encode()
    box = (8 + len(payload)).to_bytes(4, "big") + b"free" + payload
    return tiny_mp4() + box
