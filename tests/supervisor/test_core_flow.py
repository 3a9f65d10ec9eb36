"""The supervisor's whole decision path on real parts: SQLite store, the shipped policy,
the local scheduler with real processes -- messages fed as they arrive from the broker."""

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
    FaultModel,
    FaultReport,
    Heartbeat,
    NodeStatus,
    encode,
    node_topic,
)
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ActionKind, ConditionType, EventKind
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.api.explain import explain
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import operations as ops
from trainwarden.supervisor.daemon import upkeep as periodic
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.supervisor import CoreConfig, Supervisor
from trainwarden.supervisor.model.cluster import RunSpec
from trainwarden.supervisor.model.lifecycle import NodePhase
from trainwarden.supervisor.scheduler.base import NodeState
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

NODES = ["n1", "n2", "n3"]


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    store = AsyncStore(open_store(url))
    sched = LocalScheduler(NODES, tmp_path / "logs", stop_grace_s=3.0)
    s = Supervisor(
        CoreConfig(will_confirm_s=0.5, settle_s=0.5),
        SystemClock(),
        store,
        sched,
        PolicyEngine(load_policy()),
        Metrics(),
    )
    await periodic.sync_scheduler(s)  # the roster of nodes, as the daemon reads it at start
    yield s
    for t in list(s.tasks):
        t.cancel()
    for job in list(sched._jobs):
        await sched.cancel(job)
    store.close()


def save_dcp(path: Path) -> None:
    """A small real torch.distributed.checkpoint save at ``path``."""
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"w": torch.zeros(4)}, checkpoint_id=str(path))


