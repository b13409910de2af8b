"""The simulated provider: the same endpoints as 302.AI / PixVerse, on 127.0.0.1.

For tests, demos and rehearsing a batch without spending anything. It shares only the
contract's data (runner/pricing.py, runner/data/) with the adapter; it checks requests
with its own hand-written schema (request.schema.json), never with runner/manifest/contract.py,
so it can disagree with the client.
"""

from runner.sim.books import SimTask, shot_key_of
from runner.sim.config import DIALECTS, GenerateHook, SimConfig
from runner.sim.media import task_mp4, tiny_mp4
from runner.sim.server import FILES_PATH, STATS_PATH, Simulator, serve
from runner.sim.thread import SimulatorThread

__all__ = [
    "DIALECTS",
    "FILES_PATH",
    "STATS_PATH",
    "GenerateHook",
    "SimConfig",
    "SimTask",
    "Simulator",
    "SimulatorThread",
    "serve",
    "shot_key_of",
    "task_mp4",
    "tiny_mp4",
]
