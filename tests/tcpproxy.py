"""A misbehaving network path for tests: an asyncio TCP proxy in a background thread.

It sits between pixrun and the simulator and, per connection, can add latency, stall
(black-hole) or reset a direction after N bytes. It also keeps a record of every
connection, so a test can tell exactly what each side could have seen:

- ``request_forwarded``: the whole first HTTP request reached the server;
- ``response_delivered``: the whole first HTTP answer was handed to the client.

The fault of a connection is chosen by a policy when its first bytes arrive (so the
policy knows whether it carries a generate, a fetch or a download). A reset closes both
sockets with ``SO_LINGER = 0``: the peer sees a TCP RST, exactly like a dropped path.

Usage::

    with ProxyThread("127.0.0.1", sim.port, policy) as proxy:
        ...  # point pixrun at proxy.base_url
        proxy.records()
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

#: how long a call into the proxy's thread may take
CALL_TIMEOUT_S = 10.0
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """What happens to one connection. ``None`` means "not in this direction"."""

    #: delay before each chunk is passed on (both directions)
    latency_s: float = 0.0
    #: reset the connection once this many client-to-server bytes were passed on
    reset_up_after: int | None = None
    #: reset the connection once this many server-to-client bytes were passed on
    reset_down_after: int | None = None
    #: pass nothing more client-to-server after this many bytes (read and drop)
    stall_up_after: int | None = None
    #: pass nothing more server-to-client after this many bytes (read and drop)
    stall_down_after: int | None = None
    #: extra delay before a chunk that starts a video answer (slow downloads)
    media_latency_s: float = 0.0


#: ``policy(kind, rng) -> Fault``; kind is "generate", "fetch", "download" or "other"
Policy = Callable[[str, random.Random], Fault]


def no_faults(kind: str, rng: random.Random) -> Fault:
    return Fault()


@dataclass
class _Head:
    """Incremental parse of the first HTTP message head in one direction."""

    buffer: bytearray = field(default_factory=bytearray)
    done: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    #: head plus Content-Length body bytes; None until known
    total_bytes: int | None = None

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        for line in lines[1:]:  # after the request or status line
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        length = int(self.headers.get("content-length", "0") or 0)
        self.total_bytes = end + 4 + length
        self.done = True
        self.buffer = bytearray()


@dataclass
class ConnRecord:
    """What one connection carried and what the proxy did to it."""

    conn_id: int
    kind: str = "unknown"
    fault: Fault = field(default_factory=Fault)
    up_forwarded: int = 0
    down_delivered: int = 0
    #: "reset_up", "reset_down", "stall_up", "stall_down", "upstream_refused" or None
    cut: str | None = None
    request: _Head = field(default_factory=_Head)
    response: _Head = field(default_factory=_Head)

    @property
    def trace_id(self) -> str | None:
        return self.request.headers.get("ai-trace-id")

    @property
    def request_forwarded(self) -> bool:
        """The server received the whole first request."""
        total = self.request.total_bytes
        return total is not None and self.up_forwarded >= total

    @property
    def response_delivered(self) -> bool:
        """The client was handed the whole first answer."""
        total = self.response.total_bytes
        return total is not None and self.down_delivered >= total


def _kind_of(first_line: bytes) -> str:
    text = first_line.decode("latin-1", errors="replace")
    if text.startswith("POST ") and "/generate" in text:
        return "generate"
    if text.startswith("GET ") and "/fetch" in text:
        return "fetch"
    if text.startswith("GET ") and "/_sim/files/" in text:
        return "download"
    return "other"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    def __init__(
        self,
        record: ConnRecord,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.record = record
        self.client_r, self.client_w = client
        self.server_r, self.server_w = server
        self.closed = asyncio.Event()

    def reset(self, why: str) -> None:
        if self.record.cut is None:
            self.record.cut = why
        _reset(self.client_w)
        _reset(self.server_w)
        self.closed.set()

    def close(self) -> None:
        for w in (self.client_w, self.server_w):
            with contextlib.suppress(Exception):
                w.close()
        self.closed.set()

    async def pump(self, up: bool, choose: Callable[[str], Fault]) -> None:
        """Pass one direction on, applying the connection's fault to it."""
        rec = self.record
        reader, writer = (self.client_r, self.server_w) if up else (self.server_r, self.client_w)
        head = rec.request if up else rec.response
        stalled = False
        try:
            while not self.closed.is_set():
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    if stalled and not up:
                        # the server is done, but the client must not learn it: hold
                        # the line until the client gives up
                        await self.closed.wait()
                    break
                if up and rec.kind == "unknown":
                    rec.kind = _kind_of(data.split(b"\r\n", 1)[0])
                    rec.fault = choose(rec.kind)
                head.feed(data)
                if stalled:
                    continue  # a black hole: read and drop until the peer gives up
                fault = rec.fault
                if fault.latency_s:
                    await asyncio.sleep(fault.latency_s)
                if fault.media_latency_s and not up and b"video/mp4" in data[:1024]:
                    await asyncio.sleep(fault.media_latency_s)
                done = rec.up_forwarded if up else rec.down_delivered
                reset_at = fault.reset_up_after if up else fault.reset_down_after
                stall_at = fault.stall_up_after if up else fault.stall_down_after
                limit = min(x for x in (reset_at, stall_at, done + len(data)) if x is not None)
                part = data[: max(0, limit - done)]
                if part:
                    writer.write(part)
                    await writer.drain()
                    if up:
                        rec.up_forwarded += len(part)
                    else:
                        rec.down_delivered += len(part)
                if reset_at is not None and done + len(part) >= reset_at:
                    self.reset("reset_up" if up else "reset_down")
                    return
                if stall_at is not None and done + len(part) >= stall_at:
                    stalled = True
                    if rec.cut is None:
                        rec.cut = "stall_up" if up else "stall_down"
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()


class ProxyThread:
    """A TCP proxy to ``upstream_host:upstream_port`` on its own loop and thread."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        policy: Policy = no_faults,
        *,
        seed: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.policy = policy
        self._rng = random.Random(seed)
        self._records: list[ConnRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_policy(self, policy: Policy) -> None:
        """Applies to connections opened from now on."""
        self.policy = policy

    def records(self) -> list[ConnRecord]:
        """A snapshot of every connection so far (copies, safe to read)."""

        async def snap() -> list[ConnRecord]:
            return [replace(r) for r in self._records]

        return self._call(snap)

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> str:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="tcpproxy", daemon=True)
        self._thread.start()
        ready.wait()

        self.port = self._call(lambda: self._listen(0))
        return self.base_url

    async def _listen(self, port: int) -> int:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", port, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    def stop_listening(self) -> None:
        """New connections are refused (connections already open carry on)."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None

        self._call(stop)

    def start_listening(self) -> None:
        """Accept connections again, on the same port."""
        self._call(lambda: self._listen(self.port))

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        try:
            self._call(shut)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=CALL_TIMEOUT_S)
            self._loop = self._thread = None

    def __enter__(self) -> ProxyThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the proxy is not running")

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(CALL_TIMEOUT_S)

    # -- one connection ---------------------------------------------------------------

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        record = ConnRecord(conn_id=len(self._records))
        self._records.append(record)
        try:
            try:
                server = await asyncio.open_connection(*self.upstream)
            except OSError:
                record.cut = "upstream_refused"
                _reset(client_w)
                return
            conn = _Conn(record, (client_r, client_w), server)

            def choose(kind: str) -> Fault:
                return self.policy(kind, self._rng)

            await asyncio.gather(conn.pump(True, choose), conn.pump(False, choose))
        finally:
            self._tasks.discard(task)
