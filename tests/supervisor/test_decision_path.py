"""One decision path: what the policy file says reaches the daemon, a SIGHUP keeps the guards'
memory, and an approved action goes through the same executor as an automatic one.

In-process and in virtual time: a real SQLite store and the local scheduler (drains only, so
no process is started); messages are fed as the broker would deliver them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import pytest

from trainwarden.health.clock import VirtualClock
from trainwarden.health.probes.base import Severity
from trainwarden.health.report import FaultModel, FaultReport, Heartbeat, encode, node_topic
from trainwarden.policies.engine import Mode, PolicyEngine
from trainwarden.policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    ConditionType,
    Decision,
    EventKind,
    Verdict,
)
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import operations, upkeep
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.process import Daemon, DaemonConfig
from trainwarden.supervisor.daemon.reconcile import reconcile
from trainwarden.supervisor.daemon.supervisor import CoreConfig, Supervisor
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.lifecycle import NodePhase
from trainwarden.supervisor.scheduler.base import NodeState
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

NODES = [f"n{i}" for i in range(1, 9)]
DEFAULT = resources.files("trainwarden.policies").joinpath("data/default.yaml").read_text()


def policy_file(tmp_path: Path, *, drains_per_window: int = 8, overrides: str = "{}") -> Path:
    text = DEFAULT.replace("max_per_window: 8 ", f"max_per_window: {drains_per_window} ")
    text = text.replace("max_cluster_fraction: 5%", "max_cluster_fraction: 100%")
    text = text.replace("  overrides: {}", f"  overrides: {overrides}")
    assert text != DEFAULT
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


class FlakyScheduler(LocalScheduler):
    """The local back-end whose first drain fails the way slurmctld does while restarting."""

    failures = 1

    async def drain(self, node: str, reason: str) -> None:
        if self.failures:
            self.failures -= 1
            raise SchedulerError(
                "slurm_load_partitions: Unable to contact slurm controller", retryable=True
            )
        await super().drain(node, reason)


async def make(
    tmp_path: Path, policy: Path, mode: Mode = Mode.ENFORCE, scheduler: LocalScheduler | None = None
) -> Supervisor:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    s = Supervisor(
        CoreConfig(retry_delays_s=(1.0, 1.0)),
        VirtualClock(),
        AsyncStore(open_store(url)),
        scheduler or LocalScheduler(NODES, tmp_path / "logs"),
        PolicyEngine(load_policy(policy), mode),
        Metrics(),
    )
    await upkeep.sync_scheduler(s)  # the roster of nodes, as the daemon reads it at start
    return s


@pytest.fixture
async def closing() -> AsyncIterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for s in made:
        s.store.close()


async def settle(sup: Supervisor) -> None:
    """Let every background decision task finish (virtual time: sleeps return at once)."""
    for _ in range(100):
        if not sup.tasks:
            return
        await asyncio.gather(*list(sup.tasks))
    raise AssertionError("background tasks keep spawning")


async def xid(sup: Supervisor, node: str, code: int) -> None:
    now = sup.clock.now()
    await sup.handle(
        node_topic(node, "heartbeat"), encode(Heartbeat(node=node, ts=now, seq=1, interval_s=2.0))
    )
    fault = FaultModel(kind="xid", severity=Severity.FATAL, detail=f"XID {code}", gpu=0, code=code)
    await sup.handle(
        node_topic(node, "fault"), encode(FaultReport(node=node, ts=now, faults=[fault]))
    )
    await settle(sup)


def drains(sup: Supervisor) -> dict[str, Verdict]:
    return {
        a.node or "": a.verdict for a in sup.store.store.actions() if a.kind is ActionKind.DRAIN
    }


async def test_drains_counted_before_a_sighup_still_count_after_it(
    tmp_path: Path, closing: list[Supervisor]
) -> None:
    path = policy_file(tmp_path, drains_per_window=1)
    sup = await make(tmp_path, path)
    closing.append(sup)
    daemon = Daemon(DaemonConfig(db_url="sqlite://", policy_file=str(path)))
    daemon.sup = sup
    await xid(sup, "n1", 79)
    assert drains(sup) == {"n1": Verdict.ALLOW}
    daemon._reload_policy()  # what SIGHUP runs
    await xid(sup, "n2", 79)
    # the window's one drain was used before the reload: the second is blocked after it
    assert drains(sup) == {"n1": Verdict.ALLOW, "n2": Verdict.BLOCK}


async def test_the_policy_files_xid_overrides_decide_in_the_daemon(
    tmp_path: Path, closing: list[Supervisor]
) -> None:
    """XID 13 (graphics engine exception) is not fatal in the catalogue; this site says it is."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    plain = await make(tmp_path / "a", policy_file(tmp_path / "a"))
    closing.append(plain)
    await xid(plain, "n1", 13)
    assert drains(plain) == {} and not plain.book.is_true("n1", ConditionType.GPU_FATAL)

    path = policy_file(tmp_path / "b", overrides='{13: "fatal:drain"}')
    sup = await make(tmp_path / "b", path)
    closing.append(sup)
    await xid(sup, "n1", 13)
    assert sup.book.is_true("n1", ConditionType.GPU_FATAL)
    assert drains(sup) == {"n1": Verdict.ALLOW}
    nodes = {n.name: n.state for n in await sup.scheduler.nodes()}
    assert nodes["n1"] is NodeState.DRAINED

    # a reload that drops the override classifies XID 13 by the catalogue again
    daemon = Daemon(DaemonConfig(db_url="sqlite://", policy_file=str(path)))
    daemon.sup = sup
    path.write_text(DEFAULT)
    daemon._reload_policy()
    await xid(sup, "n2", 13)
    assert not sup.book.is_true("n2", ConditionType.GPU_FATAL)


