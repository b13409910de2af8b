"""Every error class the adapter raises, provoked over real HTTP on 127.0.0.1.

The simulator provides the provider's own refusals; tiny raw asyncio servers provide the
transport failures a real provider cannot be asked for (a reset after the request was
read, a stall, half an answer), and a closed port provides "refused before sending".
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import TEST_SECRET, ProviderFactory, SimFactory
from PIL import Image
from runkit import free_port

from runner.errors import (
    AmbiguousSubmit,
    AuthRefused,
    ConcurrencyLimited,
    InvalidRequest,
    OutOfCredit,
    ProviderError,
    RateLimited,
    TaskNotFound,
    TransientError,
)
from runner.provider import TRACE_HEADER, Provider, trace_id_for

REQUEST = {"prompt": "a red fox in snow", "model": "v4.5", "quality": "720p", "duration": 8}
REQUEST_PRICE_PTC = "0.4"  # 0.1 x 2 (720p) x 2 (8 s)

E = TypeVar("E", bound=Exception)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 request (head, body), or None at end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head, body


async def refusals_of(provider: Provider, error: type[E]) -> E:
    """A generate and a fetch are both refused with ``error`` (a refusal class holds for
    every call, not only the paid one); returns the generate's refusal."""
    with pytest.raises(error) as info:
        await provider.generate(REQUEST, trace_id="t")
    with pytest.raises(error):
        await provider.fetch("1")
    return info.value


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A bare TCP server on 127.0.0.1 running ``handler`` per connection."""
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.append(writer)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.close()  # handlers waiting to read see the end of the stream
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await server.wait_closed()


def json_answer(body: bytes, status: str = "200 OK", keep_alive: bool = True) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n"
    ).encode() + body


# ---- refused before sending vs. sent and lost ------------------------------------------


async def test_refused_connection_is_transient_not_ambiguous(
    provider_factory: ProviderFactory,
) -> None:
    provider = provider_factory(f"http://127.0.0.1:{free_port()}")
    refusal = await refusals_of(provider, TransientError)
    assert type(refusal) is TransientError
    assert "nothing was sent" in str(refusal)


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_connection_lost_after_the_request_is_ambiguous(
    how: str, provider_factory: ProviderFactory
) -> None:
    received: list[bytes] = []

    async def read_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        assert request is not None
        received.append(request[1])
        if how == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    async with raw_server(read_then_hang_up) as url:
        with pytest.raises(AmbiguousSubmit) as info:
            await provider_factory(url).generate(REQUEST, trace_id="t")
    assert received, "the server did get the whole request: this is the ambiguous case"
    assert "may exist" in str(info.value)


async def test_stalled_answer_is_ambiguous(provider_factory: ProviderFactory) -> None:
    release = asyncio.Event()

    async def read_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()

    async with raw_server(read_then_stall) as url:
        provider = provider_factory(url, read_timeout_s=0.2, total_timeout_s=1.0)
        with pytest.raises(AmbiguousSubmit):
            await provider.generate(REQUEST, trace_id="t")
        # the same stall on a fetch is merely transient: fetch is free and idempotent
        with pytest.raises(TransientError):
            await provider.fetch("1")
        release.set()


async def test_half_an_answer_is_ambiguous(provider_factory: ProviderFactory) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ErrCode": 0')
        await writer.drain()

    async with raw_server(half) as url:
        with pytest.raises(AmbiguousSubmit):
            await provider_factory(url).generate(REQUEST, trace_id="t")


async def test_generate_uses_a_fresh_connection_fetch_reuses_one(
    provider_factory: ProviderFactory,
) -> None:
    connections = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while (request := await read_request(reader)) is not None:
            if request[0].startswith(b"POST"):
                body = b'{"ErrCode": 0, "ErrMsg": "success", "Resp": {"video_id": 7}}'
            else:
                body = b'{"ErrCode": 0, "ErrMsg": "success", "Resp": {"id": 7, "status": 5}}'
            writer.write(json_answer(body))
            await writer.drain()

    async with raw_server(keep_alive) as url:
        provider = provider_factory(url)
        for _ in range(3):
            assert await provider.generate(REQUEST, trace_id="t") == "7"
        assert connections == 3
        for _ in range(3):
            await provider.fetch("7")
        assert connections == 4
    assert provider.calls == {"generate": 3, "fetch": 3, "download": 0, "upload": 0}


# ---- the provider's own refusals, from the simulator --------------------------------------


async def test_wrong_key_is_auth_refused(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory()
    provider = provider_factory(sim, api_key="sk-wrong-key-987")
    refusal = await refusals_of(provider, AuthRefused)
    assert refusal.exit_code == 3
    assert sim.stats()["refusals"]["auth"] == 2


async def test_empty_account_is_out_of_credit(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(balance_ptc="0.5")
    provider = provider_factory(sim)
    await provider.generate(REQUEST, trace_id="a")
    with pytest.raises(OutOfCredit) as info:
        await provider.generate(REQUEST, trace_id="b")
    assert info.value.exit_code == 4 and info.value.provider_code == 500043
    stats = sim.stats()
    assert stats["accepted_tasks"] == 1 and stats["balance_ptc"] == "0.1"


async def test_rate_limit_carries_retry_after(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(rate_limit_share=1.0, retry_after_s=0.05)
    provider = provider_factory(sim)
    refusal = await refusals_of(provider, RateLimited)
    assert type(refusal) is RateLimited
    assert refusal.retry_after_s == pytest.approx(0.05)
    assert sim.stats()["accepted_tasks"] == 0


async def test_concurrency_cap_is_concurrency_limited(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(concurrency_limit=1, render_time_s=(30.0, 30.0))
    provider = provider_factory(sim)
    await provider.generate(REQUEST, trace_id="a")
    with pytest.raises(ConcurrencyLimited) as info:
        await provider.generate(REQUEST, trace_id="b")
    assert info.value.provider_code == 500044
    assert sim.stats()["refusals"]["concurrency"] == 1


async def test_server_errors_are_transient_and_create_nothing(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(error_5xx_share=1.0)
    provider = provider_factory(sim)
    refusal = await refusals_of(provider, TransientError)
    assert refusal.status == 503
    assert sim.stats()["accepted_tasks"] == 0


async def test_invalid_request_carries_the_providers_message(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory()
    bad = {**REQUEST, "motion_mode": "fast"}  # 720p cannot combine fast with 8 s
    with pytest.raises(InvalidRequest) as info:
        await provider_factory(sim).generate(bad, trace_id="t")
    assert "720p cannot combine motion_mode fast with 8 s" in str(info.value)
    assert info.value.provider_code == 400017
    assert sim.stats()["accepted_tasks"] == 0


async def test_unknown_task_is_not_found(
    sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(dialect="gateway")
    with pytest.raises(TaskNotFound):
        await provider_factory(sim).fetch("pix_0000")


@pytest.mark.parametrize("slow", [False, True])
async def test_lost_answer_is_ambiguous_and_the_task_exists(
    slow: bool, sim_factory: SimFactory, provider_factory: ProviderFactory
) -> None:
    sim = await sim_factory(lost_generate_share=1.0, slow_generate_s=1.0 if slow else 0.0)
    provider = provider_factory(sim, read_timeout_s=0.2, total_timeout_s=1.0)
    with pytest.raises(AmbiguousSubmit):
        await provider.generate(REQUEST, trace_id=trace_id_for("s", 1, secret=TEST_SECRET))
    stats = sim.stats()
    assert stats["accepted_tasks"] == 1 and stats["charges"]["sum_ptc"] == REQUEST_PRICE_PTC


# ---- what goes out -----------------------------------------------------------------------


async def test_trace_id_and_local_images_go_out(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    image = tmp_path / "first frame.png"
    Image.new("RGB", (320, 320), (200, 30, 30)).save(image)
    seen: list[tuple[Mapping[str, Any], Mapping[str, str]]] = []

    async def hook(body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        seen.append((body, headers))

    sim = await sim_factory(generate_hook=hook)
    request = {"prompt": "wake up", "model": "v4.5", "image": image.as_uri()}
    trace = trace_id_for("img-shot", 2, secret=TEST_SECRET)
    await provider_factory(sim, image_encoding="data_uri").generate(request, trace_id=trace)
    body, headers = seen[0]
    assert headers[TRACE_HEADER] == trace
    prefix = "data:image/png;base64,"
    assert body["image"].startswith(prefix)
    assert base64.b64decode(body["image"][len(prefix) :]) == image.read_bytes()
    assert request["image"] == image.as_uri(), "the caller's request is not modified"


async def test_missing_local_image_is_invalid_and_nothing_is_sent(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    sim = await sim_factory()
    request = {"prompt": "x", "model": "v4.5", "image": (tmp_path / "gone.png").as_uri()}
    with pytest.raises(InvalidRequest) as info:
        await provider_factory(sim, image_encoding="data_uri").generate(request, trace_id="t")
    assert "gone.png" in str(info.value)
    assert sim.stats()["calls"].get("generate", 0) == 0


async def test_a_local_image_is_never_inlined_when_uploads_are_on(
    sim_factory: SimFactory, provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    """With image_encoding=upload the caller uploads first (runner.run.uploads); a request
    that still names a local file is refused before a byte is sent."""
    image = tmp_path / "cat.png"
    Image.new("RGB", (320, 320), (1, 2, 3)).save(image)
    sim = await sim_factory()
    request = {"prompt": "a cat", "model": "v4.5", "quality": "360p", "image": image.as_uri()}
    with pytest.raises(InvalidRequest, match="not uploaded"):
        await provider_factory(sim).generate(request, trace_id="t")
    assert sim.stats()["calls"].get("generate", 0) == 0
    provider = provider_factory(sim)
    url = await provider.upload(image, image.read_bytes())
    task_id = await provider.generate({**request, "image": url}, trace_id="t2")
    assert task_id and sim.stats()["inline_image_generates"] == 0
    assert sim.stats()["uploads"]["count"] == 1 and provider.calls["upload"] == 1


async def test_the_key_never_appears_in_errors(provider_factory: ProviderFactory) -> None:
    key = "sk-live-TOPSECRET-4242"

    async def echo_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            auth = next(
                line for line in request[0].split(b"\r\n") if line.lower().startswith(b"authoriz")
            )
            message = b'{"error": {"message": "bad: ' + auth.split(b": ", 1)[1] + b'"}}'
            status = "401 Unauthorized" if request[0].startswith(b"POST") else "400 Bad Request"
            writer.write(json_answer(message, status))
            await writer.drain()

    errors: list[ProviderError] = []
    async with raw_server(echo_auth) as url:
        provider = provider_factory(url, api_key=key)
        for call in (provider.generate(REQUEST, trace_id="t"), provider.fetch("1")):
            with pytest.raises(ProviderError) as info:
                await call
            errors.append(info.value)
    assert [type(e) for e in errors] == [AuthRefused, InvalidRequest]
    for err in errors:
        for text in (str(err), repr(err), repr(err.args), str(err.hint), repr(err.__cause__)):
            assert key not in text
        assert "[redacted]" in str(err)
    assert key not in repr(provider) and key not in repr(provider.config)
