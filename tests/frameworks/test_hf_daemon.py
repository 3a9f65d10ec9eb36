"""The acceptance check: an unmodified Hugging Face Trainer job under the daemon's decision
code, on the local back-end, with ``progress="hf"``. It saves checkpoints, then hangs (as in a
stuck collective); the hang is seen from its log alone (the Trainer's tqdm bar stops); the run
is restarted, and the next attempt gets ``TRAINWARDEN_RESUME_FROM`` = its newest valid
``checkpoint-N`` and goes on from there to the end."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from framework_jobs import HF_JOB, START_S, first_trained_step, job_env, needs_hf

from trainwarden.health.clock import SystemClock
from trainwarden.health.report import Heartbeat, encode, node_topic
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ActionKind, EventKind
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.daemon import operations as ops
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.context import CoreConfig
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.model.cluster import RunSpec
from trainwarden.supervisor.model.lifecycle import RunPhase
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

pytestmark = [pytest.mark.integration, needs_hf]

NODES = ("n1", "n2")
STEPS, EVERY, HANG_AT = 20, 5, 12
HANG_FLOOR_S = 4.0  # no bar redraw for this long (steps take ~0.15 s) is a hang


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    sched = LocalScheduler(list(NODES), tmp_path / "logs", stop_grace_s=3.0)
    s = Supervisor(
        CoreConfig(
            will_confirm_s=0.5,
            settle_s=0.2,
            hang_floor_s=HANG_FLOOR_S,
            startup_timeout_s=START_S,  # importing transformers, under a loaded machine
        ),
        SystemClock(),
        AsyncStore(open_store(url)),
        sched,
        PolicyEngine(load_policy()),
        Metrics(),
    )
    await upkeep.sync_scheduler(s)
    yield s
    for t in list(s.tasks):
        t.cancel()
    for job in list(sched._jobs):
        await sched.cancel(job)
    s.store.close()


async def drive(sup: Supervisor, until: str, done: object, within: float) -> None:
    """Heartbeats from every node and the daemon's tick, as its loop does, until ``done()``."""
    t0 = time.monotonic()
    while not done():  # type: ignore[operator]
        for n in NODES:
            hb = Heartbeat(node=n, ts=time.time(), seq=int(time.monotonic() * 10), interval_s=1.0)
            await sup.handle(node_topic(n, "heartbeat"), encode(hb))
        await sup.tick()
        await asyncio.sleep(0.2)
        assert time.monotonic() - t0 < within, f"not {until} within {within:.0f} s"


async def test_a_hung_trainer_is_restarted_from_its_newest_checkpoint(
    sup: Supervisor, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = job_env(tmp_path, HANG_AT_STEP=str(HANG_AT), HANG_ONCE=str(tmp_path / "hung-once"))
    env.update(STEP_SLEEP="0.15")  # every step redraws the bar (tqdm's mininterval is 0.1 s)
    command = (sys.executable, str(HF_JOB), "--output-dir", str(out), "--steps", str(STEPS))
    spec = RunSpec(
        (*command, "--save-steps", str(EVERY)),
        1,
        str(out),
        env={k: v for k, v in env.items() if os.environ.get(k) != v},  # the job's own
        checkpoint_format="hf",
        progress="hf",
    )
    t0 = time.monotonic()
    run = await ops.add_run(sup, "hf1", "local", spec, "tester")
    first_log = await sup.scheduler.job_log(run.job_id or "")
    assert first_log is not None
    await drive(sup, "restarted", lambda: run.attempt == 2, 2 * START_S)
    hung_after = time.monotonic() - t0
    first = Path(first_log).read_text(errors="replace")
    assert f"hanging at step {HANG_AT}" in first and "resume_from_checkpoint=None" in first

    st = sup.store.store
    [stalled] = st.events(run="hf1", kinds=[EventKind.RUN_PROGRESS_STALLED])
    # the last bar drawn before the hang: the callback hangs before the bar's update of 12
    assert stalled.data["last_step"] == HANG_AT - 1
    [restart] = [a for a in st.actions() if a.kind is ActionKind.RESTART_RUN]
    assert restart.rule == "run-hung" and restart.status == "succeeded"
    attempts = st.attempts("hf1")
    assert [(a.attempt, a.resumed_from, a.resumed_from_step) for a in attempts] == [
        (1, None, None),
        (2, str(out / "checkpoint-10"), 10),
    ]
    started = st.events(run="hf1", kinds=[EventKind.RUN_STARTED])
    [submitted] = [e for e in started if e.data.get("attempt") == 2 and "job_id" in e.data]
    plan = submitted.data["checkpoint"]
    assert plan["format"] == "hf" and plan["refused"] == []
    assert plan["env"]["TRAINWARDEN_RESUME_FROM"] == str(out / "checkpoint-10")

    await drive(sup, "completed", lambda: run.phase is RunPhase.COMPLETED, 2 * START_S)
    second_log = await sup.scheduler.job_log(run.job_id or "")
    assert second_log is not None and second_log != first_log
    second = Path(second_log).read_text(errors="replace")
    # what the job read from $TRAINWARDEN_RESUME_FROM, and where its Trainer went on from
    assert f"resume_from_checkpoint={out / 'checkpoint-10'}" in second
    assert "starting at global_step 10" in second
    assert first_trained_step(second, "hf") == 11
    final = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert final["global_step"] == STEPS
    assert [e["step"] for e in final["log_history"] if "loss" in e] == list(range(1, STEPS + 1))
    assert run.last_step == STEPS
    print(f"hang restarted after {hung_after:.1f} s, done after {time.monotonic() - t0:.1f} s")
