"""A notify endpoint for the tests: a real HTTP server on 127.0.0.1 in a thread."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

from aiohttp import web


class Receiver:
    """A notify endpoint: records each body it accepts. The first ``fail_first`` tries
    are answered 500; with ``hang`` no try is ever answered, with ``loop`` every try is
    redirected to the same address."""

    def __init__(self, *, fail_first: int = 0, hang: bool = False, loop: bool = False) -> None:
        self.fail_first = fail_first
        self.hang = hang
        self.loop = loop
        self.tries = 0
        self.bodies: list[bytes] = []
        self._closing = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hooks/T0/B0/secret-path"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner = self._call(self._start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hooks/T0/B0/secret-path", self._hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.SockSite(runner, self._sock).start()
        return runner

    async def _hook(self, request: web.Request) -> web.Response:
        self.tries += 1
        body = await request.read()
        while self.hang and not self._closing.is_set():
            await asyncio.sleep(0.05)
        if self.loop:
            raise web.HTTPTemporaryRedirect(str(request.url))  # 307: POST again
        if self.tries <= self.fail_first:
            return web.Response(status=500, text="try again")
        assert request.content_type == "application/json"
        self.bodies.append(body)
        return web.Response(text="ok")

    def summaries(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.bodies]

    def close(self) -> None:
        self._closing.set()
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
