"""Hangs detected from a job's log alone: the log watch feeding the progress tracker (virtual
time), and the daemon restarting a real process on the local back-end that printed
Megatron-LM's lines and then stopped printing."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trainwarden.health.clock import SystemClock
from trainwarden.health.report import Heartbeat, encode, node_topic
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ActionKind, ConditionType, EventKind
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import operations as ops
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.context import CoreConfig
from trainwarden.supervisor.daemon.logwatch import LogWatch
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.model.lifecycle import AttemptPhase, RunPhase
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

T0 = 1_700_000_000.0
LINE = (
    " [2025-03-14 10:21:33] iteration {:8d}/{:8d} | consumed samples: {:12d} |"
    " elapsed time per iteration (ms): {:.1f} | learning rate: 1.000000E-04 |"
    " global batch size:     8 | lm loss: 2.301445E+00 |"
)


class LogOnly:
    """The scheduler's part the log watch uses: where a job's output goes."""

    name = "fake"

    def __init__(self, paths: dict[str, str | None]) -> None:
        self.paths = paths
        self.asked = 0

    async def job_log(self, job_id: str) -> str | None:
        self.asked += 1
        return self.paths.get(job_id)


def a_run(progress: str, job_id: str = "j1") -> RunInfo:
    run = RunInfo("r1", "fake", RunSpec(("x",), 2, "/ck", progress=progress), created_at=T0)
    run.phase, run.attempt, run.job_id = RunPhase.RUNNING, 1, job_id
    run.begin_attempt(AttemptPhase.RUNNING)
    run.nodes = ("n1", "n2")
    return run


async def test_a_hang_is_detected_from_the_log_alone(tmp_path: Path) -> None:
    log = tmp_path / "slurm-1.out"
    log.write_text("")
    tracker = ProgressTracker(k=2.0, floor_s=5.0, startup_timeout_s=600.0)
    sched = LogOnly({"j1": str(log)})
    watch = LogWatch(sched, tracker)  # type: ignore[arg-type]
    run = a_run("auto")
    tracker.start_attempt("r1", 1, T0)
    now = T0
    events = []
    for i in range(1, 6):  # logged every 10 iterations of 1 s
        with log.open("a") as f:
            f.write(LINE.format(10 * i, 1000, 80 * i, 1000.0) + "\n")
        now += 10.0
        _, ev = await watch.tick([run], now)
        events += ev
        assert tracker.tick(now) == []
    assert run.last_step == 50 and run.attempt_first_step == 10
    assert sched.asked == 1  # looked up once for the attempt
    [detected] = events
    assert detected.kind is EventKind.RUN_PROGRESS_SOURCE
    assert detected.data["detected"] == "megatron" and detected.data["path"] == str(log)
    p = tracker.get("r1")
    assert p is not None and p.median_step_s() == 10.0 and set(p.ranks) == {0}
    assert p.ranks[0].node == "n1"  # rank 0 on the attempt's first node
    assert watch.describe("r1") == f"megatron from {log}"
    # the log stops: hung after max(k x 10 s, 5 s) = 20 s without a new line
    await watch.tick([run], now + 19.0)
    assert tracker.tick(now + 19.0) == []
    await watch.tick([run], now + 21.0)
    [hung] = tracker.tick(now + 21.0)
    assert (hung.subject, hung.ctype, hung.status) == ("r1", ConditionType.RUN_HUNG, True)
    assert hung.event.data["last_step"] == 50


async def test_a_missing_log_or_none_named_is_said_once_never_raised(tmp_path: Path) -> None:
    tracker = ProgressTracker()
    gone = str(tmp_path / "nowhere.log")
    sched = LogOnly({"j1": gone, "j2": None})
    watch = LogWatch(sched, tracker, unknown_after_s=30.0)  # type: ignore[arg-type]
    run, other = a_run("megatron", "j1"), a_run("hf", "j2")
    other.name = "r2"
    said = []
    for t in range(0, 40, 5):
        _, ev = await watch.tick([run, other], T0 + t)
        said += ev
    assert [(e.ts - T0, e.run, e.data.get("problem", "")[:12]) for e in said] == [
        (30, "r1", "cannot read "),  # after the grace a pending job's file is given
        (30, "r2", "no log named"),
    ]
    assert "No such file" in said[0].message
    assert "cannot read" in (watch.describe("r1") or "")
    assert "waiting for the scheduler" in (watch.describe("r2") or "")
    Path(gone).write_text("")
    _, ev = await watch.tick([run], T0 + 45)
    assert [e.message for e in ev] == [f"{gone} readable again"]
    # a run reported by its ranks is never looked at
    reporter = a_run("reporter", "j1")
    reporter.name = "r3"
    assert await watch.tick([reporter], T0 + 50) == ([], [])
    assert watch.describe("r3") is None


# --- the daemon and a real process ------------------------------------------------------------


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    sched = LocalScheduler(["n1", "n2", "n3"], tmp_path / "logs", stop_grace_s=2.0)
    s = Supervisor(
        CoreConfig(will_confirm_s=0.5, settle_s=0.2, hang_floor_s=1.5, startup_timeout_s=30.0),
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


PRINTS_THEN_HANGS = f"""
import time
for i in range(1, 6):
    print({LINE!r}.format(i, 1000, 8 * i, 100.0), flush=True)
    time.sleep(0.1)
time.sleep(300)
"""


@pytest.mark.integration  # real processes on the local back-end
async def test_the_daemon_restarts_a_job_whose_log_stopped(sup: Supervisor, tmp_path: Path) -> None:
    script = tmp_path / "train.py"  # a file: the local back-end fills {placeholders} in argv
    script.write_text(PRINTS_THEN_HANGS)
    spec = RunSpec((sys.executable, str(script)), 1, str(tmp_path / "ck"), progress="auto")
    run = await ops.add_run(sup, "r1", "local", spec, "tester")
    assert run.attempt == 1
    path = await sup.scheduler.job_log(run.job_id or "")
    assert path is not None and path.endswith(f"{run.job_id}-n1.log")
    t0 = time.monotonic()
    while run.attempt == 1:
        for n in ("n1", "n2", "n3"):
            hb = Heartbeat(node=n, ts=time.time(), seq=int(time.monotonic() * 10), interval_s=1.0)
            await sup.handle(node_topic(n, "heartbeat"), encode(hb))
        await sup.tick()
        await asyncio.sleep(0.1)
        assert time.monotonic() - t0 < 25, "no restart from the log's silence"
    st = sup.store.store
    stalled = st.events(run="r1", kinds=[EventKind.RUN_PROGRESS_STALLED])
    assert stalled and stalled[0].data["last_step"] == 5
    source = st.events(run="r1", kinds=[EventKind.RUN_PROGRESS_SOURCE])
    assert source[0].data["detected"] == "megatron"
    restart = next(a for a in st.actions() if a.kind is ActionKind.RESTART_RUN)
    assert restart.rule == "run-hung"
    [row] = await DaemonService(sup).list_runs()
    assert row.progress == "auto"
