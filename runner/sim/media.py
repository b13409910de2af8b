"""The simulator's videos: one tiny real MP4 shipped as package data, made unique per task.

Invariant: a task's bytes are the packaged MP4 (or, for an untaggable task, a minimal
box chain) followed by one top-level ``free`` box carrying the task id, so every task
has distinct bytes that still play (players skip ``free`` boxes) and the same task
always serves the same bytes. No ffmpeg at run time.
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
    return tiny_mp4() + _free_box(task_id)


def untaggable_mp4(task_id: str) -> bytes:
    """A file whose top-level box chain is sound (``ftyp``, ``moov``, ``free``: a
    download accepts it) but whose ``moov`` holds a cut-short ``mvhd``, which mutagen
    refuses to read: a provider file that cannot be tagged."""
    return (
        _box(b"ftyp", b"isom\0\0\2\0isom")
        + _box(b"moov", _box(b"mvhd", b"\1"))
        + _free_box(task_id)
    )


def _free_box(task_id: str) -> bytes:
    return _box(b"free", f"pixrun-sim task {task_id}".encode())


def _box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload
