"""``pixrun run --pin-cpu`` keeps its threads on one CPU (runner.placement); a run
without it (or with the deprecated ``--all-cpus``) leaves them where the OS puts them.

Placement is process-wide, so every check runs in a child process: the test process
keeps its own CPUs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from runkit import (
    REPO,
    SimThread,
    env_for,
    in_state,
    query,
    run_args,
    start,
    wait_until,
    write_manifest,
)

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs sched_setaffinity and two CPUs to choose from",
)

#: the child starts a thread, keeps to one CPU, starts another, and reports every
#: thread's CPUs; ``PRELUDE`` runs first (narrow the CPUs, make the OS refuse)
_CHILD = textwrap.dedent(
    """
    import json, os, sys, threading
    from runner.placement import current_cpu, keep_to_one_cpu

    given = sorted(os.sched_getaffinity(0))
    PRELUDE
    before_threads = sorted(os.sched_getaffinity(0))
    started, release = threading.Event(), threading.Event()

    def wait():
        started.set()
        release.wait()

    earlier = threading.Thread(target=wait)
    earlier.start()
    started.wait()
    cpu = keep_to_one_cpu()
    later_cpus = []
    later = threading.Thread(target=lambda: later_cpus.extend(sorted(os.sched_getaffinity(0))))
    later.start()
    later.join()
    report = {
        "given": given,
        "before": before_threads,
        "cpu": cpu,
        "main": sorted(os.sched_getaffinity(0)),
        "earlier": sorted(os.sched_getaffinity(earlier.native_id)),
        "later": later_cpus,
        "current": current_cpu(),
    }
    release.set()
    earlier.join()
    print(json.dumps(report))
    """
)


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter on this tree; its standard output."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env_for(None, key=None),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _child(prelude: str = "") -> dict[str, object]:
    report: dict[str, object] = json.loads(
        _python(_CHILD.replace("PRELUDE", prelude.strip() or "pass"))
    )
    return report


def test_every_thread_moves_to_the_cpu_the_process_runs_on() -> None:
    report = _child()
    cpu = report["cpu"]
    assert isinstance(cpu, int) and cpu in report["given"]  # type: ignore[operator]
    # the thread that was running, one started before and one started after
    assert report["main"] == report["earlier"] == report["later"] == [cpu]
    assert report["current"] == cpu


def test_one_cpu_given_is_left_as_it_is() -> None:
    report = _child("os.sched_setaffinity(0, {given[-1]})")
    assert report["cpu"] is None
    only = report["before"]
    assert len(only) == 1  # type: ignore[arg-type]
    assert report["main"] == report["earlier"] == report["later"] == only


def test_a_refusal_moves_nothing() -> None:
    """The OS refuses the second thread (as a container may): the first, already moved,
    is put back, and the run goes on where the OS puts it."""
    refuse_second = textwrap.dedent(
        """
        import errno
        real, calls = os.sched_setaffinity, []
        def refusing(tid, cpus):
            calls.append(tid)
            if len(calls) == 2:
                raise PermissionError(errno.EPERM, "refused")
            real(tid, cpus)
        os.sched_setaffinity = refusing
        """
    )
    report = _child(refuse_second)
    assert report["cpu"] is None
    assert report["main"] == report["earlier"] == report["later"] == report["given"]


def _thread_cpus(pid: int) -> list[list[int]]:
    cpus = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpus.append(sorted(os.sched_getaffinity(int(tid))))
        except ProcessLookupError:
            continue
    return cpus


@pytest.mark.parametrize("flag", [None, "--pin-cpu", "--all-cpus"])
def test_pixrun_run_keeps_to_one_cpu_only_when_asked(
    tmp_path: Path, sim_thread: SimThread, flag: str | None
) -> None:
    # renders long enough that the run is caught with its threads started
    sim = sim_thread(render_time_s=(30.0, 30.0))
    batch = write_manifest(tmp_path, 3)
    running = start(
        run_args(batch, *([flag] if flag else [])),
        env_for(sim.base_url),
        cwd=tmp_path,
        tag="placement",
    )
    try:
        # a task at the provider: the run's threads and signal handlers are in place
        wait_until(
            lambda: in_state(batch.ledger, "submitted") or running.proc.poll() is not None,
            what="a task in flight",
        )
        assert running.proc.poll() is None, running.output()
        threads = _thread_cpus(running.pid)
    finally:
        running.signal(signal.SIGTERM)
        assert running.wait() == 130
    given = sorted(os.sched_getaffinity(0))
    assert len(threads) > 1  # the ledger's thread at least
    (started,) = query(batch.ledger, "SELECT message FROM events WHERE kind = 'run_started'")
    if flag == "--pin-cpu":
        assert len({tuple(c) for c in threads}) == 1, threads
        assert len(threads[0]) == 1 and threads[0][0] in given
        # the ledger says where the run's threads were kept
        assert started == (f"run 1 started (threads kept on CPU {threads[0][0]})",)
    else:
        assert all(c == given for c in threads), threads
        assert started == ("run 1 started",)


def test_without_sched_setaffinity_it_imports_and_does_nothing() -> None:
    """As on macOS or Windows: no affinity calls at all. Importing never fails."""
    code = textwrap.dedent(
        """
        import os
        del os.sched_setaffinity, os.sched_getaffinity
        from runner.placement import keep_to_one_cpu
        print(keep_to_one_cpu())
        """
    )
    assert _python(code).strip() == "None"
