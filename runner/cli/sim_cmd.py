"""``pixrun sim``: run the simulated provider until Ctrl-C. Parse, call, print."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import click

from runner.cli.options import FILE, PTC

# The simulator (and aiohttp with it) is imported when the command runs, so that other
# commands start fast. The dialect names are runner.sim.config.DIALECTS (a test checks).
SIM_DIALECTS = ("pixverse", "gateway", "web")

SHARE = click.FloatRange(0.0, 1.0)


SECONDS = click.FloatRange(0.0, min_open=False)


#: the faults that hit a share of calls or tasks (0 to 1, default 0: none), in the order
#: of ``--help``; the knobs are runner.sim.config.SHARE_KNOBS (a test checks)
SHARE_HELP: dict[str, str] = {
    "error_5xx_share": "Share of generate/fetch calls answered 503 (transient; nothing is "
    "created).",
    "rate_limit_share": "Share of generate/fetch calls answered 429 with Retry-After.",
    "fail_first_attempt_share": "Share of shots whose first render fails (status 8); the "
    "retry renders.",
    "truncate_share": "Share of tasks whose first download is cut mid-body (Range resume works).",
    "lost_generate_share": "Share of generates whose task is created and charged, then the "
    "answer is lost (connection dropped): the ambiguous case.",
    "deleted_share": "Share of succeeded renders reported deleted once they end (status 6; "
    "gateway: error 'video deleted').",
    "forget_share": "Share of tasks the provider forgets once created: every fetch answers "
    "'no such task' (ErrCode 500008; gateway code 404).",
    "permanent_error_share": "Share of generates refused with --permanent-error-code.",
    "dead_url_share": "Share of fetched video URLs that point at a host refusing "
    "connections; the next fetch of that task gives a live URL.",
    "callback_lost_share": "With --callback: share of callbacks never sent.",
    "callback_duplicate_share": "With --callback: share of callbacks sent twice.",
    "callback_forged_share": "With --callback: share of tasks that also get a forged "
    "callback halfway through the render (right host; a wrong secret or an unknown task).",
}

#: on/off knobs: (default, help)
_SWITCHES: dict[str, tuple[bool, str]] = {
    "dedupe_trace_id": (
        False,
        "A generate repeating an Ai-trace-id returns the existing task and is not charged.",
    ),
    "refund_failed": (True, "Give back the charge of failed and moderated renders."),
    "errors_in_200": (
        False,
        "Send provider refusals (invalid parameter, no credit, concurrency, permanent "
        "errors) with HTTP 200 and the error envelope, as PixVerse does.",
    ),
    "dead_urls_always": (False, "Every video URL points at a dead host: downloads never work."),
    "callback": (False, "POST to each generate request's callback URL when its render ends."),
}

#: the routes the simulator serves: (default, help)
_ROUTES: dict[str, tuple[str, str]] = {
    "generate_path": ("/pix/generate", "Route of generate (POST)."),
    "fetch_path": (
        "/pix/task/{task_id}/fetch",
        "Route of fetch (GET): the task id in the path, or as a query value, e.g. "
        "'/pix/fetch?task_id={task_id}'. Other routes answer an HTML 404/405 page.",
    ),
    "upload_path": (
        "/302/upload-file",
        "Route of file uploads (POST, multipart field 'file'; jpg, png or webp up to 50 MB).",
    ),
}


#: numbers that are off unless given: (type, help)
_LIMITS: dict[str, tuple[click.ParamType[Any], str]] = {
    "url_ttl_s": (
        click.FloatRange(0.0, min_open=True),
        "Download URLs expire this many seconds after the fetch that gave them (403 "
        "after). Default: never.",
    ),
    "concurrency_limit": (
        click.IntRange(1),
        "Refuse new tasks beyond this many renders in flight (429, ErrCode 500044).",
    ),
    "permanent_error_code": (
        click.IntRange(1),
        "ErrCode that refuses a share of generates for good, e.g. 500054 (moderation), "
        "500060 (effects limit), 500070 (template not activated).",
    ),
    "balance_ptc": (
        PTC,
        "Account balance in PTC; a generate that does not fit gets 402 (ErrCode 500043). "
        "Default: unlimited.",
    ),
    "unknown_price_ptc": (
        PTC,
        "Charge this for requests the price table cannot price (e.g. 10 s). "
        "Default: charge nothing, count them as unpriced.",
    ),
    "upload_price_uptc": (
        click.IntRange(0),
        "What one upload costs, in micro-PTC. Default: the price table's upload_ptc, "
        "else 1000 (0.001 PTC).",
    ),
}


def _flag(knob: str) -> str:
    return "--" + knob.replace("_", "-")


def _knob_options(func: Any) -> Any:
    """The options made from the tables above (click lists them in this order)."""
    decorators = [
        *(click.option(_flag(k), type=SHARE, default=0.0, help=h) for k, h in SHARE_HELP.items()),
        *(
            click.option(f"{_flag(k)}/--no-{_flag(k)[2:]}", default=d, show_default=True, help=h)
            for k, (d, h) in _SWITCHES.items()
        ),
        *(
            click.option(_flag(k), default=d, show_default=True, help=h)
            for k, (d, h) in _ROUTES.items()
        ),
        *(click.option(_flag(k), type=t, help=h) for k, (t, h) in _LIMITS.items()),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


@click.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8302, show_default=True, type=int, help="Port to listen on (0 = any free)."
)
@click.option(
    "--dialect",
    type=click.Choice(SIM_DIALECTS),
    default="pixverse",
    show_default=True,
    help="Response family: pixverse (ErrCode/Resp, integer task ids), gateway "
    "(code/data with state, string task ids) or web (PixVerse web app: ErrCode/Resp with "
    "video_id and video_status).",
)
@click.option(
    "--api-key", default="sim-key", show_default=True, help="The Bearer key the simulator accepts."
)
@click.option(
    "--render-time-s",
    nargs=2,
    type=SECONDS,
    default=(2.0, 5.0),
    show_default=True,
    metavar="MIN MAX",
    help="Each render takes a uniform random time in [MIN, MAX] seconds (fractions allowed).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random draw.")
@_knob_options
@click.option(
    "--retry-after-s",
    type=SECONDS,
    default=1.0,
    show_default=True,
    help="The Retry-After sent with those 429s.",
)
@click.option(
    "--slow-generate-s",
    type=SECONDS,
    default=0.0,
    help="With --lost-generate-share: send those answers this late instead of dropping "
    "them (beyond the client's read timeout they are lost all the same).",
)
@click.option(
    "--moderated-word",
    "moderated_words",
    multiple=True,
    help="A prompt containing this word (case-insensitive) ends refused by moderation "
    "(status 7). Repeat for more words.",
)
@click.option(
    "--untaggable-word",
    "untaggable_words",
    multiple=True,
    help="A prompt containing this word (case-insensitive) renders a file that downloads "
    "fine but cannot be tagged (output.embed_metadata). Repeat for more words.",
)
@click.option(
    "--not-found-status",
    type=click.IntRange(200, 599),
    default=200,
    show_default=True,
    help="HTTP status sent with the 'no such task' envelope.",
)
@click.option(
    "--prices",
    "prices_path",
    type=FILE,
    help="Price table (JSON) to charge by. Default: the packaged table.",
)
@click.option(
    "--callback-delay-s",
    type=click.FloatRange(min=0),
    default=0.0,
    help="With --callback: seconds between a render's end and its callback.",
)
@click.option(
    "--state-path",
    type=FILE,
    help="Keep the books in this file (one JSON line per change) and replay it on start: "
    "a restarted simulator knows every task, upload and charge. Renders then run on "
    "wall-clock time.",
)
def sim_command(host: str, port: int, prices_path: Path | None, **knobs: Any) -> None:
    """Run a simulated PixVerse/302.AI provider on this machine until Ctrl-C.

    Point pixrun at it to rehearse a manifest without spending anything: the simulator
    checks requests with the same rules, prices them with the same table, keeps a
    balance, renders real (tiny) MP4 files, and can inject every fault a real batch
    meets. Its books are at /_sim/stats.
    """
    from runner.pricing import load_price_table
    from runner.provider.config import ENV_API_KEY, ENV_BASE_URL
    from runner.sim import SimConfig, serve
    from runner.sim.server import STATS_PATH
    from runner.text import plural

    config = SimConfig(price_table=load_price_table(prices_path) if prices_path else None, **knobs)

    def ready(url: str) -> None:
        click.echo(f"pixrun simulator ({config.dialect} dialect) listening on {url}")
        click.echo("Point pixrun at it:")
        click.echo(f"  export {ENV_BASE_URL}={url}")
        click.echo(f"  export {ENV_API_KEY}={config.api_key}")
        click.echo(f"Books: {url}{STATS_PATH}    Stop: Ctrl-C")

    def stopped(stats: dict[str, Any]) -> None:
        charges = stats["charges"]
        click.echo(
            f"simulator stopped: {plural(stats['accepted_tasks'], 'task')}, "
            f"{charges['net_ptc']} PTC charged net, calls {stats['calls']}"
        )

    # Ctrl-C is how a simulator is meant to stop: not an interruption, exit 0.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host=host, port=port, on_ready=ready, on_stop=stopped))


COMMANDS: list[click.Command] = [sim_command]
