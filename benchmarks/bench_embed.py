"""What ``output.embed_metadata`` costs per file: the tag write, its fsync and the second
read that hashes and checks the tagged file, beside a plain sha256 of the same file.

Files are the simulator's clip with its ``mdat`` grown to the size asked, in both
layouts a provider may serve: ``moov`` before ``mdat`` (streaming "faststart": the tag
write moves every byte after the ``moov``) and ``moov`` last (the write touches only the
end). Caches are warm (a download was just written), as in a run.

Not in ``make bench``'s default set: ``python -m benchmarks.bench_embed [--quick]``;
``main()`` returns the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.machine import bench_dir
from runner.mp4tags import Embedder, tag_values
from runner.outputs import DownloadResult, sha256_file
from runner.sim import tiny_mp4

SIZES_MB = (1, 10, 50)
REPEATS = 5


def _boxes(data: bytes) -> list[bytes]:
    boxes, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        boxes.append(data[at : at + size])
        at += size
    return boxes


def clip(size_mb: int, *, moov_last: bool) -> bytes:
    """The packaged clip with its mdat padded to about ``size_mb`` MB."""
    by_kind = {box[4:8]: box for box in _boxes(tiny_mp4())}
    media = by_kind[b"mdat"][8:] + bytes(size_mb * 1_000_000)
    mdat = (8 + len(media)).to_bytes(4, "big") + b"mdat" + media
    if moov_last:
        return by_kind[b"ftyp"] + mdat + by_kind[b"moov"]
    return by_kind[b"ftyp"] + by_kind[b"moov"] + mdat


def _embedder() -> Embedder:
    return Embedder(
        tag_values(
            shot_id="shot-000042",
            version=1,
            task_id="315033920339584",
            seed=123456,
            mode="text",
            prompt="a slow pan across a misty valley at dawn, birds, soft light " * 4,
            request={"model": "v4.5", "quality": "540p", "duration": 5},
            manifest="night-batch",
        )
    )


def measure(folder: Path, size_mb: int, *, moov_last: bool) -> dict[str, float]:
    data = clip(size_mb, moov_last=moov_last)
    delivered = DownloadResult(folder / "clip.mp4", len(data), hashlib.sha256(data).hexdigest())
    part = folder / ".clip.mp4.part"
    tag_s, hash_s = [], []
    for _ in range(REPEATS):
        part.write_bytes(data)
        t0 = time.perf_counter()
        sha256_file(part)
        hash_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tagged = _embedder()(part, delivered)
        tag_s.append(time.perf_counter() - t0)
        assert tagged.sha256 != delivered.sha256
    return {
        "embed_ms": statistics.median(tag_s) * 1000,
        "sha256_ms": statistics.median(hash_s) * 1000,
    }


def main(quick: bool = False) -> dict[str, float]:
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pixrun-bench-embed-", dir=bench_dir()) as tmp:
        for size_mb in SIZES_MB[:2] if quick else SIZES_MB:
            for moov_last in (False, True):
                layout = "moov_last" if moov_last else "faststart"
                for key, value in measure(Path(tmp), size_mb, moov_last=moov_last).items():
                    result[f"{size_mb}mb_{layout}_{key}"] = value
    for key, value in result.items():
        print(f"{key:>28}: {value:8.1f}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 10 MB only")
    main(quick=parser.parse_args().quick)