async def test_an_approved_drain_is_retried_audited_and_counted_like_an_automatic_one(
    tmp_path: Path, closing: list[Supervisor]
) -> None:
    sched = FlakyScheduler(NODES, tmp_path / "logs")
    sup = await make(tmp_path, policy_file(tmp_path), Mode.APPROVE, sched)
    closing.append(sup)
    await xid(sup, "n3", 79)
    [queued] = [a for a in sup.store.store.actions() if a.kind is ActionKind.DRAIN]
    assert queued.verdict is Verdict.QUEUED and queued.status == "pending"

    await operations.resolve_queued(sup, queued.id, approve=True, who="alice", reason="ok")
    await settle(sup)  # the retry after the scheduler's transient refusal
    rec = sup.store.store.action(queued.id)
    assert rec is not None and rec.status == "succeeded"
    assert rec.result is not None and rec.result.startswith("approved by alice; retry 1: ")
    nodes = {n.name: n.state for n in await sup.scheduler.nodes()}
    assert nodes["n3"] is NodeState.DRAINED
    counted = sup.metrics.actions_total.labels(kind="drain", verdict="allow", status="succeeded")
    failed = sup.metrics.actions_total.labels(kind="drain", verdict="allow", status="failed")
    assert counted._value.get() == 1 and failed._value.get() == 1


async def restarted_after_xid(
    tmp_path: Path, closing: list[Supervisor], node: str, **policy: int
) -> Supervisor:
    """A daemon that drained ``node`` for XID 79, then a new one restored from its store."""
    path = policy_file(tmp_path, **policy)
    first = await make(tmp_path, path)
    closing.append(first)
    await xid(first, node, 79)
    await first.store.flush()
    again = await make(tmp_path, path)
    closing.append(again)
    await operations.load(again)
    return again


async def test_conditions_restored_after_a_restart_are_the_ones_the_core_decides_on(
    tmp_path: Path, closing: list[Supervisor]
) -> None:
    again = await restarted_after_xid(tmp_path, closing, "n4")
    assert again.book is again.core.book and again.book.is_true("n4", ConditionType.GPU_FATAL)
    [row] = [r for r in await DaemonService(again).list_nodes() if r.name == "n4"]
    assert row.conditions == ["GpuFatal"] and row.state == "drained"


async def test_guard_memory_survives_a_restart(tmp_path: Path, closing: list[Supervisor]) -> None:
    again = await restarted_after_xid(tmp_path, closing, "n1", drains_per_window=1)
    await xid(again, "n2", 79)
    # the one drain of this hour happened before the restart: the new daemon still counts it
    assert drains(again) == {"n1": Verdict.ALLOW, "n2": Verdict.BLOCK}


async def test_a_fault_redelivered_after_a_restart_is_recorded_once(
    tmp_path: Path, closing: list[Supervisor]
) -> None:
    again = await restarted_after_xid(tmp_path, closing, "n4")
    await xid(again, "n4", 79)  # the broker redelivers the unacknowledged report
    faults = again.store.store.events(node="n4", kinds=[EventKind.FAULT])
    assert len(faults) == 1
    assert list(drains(again)) == ["n4"]
    assert len([a for a in again.store.store.actions() if a.kind is ActionKind.DRAIN]) == 1


