"""Benchmark hygiene: measure the runner, not the state the machine was left in.

Two effects, both seen on this project's VMs, change the runner's CPU per shot by more
than the differences the benchmarks are meant to show:

- ``PYTHONDONTWRITEBYTECODE`` is set in the project's shells, so every pixrun process
  would compile its own sources again (about 0.12 s of CPU per start). An installed
  package has its bytecode; :func:`byte_compile` writes it once.
- The root file system there is ext4 without a journal. Creating a file makes the kernel
  skip every inode freed in the last few minutes whose table block is still dirty (its
  ``recently_deleted`` check), so for minutes after something deletes thousands of files
  (an earlier benchmark's temporary folder, a test run) each create costs up to about
  1 ms of kernel CPU instead of about 0.02 ms. That is the file system's cost, not the
  runner's: :func:`settle_filesystem` writes dirty blocks back and waits until a create
  in the output folder is cheap again, and reports what it measured either way.
"""

from __future__ import annotations

import compileall
import functools
import os
import time
from pathlib import Path

import runner

#: a create costing at most this much CPU counts as a settled file system
CHEAP_CREATE_MS = 0.05
_PROBE_FILES = 200


@functools.cache
def byte_compile() -> None:
    """Write the runner's bytecode, as installing the package does."""
    compileall.compile_dir(Path(runner.__file__).parent, quiet=1)


def create_cost_ms(folder: Path, start: int = 0) -> float:
    """CPU milliseconds (user + system) to create one empty file in ``folder``.

    The probe files stay (deleting them would disturb the next probe); they go with the
    benchmark's temporary folder.
    """
    started = time.thread_time()
    for n in range(start, start + _PROBE_FILES):
        os.close(os.open(folder / f".fs-probe-{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    return 1000 * (time.thread_time() - started) / _PROBE_FILES


def settle_filesystem(folder: Path, *, max_wait_s: float = 90.0) -> dict[str, float]:
    """Wait until creating a file in ``folder`` costs what it normally does.

    Returns the create cost first seen, the last one, and the seconds waited.
    """
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    os.sync()
    first = last = create_cost_ms(folder)
    probes = 1
    while last > CHEAP_CREATE_MS and time.monotonic() - started < max_wait_s:
        time.sleep(2.0)
        os.sync()
        last = create_cost_ms(folder, start=probes * _PROBE_FILES)
        probes += 1
    return {
        "create_ms_before": round(first, 3),
        "create_ms_settled": round(last, 3),
        "waited_s": round(time.monotonic() - started, 1),
    }
