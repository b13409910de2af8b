"""How a run is set up: the settings the command line gives, where its ledger and
outputs go (a rehearsal's apart from real work), its options, and its provider.

Invariants:
- A rehearsal (``--simulate``) has its own ledger (``shots.sim.ledger.sqlite``) and
  output folder (``out/<name>.sim``) by default, and its in-process simulator keeps its
  tasks in a state file beside that ledger, so a resumed rehearsal collects them.
- A rehearsal's clock follows its render times: time limits shrink, never grow.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UsageError
from runner.ledger import SIM_INFIX, default_ledger_path
from runner.model import Manifest
from runner.money import to_uptc_or_none
from runner.pricing import manifest_price_table
from runner.provider import Provider, ProviderConfig
from runner.run.folder import watched_ledger
from runner.run.options import SchedulerOptions

if TYPE_CHECKING:
    from runner.run.callbacks import CallbackEndpoint

#: the key the in-process simulator accepts (never a real key)
SIM_API_KEY = "pixrun-simulator-key"


#: a real render's typical time, the yardstick for scaling a rehearsal's clock
REAL_RENDER_S = 60.0


@dataclass(frozen=True)
class RunOverrides:
    """Command-line settings that win over the manifest's ``run`` section."""

    concurrency: int | None = None
    download_concurrency: int | None = None
    requests_per_s: float | None = None
    max_cost_ptc: Decimal | None = None
    poll_floor_s: float | None = None
    base_url: str | None = None
    #: first delay of the exponential back-off of retried calls
    backoff_base_s: float | None = None
    #: ProviderConfig fields (timeouts, paths, caps) for this run
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    #: how long a provider that never answered is given (tests on a fast clock)
    unreachable_grace_s: float | None = None
    #: how long a download that keeps failing is tried (tests on a fast clock)
    download_give_up_s: float | None = None
    #: the callback receiver's HOST:PORT and public URL (win over run.callback)
    callback_listen: str | None = None
    callback_url: str | None = None


@dataclass(frozen=True)
class SimulatorSettings:
    """How ``--simulate`` renders: seconds per task (uniform between the two)."""

    render_time_s: tuple[float, float] = (1.0, 3.0)
    seed: int = 1
    #: the simulator POSTs to each request's callback URL when its render ends
    callbacks: bool = False


def ledger_path_for(manifest_path: Path, explicit: Path | None, *, simulated: bool = False) -> Path:
    if explicit is not None:
        return explicit
    return default_ledger_path(manifest_path, simulated=simulated)


def refuse_a_watched_batch(manifest_path: Path, ledger: Path, *, simulated: bool) -> None:
    """A manifest of a watched folder (``pixrun watch``) keeps its ledger in the folder's
    ``ledgers/``, not beside it: a run that would start a new ledger beside it while that
    one exists would pay again for every task it holds. Refused (exit 2), nothing sent."""
    if ledger.exists():
        return
    watched = watched_ledger(manifest_path, simulated=simulated)
    if watched is not None:
        folder = watched.parent.parent
        again = f"pixrun watch {folder}" + (" --simulate" if simulated else "")
        back = "" if manifest_path.parent == folder else f"move it back into {folder}, or "
        raise UsageError(
            f"{manifest_path} belongs to the watched folder {folder} (its ledger is "
            f"{watched}): run on its own it would start a new ledger ({ledger}) and pay "
            "again for the work that one holds. Nothing was sent",
            hint=f"{back}resume it with --ledger {watched}, or restart '{again}'",
        )


def output_dir_for(output_dir: Path, *, simulated: bool) -> Path:
    """A rehearsal writes beside the real outputs, never into them: ``out/x.sim``."""
    return output_dir.with_name(output_dir.name + SIM_INFIX) if simulated else output_dir


def sim_state_path(ledger_path: Path) -> Path:
    """Where a rehearsal's in-process simulator keeps its tasks between runs."""
    return ledger_path.with_name(ledger_path.name + ".sim-state.jsonl")


