"""The supervisor's periodic upkeep beyond detection: the scheduler's view of nodes, the
vetting of nodes on their way back (decided by the core), jobs tagged for adoption."""

from __future__ import annotations

import logging

from trainwarden.policies import hostlist
from trainwarden.policies.model import (
    Event,
    EventKind,
)
from trainwarden.supervisor.daemon.context import DaemonContext
from trainwarden.supervisor.daemon.executor import Executor
from trainwarden.supervisor.decide.core import VetOutcome
from trainwarden.supervisor.model.cluster import NodeInfo
from trainwarden.supervisor.model.lifecycle import LifecycleError, NodePhase, RunPhase
from trainwarden.supervisor.scheduler.base import NodeState
from trainwarden.supervisor.store.base import StoreUnavailable

log = logging.getLogger(__name__)
TAG = "trainwarden:"  # how every drain reason trainwarden gives starts (see executor)


async def sync_scheduler(sup: DaemonContext) -> None:
    """The scheduler's view is an input: its node list is the roster of names that are
    nodes at all; external drains and DOWN nodes are reflected."""
    try:
        sched_nodes = await sup.scheduler.nodes()
    except Exception as exc:  # a scheduler outage must not stop the daemon
        log.warning("cannot read node states from %s: %s", sup.scheduler.name, exc)
        return
    now = sup.clock.now()
    events: list[Event] = []
    roster = frozenset(sn.name for sn in sched_nodes)
    if roster != sup.state.roster:
        gone = sorted(n for n in sup.state.nodes if n not in roster)
        if gone:  # the store kept them; the scheduler no longer has them
            log.warning(
                "%d stored node(s) are not %s's nodes and are ignored: %s",
                len(gone),
                sup.scheduler.name,
                hostlist.compress(gone),
            )
        sup.state.roster = roster
    for sn in sched_nodes:
        node = sup.state.node(sn.name)
        before = node.scheduler_state
        node.scheduler_state = sn.state.value
        if before == sn.state.value:
            continue
        if sn.state in (NodeState.DRAINED, NodeState.DRAINING) and not node.drained:
            # ours when the scheduler shows our reason (a drain a crash kept from the store)
            ours = sn.reason.startswith(TAG)
            node.drained_by, node.drain_reason = ("trainwarden" if ours else "external"), sn.reason
            _move(node, NodePhase.DRAINED)
            events.append(
                Event(
                    now,
                    EventKind.CONDITION_CHANGED,
                    node=sn.name,
                    message=(
                        f"drained by trainwarden (as the scheduler shows): {sn.reason}"
                        if ours
                        else f"drained outside trainwarden: {sn.reason}"
                    ),
                    data={"scheduler_state": sn.state.value},
                )
            )
        elif sn.state is NodeState.DOWN and before is not None:
            events.append(
                Event(
                    now,
                    EventKind.CONDITION_CHANGED,
                    node=sn.name,
                    message=f"{sup.scheduler.name} marks the node down"
                    + (f": {sn.reason}" if sn.reason else ""),
                    data={"scheduler_state": sn.state.value},
                )
            )
        elif (
            sn.state in (NodeState.IDLE, NodeState.ALLOCATED)
            and node.drained
            and node.drained_by == "external"
        ):
            node.drained_by = node.drain_reason = None
            _move(node, NodePhase.HEALTHY)
            events.append(
                Event(
                    now,
                    EventKind.CONDITION_CHANGED,
                    node=sn.name,
                    message="returned to service outside trainwarden",
                )
            )
        sup.store.batch.nodes.append(sup.node_record(node))
    if events:
        await sup.record_events_later(events)


def _move(node: NodeInfo, target: NodePhase) -> None:
    try:
        node.move(target)
    except LifecycleError as exc:
        log.warning("node %s: %s", node.name, exc)


async def vetting(sup: DaemonContext, executor: Executor, now: float) -> None:
    """Nodes being vetted: the core says passed (undrain), failed (drained again) or wait."""
    if not sup.state.phase_counts[NodePhase.VETTING]:
        return  # the usual case, without a look at every node
    for node in list(sup.state.nodes.values()):
        if node.phase is not NodePhase.VETTING or node.vet_started_at is None:
            continue
        fresh = (node.last_report_at or 0) > node.vet_started_at
        verdict = sup.core.vet(node.name, node.vet_started_at, fresh, now)
        if verdict.outcome is VetOutcome.FAILED:
            node.move(NodePhase.DRAINED)
            node.vet_started_at = None
            await sup.record_events_later([verdict.failure_event(now, node.name)])
            await sup.save_node(node)
        elif verdict.outcome is VetOutcome.PASSED:
            if sup.must_hold():
                continue  # decided again once the database can record it
            try:
                await executor.carry_out(sup.core.vet_passed(node.name))
            except StoreUnavailable:
                continue
            node.vet_started_at = None


async def adopt_tagged_jobs(sup: DaemonContext) -> None:
    """Jobs tagged ``trainwarden:<run>``: a registered run waiting to adopt its job takes
    it over; a tag naming no registered run is reported once, with what to do."""
    try:
        tagged = await sup.scheduler.jobs_tagged()
    except Exception as exc:  # a scheduler outage must not stop the daemon
        log.warning("cannot list tagged jobs in %s: %s", sup.scheduler.name, exc)
        return
    now = sup.clock.now()
    known_jobs = {r.job_id for r in sup.state.runs.values() if r.job_id}
    for job_id, name in tagged:
        if job_id in known_jobs or job_id in sup.reported_tags:
            continue
        run = sup.state.runs.get(name)
        if run is None:
            sup.reported_tags.add(job_id)
            await sup.record_events_later(
                [
                    Event(
                        now,
                        EventKind.RUN_STARTED,
                        run=None,
                        message=f"job {job_id} is tagged trainwarden:{name}, but no run "
                        f"{name!r} is registered: `trainwarden runs add {name} --adopt ...` "
                        "supervises it",
                        data={"job_id": job_id, "tag_run": name},
                    )
                ]
            )
            continue
        if run.job_id is not None or run.phase is not RunPhase.PENDING:
            continue
        info = await sup.scheduler.job(job_id)
        if info is None or info.state.finished:
            continue
        await sup.runs.adopt(run, info)
