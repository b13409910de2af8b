"""One POST to pixrun's own callback receiver at its public address, as a provider
would send it (for ``pixrun doctor --callback-url``).

Invariants:
- Never raises for an HTTP status or a transport failure: both are answers.
- The key is never sent: this request goes to pixrun's receiver, not the provider.
"""

from __future__ import annotations

import aiohttp

PROBE_TIMEOUT_S = 5.0


async def post_probe(url: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """POST a small JSON body to ``url``; what came back, in words."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json={"probe": "pixrun doctor"}, allow_redirects=False) as resp,
        ):
            return f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"no answer ({type(exc).__name__}: {exc or 'timed out'})"
