"""Downloads: cut transfers resumed or restarted, expired URLs, bodies that are not MP4s,
oversize bodies, existing files, a full disk, and a hard kill mid-download."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from aiohttp import web
from conftest import TEST_SECRET, ProviderFactory, SimFactory

from runner import outputs as outputs_module
from runner.errors import (
    DiskFull,
    DownloadCorrupt,
    DownloadError,
    DownloadTooLarge,
    OutputConflict,
    UrlExpired,
    UsageError,
)
from runner.outputs import sidecar_path, write_sidecar
from runner.provider import (
    DownloadResult,
    Provider,
    TaskStatus,
    mp4_problem,
    part_path,
    trace_id_for,
)
from runner.provider.download import WRITE_BYTES
from runner.sim import Simulator, task_mp4

REQUEST = {"prompt": "a red fox in snow", "model": "v4.5", "quality": "360p"}
VIDEO = task_mp4("download-test")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def web_server(handler: Handler) -> AsyncIterator[str]:
    """An aiohttp server answering every GET under /v/ with ``handler``."""
    app = web.Application()
    app.router.add_get("/v/{name}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v/video.mp4"
    finally:
        await runner.cleanup()


async def send_cut(request: web.Request, body: bytes, keep: int) -> web.StreamResponse:
    """Announce ``body`` in full, send ``keep`` bytes of it, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[:keep])
    assert request.transport is not None
    request.transport.abort()
    return response


async def serve_video(request: web.Request) -> web.StreamResponse:
    """A good video, whole, with its length announced."""
    return web.Response(body=VIDEO, content_type="video/mp4")


def assert_nothing_kept(dest: Path) -> None:
    assert not dest.exists()
    assert not part_path(dest).exists()


async def rendered_url(sim: Simulator, provider: Provider) -> str:
    task_id = await provider.generate(REQUEST, trace_id=trace_id_for("dl", 1, secret=TEST_SECRET))
    for _ in range(200):
        state = await provider.fetch(task_id)
        if state.status is TaskStatus.SUCCEEDED:
            assert state.video_url
            return state.video_url
        await asyncio.sleep(0.01)
    raise AssertionError("never rendered")


# ---- cut transfers -------------------------------------------------------------------------


