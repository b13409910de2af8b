"""``run.notify``, ``--notify`` and ``--on-finish``: one summary per run, whichever way
it ends, never the API key, never a changed exit code, never a hang.

The receivers are real aiohttp servers on 127.0.0.1 in a thread of the test; pixrun runs
as a subprocess against a simulator thread.
"""

from __future__ import annotations

import shlex
import signal
import socket
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hookkit import Receiver
from runkit import (
    KEY,
    Batch,
    SimThread,
    env_for,
    exit_within,
    explain,
    flat,
    generate_calls,
    in_state,
    pixrun,
    run_args,
    start,
    wait_until,
    write_manifest,
)

from runner.errors import ExitCode
from runner.model import ShotState
from runner.notify import encode_summary, notify_url_fault, run_summary
from runner.run.batch import BatchOutcome
from runner.run.options import RunResult, StopReason

#: fast clocks for the notifier, so no test waits out the real back-off
FAST = ("--notify-backoff-s", "0.01")


def _dead_url() -> str:
    """An address where nothing listens: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def _batch(
    folder: Path,
    n_shots: int,
    notify: list[str] | None = None,
    halt: dict[str, Any] | None = None,
    **kw: Any,
) -> Batch:
    """A manifest in a folder whose path holds the API key: every path in a summary is
    then a place the key could leak through."""
    batch = write_manifest(folder / f"project-{KEY}", n_shots, **kw)
    if notify is not None or halt is not None:
        doc = yaml.safe_load(batch.manifest.read_text(encoding="utf-8"))
        if notify is not None:
            doc["run"]["notify"] = notify[0] if len(notify) == 1 else notify
        if halt is not None:
            doc["run"]["halt"] = halt
        batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return batch


def _on_finish(tmp_path: Path) -> tuple[str, Path]:
    """A command that saves its stdin and whether it saw the key in its environment."""
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys\n"
        "data = sys.stdin.buffer.read()\n"
        "open(sys.argv[1], 'wb').write(data)\n"
        "open(sys.argv[1] + '.env', 'w').write(str('PIXRUN_API_KEY' in os.environ))\n",
        encoding="utf-8",
    )
    saved = tmp_path / "saved summary.json"  # a space: the words are split as a shell would
    command = " ".join(shlex.quote(str(p)) for p in (sys.executable, script, saved))
    return command, saved


def _one(r: Receiver, said: str) -> dict[str, Any]:
    assert len(r.bodies) == 1, f"{len(r.bodies)} summaries\n{said}"
    assert KEY.encode() not in r.bodies[0]
    return r.summaries()[0]


# -- runs that end ---------------------------------------------------------------------


def test_a_finished_run_sends_one_summary_to_each_target(
    tmp_path: Path, sim_thread: SimThread, receiver: Any
) -> None:
    """From run.notify and --notify alike, and on --on-finish's stdin: the same summary,
    counts, money, the first 20 failed shots with their errors, a readable text, no key."""
    sim = sim_thread(moderated_words=("forbidden",))
    from_manifest, from_option = receiver(), receiver()
    refused = {f"s{i:02d}": "a forbidden scene" for i in range(1, 22)}  # 21 of 24
    # the brake off: this run is about a summary of many failures, not about stopping
    no_brake = {"failure_share": 1}
    batch = _batch(tmp_path, 24, [from_manifest.url], no_brake, scenes=refused, concurrency=8)
    command, saved = _on_finish(tmp_path)
    args = run_args(batch, "--notify", from_option.url, "--on-finish", command, *FAST)
    done = pixrun(args, env_for(sim.base_url), cwd=batch.dir)
    said = explain(done)
    assert done.returncode == ExitCode.SHOTS_FAILED, said
    assert "warning" not in done.stderr, said

    summary = _one(from_manifest, said)
    assert _one(from_option, said) == summary
    assert saved.read_bytes() == from_manifest.bodies[0]  # the same document, same id
    assert saved.with_name(saved.name + ".env").read_text() == "False"  # no key handed on
    assert summary["status"] == "incomplete" and summary["stop_reason"] is None
    assert summary["exit_code"] == 1
    assert summary["manifest"]["name"] == "batch"
    assert summary["manifest"]["path"].endswith("batch.yaml")
    assert summary["counts"]["done"] == 3 and summary["counts"]["moderated"] == 21
    assert summary["total"] == 24
    # what the ledger counts as spent (the moderated renders' price included)
    assert summary["spent_uptc"] == 2_400_000 and summary["spent_ptc"] == "2.40"
    assert summary["elapsed_s"] > 0
    assert summary["output_dir"].startswith(str(tmp_path)) and "***" in summary["output_dir"]
    assert summary["ledger"].endswith("batch.ledger.sqlite")
    assert all(Path(summary[k]).is_absolute() for k in ("ledger", "output_dir"))
    assert Path(summary["manifest"]["path"]).is_absolute()
    assert summary["failed_total"] == 21
    assert [f["shot_id"] for f in summary["failed"]] == sorted(refused)[:20]
    for failure in summary["failed"]:
        assert failure["state"] == "moderated" and failure["error"]
    text = summary["text"]
    assert next(iter(summary)) == "text"
    assert text.startswith("pixrun: 'batch' finished with problems, exit 1")
    assert "3/24 done, 21 failed, 2.40 PTC" in text
    assert "failed: s01 (" in text and "s05 (" in text and "s06" not in text
    assert text.endswith(", and 16 more") and "output: " in text


def test_a_run_stopped_by_an_empty_account_says_why(
    tmp_path: Path, sim_thread: SimThread, receiver: Any
) -> None:
    sim = sim_thread(balance_ptc=Decimal("0.3"))
    hook = receiver()
    batch = _batch(tmp_path, 6, [hook.url], concurrency=2)
    done = pixrun(run_args(batch, *FAST), env_for(sim.base_url), cwd=batch.dir)
    said = explain(done)
    assert done.returncode == ExitCode.MONEY, said
    summary = _one(hook, said)
    assert summary["status"] == "stopped" and summary["stop_reason"] == "out_of_credit"
    assert summary["exit_code"] == 4 and summary["message"]
    assert summary["counts"]["done"] == 3 and summary["counts"]["pending"] == 3
    assert summary["text"].startswith("pixrun: 'batch' stopped early (out_of_credit), exit 4")
    assert "3 not finished" in summary["text"]


def test_a_braked_run_says_so_once_with_the_common_error(
    tmp_path: Path, sim_thread: SimThread, receiver: Any
) -> None:
    """The failure-rate brake is an early stop like any other: one summary, exit 1,
    the brake's message naming the error that kept coming back."""
    sim = sim_thread(moderated_words=("forbidden",))
    hook = receiver()
    scenes = {f"s{i:02d}": "a forbidden scene" for i in range(30)}
    halt = {"failure_share": 0.5, "window": 6}
    batch = _batch(tmp_path, 30, [hook.url], halt, scenes=scenes, concurrency=2, max_attempts=1)
    done = pixrun(run_args(batch, *FAST), env_for(sim.base_url), cwd=batch.dir)
    said = explain(done)
    assert done.returncode == ExitCode.SHOTS_FAILED, said
    summary = _one(hook, said)
    assert summary["status"] == "stopped" and summary["stop_reason"] == "brake", summary
    assert summary["message"].startswith("brake: "), summary["message"]
    assert 6 <= summary["failed_total"] < 30 and summary["counts"]["pending"] > 0
    assert summary["text"].startswith("pixrun: 'batch' stopped early (brake), exit 1")