def scaled_for_simulator(
    options: SchedulerOptions, render_time_s: tuple[float, float]
) -> SchedulerOptions:
    """A rehearsal's clock: poll settings and time limits shrink with its render times
    (never grow), so a 3-shot rehearsal of 1 s renders does not wait 20 s."""
    factor = min(1.0, max(render_time_s[1], 0.05) / REAL_RENDER_S)
    poll = options.poll
    return replace(
        options,
        poll=replace(
            poll,
            initial_delay_s=poll.initial_delay_s * factor,
            min_interval_s=poll.min_interval_s * factor,
            max_interval_s=poll.max_interval_s * factor,
            timeout_s=max(poll.timeout_s * factor, 10 * render_time_s[1] + 10),
        ),
        stall_timeout_s=max(options.stall_timeout_s * factor, 10 * render_time_s[1] + 10),
        download_give_up_s=max(options.download_give_up_s * factor, 10.0),
        outage_timeout_s=max(options.outage_timeout_s * factor, 60.0),
        unreachable_grace_s=max(options.unreachable_grace_s * factor, 10.0),
    )


@contextlib.asynccontextmanager
async def provider_for(
    overrides: RunOverrides,
    simulate: SimulatorSettings | None,
    config: ProviderConfig | None = None,
    ledger_path: Path | None = None,
) -> AsyncIterator[Provider]:
    """The provider a batch talks to: the real one (``config``, else from the
    environment), or an in-process simulator that keeps its tasks beside the rehearsal
    ledger (``ledger_path``), so a resumed rehearsal finds them."""
    if simulate is None:
        async with Provider(config or real_config(overrides)) as provider:
            yield provider
        return
    # Imported only here: the simulator is a separate room the real path never enters.
    from runner.sim import SimConfig, Simulator

    sim = Simulator(
        SimConfig(
            api_key=SIM_API_KEY,
            render_time_s=simulate.render_time_s,
            seed=simulate.seed,
            callback=simulate.callbacks,
            state_path=None if ledger_path is None else sim_state_path(ledger_path),
        )
    )
    base_url = await sim.start()
    try:
        config = ProviderConfig(
            base_url=base_url, api_key=SIM_API_KEY, **dict(overrides.provider_options)
        )
        async with Provider(config) as provider:
            yield provider
    finally:
        await sim.stop()


def scheduler_options(
    manifest: Manifest,
    overrides: RunOverrides,
    output_dir: Path,
    simulate: SimulatorSettings | None,
) -> SchedulerOptions:
    settings = manifest.run
    poll = settings.poll
    if overrides.poll_floor_s is not None:
        poll = replace(poll, min_interval_s=overrides.poll_floor_s)
    budget = overrides.max_cost_ptc if overrides.max_cost_ptc is not None else settings.budget_ptc
    table = manifest_price_table(manifest)
    options = SchedulerOptions(
        output_dir=output_dir,
        concurrency=overrides.concurrency or settings.concurrency,
        download_concurrency=overrides.download_concurrency or settings.download_concurrency,
        requests_per_s=overrides.requests_per_s or settings.requests_per_s,
        poll=poll,
        budget_uptc=to_uptc_or_none(budget),
        sidecar=manifest.output.sidecar,
        embed_metadata=manifest.output.embed_metadata,
        batch_name=manifest.name,
        upload_price_uptc=to_uptc_or_none(table.upload_ptc) or 0,
        stall_timeout_s=settings.stall_timeout_s,
        outage_timeout_s=settings.outage_timeout_s,
        halt_failure_share=settings.halt.failure_share,
        halt_window=settings.halt.window,
    )
    if simulate is not None:
        options = scaled_for_simulator(options, simulate.render_time_s)
    if overrides.backoff_base_s is not None:
        options = replace(options, backoff_base_s=overrides.backoff_base_s)
    if overrides.unreachable_grace_s is not None:
        options = replace(options, unreachable_grace_s=overrides.unreachable_grace_s)
    if overrides.download_give_up_s is not None:
        options = replace(options, download_give_up_s=overrides.download_give_up_s)
    return options


def callback_settings_for(manifest: Manifest, overrides: RunOverrides) -> CallbackEndpoint | None:
    """The run's callback endpoint (the command line wins over ``run.callback``); None
    without callbacks. Raises UsageError."""
    from runner.run.callbacks import callback_endpoint

    configured = manifest.run.callback
    return callback_endpoint(
        overrides.callback_listen or (configured.listen if configured else None),
        overrides.callback_url or (configured.url if configured else None),
        hint="add --callback-listen HOST:PORT (or run.callback.listen)",
    )


def real_config(overrides: RunOverrides) -> ProviderConfig:
    return ProviderConfig.from_env(base_url=overrides.base_url, **dict(overrides.provider_options))
