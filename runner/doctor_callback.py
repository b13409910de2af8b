"""``pixrun doctor --callback-listen ... [--callback-url ...]``: is the callback
receiver reachable at its public address, from this machine?

Invariants:
- The receiver runs only for the check, with a throwaway secret (never the ledger's)
  and a probe token; nothing else it receives changes anything.
- From this machine is all that can be proven here: the report says that only the
  provider, from outside, can prove the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from runner.doctor import Check, Outcome
from runner.errors import ExitCode, UsageError
from runner.provider.callback_probe import post_probe
from runner.run.callbacks import CallbackHub, CallbackReceiver

CALLBACK = "callback receiver"
#: how long the probe may take to arrive after its POST was answered
ARRIVAL_WAIT_S = 2.0
OUTSIDE = (
    "only the provider can prove it reaches this address from outside: run a small "
    "batch with these options and look for 'callbacks' in its summary"
)


async def check_callback_receiver(host: str, port: int, public_url: str | None) -> Check:
    """Start the receiver on ``host:port`` briefly and POST a probe to its public URL."""
    hub = CallbackHub(secrets.token_hex(32), public_url or "")
    receiver = CallbackReceiver(hub, host, port)
    try:
        await receiver.start()
    except UsageError as exc:
        return Check(CALLBACK, Outcome.FAIL, exc.message, exc.hint or "", ExitCode.INVALID)
    try:
        url, arrived = hub.probe_url()
        answer = await post_probe(url)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ARRIVAL_WAIT_S):
                await arrived.wait()
    finally:
        await receiver.stop()
    shown = f"{hub.public_url}/<throwaway secret>/<probe>"
    where = f"{host}:{receiver.bound_port}"
    if arrived.is_set():
        found = f"a POST to {shown} from this machine reached the receiver on {where} ({answer})"
        return Check(CALLBACK, Outcome.OK, found, OUTSIDE)
    found = f"a POST to {shown} got {answer} and never reached the receiver on {where}"
    fix = (
        f"make {hub.public_url} forward to {where} (reverse proxy, or a tunnel such as "
        "'ssh -R' or cloudflared), or leave callbacks off: polling collects every task"
    )
    return Check(CALLBACK, Outcome.FAIL, found, fix, ExitCode.INVALID)