def test_a_run_refused_before_sending_is_told_too(
    tmp_path: Path, sim_thread: SimThread, receiver: Any
) -> None:
    """A plan over the budget stops before anything is sent: one summary, with the
    error, and the exit code of the refusal."""
    sim = sim_thread()
    hook = receiver()
    batch = _batch(tmp_path, 6, [hook.url], budget_ptc=0.25)
    done = pixrun(run_args(batch, *FAST), env_for(sim.base_url), cwd=batch.dir)
    said = explain(done)
    assert done.returncode == ExitCode.MONEY, said
    assert generate_calls(sim) == 0
    summary = _one(hook, said)
    assert summary["status"] == "error" and summary["exit_code"] == 4
    assert summary["error"]["kind"] == "BudgetExceeded"
    assert "budget" in summary["text"] and summary["text"].startswith("pixrun: 'batch' did not run")


def test_an_interrupted_run_is_told_once_with_its_exit_code(
    tmp_path: Path, sim_thread: SimThread, receiver: Any
) -> None:
    sim = sim_thread(render_time_s=(5.0, 5.0))
    hook = receiver()
    batch = _batch(tmp_path, 4, [hook.url], concurrency=2)
    running = start(run_args(batch, *FAST), env_for(sim.base_url), cwd=batch.dir, tag="run")
    wait_until(
        lambda: batch.ledger.exists() and len(in_state(batch.ledger, "submitted")) == 2,
        what="two tasks at the provider",
    )
    running.signal(signal.SIGINT)
    code, _ = exit_within(running, 20)
    said = explain(running)
    assert code == ExitCode.INTERRUPTED, said
    summary = _one(hook, said)
    assert summary["stop_reason"] == "interrupted" and summary["exit_code"] == 130
    assert summary["counts"]["submitted"] == 2


