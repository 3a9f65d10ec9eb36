"""The supervisor's periodic upkeep beyond detection: the scheduler's view of nodes,
straggler scores, vetting of nodes on their way back, and GPU evidence from reports."""

from __future__ import annotations

import logging

from trainwarden.health.report import HealthReport
from trainwarden.policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    ConditionType,
    Decision,
    Event,
    EventKind,
    GuardVerdict,
    Verdict,
)
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.detectors.stragglers.model import GpuSignal
from trainwarden.supervisor.model.lifecycle import NodePhase, RunPhase

log = logging.getLogger(__name__)


async def sync_scheduler(sup: Supervisor) -> None:
    """The scheduler's view is an input: external drains and DOWN nodes are reflected."""
    from trainwarden.supervisor.scheduler.base import NodeState

    try:
        sched_nodes = await sup.scheduler.nodes()
    except Exception as exc:  # a scheduler outage must not stop the daemon
        log.warning("cannot read node states from %s: %s", sup.scheduler.name, exc)
        return
    now = sup.clock.now()
    events: list[Event] = []
    for sn in sched_nodes:
        node = sup.state.node(sn.name)
        before = node.scheduler_state
        node.scheduler_state = sn.state.value
        if before == sn.state.value:
            continue
        if sn.state in (NodeState.DRAINED, NodeState.DRAINING) and not node.drained:
            node.drained_by, node.drain_reason = "external", sn.reason
            node.phase = NodePhase.DRAINED
            events.append(
                Event(
                    now,
                    EventKind.CONDITION_CHANGED,
                    node=sn.name,
                    message=f"drained outside trainwarden: {sn.reason}",
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
            node.phase = NodePhase.HEALTHY
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
        await sup.record_events(events)


def straggler_findings(sup: Supervisor, now: float) -> list[Observation]:
    """Straggler flags and clears (node-level ones move the Straggler condition);
    stage imbalance is recorded once per run and stage, as a finding, never a fault."""
    if now - sup.last_straggler_eval < sup.config.straggler_eval_s:
        return []
    sup.last_straggler_eval = now
    out: list[Observation] = []
    for f in sup.stragglers.evaluate(now):
        cond = f.condition()
        if f.rank is None:
            out.append(Observation(f.event(), cond.subject, cond.type, cond.status, cond.reason))
        else:
            out.append(Observation(f.event()))
    for imb in sup.stragglers.stage_imbalance():
        key = (imb.run, imb.slowest)
        if key in sup.imbalance_seen:
            continue
        sup.imbalance_seen.add(key)
        out.append(
            Observation(
                Event(
                    now,
                    EventKind.STAGE_IMBALANCE,
                    run=imb.run,
                    message=f"stage {imb.slowest} is {imb.ratio:.2f}x the fastest stage: a "
                    "partitioning problem, not a bad node",
                    data={
                        "levels": [list(lv) for lv in imb.levels],
                        "ratio": imb.ratio,
                        "step": imb.step,
                    },
                )
            )
        )
    return out


async def vetting(sup: Supervisor, now: float) -> None:
    """Nodes being vetted: back to service when healthy long enough, else drained again."""
    for node in list(sup.state.nodes.values()):
        if node.phase is not NodePhase.VETTING or node.vet_started_at is None:
            continue
        bad = sup.book.types_of(node.name) & {
            ConditionType.NODE_DEAD,
            ConditionType.GPU_FATAL,
            ConditionType.NODE_UNHEALTHY,
        }
        if bad:
            node.move(NodePhase.DRAINED)
            node.vet_started_at = None
            await sup.record_events(
                [
                    Event(
                        now,
                        EventKind.CONDITION_CHANGED,
                        node=node.name,
                        message="vetting failed: " + ", ".join(sorted(bad)),
                    )
                ]
            )
            await sup.save_node(node)
            continue
        fresh = (node.last_report_at or 0) > node.vet_started_at
        if fresh and now - node.vet_started_at >= sup.config.vet_period_s:
            node.vet_started_at = None
            await sup.carry_out(
                Decision(
                    ActionRequest(
                        ActionKind.UNDRAIN,
                        Actor.RULE,
                        f"vetting passed: healthy reports for {sup.config.vet_period_s:.0f} s",
                        node=node.name,
                        rule="vet",
                    ),
                    Verdict.ALLOW,
                    (GuardVerdict("vetting", True, "no condition set"),),
                )
            )


def gpu_signal(report: HealthReport, now: float) -> GpuSignal | None:
    """A node's GPU evidence for the straggler detector, from its GPU probe's values:
    the throttle reasons of all its GPUs, and its highest power draw against the limit."""
    from trainwarden.health.nvml.backend import THROTTLE_NAMES

    gpu = next((p for p in report.probes if p.probe == "gpu"), None)
    if gpu is None or not gpu.values.get("nvml_available"):
        return None
    bits = 0
    power: float | None = None
    for key, value in gpu.values.items():
        if key.endswith("_throttle_reasons") and isinstance(value, int):
            bits |= value
        elif key.endswith("_power_w") and isinstance(value, int | float):
            power = max(power or 0.0, float(value))
    reasons = tuple(name for bit, name in THROTTLE_NAMES.items() if bits & bit)
    return GpuSignal(ts=now, throttle_reasons=reasons, power_w=power)


async def adopt_tagged_jobs(sup: Supervisor) -> None:
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
            await sup.record_events(
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
