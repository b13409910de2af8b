"""What `pixrun run` prints: live board, plain lines, JSON lines, quiet, and the summary."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from viewkit import build_batch

from runner.cli.progress import (
    JsonObserver,
    LiveObserver,
    PlainObserver,
    QuietObserver,
    make_observer,
    render_summary,
)
from runner.model import ShotState
from runner.run.batch import BatchOutcome
from runner.run.events import RunEvent, RunEventKind, RunSnapshot
from runner.run.scheduler import RunResult, StopReason

KEY = "sk-MARKER-7f3a9c1e-never-print-me"


def _console(*, terminal: bool = False, width: int = 100) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    # no colours, so assertions can read the text; a terminal still gets the live board
    console = Console(
        file=out, force_terminal=terminal, color_system=None, width=width, highlight=False
    )
    return console, out


def _snapshot(elapsed_s: float, done: int = 3, *, total: int = 10) -> RunSnapshot:
    counts = {
        ShotState.PENDING: total - done - 4,
        ShotState.SUBMITTED: 2,
        ShotState.DOWNLOADING: 1,
        ShotState.DONE: done,
        ShotState.FAILED: 1,
    }
    return RunSnapshot(
        total=total,
        counts=counts,
        in_flight=2,
        target_concurrency=8,
        downloading=1,
        spent_uptc=1_234_500,
        planned_uptc=3_000_000,
        elapsed_s=elapsed_s,
        done_per_s=0.5,
        eta_s=14.0,
    )


def _events(secret: str = "") -> list[RunEvent]:
    return [
        RunEvent(
            RunEventKind.SUBMITTED, "accepted as task 41", "s1", ShotState.SUBMITTED, "41", 1, 0.5
        ),
        RunEvent(RunEventKind.DONE, "saved s1.mp4", "s1", ShotState.DONE, "41", 1, 2.0),
        RunEvent(
            RunEventKind.THROTTLED,
            "throttled: concurrency limit",
            "s2",
            ShotState.PENDING,
            None,
            1,
            3.0,
        ),
        RunEvent(
            RunEventKind.FAILED,
            f"invalid request: bad key {secret} in echo",
            "s3",
            ShotState.FAILED,
            None,
            2,
            4.0,
        ),
        RunEvent(
            RunEventKind.URL_REFRESHED,
            "download URL expired: fetched a fresh one",
            "s4",
            ShotState.RENDERED,
            "44",
            1,
            5.0,
        ),
    ]


def _feed(observer: object, secret: str = "") -> None:
    from runner.run.events import RunObserver

    assert isinstance(observer, (PlainObserver, JsonObserver, LiveObserver, QuietObserver))
    obs: RunObserver = observer
    obs.snapshot(_snapshot(0.0, 0))
    for event in _events(secret):
        obs.event(event)
    obs.snapshot(_snapshot(10.0, 3))
    obs.snapshot(_snapshot(31.0, 5))


def test_plain_lines_for_notable_events_and_progress_per_interval() -> None:
    console, out = _console()
    with make_observer("plain", console, interval_s=30) as obs:
        assert isinstance(obs, PlainObserver)
        _feed(obs)
    lines = out.getvalue().splitlines()
    # progress at 0 s and 31 s (not 10 s); throttled, failed, url refreshed; not submit/done
    assert len(lines) == 5, lines
    assert lines[0].startswith("[0:00:00] progress")
    assert "0/10 done" in lines[0] and "in flight 2/8" in lines[0]
    assert lines[1] == "[0:00:03] throttled      s2 (attempt 1): throttled: concurrency limit"
    assert lines[2].startswith("[0:00:04] failed         s3 (attempt 2): invalid request")
    assert "url_refreshed" in lines[3]
    assert lines[4].startswith("[0:00:31] progress") and "5/10 done" in lines[4]
    assert "spent 1.2345/3.00 PTC" in lines[4] and "30.0/min" in lines[4]
    assert "\x1b[" not in out.getvalue()  # no colour codes, no cursor movement


def test_live_falls_back_to_plain_when_not_a_terminal() -> None:
    console, _ = _console(terminal=False)
    assert isinstance(make_observer("live", console), PlainObserver)
    term, _ = _console(terminal=True)
    assert isinstance(make_observer("live", term), LiveObserver)
    with pytest.raises(ValueError, match="unknown display mode"):
        make_observer("fancy", console)


def test_json_logs_every_line_parses_and_carries_the_fields() -> None:
    console, out = _console()
    with make_observer("json", console, interval_s=30) as obs:
        _feed(obs)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [r for r in records if r["type"] == "event"]
    progress = [r for r in records if r["type"] == "progress"]
    assert [e["kind"] for e in events] == [
        "submitted",
        "done",
        "throttled",
        "failed",
        "url_refreshed",
    ]
    assert len(progress) == 2 and progress[1]["counts"]["done"] == 5
    first = events[0]
    assert {k: first[k] for k in ("shot_id", "state", "task_id", "attempt", "elapsed_s")} == {
        "shot_id": "s1",
        "state": "submitted",
        "task_id": "41",
        "attempt": 1,
        "elapsed_s": 0.5,
    }
    assert first["message"] == "accepted as task 41" and "ts" in first


def test_quiet_prints_nothing() -> None:
    console, out = _console()
    with make_observer("quiet", console) as obs:
        _feed(obs)
    assert out.getvalue() == ""


def test_live_board_draws_progress_counts_money_and_events() -> None:
    console, out = _console(terminal=True, width=110)
    with make_observer("live", console, title="night shoot") as obs:
        _feed(obs)
    text = out.getvalue()
    assert "night shoot" in text
    assert "5/10 done" in text and "ETA" in text
    assert "queued" in text and "rendering" in text and "parked" in text
    assert "1.2345" in text and "3.00 PTC" in text
    assert "in flight" in text and "2/8" in text
    assert "s3 (attempt 2): invalid request" in text
    assert "saved s1.mp4" not in text  # per-shot chatter stays off the board


def test_a_broken_output_never_reaches_the_scheduler() -> None:
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    console = Console(file=Closed(), force_terminal=False)
    for mode in ("plain", "json"):
        with make_observer(mode, console) as obs:
            _feed(obs)  # must not raise


@pytest.mark.parametrize("mode", ["live", "plain", "json", "quiet"])
def test_the_api_key_never_reaches_the_output(
    mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIXRUN_API_KEY", KEY)
    console, out = _console(terminal=mode == "live")
    with make_observer(mode, console) as obs:
        _feed(obs, secret=KEY)  # a provider that echoes the key back in its error
    outcome = _outcome(tmp_path, message=f"stopped: key {KEY} refused")
    render_summary(
        outcome,
        console,
        manifest=tmp_path / "demo.yaml",
        mode="json" if mode == "json" else "text",
        issues=([], 0, [], 0),
    )
    text = out.getvalue()
    assert KEY not in text
    assert "***" in text or mode == "quiet"


# -- the summary -----------------------------------------------------------------------------


def _outcome(
    tmp: Path,
    *,
    counts: dict[ShotState, int] | None = None,
    stop: StopReason | None = None,
    message: str | None = None,
    ledger: Path | None = None,
    exit_code: int = 1,
) -> BatchOutcome:
    result = RunResult(
        exit_code=exit_code,
        stop_reason=stop,
        message=message,
        counts=counts or {ShotState.DONE: 4, ShotState.FAILED: 1},
        spent_uptc=1_050_000,
        elapsed_s=754.0,
        calls={"generate": 8, "fetch": 20},
        ledger_commits=12,
    )
    return BatchOutcome(
        result=result,
        ledger_path=ledger or tmp / "demo.ledger.sqlite",
        output_dir=tmp / "out",
        recovered_ambiguous=[],
        new_shots=0,
        changed_shots=0,
    )


def test_summary_says_what_to_do_about_failed_and_parked_shots(tmp_path: Path) -> None:
    # sync, as `pixrun run` calls it: after the run's event loop has ended
    batch = asyncio.run(build_batch(tmp_path, finish_run=True))
    counts = {
        ShotState.DONE: 4,
        ShotState.MODERATED: 1,
        ShotState.FAILED: 1,
        ShotState.AMBIGUOUS: 1,
        ShotState.SUBMITTED: 1,
        ShotState.RENDERED: 1,
        ShotState.PENDING: 2,
    }
    outcome = _outcome(
        tmp_path,
        counts=counts,
        stop=StopReason.OUT_OF_CREDIT,
        message="the account is out of credit: a rerun resumes",
        exit_code=4,
    )
    console, out = _console(width=120)
    # render_summary reads the failed and parked shots from the (closed) ledger itself
    render_summary(outcome, console, manifest=batch.manifest_path)
    text = out.getvalue()
    manifest = str(batch.manifest_path)
    assert "run stopped (out_of_credit) after 12m 34s" in text
    assert "the account is out of credit: a rerun resumes" in text
    assert "done 4" in text and "failed 2" in text and "parked 1" in text
    assert "1.05 PTC" in text and str(batch.output_dir) in text
    assert "blocked" in text and "the prompt was refused by content moderation" in text
    assert "lost-answer" in text
    # one failed, one moderated: the command re-queues both
    assert f"pixrun retry --failed --moderated {manifest}" in text
    assert f"pixrun retry --ambiguous {manifest}" in text
    assert f"pixrun resolve SHOT --task-id ID {manifest}" in text
    assert f"pixrun run {manifest}" in text  # 4 unfinished shots: a rerun resumes
    assert "--ledger" not in text  # the ledger is where the manifest puts it


def test_summary_of_a_clean_run_and_a_ledger_elsewhere(tmp_path: Path) -> None:
    ledger = tmp_path / "elsewhere" / "my.sqlite"
    outcome = _outcome(tmp_path, counts={ShotState.DONE: 3}, ledger=ledger, exit_code=0)
    console, out = _console(width=160)
    render_summary(outcome, console, manifest=tmp_path / "b.yaml", issues=([], 0, [], 0))
    text = out.getvalue()
    assert "run finished in 12m 34s" in text
    assert "retry" not in text and "resolve" not in text
    assert f"pixrun report --format html {tmp_path / 'b.yaml'} --ledger {ledger}" in text


def test_summary_as_one_json_line(tmp_path: Path) -> None:
    outcome = _outcome(tmp_path, stop=StopReason.BUDGET, exit_code=4)
    console, out = _console()
    render_summary(
        outcome, console, manifest=tmp_path / "b.yaml", mode="json", issues=([], 0, [], 0)
    )
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["type"] == "summary" and record["exit_code"] == 4
    assert record["stop_reason"] == "budget" and record["spent_ptc"] == "1.05"
    assert record["counts"] == {"done": 4, "failed": 1}
