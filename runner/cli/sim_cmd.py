"""``pixrun sim``: run the simulated provider until Ctrl-C. Parse, call, print."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

# The simulator (and aiohttp with it) is imported when the command runs, so that other
# commands start fast. The dialect names are runner.sim.config.DIALECTS (a test checks).
SIM_DIALECTS = ("pixverse", "gateway", "web")

SHARE = click.FloatRange(0.0, 1.0)


class _Ptc(click.ParamType[Decimal]):
    """An amount of PTC, kept exact."""

    name = "ptc"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Decimal:
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            self.fail(f"{value!r} is not an amount (write e.g. 5 or 0.4)", param, ctx)
        if not number.is_finite() or number < 0:
            self.fail(f"{value!r} must be an amount >= 0", param, ctx)
        return number


PTC = _Ptc()
SECONDS = click.FloatRange(0.0, min_open=False)


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
@click.option(
    "--error-5xx-share",
    type=SHARE,
    default=0.0,
    help="Share of generate/fetch calls answered 503 (transient; nothing is created).",
)
@click.option(
    "--rate-limit-share",
    type=SHARE,
    default=0.0,
    help="Share of generate/fetch calls answered 429 with Retry-After.",
)
@click.option(
    "--retry-after-s",
    type=SECONDS,
    default=1.0,
    show_default=True,
    help="The Retry-After sent with those 429s.",
)
@click.option(
    "--concurrency-limit",
    type=click.IntRange(1),
    default=None,
    help="Refuse new tasks beyond this many renders in flight (429, ErrCode 500044).",
)
@click.option(
    "--balance-ptc",
    type=PTC,
    default=None,
    help="Account balance in PTC; a generate that does not fit gets 402 (ErrCode 500043). "
    "Default: unlimited.",
)
@click.option(
    "--moderated-word",
    "moderated_words",
    multiple=True,
    help="A prompt containing this word (case-insensitive) ends refused by moderation "
    "(status 7). Repeat for more words.",
)
@click.option(
    "--fail-first-attempt-share",
    type=SHARE,
    default=0.0,
    help="Share of shots whose first render fails (status 8); the retry renders.",
)
@click.option(
    "--url-ttl-s",
    type=click.FloatRange(0.0, min_open=True),
    default=None,
    help="Download URLs expire this many seconds after the fetch that gave them (403 after). "
    "Default: never.",
)
@click.option(
    "--truncate-share",
    type=SHARE,
    default=0.0,
    help="Share of tasks whose first download is cut mid-body (Range resume works).",
)
@click.option(
    "--lost-generate-share",
    type=SHARE,
    default=0.0,
    help="Share of generates whose task is created and charged, then the answer is lost "
    "(connection dropped): the ambiguous case.",
)
@click.option(
    "--slow-generate-s",
    type=SECONDS,
    default=0.0,
    help="With --lost-generate-share: send those answers this late instead of dropping "
    "them (beyond the client's read timeout they are lost all the same).",
)
@click.option(
    "--dedupe-trace-id/--no-dedupe-trace-id",
    default=False,
    show_default=True,
    help="A generate repeating an Ai-trace-id returns the existing task and is not charged.",
)
@click.option(
    "--prices",
    "prices_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Price table (JSON) to charge by. Default: the packaged table.",
)
@click.option(
    "--unknown-price-ptc",
    type=PTC,
    default=None,
    help="Charge this for requests the price table cannot price (e.g. 10 s). "
    "Default: charge nothing, count them as unpriced.",
)
@click.option(
    "--refund-failed/--no-refund-failed",
    default=True,
    show_default=True,
    help="Give back the charge of failed and moderated renders.",
)
@click.option(
    "--generate-path",
    default="/pix/generate",
    show_default=True,
    help="Route of generate (POST).",
)
@click.option(
    "--fetch-path",
    default="/pix/task/{task_id}/fetch",
    show_default=True,
    help="Route of fetch (GET): the task id in the path, or as a query value, e.g. "
    "'/pix/fetch?task_id={task_id}'. Other routes answer an HTML 404/405 page.",
)
@click.option(
    "--upload-path",
    default="/302/upload-file",
    show_default=True,
    help="Route of file uploads (POST, multipart field 'file'; jpg, png or webp up to 50 MB).",
)
@click.option(
    "--upload-price-uptc",
    type=click.IntRange(0),
    default=None,
    help="What one upload costs, in micro-PTC. Default: the price table's upload_ptc, "
    "else 1000 (0.001 PTC).",
)
@click.option(
    "--deleted-share",
    type=SHARE,
    default=0.0,
    help="Share of succeeded renders reported deleted once they end (status 6; gateway: "
    "error 'video deleted').",
)
@click.option(
    "--forget-share",
    type=SHARE,
    default=0.0,
    help="Share of tasks the provider forgets once created: every fetch answers 'no such "
    "task' (ErrCode 500008; gateway code 404).",
)
@click.option(
    "--not-found-status",
    type=click.IntRange(200, 599),
    default=200,
    show_default=True,
    help="HTTP status sent with the 'no such task' envelope.",
)
@click.option(
    "--errors-in-200/--no-errors-in-200",
    default=False,
    show_default=True,
    help="Send provider refusals (invalid parameter, no credit, concurrency, permanent "
    "errors) with HTTP 200 and the error envelope, as PixVerse does.",
)
@click.option(
    "--permanent-error-code",
    type=click.IntRange(1),
    default=None,
    help="ErrCode that refuses a share of generates for good, e.g. 500054 (moderation), "
    "500060 (effects limit), 500070 (template not activated).",
)
@click.option(
    "--permanent-error-share",
    type=SHARE,
    default=0.0,
    help="Share of generates refused with --permanent-error-code.",
)
@click.option(
    "--dead-url-share",
    type=SHARE,
    default=0.0,
    help="Share of fetched video URLs that point at a host refusing connections; the "
    "next fetch of that task gives a live URL.",
)
@click.option(
    "--dead-urls-always/--no-dead-urls-always",
    default=False,
    show_default=True,
    help="Every video URL points at a dead host: downloads never work.",
)
@click.option(
    "--callback/--no-callback",
    default=False,
    show_default=True,
    help="POST to each generate request's callback URL when its render ends.",
)
@click.option(
    "--callback-lost-share",
    type=SHARE,
    default=0.0,
    help="With --callback: share of callbacks never sent.",
)
@click.option(
    "--callback-delay-s",
    type=click.FloatRange(min=0),
    default=0.0,
    help="With --callback: seconds between a render's end and its callback.",
)
@click.option(
    "--callback-duplicate-share",
    type=SHARE,
    default=0.0,
    help="With --callback: share of callbacks sent twice.",
)
@click.option(
    "--callback-forged-share",
    type=SHARE,
    default=0.0,
    help="With --callback: share of tasks that also get a forged callback halfway "
    "through the render (right host; a wrong secret or an unknown task).",
)
@click.option(
    "--state-path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
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
