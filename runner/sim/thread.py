"""Run a simulator on its own event loop in a background thread.

For tests that run pixrun as a subprocess and for benchmarks: the simulated provider
must not share the runner's process or loop. Everything the simulator does happens on
its loop; this wrapper only hands calls over with ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from runner.loops import new_event_loop
from runner.sim.config import SimConfig
from runner.sim.server import Simulator

T = TypeVar("T")

#: how long a call into the simulator's thread may take before we give up
CALL_TIMEOUT_S = 30.0


class SimulatorThread:
    """``with SimulatorThread(SimConfig(...)) as sim: sim.base_url; sim.stats()``."""

    def __init__(
        self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = Simulator(config)
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return self.simulator.base_url

    @property
    def port(self) -> int:
        return self.simulator.port

    def start(self) -> str:
        """Start the loop thread and the server; the base URL."""
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = new_event_loop()  # uvloop's where installed: keeps up with a fast runner
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="pixrun-sim", daemon=True)
        self._thread.start()
        ready.wait()
        return self._call(lambda: self.simulator.start(self._host, self._port))

    def stop_server(self) -> None:
        """Stop listening but keep the thread and the books (an outage)."""
        self._call(self.simulator.stop)

    def start_server(self, port: int | None = None) -> str:
        """Listen again, by default on the same port as before."""
        return self._call(lambda: self.simulator.start(self._host, port or self.port))

    def stats(self, *, with_tasks: bool = True) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            return self.simulator.stats(with_tasks=with_tasks)

        return self._call(read)

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self.simulator.stop)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=CALL_TIMEOUT_S)
            self._loop = self._thread = None

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulator thread is not running")

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(CALL_TIMEOUT_S)

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