async def test_cut_transfer_is_resumed_with_range(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    sim = await sim_factory(truncate_share=1.0)
    provider = provider_factory(sim)
    url = await rendered_url(sim, provider)
    dest = tmp_path / "out" / "fox.mp4"
    result = await provider.download(url, dest)
    record = sim.stats()["tasks"][0]
    assert result.sha256 == record["sha256"]
    assert dest.read_bytes() == task_mp4(record["task_id"])
    assert result.bytes == dest.stat().st_size
    assert sim.stats()["faults"]["truncated_downloads"] == 1
    assert provider.calls["download"] == 2, "one cut request, one ranged resume"
    assert not part_path(dest).exists()


async def test_cut_transfer_restarts_when_range_is_ignored(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    seen_ranges: list[str | None] = []

    async def ignore_range(request: web.Request) -> web.StreamResponse:
        seen_ranges.append(request.headers.get("Range"))
        if len(seen_ranges) == 1:
            return await send_cut(request, VIDEO, len(VIDEO) // 2)
        return web.Response(body=VIDEO, content_type="video/mp4")

    async with web_server(ignore_range) as url:
        provider = provider_factory(url)
        result = await provider.download(url, tmp_path / "a.mp4")
    assert (tmp_path / "a.mp4").read_bytes() == VIDEO
    assert seen_ranges == [None, f"bytes={len(VIDEO) // 2}-"]
    assert result.bytes == len(VIDEO)


async def test_transfer_cut_every_time_gives_up_and_keeps_nothing(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    async def always_cut(request: web.Request) -> web.StreamResponse:
        return await send_cut(request, VIDEO, 100)

    dest = tmp_path / "a.mp4"
    async with web_server(always_cut) as url:
        provider = provider_factory(url, download_resume_attempts=2)
        with pytest.raises(DownloadCorrupt):
            await provider.download(url, dest)
    assert provider.calls["download"] == 3
    assert_nothing_kept(dest)


# ---- stale and hostile URLs -----------------------------------------------------------------


async def test_expired_url_says_fetch_again_and_a_fresh_one_works(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    now_s = [1000.0]
    sim = await sim_factory(url_ttl_s=60.0, render_time_s=(1.0, 1.0), clock=lambda: now_s[0])
    provider = provider_factory(sim)
    task_id = await provider.generate(REQUEST, trace_id="t")
    now_s[0] += 2
    stale = (await provider.fetch(task_id)).video_url
    assert stale is not None
    now_s[0] += 61
    dest = tmp_path / "a.mp4"
    with pytest.raises(UrlExpired) as info:
        await provider.download(stale, dest)
    assert info.value.status == 403 and "fetch the task again" in (info.value.hint or "")
    assert_nothing_kept(dest)
    fresh = (await provider.fetch(task_id)).video_url
    assert fresh is not None and fresh != stale
    await provider.download(fresh, dest)
    assert mp4_problem(dest) is None
    assert sim.stats()["refusals"]["expired_url"] == 1


async def test_unknown_url_is_expired_too(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    sim = await sim_factory()
    with pytest.raises(UrlExpired):
        await provider_factory(sim).download(sim.base_url + "/_sim/files/nope.mp4", tmp_path / "a")


async def test_a_body_that_is_not_an_mp4_is_refused(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<html><body>Access denied</body></html>", content_type="text/html"
        )

    dest = tmp_path / "a.mp4"
    async with web_server(html) as url:
        with pytest.raises(DownloadCorrupt) as info:
            await provider_factory(url).download(url, dest)
    assert "not an MP4" in str(info.value) and "b'<html><b'" in str(info.value)
    assert_nothing_kept(dest)


async def test_a_body_that_is_not_an_mp4_is_refused_at_its_first_bytes(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    """The box walk judges the start of the body: an error page that never ends (or is
    huge) is refused at once, not after the whole of it."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        response.content_length = 10**9
        await response.prepare(request)
        await response.write(b"<html><body>" + b" " * 4096)
        await asyncio.sleep(30)  # the rest never comes
        return response

    dest = tmp_path / "a.mp4"
    async with web_server(endless) as url:
        with pytest.raises(DownloadCorrupt) as info:
            await asyncio.wait_for(provider_factory(url).download(url, dest), timeout=5)
    assert "not an MP4" in str(info.value)
    assert_nothing_kept(dest)


async def test_an_mp4_cut_short_at_the_source_is_refused(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    async def short(request: web.Request) -> web.StreamResponse:
        return web.Response(body=VIDEO[:-200], content_type="video/mp4")  # honest length

    dest = tmp_path / "a.mp4"
    async with web_server(short) as url:
        with pytest.raises(DownloadCorrupt) as info:
            await provider_factory(url).download(url, dest)
    assert "truncated" in str(info.value)
    assert_nothing_kept(dest)


async def test_announced_oversize_body_is_refused(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    dest = tmp_path / "a.mp4"
    async with web_server(serve_video) as url:
        with pytest.raises(DownloadTooLarge):
            await provider_factory(url, max_download_bytes=500).download(url, dest)
    assert_nothing_kept(dest)


async def test_unannounced_oversize_body_is_stopped_while_streaming(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(VIDEO[:64])
        for _ in range(64):
            await response.write(b"\0" * 4096)
        await response.write_eof()
        return response

    dest = tmp_path / "a.mp4"
    async with web_server(endless) as url:
        with pytest.raises(DownloadTooLarge):
            await provider_factory(url, max_download_bytes=10_000).download(url, dest)
    assert_nothing_kept(dest)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.mp4", "nonsense"])
async def test_only_http_urls_are_followed(
    url: str, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    dest = tmp_path / "a.mp4"
    with pytest.raises(DownloadError):
        await provider_factory("http://127.0.0.1:9").download(url, dest)
    assert_nothing_kept(dest)


# ---- the file system ------------------------------------------------------------------------


async def test_an_existing_file_is_never_replaced(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    other = tmp_path / "other.mp4"
    other.write_bytes(b"somebody else's file")
    same = tmp_path / "same.mp4"
    same.write_bytes(VIDEO)
    async with web_server(serve_video) as url:
        provider = provider_factory(url)
        with pytest.raises(OutputConflict):
            await provider.download(url, other)
        result = await provider.download(url, same)
    assert other.read_bytes() == b"somebody else's file"
    assert not part_path(other).exists()
    assert result.bytes == len(VIDEO) and same.read_bytes() == VIDEO


@pytest.mark.parametrize("already_there", [False, True], ids=["new", "identical-existing"])
async def test_then_runs_after_the_publish_and_shares_the_folder_fsync(
    provider_factory: ProviderFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    already_there: bool,
) -> None:
    """The sidecar hook sees the video under its final name, and the folder fsync that
    makes the names durable begins after the hook, before the download returns; also
    when the identical video was already there (a rerun after a crash), where only the
    sidecar's name is new."""
    timeline: list[str] = []

    def fsync_dir(directory: Path) -> None:
        timeline.append("folder fsync")

    monkeypatch.setattr(outputs_module, "_fsync_dir", fsync_dir)

    def then(result: DownloadResult) -> None:
        assert result.path.read_bytes() == VIDEO and not part_path(result.path).exists()
        write_sidecar(result.path, {"sha256": result.sha256})
        timeline.append("then")

    dest = tmp_path / "a.mp4"
    if already_there:
        dest.write_bytes(VIDEO)
    async with web_server(serve_video) as url:
        result = await provider_factory(url).download(url, dest, then=then)
    timeline.append("returned")
    assert timeline == ["then", "folder fsync", "returned"]
    sidecar = json.loads(sidecar_path(dest).read_text("utf-8"))
    assert sidecar == {"sha256": result.sha256}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "a.mp4.json"]


@pytest.mark.parametrize("identical", [True, False], ids=["identical", "older-version"])
def test_place_over_runs_then_before_the_one_folder_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identical: bool
) -> None:
    """A download staged beside an existing file: the identical copy is dropped, or the
    older version moved aside and the new one put in its place; the sidecar comes next,
    and one folder fsync, after it, covers every new name."""
    timeline: list[str] = []

    def fsync_dir(directory: Path) -> None:
        assert directory == tmp_path
        timeline.append(f"folder fsync: {sorted(p.name for p in tmp_path.iterdir())}")

    monkeypatch.setattr(outputs_module, "_fsync_dir", fsync_dir)
    target, staged = tmp_path / "a.mp4", outputs_module.staging_path(tmp_path / "a.mp4")
    target.write_bytes(VIDEO if identical else b"the older version")
    staged.write_bytes(VIDEO)
    aside = None if identical else tmp_path / "a.v1.mp4"

    def then() -> None:
        write_sidecar(target, {"version": 2})
        timeline.append("then")

    outputs_module.place_over(target, staged, aside, then)
    names = ["a.mp4", "a.mp4.json"] if identical else ["a.mp4", "a.mp4.json", "a.v1.mp4"]
    assert timeline == ["then", f"folder fsync: {names}"]
    assert target.read_bytes() == VIDEO
    if aside is not None:
        assert aside.read_bytes() == b"the older version"


def test_place_over_makes_the_moves_durable_when_then_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder_fsyncs: list[Path] = []
    monkeypatch.setattr(outputs_module, "_fsync_dir", folder_fsyncs.append)
    target, staged = tmp_path / "a.mp4", outputs_module.staging_path(tmp_path / "a.mp4")
    target.write_bytes(b"the older version")
    staged.write_bytes(VIDEO)

    def then() -> None:
        raise DiskFull("the disk is full while writing a.mp4.json")

    with pytest.raises(DiskFull):
        outputs_module.place_over(target, staged, tmp_path / "a.v1.mp4", then)
    assert folder_fsyncs == [tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "a.v1.mp4"]


async def test_a_failing_then_leaves_the_video_published_and_raises_its_error(
    provider_factory: ProviderFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder_fsyncs: list[Path] = []
    monkeypatch.setattr(outputs_module, "_fsync_dir", folder_fsyncs.append)

    def then(result: DownloadResult) -> None:
        raise DiskFull(f"the disk is full while writing {sidecar_path(result.path)}")

    dest = tmp_path / "a.mp4"
    async with web_server(serve_video) as url:
        with pytest.raises(DiskFull, match=r"a\.mp4\.json"):
            await provider_factory(url).download(url, dest, then=then)
    # the video is published, and its name made durable all the same (a rerun accepts
    # the identical file); no temporary is left
    assert dest.read_bytes() == VIDEO
    assert folder_fsyncs == [tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_a_sidecar_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="missing"):
        write_sidecar(tmp_path / "missing" / "a.mp4", {"x": 1})


async def test_a_full_disk_is_disk_full(
    provider_factory: ProviderFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")

    def full(path: Path) -> BinaryIO:
        return open("/dev/full", "wb")

    monkeypatch.setattr(outputs_module, "open_part", full)

    dest = tmp_path / "a.mp4"
    async with web_server(serve_video) as url:
        with pytest.raises(DiskFull):
            await provider_factory(url).download(url, dest)
    assert not dest.exists()


KILLED_DOWNLOADER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from runner.provider import Provider, ProviderConfig
    from runner.provider import download

    took = download._Transfer.take

    def take_and_say(self, chunk):
        due = took(self, chunk)
        print("took", self.received, flush=True)  # the parent kills after this
        return due

    download._Transfer.take = take_and_say

    async def main() -> None:
        config = ProviderConfig(base_url="http://127.0.0.1:9", api_key="k")
        async with Provider(config) as provider:
            await provider.download(sys.argv[1], Path(sys.argv[2]))

    asyncio.run(main())
    """
)


#: larger than what waits in memory, so part of it is on disk when the download dies
BIG_VIDEO = VIDEO + (8 + 2 * WRITE_BYTES).to_bytes(4, "big") + b"free" + bytes(2 * WRITE_BYTES)


@pytest.mark.parametrize(
    ("video", "sent", "leaves_part"),
    [(VIDEO, 300, False), (BIG_VIDEO, WRITE_BYTES + WRITE_BYTES // 2, True)],
    ids=["small", "big"],
)
async def test_a_kill_mid_download_leaves_no_file_under_the_final_name(
    provider_factory: ProviderFactory,
    tmp_path: Path,
    video: bytes,
    sent: int,
    leaves_part: bool,
) -> None:
    """Killed mid-transfer, once the child has taken everything that was sent: nothing
    under the final name. A small video was still all in memory (no file at all); a big
    one left a partial ``.part`` file, which the next attempt truncates."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        if request.query.get("fast"):
            return web.Response(body=video, content_type="video/mp4")
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(video)
        await response.prepare(request)
        await response.write(video[:sent])
        await release.wait()
        return response

    dest = tmp_path / "out" / "shot.mp4"
    async with web_server(slow) as url:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            KILLED_DOWNLOADER,
            url,
            str(dest),
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        returncode: int | None = None
        try:
            taken = 0
            while taken < sent:  # the child has taken every byte sent
                line = await asyncio.wait_for(child.stdout.readline(), timeout=20)
                assert line, "the child stopped before taking what was sent"
                taken = int(line.split()[1])
            if leaves_part:  # the write of the first MiB is under way in a worker
                for _ in range(500):
                    if part_path(dest).exists() and part_path(dest).stat().st_size:
                        break
                    await asyncio.sleep(0.01)
            assert child.returncode is None, "the download must still be in progress"
            child.send_signal(signal.SIGKILL)
        finally:
            returncode = await child.wait()
            release.set()
        assert returncode == -signal.SIGKILL
        assert not dest.exists(), "nothing under the final name after a hard kill"
        if leaves_part:
            assert 0 < part_path(dest).stat().st_size < len(video)
        else:
            assert not part_path(dest).exists(), "a small download never touched the disk"
        # the next attempt starts over cleanly and publishes a complete file
        result = await provider_factory(url).download(url + "?fast=1", dest)
    assert dest.read_bytes() == video and result.bytes == len(video)
    assert not part_path(dest).exists()


@pytest.mark.parametrize("honour_range", [True, False], ids=["resumed", "restarted"])
async def test_a_big_cut_transfer_ends_as_exactly_the_video(
    provider_factory: ProviderFactory, tmp_path: Path, honour_range: bool
) -> None:
    """Cut after part of a big body was written to disk (and part still waited in
    memory): resumed, the file continues where it stopped; restarted from byte 0 (the
    server ignored Range), the bytes already on disk are dropped."""
    cut_at = 2 * WRITE_BYTES
    dest = tmp_path / "big.mp4"
    requests: list[str | None] = []

    async def flaky(request: web.Request) -> web.StreamResponse:
        requests.append(request.headers.get("Range"))
        if len(requests) == 1:
            return await send_cut(request, BIG_VIDEO, cut_at)
        # at the cut, the first MiB was on disk and the rest still waited in memory
        on_disk = part_path(dest).stat().st_size
        asked = request.headers.get("Range")
        assert asked is not None and 0 < on_disk < int(asked.removeprefix("bytes=").rstrip("-"))
        if honour_range:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            return web.Response(
                status=206,
                body=BIG_VIDEO[start:],
                headers={"Content-Range": f"bytes {start}-{len(BIG_VIDEO) - 1}/{len(BIG_VIDEO)}"},
                content_type="video/mp4",
            )
        return web.Response(body=BIG_VIDEO, content_type="video/mp4")

    async with web_server(flaky) as url:
        result = await provider_factory(url).download(url, dest)
    assert len(requests) == 2 and requests[0] is None and requests[1]  # a resume was asked
    assert dest.read_bytes() == BIG_VIDEO and result.bytes == len(BIG_VIDEO)
    assert not part_path(dest).exists()


def test_concurrent_publishes_share_folder_fsyncs_and_each_waits_for_one_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: a publish returns only once an fsync of its folder that began after
    its link has finished; publishes at the same moment share fsyncs."""
    links = [0]
    lock = threading.Lock()
    #: (links counted when the fsync began, finished?)
    fsyncs: list[list[Any]] = []

    def slow_fsync(directory: Path) -> None:
        with lock:
            record = [links[0], False]
            fsyncs.append(record)
        time.sleep(0.005)
        record[1] = True

    monkeypatch.setattr(outputs_module, "_fsync_dir", slow_fsync)
    syncs = outputs_module._FolderSyncs()
    barrier = threading.Barrier(8, timeout=10)  # a failed thread cannot hang the rest
    failures: list[str] = []

    def publisher() -> None:
        for _ in range(10):
            barrier.wait()
            with lock:  # the "link": counted before make_durable, as in publish
                links[0] += 1
                mine = links[0]
            syncs.make_durable(tmp_path)
            with lock:
                if not any(began >= mine and done for began, done in fsyncs):
                    failures.append(f"link {mine} returned before an fsync covered it")

    threads = [threading.Thread(target=publisher) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert links[0] == 80
    assert len(fsyncs) < 40, f"{len(fsyncs)} folder fsyncs for 80 publishes"
