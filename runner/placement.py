"""Where a run's threads execute, when asked (``pixrun run --pin-cpu``): on one CPU,
the one the run started on. By default a run leaves placement to the OS: a command
that changes its own CPU affinity surprises people, and the CPU-per-shot target this
served is no longer a target.

Why: a run is one Python process with several threads (the event loop, which does
almost all of the work; the ledger's SQLite thread; the worker threads that write
files) that take turns holding the GIL, and every file write or commit is a turn. When
the threads sit on different CPUs, every turn is a cross-CPU wake-up: an
inter-processor interrupt, on a virtual machine an exit to the hypervisor, and a
waiting thread's cache gone cold. On one CPU a turn is a plain switch. Measured on the
benchmark VM (2 vCPUs; 4,000-shot batches, six rounds of interleaved runs): kept on
one CPU, a run used 0.87 ms less CPU per shot (2.37 vs 3.38 ms, -25%, less in every
round), ran 24% more shots per second, and its voluntary context switches fell from
about 50 to 19 per shot. A second CPU cannot run the Python work anyway: the GIL lets
one thread run it at a time.

Invariants:
- It only narrows the CPUs the process was given (by ``taskset``, a cgroup cpuset,
  ...) to one of them, never widens them; with one CPU given there is nothing to do.
- Every thread that exists is moved; threads started later inherit the placement of
  the thread that starts them.
- A refusal (an OS without ``sched_setaffinity``, a container that forbids it) is
  not an error: the run proceeds wherever the OS puts it, and nothing is left half
  moved.
- It imports on every platform; where ``os.sched_setaffinity`` does not exist (macOS,
  Windows) :func:`keep_to_one_cpu` does nothing and returns None.
- Only ``pixrun run --pin-cpu`` calls it, for its own process: a library caller (a
  test running :func:`runner.run.batch.run_batch` in-process) keeps its placement.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["current_cpu", "keep_to_one_cpu"]

#: position of ``processor`` among the fields of /proc/<tid>/stat that follow the
#: command name (field 39 of proc(5), counting from 1, minus the first two)
_PROCESSOR_FIELD = 36


def current_cpu() -> int | None:
    """The CPU the calling thread runs on now (Linux), or None where that is unknown."""
    try:
        text = Path("/proc/thread-self/stat").read_text()
        # the command name may hold spaces and parentheses: fields follow its last ")"
        return int(text[text.rindex(")") + 2 :].split()[_PROCESSOR_FIELD])
    except (OSError, ValueError, IndexError):
        return None


def keep_to_one_cpu() -> int | None:
    """Move every thread of this process to the CPU the caller runs on now.

    Returns that CPU, or None when nothing was changed: one CPU given already, no
    ``sched_setaffinity`` here, the current CPU unknown, or the OS refused.
    """
    if not (hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")):
        return None
    try:
        given = os.sched_getaffinity(0)
    except OSError:
        return None
    cpu = current_cpu()
    if len(given) < 2 or cpu is None or cpu not in given:
        return None
    moved: list[int] = []
    try:
        for tid in _thread_ids():
            try:
                os.sched_setaffinity(tid, {cpu})
            except ProcessLookupError:
                continue  # the thread ended meanwhile
            moved.append(tid)
    except OSError:  # refused (EPERM in some containers, EINVAL for a CPU gone)
        for tid in moved:  # all or nothing: put back the ones already moved
            try:
                os.sched_setaffinity(tid, given)
            except OSError:
                continue
        return None
    return cpu


def _thread_ids() -> list[int]:
    """The calling thread first (0 means "the caller"), then the process's others."""
    try:
        others = [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
    caller = threading.get_native_id()
    return [0, *(tid for tid in others if tid != caller)]