async def test_actions_a_crash_left_open_are_finished_once_on_start(
    tmp_path: Path, closing: list[Supervisor]
) -> None:
    """The daemon died after recording three drains: one that never reached the scheduler,
    one that did, and a restart. The next daemon finishes each exactly once."""
    path = policy_file(tmp_path)
    sched = LocalScheduler(NODES, tmp_path / "logs")  # the scheduler outlives the daemon
    first = await make(tmp_path, path, scheduler=sched)
    closing.append(first)
    st = first.store.store

    def open_action(
        kind: ActionKind, node: str | None, run: str | None = None, v: Verdict = Verdict.ALLOW
    ) -> int:
        req = ActionRequest(kind, Actor.RULE, "GpuFatal set", node=node, run=run, rule="gpu")
        return st.record_action(Decision(req, v, ()), ts=first.clock.now())

    older = open_action(ActionKind.DRAIN, "n5")
    held = open_action(ActionKind.DRAIN, "n7", v=Verdict.HOLD)
    other = open_action(ActionKind.DRAIN, "n8")
    await sched.drain("n8", "fan broken (ops ticket 123)")  # a person drained it meanwhile
    lost = open_action(ActionKind.DRAIN, "n5")
    done = open_action(ActionKind.DRAIN, "n6")
    st.update_action(done, status="running", result=None, finished_at=None)
    await sched.drain("n6", "trainwarden: GpuFatal set (action #2)")
    restart = open_action(ActionKind.RESTART_RUN, None, run="r1")

    again = await make(tmp_path, path, scheduler=sched)
    closing.append(again)
    await operations.load(again)
    assert await reconcile(again) == 6
    assert await reconcile(again) == 0  # nothing is left open, nothing repeats
    states = {n.name: n.state for n in await sched.nodes()}
    assert states["n5"] is NodeState.DRAINED and states["n6"] is NodeState.DRAINED
    recs = {a.id: a for a in again.store.store.actions(limit=None)}
    assert recs[lost].status == "succeeded" and (recs[lost].result or "").startswith(
        "re-applied after a restart; "
    )
    assert recs[done].status == "succeeded" and "shows n6 drained" in (recs[done].result or "")
    # a restart of a run the store does not know cannot be carried out (see test_crash_reconcile)
    assert recs[restart].status == "failed" and "unknown run" in (recs[restart].result or "")
    assert recs[older].status == "skipped" and f"superseded by action #{lost}" in (
        recs[older].result or ""
    )
    assert recs[held].status == "skipped" and states["n7"] is NodeState.IDLE
    assert recs[other].status == "skipped" and "fan broken" in (recs[other].result or "")
    assert again.state.nodes.get("n8") is None or again.state.nodes["n8"].drained_by != (
        "trainwarden"
    )
    assert again.state.nodes["n6"].phase is NodePhase.DRAINED


async def test_a_fault_stored_without_its_condition_is_settled_once_on_start(
    tmp_path: Path, closing: list[Supervisor]
) -> None:
    """The daemon died between storing the XID's event and its condition: the next one
    sets the condition from the stored event, drains once, and the agent's next report of
    the same fault is not a second event."""
    path = policy_file(tmp_path)
    first = await make(tmp_path, path)
    closing.append(first)

    async def died(*_: object) -> None:
        raise SystemExit("killed")

    first.store.write = died  # type: ignore[method-assign]  # conditions never reach the store
    with pytest.raises(SystemExit):
        await xid(first, "n3", 79)
    assert first.store.store.conditions() == []
    assert len(first.store.store.events(node="n3", kinds=[EventKind.FAULT])) == 1
    again = await make(tmp_path, path)
    closing.append(again)
    await operations.load(again)
    await reconcile(again)
    await settle(again)
    await xid(again, "n3", 79)  # the agent reports the fault again
    assert len(again.store.store.events(node="n3", kinds=[EventKind.FAULT])) == 1
    assert again.book.is_true("n3", ConditionType.GPU_FATAL)
    assert list(drains(again)) == ["n3"]
    states = {n.name: n.state for n in await again.scheduler.nodes()}
    assert states["n3"] is NodeState.DRAINED


async def test_a_drain_that_succeeds_on_its_retry_counts_in_the_drain_window(
    tmp_path: Path, closing: list[Supervisor]
) -> None:
    """With a window of one drain, a drain done on its retry spends it: the next fatal XID
    is blocked (the engine hears of the drain's outcome once, at its end)."""
    sched = FlakyScheduler(NODES, tmp_path / "logs")
    sup = await make(tmp_path, policy_file(tmp_path, drains_per_window=1), scheduler=sched)
    closing.append(sup)
    await xid(sup, "n3", 79)
    await settle(sup)  # the retry after the scheduler's transient refusal
    [first] = [a for a in sup.store.store.actions() if a.kind is ActionKind.DRAIN]
    assert first.status == "succeeded" and (first.result or "").startswith("retry 1: ")
    await xid(sup, "n4", 79)
    await settle(sup)
    [second] = [a for a in sup.store.store.actions() if a.node == "n4"]
    assert second.kind is ActionKind.DRAIN and second.verdict is Verdict.BLOCK, second
    nodes = {n.name: n.state for n in await sup.scheduler.nodes()}
    assert nodes["n3"] is NodeState.DRAINED and nodes["n4"] is not NodeState.DRAINED
