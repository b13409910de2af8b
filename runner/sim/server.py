"""A local stand-in for the 302.AI / PixVerse API, over real HTTP on 127.0.0.1.

It shares only the contract's data with pixrun's adapter: its own hand-written request
schema (request.schema.json, from the provider contract, never from the client's
rules), prices (runner/pricing.py) and package data. Everything it says is built from
the documented response families and sample payloads (answers.py), so the adapter is
tested against the shapes it meets in production, and can be caught disagreeing.

Invariants:
- Between the checks that refuse a generate (auth, validation, concurrency, balance) and
  the task's creation there is no ``await``: the checks and the charge are one step.
- Faults are drawn from one seeded RNG, so a sequential run is repeatable.
- ``stop()`` then ``start(port=same)`` keeps every task and the balance: an outage, not
  a new provider. With a state file, a NEW simulator on it knows the same books.
- A path or method no route serves gets a web server's HTML 404/405 page, never a
  provider envelope: only the envelope may say "no such task".

Size: about 500 lines, one module: the routes of a simulated provider share its books
and its faults; answers' bodies are in answers.py, validation in rules.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import BodyPartReader, web

from runner.errors import UsageError
from runner.pricing import price_of
from runner.sim.answers import (
    BODY_BAD_KEY,
    BODY_CONCURRENCY,
    BODY_NO_CREDIT,
    callback_body,
    error_body,
    generate_payload,
    invalid_body,
    not_found_body,
    ok_body,
    permanent_message,
    task_payload,
)
from runner.sim.books import SUCCEEDED, Books, SimTask
from runner.sim.config import SimConfig, fetch_route
from runner.sim.rules import RequestRules, carries_image_bytes, image_values
from runner.sim.uploads import CONTENT_TYPES, UPLOAD_MAX_BYTES, UPLOADS_PATH, image_ext, upload_name

TRACE_HEADER = "Ai-trace-id"
STATS_PATH = "/_sim/stats"
FILES_PATH = "/_sim/files"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ROUTE_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class Simulator:
    """The simulated provider. ``await start()`` gives its base URL; ``stats()`` its books."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.books = Books(self.config)
        self.rules = RequestRules()
        self._fetch_route, self._fetch_query = fetch_route(self.config.fetch_path)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._dead_origin: str | None = None
        self._secret = hashlib.sha256(f"pixrun-sim:{self.config.seed}".encode()).digest()
        self._client: aiohttp.ClientSession | None = None
        self._callback_tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port); the base URL to point pixrun at.

        The first start replays the state file, if any, before anything is served.
        """
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        self.books.replay()
        if self._dead_origin is None:
            self._dead_origin = f"http://127.0.0.1:{_closed_port()}"
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
        for pending in list(self._callback_tasks):
            pending.cancel()
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        if runner is not None:
            await runner.cleanup()
        self.books.close()

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
        """Accepted tasks, charges, uploads, calls, refusals, faults, balance, tasks."""
        return self.books.stats(now_s=self.config.clock(), with_tasks=with_tasks)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._route_pages])
        cfg = self.config
        app.router.add_post(cfg.generate_path, self._generate)
        app.router.add_get(self._fetch_route, self._fetch)
        app.router.add_post(cfg.upload_path, self._upload)
        app.router.add_get(UPLOADS_PATH + "/{name}", self._uploaded)
        app.router.add_get(FILES_PATH + "/{name}", self._download)
        app.router.add_get(STATS_PATH, self._stats)
        return app

    @web.middleware
    async def _route_pages(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """What a web server in front of the API says about a route it does not serve."""
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            self.books.refusals["route"] += 1
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            page = _ROUTE_PAGE.format(status=exc.status, reason=exc.reason)
            return web.Response(
                status=exc.status, text=page, content_type="text/html", headers=headers
            )

    # ---- answers ----------------------------------------------------------------------

    def _ok(self, payload: Mapping[str, Any]) -> web.Response:
        return web.json_response(ok_body(self.config.dialect, payload))

    def _provider_refusal(self, cause: str, status: int, body: Mapping[str, Any]) -> web.Response:
        """A refusal in an envelope: sent with HTTP 200 when the provider does that."""
        sent = 200 if self.config.errors_in_200 else status
        return self._refuse(cause, web.json_response(body, status=sent))

    def _invalid(self, message: str) -> web.Response:
        return self._provider_refusal("invalid", 400, invalid_body(self.config.dialect, message))

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
        raw = await request.read()
        books.max_generate_body_bytes = max(books.max_generate_body_bytes, len(raw))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return self._invalid("body is not a JSON object")
        if carries_image_bytes(body):
            books.inline_image_generates += 1
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
            return self._ok(generate_payload(cfg.dialect, task))
        refused = self._check_generate(body)
        if refused is not None:
            return refused
        task = self._accept(body, trace_id)
        callback = body.get("callback")
        if cfg.callback and isinstance(callback, str) and callback.startswith("http"):
            self._schedule_callbacks(task, callback)
        if books.chance(cfg.lost_generate_share):
            books.faults["lost_generate"] += 1
            if cfg.slow_generate_s > 0:
                await asyncio.sleep(cfg.slow_generate_s)
            else:
                _drop_connection(request)
                return web.Response(status=500)
        return self._ok(generate_payload(cfg.dialect, task))

    def _check_generate(self, body: Mapping[str, Any]) -> web.Response | None:
        """Validation, refusals, concurrency and balance; None when the task may be made."""
        books, cfg = self.books, self.config
        problems = self.rules.problems(body) or self._unknown_uploads(body)
        if problems:
            return self._invalid("; ".join(problems))
        code = cfg.permanent_error_code
        if code is not None and books.chance(cfg.permanent_error_share):
            body_out = error_body(cfg.dialect, code, permanent_message(code))
            return self._provider_refusal("permanent_error", 400, body_out)
        in_flight = books.settle(cfg.clock())
        if cfg.concurrency_limit is not None and in_flight >= cfg.concurrency_limit:
            return self._provider_refusal("concurrency", 429, BODY_CONCURRENCY)
        _, charge = books.price_uptc(price_of(body, cfg.price_table))
        if not books.can_pay(charge):
            return self._provider_refusal("balance", 402, BODY_NO_CREDIT)
        return None

    def _unknown_uploads(self, body: Mapping[str, Any]) -> list[str]:
        """Image URLs under our own uploads path that name nothing we stored."""
        out = []
        for where, value in image_values(body):
            path = urlsplit(value).path if value.startswith(("http://", "https://")) else ""
            if not path.startswith(UPLOADS_PATH + "/"):
                continue
            if path.removeprefix(UPLOADS_PATH + "/") not in self.books.uploads:
                out.append(f"{where}: {value[:120]} was never uploaded")
        return out

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

    # ---- callbacks --------------------------------------------------------------------

    def _schedule_callbacks(self, task: SimTask, url: str) -> None:
        """The callbacks of a task, as its knobs say: lost, late, twice, and forged ones
        (to the right host, with a wrong secret or for an unknown task) halfway through."""
        books, cfg = self.books, self.config
        loop = asyncio.get_running_loop()
        if books.chance(cfg.callback_forged_share):
            books.faults["callback_forged"] += 1
            head, _, token = url.rpartition("/")
            base, _, secret = head.rpartition("/")
            if books.rng.random() < 0.5:
                forged = f"{base}/{_flip(secret)}/{token}"  # a real task, a wrong secret
            else:
                forged = f"{head}/{books.rng.getrandbits(128):032x}"  # an unknown task
            loop.call_later(task.render_s / 2, self._post_callback, task, forged)
        if books.chance(cfg.callback_lost_share):
            books.faults["callback_lost"] += 1
            return
        at_s = task.render_s + cfg.callback_delay_s
        loop.call_later(at_s, self._post_callback, task, url)
        if books.chance(cfg.callback_duplicate_share):
            books.faults["callback_duplicate"] += 1
            loop.call_later(at_s + 0.05, self._post_callback, task, url)

    def _post_callback(self, task: SimTask, url: str) -> None:
        if self._runner is None:
            return  # the simulator is down: the callback is lost
        task_ = asyncio.get_running_loop().create_task(self._send_callback(task, url))
        self._callback_tasks.add(task_)
        task_.add_done_callback(self._callback_tasks.discard)

    async def _send_callback(self, task: SimTask, url: str) -> None:
        books = self.books
        status = task.status_at(self.config.clock())
        body = callback_body(self.config.dialect, task, status)
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        books.calls["callback"] += 1
        try:
            async with self._client.post(url, json=body) as resp:
                if resp.status != 200:
                    books.refusals[f"callback_{resp.status}"] += 1
        except (aiohttp.ClientError, TimeoutError):
            books.faults["callback_unreachable"] += 1

    # ---- fetch ------------------------------------------------------------------------

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        books, cfg = self.books, self.config
        books.calls["fetch"] += 1
        if not self._authorized(request):
            return self._refuse("auth", web.json_response(BODY_BAD_KEY, status=401))
        fault = self._call_faults()
        if fault is not None:
            return fault
        if self._fetch_query is None:
            task_id = request.match_info["task_id"]
        else:
            task_id = request.query.get(self._fetch_query, "")
            if not task_id:
                return self._invalid(f"{self._fetch_query} is required")
        task = books.tasks.get(task_id)
        if task is not None:
            task.fetches += 1
        if task is None or task.forgotten:
            body = not_found_body(cfg.dialect)
            return self._refuse("not_found", web.json_response(body, status=cfg.not_found_status))
        now_s = cfg.clock()
        books.settle(now_s)
        status = task.status_at(now_s)
        url = self._video_url(request, task, now_s) if status == SUCCEEDED else None
        return self._ok(task_payload(cfg.dialect, task, status, url))

    # ---- download ---------------------------------------------------------------------

    def _signature(self, task_id: str, expires: str) -> str:
        message = f"{task_id}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def _video_url(self, request: web.Request, task: SimTask, now_s: float) -> str:
        """A signed URL on this server's current origin, or (as a fault) on a dead one."""
        cfg = self.config
        ttl = cfg.url_ttl_s
        expires = "0" if ttl is None else f"{now_s + ttl:.6f}"
        sig = self._signature(task.task_id, expires)
        dead = cfg.dead_urls_always or (
            not task.dead_url_last and self.books.chance(cfg.dead_url_share)
        )
        task.dead_url_last = dead
        origin = str(request.url.origin())
        if dead and self._dead_origin is not None:
            self.books.faults["dead_urls"] += 1
            origin = self._dead_origin
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

    # ---- uploads ----------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        """302.AI's file upload: a multipart ``file`` in, its URL out (gateway envelope)."""
        books = self.books
        books.calls["upload"] += 1
        if not self._authorized(request):
            return self._refuse("auth", web.json_response(BODY_BAD_KEY, status=401))
        data, problem = await _read_upload(request)
        if data is None:
            return self._refuse(
                "upload_invalid", web.json_response({"code": 400, "msg": problem}, status=400)
            )
        ext = image_ext(data[:16])
        if ext is None:
            return self._refuse(
                "upload_invalid",
                web.json_response(
                    {"code": 400, "msg": "file type not supported: send a jpg, png or webp"},
                    status=400,
                ),
            )
        charge = books.upload_price_uptc()
        if not books.can_pay(charge):
            body = {"code": 402, "msg": BODY_NO_CREDIT["ErrMsg"], "data": None}
            return self._refuse("balance", web.json_response(body, status=402))
        name = upload_name(data, ext)
        books.store_upload(name, data, charge)
        url = f"{request.url.origin()}{UPLOADS_PATH}/{name}"
        return web.json_response({"code": 200, "msg": "success", "data": url})

    async def _uploaded(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        data = self.books.uploads.get(name)
        if data is None:
            return self._refuse("not_found", web.Response(status=404, text="not found"))
        content_type = CONTENT_TYPES.get(name[name.rfind(".") :], "application/octet-stream")
        return web.Response(body=data, content_type=content_type)

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


async def _read_upload(request: web.Request) -> tuple[bytes | None, str]:
    """(the ``file`` field's bytes, "") or (None, what is wrong); reads at most the cap."""
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError):
        return None, "expected multipart/form-data with a file field"
    while True:
        part = await reader.next()
        if part is None:
            return None, "the form has no file field"
        if isinstance(part, BodyPartReader) and part.name == "file":
            break
    chunks: list[bytes] = []
    size_bytes = 0
    while chunk := await part.read_chunk(1024 * 1024):
        size_bytes += len(chunk)
        if size_bytes > UPLOAD_MAX_BYTES:
            return None, f"file too large: at most {UPLOAD_MAX_BYTES // (1024 * 1024)} MB"
        chunks.append(chunk)
    if not size_bytes:
        return None, "the file is empty"
    return b"".join(chunks), ""


def _flip(secret: str) -> str:
    """The secret with its last digit changed: right length, wrong value."""
    return secret[:-1] + ("0" if secret[-1:] != "0" else "1")


def _closed_port() -> int:
    """A port on 127.0.0.1 that refuses connections: bound once, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


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
