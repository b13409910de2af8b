"""Local images reach the provider once per ledger: the upload cache.

With the provider setting ``image_encoding=upload`` (the default), a generate request
carries the URL of each local image's upload instead of its bytes.

Invariants:
- A generate body prepared here never carries image bytes: every ``file://`` image
  is replaced by the URL of its upload, or the call fails before the generate is sent.
- One upload per distinct image content (sha256) per ledger, across shots, attempts
  and reruns: the ledger's ``uploads`` table is consulted first, and shots that want
  the same image at the same time share the one upload in flight.
- An upload is committed to the ledger before any generate that uses its URL is sent,
  so a crash costs at most one repeated upload, never a lost record of a render.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runner.errors import InvalidRequest
from runner.ledger import Ledger
from runner.manifest.images import UPLOAD_MAX_BYTES, read_capped
from runner.provider import Provider
from runner.provider.images import (
    FILE_PREFIX,
    has_local_images,
    path_of_file_uri,
)


class ImageUploads:
    """Replaces ``file://`` images in a request with their uploads' URLs."""

    def __init__(
        self,
        ledger: Ledger,
        provider: Provider,
        *,
        enabled: bool,
        price_uptc: int,
        on_charge: Callable[[int], None] = lambda uptc: None,
    ) -> None:
        self._ledger = ledger
        self._provider = provider
        self._enabled = enabled
        self._price_uptc = price_uptc
        self._on_charge = on_charge
        #: uploads under way in this run, by content digest
        self._inflight: dict[str, asyncio.Future[str]] = {}
        #: uploads known in this run (from the ledger or made here)
        self._known: dict[str, str] = {}
        #: content digests by (path, size, mtime, inode): a shared reference image is
        #: read and hashed once per run, not once per generate
        self._digests: dict[tuple[str, int, int, int], str] = {}

    async def prepare(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        """The request to send: unchanged unless uploads are on and it has local images."""
        if not self._enabled or not has_local_images(request):
            return request
        out: dict[str, Any] = {}
        for key, value in request.items():
            if isinstance(value, list):
                out[key] = [await self._url_for(v) for v in value]
            else:
                out[key] = await self._url_for(value)
        return out

    async def _url_for(self, value: Any) -> Any:
        if not (isinstance(value, str) and value.startswith(FILE_PREFIX)):
            return value
        path = path_of_file_uri(value)
        seen = await asyncio.to_thread(_stat_key, path)
        known = self._known.get(self._digests.get(seen, ""))
        if known is not None:
            return known
        digest, data = await asyncio.to_thread(_read, path)
        self._digests[seen] = digest
        if digest in self._known:
            return self._known[digest]
        waiting = self._inflight.get(digest)
        if waiting is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            url = await self._ledger.upload_url(digest)
            if url is None:
                url = await self._provider.upload(path, data)
                await self._ledger.record_upload(digest, url, len(data), self._price_uptc)
                self._on_charge(self._price_uptc)
            self._known[digest] = url
            future.set_result(url)
            return url
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: a waiter may not exist
            raise
        finally:
            del self._inflight[digest]


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    """What identifies a file's content cheaply: a change of any part re-reads it."""
    try:
        st = path.stat()
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    return str(path), st.st_size, st.st_mtime_ns, st.st_ino


def _read(path: Path) -> tuple[str, bytes]:
    """The image's digest and bytes; a file that cannot be read is the shot's problem.
    Only regular files are opened, never past the upload's cap (a FIFO or a device
    never blocks a run)."""
    try:
        data = read_capped(path, UPLOAD_MAX_BYTES)
        return hashlib.sha256(data).hexdigest(), data
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: OSError) -> InvalidRequest:
    return InvalidRequest(
        f"cannot read the local image {path}: {exc.strerror or exc}",
        hint="check that the image file still exists; nothing was sent",
    )
