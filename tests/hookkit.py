"""Real HTTP servers for the tests on 127.0.0.1, each in a thread: :class:`AppThread`
serves any aiohttp app; :class:`Receiver` is a notify endpoint."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

from aiohttp import web


class AppThread:
    """An aiohttp app served on 127.0.0.1 (a free port, ``origin``) by its own event loop
    in a daemon thread, so a pixrun subprocess or a blocking test can call it;
    ``close`` stops the loop and the thread."""

    def __init__(self, app: web.Application, *, access_log: bool = True) -> None:
        self._loop = asyncio.new_event_loop()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.origin = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner = self._call(self._start(app, access_log))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self, app: web.Application, access_log: bool) -> web.AppRunner:
        runner = web.AppRunner(app) if access_log else web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, self._sock).start()
        return runner

    def close(self) -> None:
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class Receiver(AppThread):
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
        app = web.Application()
        app.router.add_post("/hooks/T0/B0/secret-path", self._hook)
        super().__init__(app)
        self.url = f"{self.origin}/hooks/T0/B0/secret-path"

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
        self._closing.set()  # a hanging hook lets go first, or cleanup would wait on it
        super().close()
