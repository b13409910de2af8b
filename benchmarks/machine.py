"""Benchmark hygiene: measure the runner, not the state the machine was left in.

Three effects, all seen on this project's VMs, change the runner's CPU per shot by more
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
- The VM's CPU itself runs faster or slower from minute to minute: the same pure-Python
  loop has taken from 0.39 to 0.63 s of CPU within one idle minute. Nothing here can
  settle that; :func:`cpu_speed_probe_ms` times a fixed workload just before and after
  each measured run, and the benchmarks report it beside the run, so a slow minute can
  be told from a slow runner.

``BENCH_DIR`` chooses the disk every benchmark writes its temporary folders to
(:func:`bench_dir`; default: the system's temporary folder).
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
#: steps of the CPU speed probe's loop: about 0.1 s of CPU on this project's VMs
_SPEED_PROBE_STEPS = 700_000


def bench_dir() -> str | None:
    """Where the benchmarks' temporary folders go: ``BENCH_DIR``, else the system's default."""
    return os.environ.get("BENCH_DIR") or None


def cpu_speed_probe_ms() -> float:
    """CPU milliseconds this thread takes for a fixed pure-Python workload: the same
    work every time, so it moves only with the machine's speed (lower is faster)."""
    started = time.thread_time()
    total = 0
    for step in range(_SPEED_PROBE_STEPS):
        total += step * step % 7
    if total < 0:  # never true; keeps the loop's result alive
        raise AssertionError(total)
    return round(1000 * (time.thread_time() - started), 1)


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
