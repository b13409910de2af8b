"""The contact sheet in a real browser: headless Chromium driven over the DevTools protocol.

Nothing is installed by the test: it uses the system's Chromium (Debian's ``chromium``
package; ``.ci/run`` installs it) and aiohttp's websocket client to speak CDP. Without a
browser the test is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from viewkit import HOSTILE_PROMPT, Spec, build_batch

from runner.ledger import open_ledger
from runner.ledger.queries import report_rows, status_summary
from runner.model import ShotState
from runner.report import ContactSheetInfo, render_contact_sheet

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS = Path(__file__).resolve().parent.parent / "docs"


def _specs() -> list[Spec]:
    """A night's batch, ordered so the first screenful shows every kind of card."""

    def done(shot_id: str, prompt: str, **kw: object) -> Spec:
        return Spec(shot_id, ShotState.DONE, prompt, poster=True, **kw)  # type: ignore[arg-type]

    return [
        done("dawn-lake", "a calm lake at dawn, mist drifting over still water, slow push in"),
        done("city-night", "neon city street at night, rain, reflections on wet asphalt"),
        Spec(
            "blocked",
            ShotState.MODERATED,
            "a scene the moderator refuses",
            error="the prompt was refused by content moderation",
        ),
        done(
            "desert-wind",
            "wind shaping dunes in a red desert, long lens, heat haze",
            price_ptc=None,
        ),
        done("forest-light", "sun rays through a pine forest, dust in the air, dolly left"),
        Spec(
            "lost-answer",
            ShotState.AMBIGUOUS,
            "a request whose answer never came",
            error="timed out after the request was sent: may have been charged",
        ),
        done("harbour", "fishing boats in a small harbour at golden hour, gulls"),
        Spec(
            "broken",
            ShotState.FAILED,
            "a render that keeps failing",
            error="generation failed (status 8) after 3 attempts",
        ),
        done("glacier", "aerial shot over a blue glacier, cracks and meltwater"),
        Spec("in-render", ShotState.SUBMITTED, "a cat asleep on a windowsill, rain outside"),
        Spec("fox-hare", ShotState.DONE, HOSTILE_PROMPT),
        Spec("queued", ShotState.PENDING, "a lighthouse in a storm, waves over the rocks"),
    ]


class Cdp:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            else:
                self.events.append(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        await self.ws.send_str(json.dumps({"id": self._next, "method": method, "params": params}))
        return await asyncio.wait_for(fut, timeout=15)

    async def wait_event(self, method: str, *, after: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(e.get("method") == method for e in self.events[after:]):
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {method} within {timeout_s} s")

    async def eval(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        mark = len(self.events)
        await self.send("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired", after=mark)

    def problems(self) -> list[str]:
        """Console errors, failed loads, CSP violations and uncaught exceptions."""
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args", []))[:300])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", "")[:300])
        return found

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Cdp]:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if time.monotonic() > deadline or proc.returncode is not None:
                pytest.fail("chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json(content_type=None)
            page = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = Cdp(ws)
                try:
                    yield cdp
                finally:
                    await cdp.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


_VIDEOS_SETTLED = """
new Promise((resolve) => {
  const vids = Array.from(document.querySelectorAll("video"));
  const t0 = performance.now();
  (function tick() {
    // metadata read and the network idle again (no loading spinner in the picture)
    const done = vids.every((v) => (v.readyState >= 1 && v.networkState !== 2) || v.error);
    if (done || performance.now() - t0 > 8000) {
      resolve(vids.map((v) => ({ready: v.readyState, error: v.error && v.error.code,
                                 width: v.videoWidth, poster: v.getAttribute("poster")})));
    } else { setTimeout(tick, 50); }
  })();
})
"""

_VISIBLE = "document.querySelectorAll('article.card:not([hidden])').length"


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium on this machine (apt install "
    "chromium); .ci/run installs it so CI runs this test",
)
async def test_contact_sheet_in_a_real_browser(tmp_path: Path) -> None:
    specs = _specs()
    batch = await build_batch(tmp_path, specs, finish_run=True, name="night-shoot")
    async with await open_ledger(batch.ledger_path, writer=False) as ledger:
        rows = await report_rows(ledger)
        summary = await status_summary(ledger)
    sheet = batch.output_dir / "contact-sheet.html"
    sheet.write_text(
        render_contact_sheet(
            rows,
            html_path=sheet,
            output_dir=batch.output_dir,
            info=ContactSheetInfo(
                title="night-shoot",
                planned_uptc=summary.planned_uptc,
                spent_uptc=summary.spent_uptc,
                generated_at=time.mktime((2025, 6, 1, 7, 30, 0, 0, 0, -1)),
            ),
        )
    )
    async with chromium(tmp_path / "profile") as cdp:
        for domain in ("Runtime", "Log", "Page"):
            await cdp.send(f"{domain}.enable")
        await cdp.send(
            "Emulation.setDeviceMetricsOverride",
            width=1360,
            height=1060,
            deviceScaleFactor=1,
            mobile=False,
        )
        await cdp.goto(sheet.as_uri())

        assert await cdp.eval("document.querySelectorAll('article.card').length") == len(specs)
        videos = await cdp.eval(_VIDEOS_SETTLED)
        n_done = sum(s.state == ShotState.DONE for s in specs)
        assert len(videos) == n_done
        assert all(v["error"] is None and v["ready"] >= 1 and v["width"] == 64 for v in videos), (
            videos
        )
        assert sum(1 for v in videos if v["poster"]) == 6

        # the hostile prompt is text on the page, and nothing of it ran
        assert await cdp.eval("typeof window.__pwned") == "undefined"
        assert await cdp.eval("document.images.length") == 0
        shown = await cdp.eval(
            "Array.from(document.querySelectorAll('p.prompt')).map((p) => p.textContent)"
        )
        assert HOSTILE_PROMPT in shown

        # filtering by state, by text, and both
        await cdp.eval("document.querySelector('button.chip[data-state=failed]').click()")
        assert await cdp.eval(_VISIBLE) == 1
        assert await cdp.eval("document.getElementById('shown').textContent") == "1"
        await cdp.eval("document.querySelector('button.chip[data-state=done]').click()")
        assert await cdp.eval(_VISIBLE) == n_done
        await cdp.eval("document.getElementById('q').focus()")
        await cdp.send("Input.insertText", text="neon")  # typed, as a person would
        assert await cdp.eval(_VISIBLE) == 1
        await cdp.eval("document.querySelector('button.chip[data-state=all]').click()")
        await cdp.eval("pixrunSheet.setQuery('moderation refused')")  # searches errors too
        assert await cdp.eval(_VISIBLE) == 1
        await cdp.eval("pixrunSheet.setQuery('no such clip anywhere')")
        assert await cdp.eval(_VISIBLE) == 0
        assert await cdp.eval("document.getElementById('empty').hidden") is False
        await cdp.eval("pixrunSheet.setQuery('')")
        assert await cdp.eval(_VISIBLE) == len(specs)

        # a link can open the sheet already filtered
        await cdp.goto("about:blank")
        await cdp.goto(sheet.as_uri() + "#state=ambiguous")
        assert await cdp.eval(_VISIBLE) == 1

        assert cdp.problems() == []

        await cdp.goto(sheet.as_uri())
        await cdp.eval(_VIDEOS_SETTLED)
        shot = await cdp.send("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    (tmp_path / "contact-sheet.png").write_bytes(png)
    DOCS.mkdir(exist_ok=True)
    (DOCS / "contact-sheet.png").write_bytes(png)
