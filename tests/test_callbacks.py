"""Provider callbacks: the receiver's security, the polling policy, and whole runs
against the simulator calling back (lost, late, twice, forged), including a rerun
after a kill."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from runkit import (
    Batch,
    SimThread,
    env_for,
    explain,
    flat,
    free_port,
    generate_calls,
    ledger_task_ids,
    net_charges,
    pixrun,
    query,
    run_args,
    run_pixrun,
    start,
    state_counts,
    wait_until,
    write_manifest,
)

from runner.ledger import ShotRow
from runner.model import ShotState
from runner.run.callbacks import BODY_CAP_BYTES, CallbackHub, CallbackReceiver, ReceiverPool
from runner.run.context import Job
from runner.run.flow import CallbackPolicy, PollPlanner

SECRET = "ab" * 32
LISTEN = ("--callback-listen", "127.0.0.1:0")
#: renders long enough that polling costs several fetches; callbacks then save them
RENDER_S = (0.3, 0.6)
POLL = {"initial_delay_s": 0.05, "min_interval_s": 0.02, "max_interval_s": 0.3, "timeout_s": 30}


# -- the polling policy ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def learned_planner() -> PollPlanner:
    planner = PollPlanner(initial_delay_s=1.0, min_interval_s=0.05, max_interval_s=1.0)
    for i in range(100):
        planner.observe(1.0 + i / 100)  # renders of 1.0 to 1.99 s
    return planner


def test_policy_polls_sparsely_only_while_callbacks_arrive() -> None:
    clock = Clock()
    planner = learned_planner()
    policy = CallbackPolicy(planner, silence_min_s=4.0, clock=clock)
    # before any callback: exactly the planner
    assert policy.first_delay_s() == planner.first_delay_s()
    assert policy.next_delay_s(1.2) == planner.next_delay_s(1.2)
    policy.on_callback()
    # then: a first poll near the top of the distribution, and few after it
    assert policy.first_delay_s() >= 1.85
    polls, elapsed = 0, policy.first_delay_s()
    while elapsed < 2.0:
        polls += 1
        elapsed += policy.next_delay_s(elapsed)
    assert polls <= 2
    assert policy.next_delay_s(1.2) > planner.next_delay_s(1.2)


def test_policy_polls_denser_when_callbacks_get_lost() -> None:
    clock = Clock()
    policy = CallbackPolicy(learned_planner(), silence_min_s=4.0, clock=clock)
    policy.on_callback()
    sparse_first = policy.first_delay_s()
    for i in range(20):
        policy.on_callback()
        policy.on_finished(hinted=i % 5 != 0)  # every fifth render found by a poll
    assert policy.miss_share() == pytest.approx(0.2)
    assert policy.first_delay_s() < sparse_first


def test_policy_falls_back_once_when_callbacks_go_silent() -> None:
    clock = Clock()
    policy = CallbackPolicy(learned_planner(), silence_min_s=4.0, clock=clock)
    policy.on_callback()
    said = []
    for _ in range(10):  # renders found by polls, right after a callback: not silence
        said.append(policy.on_finished(hinted=False))
    assert not any(said) and policy.trusted
    clock.now += 10.0
    said = [policy.on_finished(hinted=False) for _ in range(10)]
    assert said.count(True) == 1
    assert not policy.trusted
    assert policy.next_delay_s(1.2) == policy.planner.next_delay_s(1.2)
    policy.on_callback()  # they came back
    assert policy.trusted


def test_policy_says_once_when_no_callback_ever_came() -> None:
    clock = Clock()
    policy = CallbackPolicy(learned_planner(), silence_min_s=4.0, clock=clock)
    clock.now += 10.0
    said = [policy.on_finished(hinted=False) for _ in range(50)]
    assert said.count(True) == 1


# -- the receiver ------------------------------------------------------------------------


def job_for(shot_id: str = "s00", attempts: int = 1) -> Job:
    row = ShotRow.__new__(ShotRow)
    row.shot_id, row.version, row.attempts, row.state = shot_id, 1, attempts, ShotState.SUBMITTED
    return Job(row)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[CallbackHub, str]]:
    hub = CallbackHub(SECRET)
    async with CallbackReceiver(hub, "127.0.0.1", 0) as running:
        yield hub, f"http://127.0.0.1:{running.bound_port}"


async def post(url: str, body: bytes = b'{"id": 1, "status": 1}', method: str = "POST") -> int:
    async with aiohttp.ClientSession() as session, session.request(method, url, data=body) as r:
        return r.status


async def test_a_valid_callback_wakes_its_task_and_a_sample_is_kept(
    receiver: tuple[CallbackHub, str],
) -> None:
    hub, base = receiver
    samples: list[tuple[str | None, str]] = []
    hub.record = lambda shot_id, text: samples.append((shot_id, text))
    job = job_for()
    url = hub.url_for(job, 1)
    assert url.startswith(base + "/" + SECRET + "/")
    assert "s00" not in url  # the token names the shot without revealing it
    assert job.wake is not None and not job.wake.is_set()
    assert await post(url) == 200
    assert job.wake.is_set()
    assert hub.counts["valid"] == 1
    assert samples and samples[0][0] == "s00"
    assert json.loads(samples[0][1])["shape"] == "{id,status}"
    # the same again while it is still awaited: a duplicate (at most one more fetch)
    assert await post(url) == 200
    assert hub.counts["duplicate"] == 1
    hub.ended(job)
    job.wake.clear()
    assert await post(url) == 200  # late: answered, changes nothing
    assert hub.counts["late"] == 1
    assert not job.wake.is_set()


async def test_anything_but_a_valid_callback_changes_nothing_and_is_counted(
    receiver: tuple[CallbackHub, str],
) -> None:
    hub, base = receiver
    job = job_for()
    url = hub.url_for(job, 1)
    token = url.rsplit("/", 1)[1]
    wrong_secret = f"{base}/{'cd' * 32}/{token}"  # a real task, a wrong secret
    assert await post(wrong_secret) == 404
    assert await post(f"{base}/{SECRET}/{'0' * 32}") == 404  # an unknown task
    assert await post(f"{base}/") == 404
    assert await post(f"{base}/admin", method="GET") == 404
    assert await post(url, method="GET") == 405
    assert await post(url, method="PUT") == 405
    assert await post(url, body=b"x" * (BODY_CAP_BYTES + 1)) == 413
    assert job.wake is not None and not job.wake.is_set()
    assert hub.counts["valid"] == 0
    assert hub.counts["wrong_secret"] == 1
    assert hub.counts["unknown_token"] == 1
    assert hub.counts["other_path"] == 2
    assert hub.counts["wrong_method"] == 2
    assert hub.counts["oversized"] == 1
    # a body at the cap is fine; a malformed one is still only a hint
    assert await post(url, body=b"\xff" * BODY_CAP_BYTES) == 200
    assert hub.counts["malformed"] == 1 and job.wake.is_set()


async def test_refused_requests_are_rate_limited(receiver: tuple[CallbackHub, str]) -> None:
    hub, base = receiver
    statuses = await asyncio.gather(*(post(f"{base}/x/{i}") for i in range(80)))
    assert statuses.count(429) > 0
    assert set(statuses) == {404, 429}
    assert hub.counts["rate_limited"] == statuses.count(429)


async def test_batches_on_one_port_share_one_receiver_each_on_its_secret() -> None:
    pool = ReceiverPool()
    first, second = CallbackHub(SECRET), CallbackHub("cd" * 32)
    port = free_port()
    async with pool.serving(first, "127.0.0.1", port), pool.serving(second, "127.0.0.1", port):
        job_a, job_b = job_for("a"), job_for("b")
        url_a, url_b = first.url_for(job_a, 1), second.url_for(job_b, 1)
        assert url_a.startswith(f"http://127.0.0.1:{port}/{SECRET}/")
        assert url_b.startswith(f"http://127.0.0.1:{port}/{'cd' * 32}/")
        assert await post(url_b) == 200
        assert job_b.wake is not None and job_b.wake.is_set()
        assert job_a.wake is not None and not job_a.wake.is_set()
        assert await post(url_a) == 200 and job_a.wake.is_set()
        assert first.counts["valid"] == second.counts["valid"] == 1
        # a path under neither secret: refused, and each batch's summary says so
        assert await post(f"http://127.0.0.1:{port}/{'ef' * 32}/{'0' * 32}") == 404
        assert first.counts["wrong_secret"] == second.counts["wrong_secret"] == 1
    # the last batch out closes the port: it can be bound again
    async with pool.serving(CallbackHub(SECRET), "127.0.0.1", port):
        pass


# -- whole runs against the simulator ----------------------------------------------------


def batch_with(
    folder: Path,
    n_shots: int,
    *,
    callback: dict[str, str] | None = None,
    concurrency: int = 8,
    name: str = "batch",
) -> Batch:
    batch = write_manifest(folder, n_shots, concurrency=concurrency, name=name)
    doc = yaml.safe_load(batch.manifest.read_text())
    doc["run"]["poll"] = POLL
    if callback is not None:
        doc["run"]["callback"] = callback
    batch.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return batch


def run_summary(batch: Batch) -> dict[str, Any]:
    rows = query(batch.ledger, "SELECT summary FROM runs ORDER BY run_id DESC LIMIT 1")
    return dict(json.loads(rows[0][0]))


def assert_all_done_once(batch: Batch, stats: dict[str, Any]) -> None:
    assert state_counts(batch.ledger) == {"done": len(batch.ids)}
    assert stats["accepted_tasks"] == len(batch.ids)
    assert net_charges(stats) == dict.fromkeys(batch.ids, 1)


def test_callbacks_need_far_fewer_fetches_than_polling(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    fetches = {}
    for name, flags in (("polling", ()), ("callbacks", LISTEN)):
        sim = sim_thread(render_time_s=RENDER_S, callback=True)
        # few in flight: the first of them are polled in full (no callback has come yet)
        batch = batch_with(tmp_path / name, 40, concurrency=4)
        run_pixrun(batch, sim.base_url, *flags, check=True)
        stats = sim.stats()
        assert_all_done_once(batch, stats)
        fetches[name] = stats["calls"]["fetch"] / len(batch.ids)
    # 0.37-0.42 idle, up to 0.68 loaded: late callbacks let the sparse polls find renders
    # (which then widen, as designed). Ignoring callbacks would give about 1.0.
    assert fetches["callbacks"] < 0.75 * fetches["polling"], fetches


def test_the_stored_request_carries_no_callback(tmp_path: Path, sim_thread: SimThread) -> None:
    sent: list[str] = []

    async def hook(body: Any, headers: Any) -> None:
        sent.append(str(body.get("callback")))

    sim = sim_thread(callback=True, generate_hook=hook)
    batch = batch_with(tmp_path, 3)
    run_pixrun(batch, sim.base_url, *LISTEN, check=True)
    secret = query(batch.ledger, "SELECT value FROM meta WHERE key = 'callback_secret'")[0][0]
    assert len(sent) == 3 and all(f"/{secret}/" in url for url in sent)
    stored = query(batch.ledger, "SELECT request_json FROM shots")
    assert all("callback" not in json.loads(text) for (text,) in stored)
    assert run_summary(batch)["callbacks"]["valid"] == 3


@pytest.mark.parametrize(
    ("knobs", "counted"),
    [
        ({"callback_lost_share": 0.5}, ("valid",)),
        # late enough that polls find many renders first: their callbacks come late
        ({"callback_delay_s": 0.2}, ("valid", "late")),
        ({"callback_duplicate_share": 1.0}, ("duplicate", "late")),
        ({"callback_forged_share": 1.0}, ("wrong_secret", "unknown_token")),
    ],
    ids=["lost", "delayed", "duplicated", "forged"],
)
def test_faulty_callbacks_end_with_every_shot_done_and_paid_once(
    tmp_path: Path,
    sim_thread: SimThread,
    knobs: dict[str, float],
    counted: tuple[str, ...],
) -> None:
    sim = sim_thread(render_time_s=RENDER_S, callback=True, seed=7, **knobs)
    # the manifest's run.callback this time (the command line has none)
    batch = batch_with(tmp_path, 16, callback={"listen": "127.0.0.1:0"})
    run_pixrun(batch, sim.base_url, check=True)
    stats = sim.stats()
    assert_all_done_once(batch, stats)
    seen = run_summary(batch)["callbacks"]
    assert sum(seen.get(verdict, 0) for verdict in counted) > 0, seen
    if "callback_lost_share" in knobs:
        assert stats["faults"]["callback_lost"] > 0
        assert seen["valid"] < len(batch.ids)


def test_a_rerun_after_a_kill_collects_tasks_whose_callbacks_were_lost(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(render_time_s=(1.5, 2.0), callback=True)
    batch = batch_with(tmp_path, 6)
    running = start(run_args(batch, *LISTEN), env_for(sim.base_url), cwd=batch.dir, tag="first")
    wait_until(
        lambda: sim.stats(with_tasks=False)["accepted_tasks"] == 6,
        what="every task accepted",
    )
    # the kill must come after the ledger holds each task id, or the rerun rightly
    # parks the shots whose answer it never recorded
    wait_until(lambda: len(ledger_task_ids(batch.ledger)) == 6, what="every task id recorded")
    secret = query(batch.ledger, "SELECT value FROM meta WHERE key = 'callback_secret'")
    running.signal(signal.SIGKILL)
    running.wait()
    wait_until(
        lambda: sim.stats(with_tasks=False)["faults"].get("callback_unreachable", 0) == 6,
        what="the callbacks to the dead receiver",
    )
    run_pixrun(batch, sim.base_url, *LISTEN, check=True)
    assert_all_done_once(batch, sim.stats())
    # the secret survived the kill; nothing arrived for the tasks of the first run
    assert query(batch.ledger, "SELECT value FROM meta WHERE key = 'callback_secret'") == secret
    assert run_summary(batch)["callbacks"].get("valid", 0) == 0


# -- the command line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (("--callback-listen", "nowhere"), "is not HOST:PORT"),
        (("--callback-url", "https://example.com/cb"), "needs a listen address"),
        (("--callback-listen", "127.0.0.1:0", "--callback-url", "ftp://x"), "http(s) URL"),
    ],
)
def test_bad_callback_options_exit_2_before_anything_is_sent(
    tmp_path: Path, sim_thread: SimThread, flags: tuple[str, ...], phrase: str
) -> None:
    sim = sim_thread()
    batch = batch_with(tmp_path, 2)
    result = run_pixrun(batch, sim.base_url, *flags)
    assert result.returncode == 2, explain(result)
    assert phrase in flat(result.stdout + result.stderr)
    assert "Traceback" not in result.stderr
    assert generate_calls(sim) == 0


def test_sim_refuses_a_bad_callback_share(tmp_path: Path) -> None:
    result = pixrun(
        ["sim", "--callback", "--callback-lost-share", "2"], env_for(None), cwd=tmp_path
    )
    assert result.returncode == 2, explain(result)
    assert "--callback-lost-share" in result.stderr


# -- pixrun doctor -----------------------------------------------------------------------


def test_doctor_proves_the_receiver_reachable_from_this_machine_only(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    args = ["doctor", "--format", "json", "--callback-listen", "127.0.0.1:0"]
    result = pixrun(args, env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    receiver = checks["callback receiver"]
    assert receiver["result"] == "ok"
    assert "reached the receiver" in receiver["found"]
    assert "only the provider can prove" in receiver["fix"]
    assert sim.stats(with_tasks=False)["accepted_tasks"] == 0


def test_doctor_says_when_the_public_url_does_not_reach_the_receiver(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread()
    elsewhere = f"{sim.base_url}/not-the-receiver"  # a host that answers, but is not it
    args = ["doctor", "--format", "json", "--callback-listen", "127.0.0.1:0"]
    result = pixrun([*args, "--callback-url", elsewhere], env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["callback receiver"]["result"] == "fail"
    assert "HTTP 404" in checks["callback receiver"]["found"]
    assert "never reached the receiver" in checks["callback receiver"]["found"]
    assert "callback receiver" in result.stderr
    assert "Traceback" not in result.stderr


def test_several_manifests_share_one_fixed_callback_port(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    """One open firewall port serves every manifest of a run (each on its secret)."""
    sim = sim_thread(render_time_s=RENDER_S, callback=True)
    batches = [batch_with(tmp_path / name, 4, name=name) for name in ("a", "b", "c")]
    args = ["run", *(str(b.manifest) for b in batches), "--quiet", "--yes"]
    args += ["--backoff-base-s", "0.01", "--callback-listen", f"127.0.0.1:{free_port()}"]
    result = pixrun(args, env_for(sim.base_url), cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    assert "cannot listen" not in result.stderr
    stats = sim.stats()
    assert stats["accepted_tasks"] == 12
    assert sum(net_charges(stats).values()) == 12
    for batch in batches:
        assert state_counts(batch.ledger) == {"done": 4}
        assert run_summary(batch)["callbacks"]["valid"] > 0


def test_callbacks_that_never_arrive_are_said_once_and_polling_collects_everything(
    tmp_path: Path, sim_thread: SimThread
) -> None:
    sim = sim_thread(render_time_s=RENDER_S, callback=True, callback_lost_share=1.0)
    batch = batch_with(tmp_path, 40)
    run_pixrun(batch, sim.base_url, *LISTEN, check=True)
    assert_all_done_once(batch, sim.stats())
    said = query(batch.ledger, "SELECT message FROM events WHERE kind = 'callbacks_silent'")
    assert len(said) == 1 and "no callback has arrived" in said[0][0]


def test_the_manifest_callback_section_is_checked(tmp_path: Path) -> None:
    batch = batch_with(tmp_path, 1, callback={"url": "ftp://example.com/cb"})
    result = pixrun(["validate", str(batch.manifest)], env_for(None), cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    text = flat(result.stdout + result.stderr)
    assert "run.callback" in text and "listen" in text
