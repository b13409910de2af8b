"""Provider callbacks: the URL each generate request carries, and the receiver that
turns a callback into a prompt fetch.

Each request carries ``<public url>/<secret>/<token>``. The secret is the ledger's
(it survives reruns); the token is an HMAC of (shot, version, attempt) under it, so it
names a shot's attempt to this ledger only and reveals nothing of the manifest.

Invariants:
- A callback is a hint, never the truth: a valid one (POST, the ledger's secret, the
  token of a task in flight in this run) makes the poller fetch that task at once
  (fetching is free and authoritative). Its body is never read for state, URL or
  money; a few bodies (capped at :data:`SAMPLE_BYTES`) are kept as ``callback`` events
  so the payload's shape can be learned.
- Anything else changes nothing and is counted: another path or a wrong secret: 404;
  an unknown token: 404; another method on the secret path: 405; a body over
  :data:`BODY_CAP_BYTES`: 413; past the rate limit for such requests: 429. A
  duplicate or late callback is answered 200 and costs at most one free fetch.
- The secret is compared in constant time.
- The receiver answers at once: it never awaits a provider call or a ledger write.
- Several batches of one run (``pixrun run a.yaml b.yaml``, ``pixrun watch``) that
  listen on the same HOST:PORT share one receiver (:class:`ReceiverPool`): each
  request goes to the hub whose secret its path carries, so one open firewall port
  serves every manifest. Refused requests share one rate limit per socket and are
  counted by every hub on it (each batch's summary says what its receiver saw).

Size: about 430 lines, one module: the receiver, its pool and the per-batch hub share
the secret check and the refusal counts; none is used without the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web

from runner.errors import CallbackPortBusy, UsageError

if TYPE_CHECKING:
    from runner.run.context import Job
    from runner.run.flow import CallbackPolicy

#: the largest callback body read; bigger ones are refused (413)
BODY_CAP_BYTES = 64 * 1024
#: how much of a callback's body is kept in the events table
SAMPLE_BYTES = 2048
#: bodies kept per run: the first few, then only those of a shape not seen yet
FIRST_SAMPLES = 20
MAX_SHAPES = 50
#: refused requests (any but a valid callback) answered per second, and the burst
REFUSED_PER_S = 20.0
REFUSED_BURST = 50.0


class TokenBucket:
    """A rate limit: ``rate_per_s`` on average, ``burst`` at once."""

    def __init__(
        self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._tokens = burst
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class CallbackHub:
    """This run's callback URLs, the tasks in flight they name, and what arrived."""

    def __init__(self, secret: str, public_url: str = "") -> None:
        self._secret = secret
        self._key = bytes.fromhex(secret)
        self.public_url = public_url.rstrip("/")
        self._in_flight: dict[str, Job] = {}
        self._ended: set[str] = set()
        #: what arrived, by verdict (see :meth:`receive`)
        self.counts: Counter[str] = Counter()
        self.policy: CallbackPolicy | None = None
        #: keeps a sample of a body: (shot id, text); set by the run
        self.record: Callable[[str | None, str], None] = lambda shot_id, text: None
        self._refused = TokenBucket(REFUSED_PER_S, REFUSED_BURST)
        self._samples = 0
        self._shapes: set[str] = set()
        #: ``pixrun doctor``'s probes: token -> set when it arrived
        self._probes: dict[str, asyncio.Event] = {}

    # -- the URLs ----------------------------------------------------------------------

    def token_for(self, shot_id: str, version: int, attempt_no: int) -> str:
        message = f"callback\0{shot_id}\0{version}\0{attempt_no}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def url_for(self, job: Job, attempt_no: int) -> str:
        """The callback URL of this attempt of the job's shot; watches it from now on
        (a callback may come before the generate call has answered)."""
        token = self.token_for(job.row.shot_id, job.row.version, attempt_no)
        self._watch(job, token)
        return f"{self.public_url}/{self._secret}/{token}"

    def probe_url(self) -> tuple[str, asyncio.Event]:
        """A throwaway callback URL and the event its arrival sets (``pixrun doctor``)."""
        token = secrets.token_hex(16)
        arrived = self._probes[token] = asyncio.Event()
        return f"{self.public_url}/{self._secret}/{token}", arrived

    def watch(self, job: Job) -> None:
        """The job's task is in flight (its attempt is ``row.attempts``)."""
        row = job.row
        self._watch(job, self.token_for(row.shot_id, row.version, row.attempts))

    def _watch(self, job: Job, token: str) -> None:
        if job.callback_token is not None and job.callback_token != token:
            self.ended(job)
        if job.wake is None:
            job.wake = asyncio.Event()
        if job.callback_token != token:
            job.hints = 0
        job.callback_token = token
        self._in_flight[token] = job
        self._ended.discard(token)

    def ended(self, job: Job) -> None:
        """The job's task is no longer awaited: later callbacks for it are late."""
        token = job.callback_token
        if token is not None and self._in_flight.get(token) is job:
            del self._in_flight[token]
            self._ended.add(token)
        job.callback_token = None

    # -- what arrives ------------------------------------------------------------------

    def check_path(self, path: str) -> tuple[int, str | None]:
        """(0, token) for the secret path; else (status, None), counted."""
        token = self.token_in(path)
        if token is not None:
            return 0, token
        return self.refuse(path_verdict(path), 404), None

    def token_in(self, path: str) -> str | None:
        """The token of a path under this hub's secret (compared in constant time)."""
        parts = path.strip("/").split("/")
        if len(parts) >= 2 and hmac.compare_digest(parts[-2].encode(), self._secret.encode()):
            return parts[-1]
        return None

    def share_limit(self, other: CallbackHub) -> None:
        """Refused requests on one socket share one rate limit, whichever hub counts them."""
        self._refused = other._refused

    def count(self, verdict: str) -> None:
        self.counts[verdict] += 1

    def refuse(self, verdict: str, status: int) -> int:
        """Count a refused request; past the rate limit it is answered 429."""
        if not self._refused.take():
            self.counts["rate_limited"] += 1
            return 429
        self.counts[verdict] += 1
        return status

    def receive(self, token: str, body: bytes) -> int:
        """A POST on the secret path: wake the task's poller. The HTTP status."""
        job = self._in_flight.get(token)
        if job is None:
            if token in self._probes:
                self.counts["probe"] += 1
                self._probes[token].set()
                return 200
            if token in self._ended:
                self.counts["late"] += 1
                return 200
            return self.refuse("unknown_token", 404)
        assert job.wake is not None
        job.hints += 1
        verdict = "duplicate" if job.hints > 1 else "valid"
        self.counts[verdict] += 1
        if self.policy is not None:
            self.policy.on_callback()
        shape = _shape(body)
        if shape == "malformed":
            self.counts["malformed"] += 1
        self._sample(job.row.shot_id, token, shape, body)
        job.wake.set()
        return 200

    def _sample(self, shot_id: str, token: str, shape: str, body: bytes) -> None:
        new_shape = shape not in self._shapes and len(self._shapes) < MAX_SHAPES
        if self._samples >= FIRST_SAMPLES and not new_shape:
            return
        self._shapes.add(shape)
        self._samples += 1
        text = body[:SAMPLE_BYTES].decode("utf-8", errors="replace")
        sample = {"token": token[:8], "size_bytes": len(body), "shape": shape, "body": text}
        self.record(shot_id, json.dumps(sample, ensure_ascii=False))