async def until(pred: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def beat(sup: Supervisor, *nodes: str) -> None:
    for n in nodes:
        await sup.handle(
            node_topic(n, "heartbeat"),
            encode(Heartbeat(node=n, ts=time.time(), seq=1, interval_s=1.0)),
        )


async def start_run(sup: Supervisor, tmp_path: Path) -> None:
    spec = RunSpec(
        command=(sys.executable, "-c", "import time; time.sleep(120)"),
        nodes=2,
        checkpoint_dir=str(tmp_path / "ck"),
    )
    run = await ops.add_run(sup, "r1", "local", spec, "tester")
    assert run.attempt == 1 and run.nodes == ("n1", "n2")


@pytest.mark.integration  # starts the run: real processes on the local back-end
async def test_fatal_xid_drains_the_node_and_restarts_the_run_elsewhere(
    sup: Supervisor, tmp_path: Path
) -> None:
    await beat(sup, *NODES)
    await start_run(sup, tmp_path)
    xid = FaultReport(
        node="n2",
        ts=time.time(),
        faults=[
            FaultModel(
                kind="xid",
                severity=Severity.FATAL,
                detail="GPU has fallen off the bus",
                gpu=1,
                code=79,
            )
        ],
    )
    await sup.handle(node_topic("n2", "fault"), encode(xid))
    run = sup.state.runs["r1"]
    await until(lambda: run.attempt == 2)
    await until(lambda: not sup.tasks)
    assert run.nodes == ("n1", "n3") and "n2" in run.excluded
    sched_nodes = {n.name: n for n in await sup.scheduler.nodes()}
    assert sched_nodes["n2"].state is NodeState.DRAINED
    assert sched_nodes["n2"].reason.startswith("trainwarden: GpuFatal")
    assert sup.state.nodes["n2"].phase is NodePhase.DRAINED
    assert sup.book.is_true("n2", ConditionType.GPU_FATAL)

    st = sup.store.store
    actions = {a.kind: a for a in st.actions()}
    assert actions[ActionKind.DRAIN].status == "succeeded"
    assert actions[ActionKind.RESTART_RUN].status == "succeeded"
    assert actions[ActionKind.DRAIN].rule == "gpu-fatal"
    fault_events = st.events(node="n2", kinds=[EventKind.FAULT])
    assert actions[ActionKind.DRAIN].evidence == (fault_events[0].id,)
    attempts = st.attempts("r1")
    assert [a.attempt for a in attempts] == [1, 2]
    assert attempts[0].state == "stopped" and "n2" in attempts[1].excluded
    why = await explain(sup, actions[ActionKind.DRAIN].id, "action")
    text = "\n".join(why.lines)
    assert "rule gpu-fatal" in text and "XID 79" in text and "guard" in text


@pytest.mark.integration  # starts the run: real processes on the local back-end
async def test_last_will_then_silence_marks_node_dead_within_seconds(
    sup: Supervisor, tmp_path: Path
) -> None:
    await beat(sup, *NODES)
    await start_run(sup, tmp_path)
    t0 = time.time()
    will = NodeStatus(node="n1", state="offline", reason="connection lost")
    await sup.handle(node_topic("n1", "status"), encode(will))
    assert sup.state.nodes["n1"].phase is NodePhase.SUSPECT
    while not sup.book.is_true("n1", ConditionType.NODE_DEAD):
        await beat(sup, "n2", "n3")
        await sup.tick()
        await asyncio.sleep(0.1)
        assert time.time() - t0 < 5
    run = sup.state.runs["r1"]
    await until(lambda: run.attempt == 2)
    assert "n1" not in run.nodes


async def test_operator_drain_is_recorded_with_who_and_why(sup: Supervisor, tmp_path: Path) -> None:
    await beat(sup, *NODES)
    svc = DaemonService(sup)
    row = await svc.drain("n3", "bad fan", "alice")
    assert row.kind is ActionKind.DRAIN and row.who == "alice" and row.status == "succeeded"
    nodes = {n.name: n for n in await svc.list_nodes()}
    assert nodes["n3"].state == "drained" and nodes["n3"].drained_by == "operator"
    assert "bad fan" in (nodes["n3"].drain_reason or "")
    back = await svc.undrain("n3", "fan replaced", "alice")
    assert back.kind is ActionKind.UNDRAIN
    assert {n.name: n.state for n in await svc.list_nodes()}["n3"] == "healthy"
    from trainwarden.supervisor.errors import NotFoundError

    with pytest.raises(NotFoundError, match="unknown node 'n9'"):
        await svc.drain("n9", "x", "alice")


@pytest.mark.parametrize(
    ("topic", "payload", "why"),
    [
        ("trainwarden/v1/node/n1/heartbeat", b"{not json", "not JSON"),
        ("trainwarden/v1/node/n1/heartbeat", b"x" * 300_000, "over the"),
        (
            "trainwarden/v1/node/n1/heartbeat",
            json.dumps({"v": 9, "kind": "heartbeat"}).encode(),
            "schema version 9",
        ),
        (
            "trainwarden/v1/node/n1/heartbeat",
            json.dumps(
                {"v": 1, "kind": "heartbeat", "node": "n2", "ts": 1, "seq": 1, "interval_s": 1}
            ).encode(),
            "claims node 'n2'",
        ),
        (
            "trainwarden/v1/node/n1/fault",
            json.dumps({"v": 1, "kind": "fault", "node": "n1", "ts": 1, "faults": []}).encode(),
            "faults",
        ),
    ],
)
async def test_bad_messages_are_rejected_recorded_and_harmless(
    sup: Supervisor, topic: str, payload: bytes, why: str
) -> None:
    await beat(sup, "n1")
    before = sup.store.store.nodes()
    await sup.handle(topic, payload)
    assert sup.rejected == 1
    rejected = sup.store.store.events(kinds=[EventKind.REJECTED_MESSAGE])
    assert why in rejected[0].message
    await sup.store.flush()
    assert {n.name for n in sup.store.store.nodes()} >= {n.name for n in before}
    n2 = sup.state.nodes["n2"]  # the scheduler's node, never heard from
    assert (n2.last_heartbeat_at, n2.last_report_at) == (None, None)


@pytest.mark.integration  # starts the run: real processes on the local back-end
async def test_restart_of_the_daemon_loses_nothing(sup: Supervisor, tmp_path: Path) -> None:
    await beat(sup, *NODES)
    await start_run(sup, tmp_path)
    xid = FaultReport(
        node="n1",
        ts=time.time(),
        faults=[FaultModel(kind="xid", severity=Severity.FATAL, detail="", gpu=0, code=48)],
    )
    await sup.handle(node_topic("n1", "fault"), encode(xid))
    await until(lambda: sup.state.runs["r1"].attempt == 2)
    await until(lambda: not sup.tasks)
    await sup.store.flush()
    again = Supervisor(
        CoreConfig(),
        SystemClock(),
        sup.store,
        sup.scheduler,
        PolicyEngine(load_policy()),
        Metrics(),
    )
    await ops.load(again)
    n1 = again.state.nodes["n1"]
    assert n1.phase is NodePhase.DRAINED and n1.drained_by == "trainwarden"
    assert again.book.is_true("n1", ConditionType.GPU_FATAL)
    run = again.state.runs["r1"]
    assert (run.attempt, run.restarts, run.job_id) == (2, 1, sup.state.runs["r1"].job_id)
    assert run.nodes == sup.state.runs["r1"].nodes and "n1" in run.excluded


async def test_drains_made_outside_trainwarden_are_reflected_and_kept(sup: Supervisor) -> None:
    await beat(sup, *NODES)
    await periodic.sync_scheduler(sup)
    await sup.scheduler.drain("n3", "admin: bad DIMM")
    await periodic.sync_scheduler(sup)
    n3 = sup.state.nodes["n3"]
    assert n3.phase is NodePhase.DRAINED and n3.drained_by == "external"
    assert "outside trainwarden" in sup.store.store.events(node="n3")[0].message
    # a rule may never return a node someone else drained
    from trainwarden.policies.model import ActionRequest, Actor, Decision, Verdict

    undrain = Decision(
        ActionRequest(ActionKind.UNDRAIN, Actor.RULE, "vetted", node="n3"), Verdict.ALLOW
    )
    _id, ok, result = await sup.carry_out(undrain)
    assert not ok and "only an operator" in result
    assert {n.name: n.state for n in await sup.scheduler.nodes()}["n3"] is NodeState.DRAINED


@pytest.mark.integration  # waits out the will and the vet period on the wall clock (~1 s)
async def test_a_node_that_comes_back_is_vetted_then_returned(tmp_path: Path) -> None:
    from importlib import resources

    from trainwarden.health.probes.base import Health
    from trainwarden.health.report import HealthReport

    text = resources.files("trainwarden.policies").joinpath("data/default.yaml").read_text()
    (tmp_path / "p.yaml").write_text(text.replace("cooldown: 10m", "cooldown: 0s"))
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    store = AsyncStore(open_store(url))
    s = Supervisor(
        CoreConfig(will_confirm_s=0.2, vet_period_s=0.5),
        SystemClock(),
        store,
        LocalScheduler(NODES, tmp_path / "logs"),
        PolicyEngine(load_policy(tmp_path / "p.yaml")),
        Metrics(),
    )
    await periodic.sync_scheduler(s)
    try:
        await beat(s, *NODES)
        await s.handle(
            node_topic("n3", "status"),
            encode(NodeStatus(node="n3", state="offline", reason="connection lost")),
        )
        await asyncio.sleep(0.3)
        await s.tick()
        await until(lambda: s.state.nodes["n3"].phase is NodePhase.DRAINED)
        await until(lambda: not s.tasks)
        await beat(s, "n3")  # the agent is back: NodeDead clears -> vet
        await until(lambda: s.state.nodes["n3"].phase is NodePhase.VETTING)
        report = HealthReport(node="n3", ts=time.time(), seq=1, overall=Health.HEALTHY, probes=[])
        await s.handle(node_topic("n3", "health"), encode(report))
        await asyncio.sleep(0.6)
        await beat(s, *NODES)
        await s.tick()
        await until(lambda: s.state.nodes["n3"].phase is NodePhase.HEALTHY)
        kinds = [a.kind for a in store.store.actions(node="n3")]
        assert kinds == [ActionKind.UNDRAIN, ActionKind.VET, ActionKind.DRAIN]
        assert {n.name: n.state for n in await s.scheduler.nodes()}["n3"] is NodeState.IDLE
    finally:
        for t in list(s.tasks):
            t.cancel()
        store.close()


async def _supervisor_in(tmp_path: Path, mode: str) -> Supervisor:
    from trainwarden.policies.engine import Mode

    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    s = Supervisor(
        CoreConfig(),
        SystemClock(),
        AsyncStore(open_store(url)),
        LocalScheduler(NODES, tmp_path / "logs", stop_grace_s=3.0),
        PolicyEngine(load_policy(), Mode(mode)),
        Metrics(),
    )
    await periodic.sync_scheduler(s)
    return s


async def _xid(s: Supervisor, node: str) -> None:
    await s.handle(
        node_topic(node, "fault"),
        encode(
            FaultReport(
                node=node,
                ts=time.time(),
                faults=[FaultModel(kind="xid", severity=Severity.FATAL, detail="", gpu=0, code=79)],
            )
        ),
    )


@pytest.mark.integration  # starts the run: real processes on the local back-end
async def test_dry_run_acts_on_nothing_and_records_everything(tmp_path: Path) -> None:
    s = await _supervisor_in(tmp_path, "dry-run")
    try:
        await beat(s, *NODES)
        await start_run(s, tmp_path)
        await _xid(s, "n2")
        await until(lambda: len(s.store.store.actions()) >= 2)
        await until(lambda: not s.tasks)
        actions = s.store.store.actions()
        assert {a.kind for a in actions} == {ActionKind.DRAIN, ActionKind.RESTART_RUN}
        assert {(a.verdict.value, a.status.value) for a in actions} == {("dry-run", "skipped")}
        assert {n.state for n in await s.scheduler.nodes()} == {NodeState.ALLOCATED, NodeState.IDLE}
        assert s.state.runs["r1"].attempt == 1 and s.state.nodes["n2"].phase is NodePhase.FAILED
    finally:
        for job in list(s.scheduler._jobs):  # type: ignore[attr-defined]
            await s.scheduler.cancel(job)
        s.store.close()


async def test_approve_mode_queues_until_an_operator_approves(tmp_path: Path) -> None:
    s = await _supervisor_in(tmp_path, "approve")
    svc = DaemonService(s)
    try:
        await beat(s, *NODES)
        await _xid(s, "n3")
        await until(lambda: len(s.store.store.actions()) >= 1)
        await until(lambda: not s.tasks)
        [queued] = s.store.store.actions()
        assert (queued.kind, queued.verdict.value, queued.status.value) == (
            ActionKind.DRAIN,
            "queued",
            "pending",
        )
        assert {n.name: n.state for n in await s.scheduler.nodes()}["n3"] is NodeState.IDLE
        row = await svc.approve(queued.id, "bob")
        assert row.status == "succeeded" and "approved by bob" in (row.result or "")
        assert {n.name: n.state for n in await s.scheduler.nodes()}["n3"] is NodeState.DRAINED
        from trainwarden.supervisor.errors import SupervisorError

        with pytest.raises(SupervisorError, match="not waiting for approval"):
            await svc.reject(queued.id, "too late", "bob")
    finally:
        s.store.close()


async def test_policy_reload_keeps_the_last_good_policy(tmp_path: Path) -> None:
    from trainwarden.supervisor.daemon.process import Daemon, DaemonConfig

    good = tmp_path / "good.yaml"
    from importlib import resources

    good.write_text(
        resources.files("trainwarden.policies").joinpath("data/default.yaml").read_text()
    )
    d = Daemon(DaemonConfig(db_url="sqlite://", policy_file=str(good)))
    s = await _supervisor_in(tmp_path, "enforce")
    d.sup = s
    before = s.policy.policy
    good.write_text("version: 1\nrules:\n  - name: x\n    when: {condition: Nope}\n")
    d._reload_policy()
    assert s.policy.policy is before  # the broken file was refused
    good.write_text(
        resources.files("trainwarden.policies").joinpath("data/default.yaml").read_text()
    )
    d._reload_policy()
    assert s.policy.policy is not before
    s.store.close()


@pytest.mark.integration  # starts the run: real processes on the local back-end
async def test_a_tagged_job_is_adopted_and_an_unregistered_tag_reported(
    sup: Supervisor, tmp_path: Path
) -> None:
    from trainwarden.supervisor.scheduler.base import JobSpec

    await beat(sup, *NODES)
    # someone submitted the job by hand, tagged trainwarden:r1 (and one for no known run)
    sleeper = (sys.executable, "-c", "import time; time.sleep(120)")
    job = await sup.scheduler.submit(JobSpec(run="r1", attempt=0, nodes=2, command=sleeper))
    stray = await sup.scheduler.submit(JobSpec(run="ghost", attempt=0, nodes=1, command=sleeper))
    spec = RunSpec(command=sleeper, nodes=2, checkpoint_dir=str(tmp_path / "ck"))
    run = await ops.add_run(sup, "r1", "local", spec, "tester", submit=False)
    assert run.job_id is None
    await periodic.adopt_tagged_jobs(sup)
    assert (run.job_id, run.attempt, run.nodes) == (job, 0, ("n1", "n2"))
    assert sup.state.nodes["n1"].run == "r1"
    messages = [e.message for e in sup.store.store.events(kinds=[EventKind.RUN_STARTED])]
    assert any(f"adopted job {job}" in m for m in messages)
    assert any(f"job {stray} is tagged trainwarden:ghost" in m for m in messages)
    await periodic.adopt_tagged_jobs(sup)  # reported once, adopted once
    again = [e.message for e in sup.store.store.events(kinds=[EventKind.RUN_STARTED])]
    assert len(again) == len(messages)


@pytest.mark.integration  # starts the run: real processes on the local back-end
async def test_operator_drain_checkpoints_and_moves_the_run(
    sup: Supervisor, tmp_path: Path
) -> None:
    from trainwarden.health.report import CheckpointReport, ControlMessage, checkpoint_topic

    asked: list[str] = []

    async def publish(topic: str, payload: bytes) -> None:
        # the ranks answer a checkpoint-now by saving and reporting it, as the reporter does
        control = ControlMessage.model_validate_json(payload)
        asked.append(control.command)
        run = sup.state.runs["r1"]
        path = tmp_path / "ck" / "step-00000017"
        save_dcp(path)  # a real checkpoint: the daemon counts it once it is found on disk
        report = CheckpointReport(
            run="r1",
            attempt=run.attempt,
            rank=0,
            node=run.nodes[0],
            step=17,
            path=str(path),
            ts=time.time(),
        )
        asyncio.get_running_loop().call_later(
            0.2, lambda: asyncio.ensure_future(sup.handle(checkpoint_topic("r1"), encode(report)))
        )

    sup.publish = publish
    await beat(sup, *NODES)
    await start_run(sup, tmp_path)
    svc = DaemonService(sup)
    await svc.drain("n2", "replace PSU", "carol")
    run = sup.state.runs["r1"]
    await until(lambda: run.attempt == 2)
    await until(lambda: not sup.tasks)
    assert asked == ["checkpoint-now"]
    assert "n2" not in run.nodes and "n2" in run.excluded
    rules = {(a.kind, a.rule, a.status.value) for a in sup.store.store.actions(run="r1")}
    assert (ActionKind.CHECKPOINT_NOW, "operator-drain", "succeeded") in rules
    assert (ActionKind.RESTART_RUN, "operator-drain", "succeeded") in rules


async def test_a_transient_scheduler_failure_is_retried_until_the_drain_lands(
    tmp_path: Path,
) -> None:
    from trainwarden.supervisor.errors import SchedulerError

    class FlakyController(LocalScheduler):
        """The local back-end whose controller is away for the first two drain calls
        (as slurmctld is while it restarts)."""

        def __init__(self) -> None:
            super().__init__(NODES, tmp_path / "logs")
            self.refusals = 2

        async def drain(self, node: str, reason: str) -> None:
            if self.refusals:
                self.refusals -= 1
                raise SchedulerError("Unable to contact slurm controller", retryable=True)
            await super().drain(node, reason)

    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    store = AsyncStore(open_store(url))
    s = Supervisor(
        CoreConfig(retry_delays_s=(0.05, 0.05, 0.05)),
        SystemClock(),
        store,
        FlakyController(),
        PolicyEngine(load_policy()),
        Metrics(),
    )
    await periodic.sync_scheduler(s)
    try:
        await beat(s, *NODES)
        await _xid(s, "n1")
        await until(
            lambda: any(
                a.kind is ActionKind.DRAIN and a.status.value == "succeeded"
                for a in store.store.actions()
            )
        )
        [drain] = [a for a in store.store.actions() if a.kind is ActionKind.DRAIN]
        assert drain.result is not None and drain.result.startswith("retry 2:")
        assert {n.name: n.state for n in await s.scheduler.nodes()}["n1"] is NodeState.DRAINED
    finally:
        for t in list(s.tasks):
            t.cancel()
        store.close()
