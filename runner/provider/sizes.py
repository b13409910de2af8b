"""How large a finished video will be, roughly: for checking free disk space before a
run spends anything.

The figures are deliberately low (bytes per second of video, by quality), so a run is
refused only when the disk is clearly too small: PixVerse's sample answer of a 5 s
720p render is 3,145,728 bytes (0.6 MB/s); 360p-1080p scale with the pixel count.
"""

from __future__ import annotations

from typing import Any

from runner.model import duration_seconds

#: bytes per second of video, by quality (low estimates)
BYTES_PER_S: dict[str, int] = {
    "360p": 150_000,
    "540p": 300_000,
    "720p": 500_000,
    "1080p": 1_000_000,
}
DEFAULT_DURATION_S = 5


def estimated_video_bytes(quality: Any, duration: Any) -> int:
    """A low estimate of the file a request of this quality and duration renders to."""
    seconds = duration_seconds(duration) or DEFAULT_DURATION_S
    return BYTES_PER_S.get(str(quality), BYTES_PER_S["360p"]) * seconds
