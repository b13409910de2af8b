"""The provider adapter: every assumption about the 302.AI / PixVerse API lives here.

``Provider`` speaks HTTP (client.py), ``dialects`` reads both documented response
families, ``download`` writes verified files, ``config`` holds the endpoint settings and
the Ai-trace-id rule. Request-field rules live in runner/manifest/contract.py and prices in
runner/pricing.py.
"""

from runner.outputs import DownloadResult, part_path
from runner.provider.client import TRACE_HEADER, Provider
from runner.provider.config import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    ProviderConfig,
    trace_id_for,
)
from runner.provider.dialects import TaskState, TaskStatus, parse_fetch, parse_generate
from runner.provider.download import mp4_problem

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "TRACE_HEADER",
    "DownloadResult",
    "Provider",
    "ProviderConfig",
    "TaskState",
    "TaskStatus",
    "mp4_problem",
    "parse_fetch",
    "parse_generate",
    "part_path",
    "trace_id_for",
]