# -- endpoints that fail ---------------------------------------------------------------


def test_a_flaky_endpoint_gets_the_summary_once_after_retries(
    tmp_path: Path, sim_thread: SimThread, receiver: Any
) -> None:
    sim = sim_thread()
    flaky = receiver(fail_first=2)
    batch = _batch(tmp_path, 2, [flaky.url])
    done = pixrun(run_args(batch, *FAST), env_for(sim.base_url), cwd=batch.dir)
    said = explain(done)
    assert done.returncode == ExitCode.OK, said
    assert flaky.tries == 3, said
    assert _one(flaky, said)["status"] == "ok"
    assert "warning" not in done.stderr, said


def test_dead_endpoints_and_a_failing_command_change_nothing(
    tmp_path: Path, sim_thread: SimThread, receiver: Any
) -> None:
    """Refused, never answering, a 404, a command that fails and one that hangs: the run
    ends on time with its own exit code, and each target is reported once."""
    sim = sim_thread()
    silent, looping = receiver(hang=True), receiver(loop=True)
    batch = _batch(tmp_path, 2, [_dead_url(), silent.url, looping.url])
    hanging = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(60)'"
    args = run_args(
        batch,
        "--notify",
        silent.url.replace("/hooks/", "/nowhere/"),  # 404: not worth another try
        "--on-finish",
        hanging,
        "--notify-timeout-s",
        "1",
        "--on-finish-timeout-s",
        "1",
        *FAST,
    )
    t0 = time.monotonic()
    done = pixrun(args, env_for(sim.base_url), cwd=batch.dir, timeout_s=60)
    took_s = time.monotonic() - t0
    said = explain(done)
    assert done.returncode == ExitCode.OK, said
    assert took_s < 15, said
    stderr = flat(done.stderr)
    assert stderr.count("warning: notify to 127.0.0.1 failed") == 4, said
    assert "TooManyRedirects" in stderr, said  # whose message quotes the URL...
    assert "failed after 4 tries: ClientConnectorError" in stderr, said
    assert "failed after 1 try: HTTP 404" in stderr, said
    assert "gave up after 1 s (no answer)" in stderr, said
    assert "--on-finish command" in stderr and "still running after 1 s: killed" in stderr
    assert "secret-path" not in stderr  # ...but a webhook's path is its password
    assert silent.tries >= 1 and not silent.bodies

    failing = f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(3)'"
    again = pixrun(
        run_args(batch, "--on-finish", failing, *FAST), env_for(sim.base_url), cwd=batch.dir
    )
    assert again.returncode == ExitCode.OK, explain(again)
    assert "exited with status 3" in flat(again.stderr), explain(again)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_while_notifying_keeps_the_exit_code_and_leaves_no_command(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = _batch(tmp_path, 2)
    pid_file = tmp_path / "hook.pid"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    command = " ".join(shlex.quote(w) for w in (sys.executable, "-c", code, str(pid_file)))
    running = start(
        run_args(batch, "--on-finish", command), env_for(sim.base_url), cwd=batch.dir, tag="r"
    )
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), what="the command to start")
    hook_pid = int(pid_file.read_text())
    running.signal(signal.SIGINT)
    code_, _ = exit_within(running, 10)
    said = explain(running)
    assert code_ == ExitCode.OK, said
    assert "interrupted: the run's summary was not sent" in flat(running.output()[1]), said
    wait_until(lambda: not _alive(hook_pid), timeout_s=5, what="the command to be ended")


