"""A local stand-in for the 302.AI / PixVerse API, over real HTTP on 127.0.0.1.

It shares only the contract with pixrun's adapter: request rules (runner/contract.py),
prices (runner/pricing.py) and package data. Everything it says is built from the
documented dialects and sample payloads, so the adapter is tested against the same
shapes it meets in production.

Invariants:
- Between the checks that refuse a generate (auth, validation, concurrency, balance) and
  the task's creation there is no ``await``: the checks and the charge are one step.
- Faults are drawn from one seeded RNG, so a sequential run is repeatable.
- ``stop()`` then ``start(port=same)`` keeps every task and the balance: an outage, not
  a new provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from runner.contract import check_request, mode_of_request
from runner.errors import UsageError
from runner.pricing import price_of
from runner.sim.books import (
    FAILED,
    MODERATED,
    QUEUED,
    RENDERING,
    SUCCEEDED,
    Books,
    SimTask,
)
from runner.sim.config import SimConfig
from runner.sim.media import TINY_HEIGHT_PX, TINY_WIDTH_PX

TRACE_HEADER = "Ai-trace-id"
STATS_PATH = "/_sim/stats"
FILES_PATH = "/_sim/files"

#: sample bodies (api-samples/) the provider sends whatever the dialect
BODY_BAD_KEY = {"error": {"message": "invalid api key"}}
BODY_NO_CREDIT = {"ErrCode": 500043, "ErrMsg": "All Credits have been used up. Please top up."}
BODY_CONCURRENCY = {"ErrCode": 500044, "ErrMsg": "Reached the limit for concurrent generations."}
ERRCODE_INVALID = 400017

_PIXVERSE_STATUS = {QUEUED: 10, RENDERING: 5, SUCCEEDED: 1, MODERATED: 7, FAILED: 8}
_GATEWAY_STATE = {
    QUEUED: ("pending", "0"),
    RENDERING: ("running", "1"),
    SUCCEEDED: ("succeeded", "3"),
    FAILED: ("error", "2"),
    MODERATED: ("error", "2"),
}
_FAIL_MESSAGE = {
    FAILED: "generation failed",
    MODERATED: "content moderation: the prompt was refused",
}


class Simulator:
    """The simulated provider. ``await start()`` gives its base URL; ``stats()`` its books."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.books = Books(self.config)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._secret = hashlib.sha256(f"pixrun-sim:{self.config.seed}".encode()).digest()

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port); the base URL to point pixrun at."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        self._runner = runner
        self._base_url = f"http://{bound_host}:{bound_port}"
        return self._base_url

    async def stop(self) -> None:
        """Stop listening; tasks, balance and counters are kept for a restart."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the simulator has not been started")
        return self._base_url

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def stats(self, *, with_tasks: bool = True) -> dict[str, Any]:
        """Accepted tasks, charges, calls, refusals, faults, balance, violations, tasks."""
        return self.books.stats(now_s=self.config.clock(), with_tasks=with_tasks)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        cfg = self.config
        app.router.add_post(cfg.generate_path, self._generate)
        app.router.add_get(cfg.fetch_path, self._fetch)
        app.router.add_get(FILES_PATH + "/{name}", self._download)
        app.router.add_get(STATS_PATH, self._stats)
        return app

    # ---- answers ----------------------------------------------------------------------

    def _ok(self, payload: Mapping[str, Any]) -> web.Response:
        if self.config.dialect == "pixverse":
            body: dict[str, Any] = {"ErrCode": 0, "ErrMsg": "success", "Resp": payload}
        else:
            body = {"code": 200, "msg": "success", "data": payload}
        return web.json_response(body)

    def _error(self, status: int, code: int, message: str) -> web.Response:
        if self.config.dialect == "pixverse":
            body: dict[str, Any] = {"ErrCode": code, "ErrMsg": message}
        else:
            body = {"code": code, "msg": message, "data": None}
        return web.json_response(body, status=status)

    def _refuse(self, cause: str, response: web.Response) -> web.Response:
        self.books.refusals[cause] += 1
        return response

    def _authorized(self, request: web.Request) -> bool:
        expected = f"Bearer {self.config.api_key}"
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), expected.encode())

    def _call_faults(self) -> web.Response | None:
        """The per-call faults (5xx, 429) shared by generate and fetch."""
        books, cfg = self.books, self.config
        if books.chance(cfg.error_5xx_share):
            return self._refuse(
                "error_5xx",
                web.Response(status=503, text="503 Service Unavailable (simulated)"),
            )
        if books.chance(cfg.rate_limit_share):
            return self._refuse(
                "rate_limit",
                web.json_response(
                    {"error": {"message": "Too many requests (simulated rate limit)"}},
                    status=429,
                    headers={"Retry-After": _seconds(cfg.retry_after_s)},
                ),
            )
        return None

    # ---- generate ---------------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        books, cfg = self.books, self.config
        books.calls["generate"] += 1
        if not self._authorized(request):
            return self._refuse("auth", web.json_response(BODY_BAD_KEY, status=401))
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return self._refuse(
                "invalid", self._error(400, ERRCODE_INVALID, "Invalid parameter: body is not JSON")
            )
        if cfg.generate_hook is not None:
            try:
                await cfg.generate_hook(body, request.headers)
            except Exception as exc:  # a test's assertion: record it, never crash the server
                books.violations.append(f"generate_hook: {type(exc).__name__}: {exc}")
                return self._refuse(
                    "hook",
                    web.json_response({"error": {"message": f"hook: {exc}"}}, status=500),
                )
        fault = self._call_faults()
        if fault is not None:
            return fault
        trace_id = request.headers.get(TRACE_HEADER) or None
        if cfg.dedupe_trace_id and trace_id and trace_id in books.by_trace:
            books.faults["deduplicated"] += 1
            task = books.tasks[books.by_trace[trace_id]]
            return self._generate_answer(task)
        refused = self._check_generate(body)
        if refused is not None:
            return refused
        task = self._accept(body, trace_id)
        if books.chance(cfg.lost_generate_share):
            books.faults["lost_generate"] += 1
            if cfg.slow_generate_s > 0:
                await asyncio.sleep(cfg.slow_generate_s)
            else:
                _drop_connection(request)
                return web.Response(status=500)
        return self._generate_answer(task)

    def _check_generate(self, body: Mapping[str, Any]) -> web.Response | None:
        """Validation, concurrency and balance; None when the task may be created."""
        books, cfg = self.books, self.config
        problems = check_request(mode_of_request(body), body)
        if problems:
            text = "; ".join(f"{p.field}: {p.message}" for p in problems)
            if cfg.dialect == "pixverse":
                response = self._error(400, ERRCODE_INVALID, f"Invalid parameter: {text}")
            else:
                response = self._error(400, 400, f"Invalid parameter: {text}")
            return self._refuse("invalid", response)
        in_flight = books.settle(cfg.clock())
        if cfg.concurrency_limit is not None and in_flight >= cfg.concurrency_limit:
            return self._refuse("concurrency", web.json_response(BODY_CONCURRENCY, status=429))
        _, charge = books.price_uptc(price_of(body, cfg.price_table))
        if not books.can_pay(charge):
            return self._refuse("balance", web.json_response(BODY_NO_CREDIT, status=402))
        return None

    def _accept(self, body: Mapping[str, Any], trace_id: str | None) -> SimTask:
        price_uptc, charge = self.books.price_uptc(price_of(body, self.config.price_table))
        return self.books.create(
            body,
            trace_id,
            now_s=self.config.clock(),
            wall_s=time.time(),
            price_uptc=price_uptc,
            charge_uptc=charge,
        )

    def _generate_answer(self, task: SimTask) -> web.Response:
        if self.config.dialect == "pixverse":
            return self._ok({"video_id": task.wire_id})
        return self._ok({"task_id": task.wire_id})

    # ---- fetch ------------------------------------------------------------------------

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        books = self.books
        books.calls["fetch"] += 1
        if not self._authorized(request):
            return self._refuse("auth", web.json_response(BODY_BAD_KEY, status=401))
        fault = self._call_faults()
        if fault is not None:
            return fault
        task = books.tasks.get(request.match_info["task_id"])
        if task is None:
            return self._refuse("not_found", self._error(404, 404, "task not found"))
        task.fetches += 1
        now_s = self.config.clock()
        status = task.status_at(now_s)
        url = self._signed_url(request, task, now_s) if status == SUCCEEDED else None
        if self.config.dialect == "pixverse":
            return self._ok(self._pixverse_task(task, status, url))
        return self._ok(self._gateway_task(task, status, url))

    def _pixverse_task(self, task: SimTask, status: str, url: str | None) -> dict[str, Any]:
        done = status == SUCCEEDED
        return {
            "id": task.wire_id,
            "status": _PIXVERSE_STATUS[status],
            "url": url or "",
            "prompt": task.prompt,
            "negative_prompt": "",
            "seed": task.seed,
            "size": len(task.mp4()) if done else 0,
            "outputWidth": TINY_WIDTH_PX if done else 0,
            "outputHeight": TINY_HEIGHT_PX if done else 0,
            "resolution_ratio": TINY_HEIGHT_PX if done else 0,
            "style": "",
            "create_time": _iso(task.created_wall_s),
            "modify_time": _iso(task.created_wall_s + task.render_s),
        }

    def _gateway_task(self, task: SimTask, status: str, url: str | None) -> dict[str, Any]:
        state, old = _GATEWAY_STATE[status]
        return {
            "task_id": task.wire_id,
            "state": state,
            "status": old,
            "prompt": task.prompt,
            "video_url": url,
            "image_url": None,
            "poster": None,
            "msg": _FAIL_MESSAGE.get(status),
            "point": str(task.charged_uptc),
            "refund": "1" if status in (FAILED, MODERATED) else "0",
            "create_time": str(int(task.created_wall_s)),
            "update_time": str(int(task.created_wall_s + task.render_s)),
        }

    # ---- download ---------------------------------------------------------------------

    def _signature(self, task_id: str, expires: str) -> str:
        message = f"{task_id}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def _signed_url(self, request: web.Request, task: SimTask, now_s: float) -> str:
        ttl = self.config.url_ttl_s
        expires = "0" if ttl is None else f"{now_s + ttl:.6f}"
        sig = self._signature(task.task_id, expires)
        origin = str(request.url.origin())
        return f"{origin}{FILES_PATH}/{task.task_id}.mp4?e={expires}&s={sig}"

    async def _download(self, request: web.Request) -> web.StreamResponse:
        books = self.books
        books.calls["download"] += 1
        name = request.match_info["name"]
        task = books.tasks.get(name.removesuffix(".mp4"))
        now_s = self.config.clock()
        if task is None or task.status_at(now_s) != SUCCEEDED:
            return self._refuse("not_found", web.Response(status=404, text="not found"))
        expires = request.query.get("e", "")
        sig = request.query.get("s", "")
        if not hmac.compare_digest(sig, self._signature(task.task_id, expires)):
            return self._refuse("bad_signature", web.Response(status=403, text="forbidden"))
        if expires != "0" and _float(expires) < now_s:
            return self._refuse("expired_url", web.Response(status=403, text="URL expired"))
        task.downloads += 1
        data = task.mp4()
        try:
            window = request.http_range
        except ValueError:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        start, stop = _bounds(window, len(data))
        if start >= len(data) or start >= stop:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        part = data[start:stop]
        headers = {"Accept-Ranges": "bytes", "Content-Type": "video/mp4"}
        status = 200
        if window.start is not None or window.stop is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        if task.truncate_next and len(part) > 1:
            task.truncate_next = False
            books.faults["truncated_downloads"] += 1
            return await _send_truncated(request, status, headers, part)
        return web.Response(status=status, body=part, headers=headers)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        with_tasks = request.query.get("tasks", "1") not in ("0", "false", "no")
        return web.json_response(self.stats(with_tasks=with_tasks))


async def _send_truncated(
    request: web.Request, status: int, headers: dict[str, str], part: bytes
) -> web.StreamResponse:
    """Announce the whole body, send half of it, then cut the connection."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(part)
    await response.prepare(request)
    await response.write(part[: len(part) // 2])
    _drop_connection(request)
    return response


def _drop_connection(request: web.Request) -> None:
    """Close the socket without (finishing) an answer, as a lost reply looks on the wire."""
    transport = request.transport
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.abort()


def _bounds(window: slice, size: int) -> tuple[int, int]:
    """(start, stop) of a parsed Range against a body of ``size`` bytes."""
    start, stop = window.start, window.stop
    if start is None and stop is None:
        return 0, size
    if start is not None and start < 0:  # suffix range: the last -start bytes
        return max(0, size + start), size
    return (start or 0), min(size, stop if stop is not None else size)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("-inf")


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def serve(
    config: SimConfig,
    *,
    host: str,
    port: int,
    on_ready: Callable[[str], None],
    on_stop: Callable[[dict[str, Any]], None],
) -> None:
    """Run a simulator until cancelled (Ctrl-C); report its URL, then its final books."""
    simulator = Simulator(config)
    try:
        url = await simulator.start(host, port)
    except OSError as exc:
        raise UsageError(
            f"the simulator cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="choose another --port (0 picks a free one)",
        ) from exc
    on_ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
        on_stop(simulator.stats(with_tasks=False))