def path_verdict(path: str) -> str:
    """Why a path that carries no known secret is refused."""
    parts = path.strip("/").split("/")
    return "wrong_secret" if len(parts) >= 2 and len(parts[-1]) == 32 else "other_path"


def _shape(body: bytes) -> str:
    """The top-level keys of a JSON object body (what a callback's shape is)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "malformed"
    if isinstance(doc, dict):
        return "{" + ",".join(sorted(str(k) for k in doc)) + "}"
    return type(doc).__name__


class CallbackEndpoint(NamedTuple):
    """Where the receiver binds, and the public URL the provider is given (None: the
    receiver's own address)."""

    host: str
    port: int
    url: str | None


def callback_endpoint(listen: str | None, url: str | None, *, hint: str) -> CallbackEndpoint | None:
    """The receiver's endpoint from a listen address and an optional public URL; None
    without a listen address. Raises UsageError (``hint`` names the caller's setting)."""
    if listen is None:
        if url is not None:
            raise UsageError("a callback URL needs a listen address for the receiver", hint=hint)
        return None
    host, port = parse_listen(listen)
    return CallbackEndpoint(host, port, check_public_url(url) if url else None)


def check_can_listen(endpoint: CallbackEndpoint) -> None:
    """Bind the receiver's HOST:PORT once and let it go: a port another program holds
    is refused when a long-running command starts (``pixrun watch``), not at each
    batch. Raises CallbackPortBusy. Port 0 always can."""
    if endpoint.port == 0:
        return
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise CallbackPortBusy(
            f"the callback receiver cannot listen on {endpoint.host}:{endpoint.port}: "
            f"{exc.strerror or exc}",
            hint="choose another --callback-listen port (0 picks a free one)",
        ) from exc


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); port 0 picks a free one."""
    host, sep, port_text = listen.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(
            f"the callback listen address {listen!r} is not HOST:PORT",
            hint="e.g. --callback-listen 0.0.0.0:8787 (port 0 picks a free one)",
        )
    return host, int(port_text)


def check_public_url(url: str) -> str:
    """The public callback URL, without a trailing slash; refuses anything but http(s)."""
    text = url.strip().rstrip("/")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or "?" in rest:
        raise UsageError(
            f"the callback URL {url!r} is not an http(s) URL without a query",
            hint="e.g. --callback-url https://runner.example.com/pixrun",
        )
    return text


class CallbackReceiver:
    """The receiver's web server; ``async with`` it around the run. It serves ``hub``
    and any hub that :meth:`join` s it later (each found by the secret in the path)."""

    def __init__(self, hub: CallbackHub, host: str, port: int) -> None:
        self.hub = hub
        self._hubs = [hub]
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.bound_port = port

    async def start(self) -> None:
        app = web.Application(client_max_size=BODY_CAP_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise CallbackPortBusy(
                f"the callback receiver cannot listen on {self._host}:{self._port}: "
                f"{exc.strerror or exc}",
                hint="choose another --callback-listen port (0 picks a free one)",
            ) from exc
        self._runner = runner
        self.bound_port = int(runner.addresses[0][1])
        self._address(self.hub)

    def _address(self, hub: CallbackHub) -> None:
        """A hub without a public URL is reached at the receiver's own address."""
        if not hub.public_url:
            host = f"[{self._host}]" if ":" in self._host else self._host
            hub.public_url = f"http://{host}:{self.bound_port}"

    def join(self, hub: CallbackHub) -> None:
        """Serve ``hub`` too (another batch of the run on the same HOST:PORT)."""
        hub.share_limit(self._hubs[0])
        self._address(hub)
        self._hubs.append(hub)

    def leave(self, hub: CallbackHub) -> bool:
        """Stop serving ``hub``; True when no hub is left."""
        with contextlib.suppress(ValueError):
            self._hubs.remove(hub)
        return not self._hubs

    def _route(self, path: str) -> tuple[CallbackHub | None, int, str | None]:
        """(hub, 0, token) for a path under one hub's secret; else (None, status, None),
        counted by every hub on this socket."""
        hubs = self._hubs
        if len(hubs) == 1:
            status, token = hubs[0].check_path(path)
            return (hubs[0] if token is not None else None), status, token
        for hub in hubs:
            token = hub.token_in(path)
            if token is not None:
                return hub, 0, token
        verdict = path_verdict(path) if hubs else "other_path"
        status = hubs[0].refuse(verdict, 404) if hubs else 404
        for hub in hubs[1:]:
            hub.count("rate_limited" if status == 429 else verdict)
        return None, status, None

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> CallbackReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        hub, status, token = self._route(request.path)
        if hub is None or token is None:
            return _answer(status)
        if request.method != "POST":
            return _answer(hub.refuse("wrong_method", 405))
        if (request.content_length or 0) > BODY_CAP_BYTES:
            return _answer(hub.refuse("oversized", 413))
        try:
            body = await request.read()  # capped by client_max_size
        except web.HTTPRequestEntityTooLarge:
            return _answer(hub.refuse("oversized", 413))
        return _answer(hub.receive(token, body))


class ReceiverPool:
    """The callback receivers of one run of several batches, one per HOST:PORT: a
    batch that listens where another already does joins its receiver instead of
    failing to bind the port a second time."""

    def __init__(self) -> None:
        self._receivers: dict[tuple[str, int], CallbackReceiver] = {}
        # a receiver is started or stopped by one batch at a time: a batch that comes
        # while the last one on the port is closing it binds after it has let go
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def serving(self, hub: CallbackHub, host: str, port: int) -> AsyncIterator[None]:
        """Serve ``hub`` on ``host:port`` until the block ends. Raises UsageError when
        the port cannot be bound."""
        key = (host, port)
        async with self._lock:
            receiver = self._receivers.get(key)
            if receiver is None:
                receiver = CallbackReceiver(hub, host, port)
                await receiver.start()
                self._receivers[key] = receiver
            else:
                receiver.join(hub)
        try:
            yield
        finally:
            async with self._lock:
                if receiver.leave(hub):
                    del self._receivers[key]
                    await receiver.stop()


def _answer(status: int) -> web.Response:
    if status == 200:
        return web.json_response({"ok": True})
    response = web.Response(status=status, text=f"{status}\n")
    if status == 413:
        response.force_close()  # the rest of the body is not read
    return response
