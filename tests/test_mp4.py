"""The MP4 box walk that verifies a download as its bytes arrive.

The same walk checks a finished file (``mp4_problem``), so these tests hold it to one
rule: however the bytes are cut into chunks, the verdict is the same.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from runner.provider import download, mp4_problem
from runner.provider.download import Mp4Walk
from runner.sim import task_mp4

VIDEO = task_mp4("mp4-walk")


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def big_box(kind: bytes, payload: bytes = b"") -> bytes:
    """A box with a 64-bit size (size field 1, the real size after the type)."""
    return (1).to_bytes(4, "big") + kind + (16 + len(payload)).to_bytes(8, "big") + payload


def verdict(data: bytes, cuts: list[int]) -> str | None:
    walk = Mp4Walk()
    start = 0
    for end in [*cuts, len(data)]:
        walk.feed(data[start:end], start)
        start = end
    return walk.problem(len(data))


def every_split(data: bytes) -> list[str | None]:
    """The verdict whole, byte by byte, and over random cuts."""
    rng = random.Random(len(data))
    verdicts = [verdict(data, []), verdict(data, list(range(1, len(data))))]
    for _ in range(20 if len(data) > 4 else 0):
        verdicts.append(verdict(data, sorted(rng.sample(range(1, len(data)), 3))))
    return verdicts


CASES: list[tuple[str, bytes, str | None]] = [
    ("the simulator's video", VIDEO, None),
    ("64-bit box sizes", big_box(b"ftyp", b"isom") + big_box(b"moov", b"x" * 40), None),
    ("a last box running to the end", box(b"ftyp", b"isom") + b"\0\0\0\0moov" + b"x" * 99, None),
    ("empty", b"", "the file is empty"),
    ("an html page", b"<html><body>denied</body></html>", "not an MP4"),
    ("no moov", box(b"ftyp", b"isom") + box(b"free", b"zz"), "no moov box"),
    ("cut in a box", VIDEO[:-5], "runs past the end (the file is truncated)"),
    ("cut in a header", VIDEO + b"\0\0\0", "a box header is cut off"),
    ("cut in a 64-bit header", box(b"ftyp") + box(b"moov") + big_box(b"mdat")[:12], "cut off"),
    ("an impossible size", box(b"ftyp") + b"\0\0\0\4moov", "impossible size"),
]


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_verdict_does_not_depend_on_how_the_bytes_arrive(
    name: str, data: bytes, expected: str | None, tmp_path: Path
) -> None:
    verdicts = every_split(data)
    assert len(set(verdicts)) == 1, verdicts
    if expected is None:
        assert verdicts[0] is None
    else:
        assert verdicts[0] is not None and expected in verdicts[0]
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    assert mp4_problem(path) == verdicts[0]


def test_a_bad_first_box_is_known_at_once() -> None:
    """The walk stops at the first bad box: later bytes cannot make it sound."""
    walk = Mp4Walk()
    walk.feed(b"\0\0\0\x10", 0)
    assert walk.broken is None  # a size alone: too early to tell
    walk.feed(b"RIFF", 4)
    assert "does not start with an ftyp box" in (walk.broken or "")
    walk.feed(VIDEO, 8)
    assert walk.problem(8 + len(VIDEO)) == walk.broken


def test_a_sound_stream_is_never_called_broken_on_the_way() -> None:
    walk = Mp4Walk()
    for offset in range(len(VIDEO)):
        walk.feed(VIDEO[offset : offset + 1], offset)
        assert walk.broken is None
    assert walk.problem(len(VIDEO)) is None


def test_a_chain_of_too_many_boxes_is_refused_as_soon_as_it_passes_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(download, "_MAX_BOXES", 3)
    walk = Mp4Walk()
    data = box(b"ftyp", b"isom") + box(b"moov") + box(b"free")
    walk.feed(data, 0)
    assert walk.broken is None
    walk.feed(box(b"free"), len(data))
    assert walk.broken == "too many boxes to be a video"