# -- checked before anything is sent ---------------------------------------------------


def test_a_bad_notify_url_is_refused_before_anything_is_sent(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    batch = _batch(tmp_path, 2, ["https://ok.example/hook", "https://hooks.example/a b"])
    done = pixrun(run_args(batch), env_for(sim.base_url), cwd=batch.dir)
    said = flat(done.stderr)
    assert done.returncode == ExitCode.INVALID, explain(done)
    assert "batch.yaml:" in said and "run.notify[1]" in said and "contains a space" in said

    batch = _batch(tmp_path / "b", 2)
    bad = pixrun(run_args(batch, "--notify", "http://"), env_for(sim.base_url), cwd=batch.dir)
    assert bad.returncode == ExitCode.INVALID, explain(bad)
    assert "--notify" in bad.stderr and "names no host" in flat(bad.stderr), explain(bad)
    assert sim.stats()["calls"] == {}


@pytest.mark.parametrize(
    ("url", "fault"),
    [
        ("https://hooks.slack.com/services/T/B/x", None),
        ("http://127.0.0.1:8080/hook?topic=a", None),
        ("ftp://x.example/", "is not an http:// or https:// URL"),
        ("https://", "names no host"),
        ("https://a.example:99999/", "is not a valid URL"),
        ("https://a.example/ x", "contains a space"),
        ("hooks.slack.com/x", "is not an http:// or https:// URL"),
    ],
)
def test_notify_url_check(url: str, fault: str | None) -> None:
    found = notify_url_fault(url)
    assert found == fault if fault is None else (found or "").startswith(fault)


# -- the summary itself ----------------------------------------------------------------


@pytest.mark.parametrize("stop", list(StopReason))
def test_every_stop_reason_reads_in_the_text(
    stop: StopReason, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever stopped the run (a stop reason added later too), the text says so, and a
    message or path that echoes the key is scrubbed."""
    monkeypatch.setenv("PIXRUN_API_KEY", KEY)
    counts = {s: 0 for s in ShotState} | {ShotState.DONE: 2, ShotState.PENDING: 23}
    outcome = BatchOutcome(
        result=RunResult(
            exit_code=4,
            stop_reason=stop,
            message=f"stopped: the provider said {KEY}",
            counts=counts,
            spent_uptc=1_250_000,
            elapsed_s=3725.0,
            calls={},
            ledger_commits=0,
        ),
        ledger_path=tmp_path / "b.ledger.sqlite",
        output_dir=tmp_path / KEY,
        recovered_ambiguous=[],
        new_shots=0,
        changed_shots=0,
    )
    summary = run_summary(outcome, manifest_name="night", manifest_path=tmp_path / "n.yaml")
    assert KEY.encode() not in encode_summary(summary)
    assert summary["stop_reason"] == stop.value
    lines = summary["text"].splitlines()
    assert lines[0] == f"pixrun: 'night' stopped early ({stop.value}), exit 4"
    assert lines[1] == "2/25 done, 23 not finished, 1.25 PTC, 1h 02m"
    assert lines[2] == "stopped: the provider said ***"
