"""Evidence tied to its source: unknown reporters, run rosters, checkpoints checked on disk,
and a restart that never stops a job it cannot replace (issue: authenticated evidence)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from trainwarden.health.clock import SystemClock
from trainwarden.health.probes.base import Severity
from trainwarden.health.report import (
    CheckpointReport,
    FaultModel,
    FaultReport,
    Heartbeat,
    NodeSteps,
    StepReport,
    StepSample,
    checkpoint_topic,
    encode,
    node_checkpoint_topic,
    node_steps_topic,
    node_topic,
    steps_topic,
)
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ActionKind, EventKind
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import operations as ops
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.context import CoreConfig
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.errors import NotFoundError
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.model.lifecycle import NodePhase, RunPhase
from trainwarden.supervisor.scheduler.base import JobState
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.records import RunRecord
from trainwarden.supervisor.store.store import open_store

NODES = ["n1", "n2", "n3", "n4"]


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    sched = LocalScheduler(NODES, tmp_path / "logs", stop_grace_s=3.0)
    s = Supervisor(
        CoreConfig(will_confirm_s=0.5, settle_s=0.2),
        SystemClock(),
        AsyncStore(open_store(url)),
        sched,
        PolicyEngine(load_policy()),
        Metrics(),
    )
    await upkeep.sync_scheduler(s)  # the roster of nodes, as the daemon reads it at start
    yield s
    for t in list(s.tasks):
        t.cancel()
    for job in list(sched._jobs):
        await sched.cancel(job)
    s.store.close()


async def until(pred: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def beat(sup: Supervisor, *nodes: str, seq: int = 1) -> None:
    for n in nodes:
        hb = Heartbeat(node=n, ts=time.time(), seq=seq, interval_s=1.0)
        await sup.handle(node_topic(n, "heartbeat"), encode(hb))


def rejected(sup: Supervisor, reason: str) -> float:
    value = sup.metrics.registry.get_sample_value(
        "trainwarden_rejected_messages_total", {"reason": reason}
    )
    return value or 0.0


def xid(node: str) -> FaultReport:
    fault = FaultModel(
        kind="xid", severity=Severity.FATAL, detail="GPU has fallen off the bus", gpu=0, code=79
    )
    return FaultReport(node=node, ts=time.time(), faults=[fault])


def placed_run(sup: Supervisor, tmp_path: Path, nodes: tuple[str, ...]) -> RunInfo:
    """A run whose attempt 1 runs on ``nodes`` with two ranks a node (world size 2 x nodes)."""
    spec = RunSpec(
        command=("true",), nodes=len(nodes), checkpoint_dir=str(tmp_path / "ck"), ranks_per_node=2
    )
    run = RunInfo("r1", "local", spec, time.time(), attempt=1, job_id="j1")
    sup.store.store.add_run(
        RunRecord(name="r1", scheduler="local", spec=spec.to_dict(), created_at=run.created_at)
    )
    sup.state.runs["r1"] = run
    sup.state.place(run, nodes)
    sup.progress.start_attempt("r1", 1, time.time())
    return run


def steps(rank: int, node: str, step: int, attempt: int = 1) -> StepReport:
    sample = StepSample(step=step, step_s=1.0, ts=time.time())
    return StepReport(run="r1", attempt=attempt, rank=rank, node=node, samples=[sample])


def save_dcp(path: Path) -> None:
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"w": torch.zeros(4)}, checkpoint_id=str(path))


# --- unknown reporters ------------------------------------------------------------------------


async def test_heartbeats_from_invented_names_change_no_node_and_no_budget(
    sup: Supervisor, tmp_path: Path
) -> None:
    await beat(sup, *NODES)
    invented = [f"ghost{i}" for i in range(40)]
    for seq in (1, 2):
        await beat(sup, *invented, seq=seq)
    await sup.store.flush()
    assert set(sup.state.nodes) == set(NODES)
    assert {n.name for n in sup.store.store.nodes()} <= set(NODES)
    assert rejected(sup, "unknown-node") == 80
    shown = await DaemonService(sup).list_unknown_reporters()
    assert [u.name for u in shown] == sorted(invented)
    assert {u.messages for u in shown} == {2}
    assert shown[0].last_topic == node_topic(shown[0].name, "heartbeat")
    # logged and recorded once per name, not once per message
    notes = sup.store.store.events(kinds=[EventKind.REJECTED_MESSAGE])
    assert len([e for e in notes if e.data.get("unknown_reporter")]) == 20
    # the invented names fall silent: nothing is dead, nothing drained, no budget used
    await asyncio.sleep(1.2 * 3 + 1.5)
    await sup.tick()
    await until(lambda: not sup.tasks)
    assert not sup.store.store.actions()
    # a real fault on a real node still drains at once, and says who said so
    await sup.handle(node_topic("n3", "fault"), encode(xid("n3")))
    await until(lambda: sup.state.nodes["n3"].phase is NodePhase.DRAINED)
    fault = sup.store.store.events(node="n3", kinds=[EventKind.FAULT])[0]
    assert fault.data["source"] == node_topic("n3", "fault")
    drain = next(a for a in sup.store.store.actions() if a.kind is ActionKind.DRAIN)
    assert drain.status == "succeeded" and drain.evidence == (fault.id,)


async def test_an_operator_cannot_drain_a_name_the_scheduler_does_not_list(
    sup: Supervisor,
) -> None:
    await beat(sup, "ghost")
    with pytest.raises(NotFoundError, match="unknown node 'ghost'"):
        await DaemonService(sup).drain("ghost", "test", "root")
    assert not sup.store.store.actions()


async def test_a_stored_node_the_scheduler_dropped_is_no_longer_a_reporter(
    sup: Supervisor, tmp_path: Path
) -> None:
    sup.state.node("retired")  # the store kept it from before
    sup.state.roster = None
    await upkeep.sync_scheduler(sup)
    assert not sup.state.knows("retired")
    await beat(sup, "retired")
    assert sup.state.nodes["retired"].last_heartbeat_at is None
    assert rejected(sup, "unknown-node") == 1


# --- run rosters ------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [4, 5, 999, 100_000])
async def test_steps_from_ranks_outside_the_world_size_change_no_run(
    sup: Supervisor, tmp_path: Path, rank: int
) -> None:
    run = placed_run(sup, tmp_path, ("n1", "n2"))
    await sup.handle(steps_topic("r1", 0), encode(steps(0, "n1", 10)))
    assert run.last_step == 10
    await sup.handle(steps_topic("r1", rank), encode(steps(rank, "n1", 500)))
    assert run.last_step == 10
    assert rejected(sup, "roster") == 1
    note = sup.store.store.events(kinds=[EventKind.REJECTED_MESSAGE])[-1]
    assert f"rank {rank} is outside its world size 4 (2 nodes x 2 ranks)" in note.message


async def test_steps_from_a_node_outside_the_allocation_change_no_run(
    sup: Supervisor, tmp_path: Path
) -> None:
    run = placed_run(sup, tmp_path, ("n1", "n2"))
    await sup.handle(steps_topic("r1", 1), encode(steps(1, "n3", 99)))
    relayed = NodeSteps(node="n4", ts=time.time(), reports=[steps(2, "n4", 98)])
    await sup.handle(node_steps_topic("n4"), encode(relayed))
    assert run.last_step is None
    assert rejected(sup, "roster") == 2
    # an older attempt's late report is not an error, and changes nothing either
    await sup.handle(steps_topic("r1", 0), encode(steps(0, "n1", 97, attempt=0)))
    assert run.last_step is None and rejected(sup, "roster") == 2
    # the allocation's own node, relayed under its identity: counts
    ok = NodeSteps(node="n2", ts=time.time(), reports=[steps(3, "n2", 12)])
    await sup.handle(node_steps_topic("n2"), encode(ok))
    assert run.last_step == 12


async def test_forged_steps_cannot_stall_a_runs_progress(sup: Supervisor, tmp_path: Path) -> None:
    """Forged high steps used to move a run's progress ahead, so its real steps looked
    like no progress and the hang detector restarted it."""
    run = placed_run(sup, tmp_path, ("n1", "n2"))
    await sup.handle(steps_topic("r1", 0), encode(steps(0, "n1", 10)))
    for rank in (5, 999, 100_000):
        await sup.handle(steps_topic("r1", rank), encode(steps(rank, "n1", 1_000_000)))
    await sup.handle(steps_topic("r1", 1), encode(steps(1, "n1", 11)))
    assert run.last_step == 11
    progress = sup.progress._runs["r1"]
    assert progress.last_step == 11 and set(progress.ranks) == {0, 1}


# --- checkpoints ------------------------------------------------------------------------------


def ckpt(run: RunInfo, path: Path | str, step: int, node: str = "n1") -> CheckpointReport:
    return CheckpointReport(
        run="r1", attempt=run.attempt, rank=0, node=node, step=step, path=str(path), ts=time.time()
    )


async def test_forged_checkpoint_reports_release_nothing(sup: Supervisor, tmp_path: Path) -> None:
    run = placed_run(sup, tmp_path, ("n1", "n2"))
    root = tmp_path / "ck"
    root.mkdir()
    outside = tmp_path / "elsewhere" / "step-00000030"
    save_dcp(outside)  # complete, but not the run's
    save_dcp(root / "step-00000040")
    (root / "step-00000050").mkdir()  # no metadata: a save that never finished
    forged = [
        ckpt(run, root / "step-00000010", 10),  # nothing on disk
        ckpt(run, outside, 30),
        ckpt(run, root / ".." / "elsewhere" / "step-00000030", 30),
        ckpt(run, root / "step-00000040", 41),  # the directory holds step 40
        ckpt(run, root / "step-00000050", 50),
    ]
    waiting = asyncio.ensure_future(sup.wait_for_checkpoint("r1", 3.0))
    await asyncio.sleep(0)
    for report in forged:
        await sup.handle(node_checkpoint_topic("n1"), encode(report))
    await until(lambda: not sup.tasks)
    assert run.last_checkpoint_step is None
    assert rejected(sup, "checkpoint") == len(forged)
    assert not sup.store.store.checkpoints("r1")
    # the real one counts once, however many ranks report it, and releases the waiter
    for node in ("n1", "n2"):
        await sup.handle(
            node_checkpoint_topic(node), encode(ckpt(run, root / "step-00000040", 40, node))
        )
    assert await waiting
    await until(lambda: not sup.tasks)
    assert run.last_checkpoint_step == 40
    await sup.store.flush()
    assert [c.step for c in sup.store.store.checkpoints("r1")] == [40]
    saved = sup.store.store.events(kinds=[EventKind.CHECKPOINT_SAVED])
    assert len(saved) == 1 and saved[0].data["source"] == node_checkpoint_topic("n1")


async def test_a_checkpoint_from_a_node_outside_the_allocation_does_not_count(
    sup: Supervisor, tmp_path: Path
) -> None:
    run = placed_run(sup, tmp_path, ("n1", "n2"))
    save_dcp(tmp_path / "ck" / "step-00000040")
    report = ckpt(run, tmp_path / "ck" / "step-00000040", 40, node="n3")
    await sup.handle(node_checkpoint_topic("n3"), encode(report))
    await sup.handle(checkpoint_topic("r1"), encode(report))  # the legacy run topic too
    await until(lambda: not sup.tasks)
    assert run.last_checkpoint_step is None and rejected(sup, "roster") == 2


def test_a_relayed_checkpoint_must_name_its_topics_node() -> None:
    from trainwarden.health.errors import ReportError
    from trainwarden.health.report import parse_message

    report = CheckpointReport(
        run="r1", attempt=1, rank=0, node="n1", step=4, path="/ck/step-00000004", ts=1.0
    )
    assert parse_message(node_checkpoint_topic("n1"), encode(report)) == report
    with pytest.raises(ReportError, match="claims node 'n1'"):
        parse_message(node_checkpoint_topic("n2"), encode(report))
    with pytest.raises(ReportError, match="does not belong"):
        parse_message(node_topic("n1", "checkpoint") + "/x", encode(report))
    raw = json.loads(encode(report))
    assert raw["node"] == "n1"


# --- a restart that cannot be placed keeps the running attempt --------------------------------


@pytest.mark.integration  # starts the run: real processes on the local back-end
async def test_a_restart_that_cannot_be_placed_does_not_cancel_the_job(
    sup: Supervisor, tmp_path: Path
) -> None:
    await beat(sup, *NODES)
    spec = RunSpec(
        command=(sys.executable, "-c", "import time; time.sleep(120)"),
        nodes=4,
        checkpoint_dir=str(tmp_path / "ck"),
    )
    run = await ops.add_run(sup, "r1", "local", spec, "tester")
    assert run.attempt == 1 and len(run.nodes) == 4
    job = run.job_id
    assert job is not None
    await sup.handle(node_topic("n2", "fault"), encode(xid("n2")))
    await until(lambda: sup.state.nodes["n2"].phase is NodePhase.DRAINED)
    await until(
        lambda: (
            any(a.kind is ActionKind.RESTART_RUN for a in sup.store.store.actions())
            and not sup.tasks
        )
    )
    restart = next(a for a in sup.store.store.actions() if a.kind is ActionKind.RESTART_RUN)
    assert restart.status == "failed"
    assert "only 3 usable node(s) for the next attempt, which needs 4" in (restart.result or "")
    info = await sup.scheduler.job(job)
    assert info is not None and info.state is JobState.RUNNING
    assert run.attempt == 1 and run.job_id == job and run.phase is RunPhase.RUNNING


async def test_every_action_carried_out_leaves_one_audit_line_in_the_log(
    sup: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="trainwarden.supervisor.daemon.executor")
    await beat(sup, *NODES)
    await sup.handle(node_topic("n3", "fault"), encode(xid("n3")))
    await until(lambda: sup.state.nodes["n3"].phase is NodePhase.DRAINED and not sup.tasks)
    await DaemonService(sup).undrain("n4", "", "alice")  # a manual action: the same line
    await until(lambda: not sup.tasks)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("action ")]
    drains = [line for line in lines if " drain n3 by rule gpu-fatal (allow)" in line]
    assert len(drains) == 1 and ": succeeded: " in drains[0], lines
    assert "reason: " in drains[0] and "GpuFatal" in drains[0], lines
    assert any(" undrain n4 by operator alice (allow)" in line for line in lines), lines


async def test_a_flood_of_checkpoint_reports_is_refused_not_queued(
    sup: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node may report any number of checkpoints for its own run; at most MAX_VETTING are
    looked at on disk at once, the rest are refused and counted, and the next one is handled."""
    from trainwarden.supervisor.daemon import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "MAX_VETTING", 3)
    run = placed_run(sup, tmp_path, ("n1", "n2"))
    release = asyncio.Event()
    original = sup.vetter.vet

    async def slow_vet(*args: object) -> object:  # a file system that hangs
        await release.wait()
        return await original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sup.vetter, "vet", slow_vet)
    for step in range(10):
        report = ckpt(run, tmp_path / "ck" / f"step-{step:08d}", step)
        await sup.handle(node_checkpoint_topic("n1"), encode(report))
    await asyncio.sleep(0)
    assert rejected(sup, "checkpoint") == 7 and sup._vetting == 3
    release.set()
    await until(lambda: not sup.tasks)
    assert sup._vetting == 0 and rejected(sup, "checkpoint") == 10  # the 3 had nothing on disk
    save_dcp(tmp_path / "ck" / "step-00000040")
    await sup.handle(
        node_checkpoint_topic("n1"), encode(ckpt(run, tmp_path / "ck" / "step-00000040", 40))
    )
    await until(lambda: not sup.tasks)
    assert run.last_checkpoint_step == 40
