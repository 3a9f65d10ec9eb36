"""The simulator detects through the daemon's own detectors: what they say is what the sim says."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest

from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import (
    ActionKind,
    Condition,
    ConditionType,
    Event,
    EventKind,
    Verdict,
)
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.decide.core import DecisionCore
from trainwarden.supervisor.decide.settings import DetectorSettings
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.sim import load_scenario, simulate
from trainwarden.supervisor.sim.figures import SimResult
from trainwarden.supervisor.sim.scenario import parse_scenario


def evidence_of(r: SimResult, kind: ActionKind) -> list[Event]:
    first = next(x.decision for x in r.decisions if x.decision.request.kind is kind)
    return [r.events[e] for e in first.request.evidence]


def test_the_simulator_decides_with_the_daemons_core_and_settings() -> None:
    """One configuration object: the daemon's is the detector settings plus its I/O knobs."""
    from trainwarden.health.agent import AgentConfig
    from trainwarden.supervisor.daemon.supervisor import CoreConfig
    from trainwarden.supervisor.sim.runner import Simulation

    assert issubclass(CoreConfig, DetectorSettings)
    sc = load_scenario("single-gpu-failure")
    sim = Simulation(sc, load_policy(None), list(sc.faults))
    assert type(sim.core) is DecisionCore and sim.core.engine is sim.engine
    assert DetectorSettings().heartbeat_interval_s == AgentConfig(node="n").heartbeat_interval_s


def test_gpu_fatal_is_named_by_the_daemons_xid_catalogue() -> None:
    r = simulate(load_scenario("single-gpu-failure"))
    [ev] = evidence_of(r, ActionKind.DRAIN)
    assert ev.kind is EventKind.FAULT and ev.node == "n0005"
    assert ev.message == "XID 79 on GPU 3: GPU has fallen off the bus"
    assert ev.data["code"] == 79 and ev.data["severity"] == "fatal"
    # GpuFatal is sticky: it cleared only after the repair's reboot and a healthy report
    [back] = evidence_of(r, ActionKind.VET)
    assert back.message == "GPUs healthy after the node came back"
    assert r.figures["detections"] == {"GpuFatal": 1}


def test_an_xid_override_in_the_policy_reaches_the_detector(tmp_path: Path) -> None:
    """The tracker classifies XIDs with the policy's catalogue: 79 as degraded drains nobody."""
    base = resources.files("trainwarden.policies").joinpath("data/default.yaml").read_text()
    p = tmp_path / "p.yaml"
    p.write_text(base.replace("  overrides: {}", '  overrides: {79: "degraded"}'))
    sc = replace(load_scenario("single-gpu-failure"), expect={})
    f = simulate(sc, load_policy(p)).figures
    assert f["drains"] == 0 and "GpuFatal" not in f["detections"]
    assert f["events"]["fault"] == 1  # still recorded, as a degraded fault


DEAD = """name: dead
duration: 6h
cluster: {nodes: 10}
run: {nodes: 8, checkpoint_interval: 1h}
faults:
  - {at: 1h, kind: node-dead, node: n0002, duration: 1h}
  - {at: 3h, kind: node-dead, node: n0003, duration: 1h, will_after: 30s}
"""


def test_node_dead_by_last_will_or_by_missed_heartbeats() -> None:
    r = simulate(parse_scenario(DEAD, "dead.yaml"))
    drains = [x for x in r.decisions if x.decision.request.kind is ActionKind.DRAIN]
    msgs = {
        x.decision.request.node: r.events[x.decision.request.evidence[0]].message for x in drains
    }
    # the will arrives at once: suspect, confirmed on the first tick after will_confirm_s
    assert msgs["n0002"] == "node dead: last will (connection lost) and no heartbeat for 2.5 s"
    assert drains[0].ts == pytest.approx(3600 + 2.5)
    # a silent death: heartbeats stop, 3 missed 5-s intervals + 1 s grace, seen on a tick
    assert msgs["n0003"] == "node dead: no heartbeat for 16.5 s"
    assert any(
        e.kind is EventKind.HEARTBEAT_MISSED and e.node == "n0003" for e in r.events.values()
    )
    # both came back: heartbeats again clear NodeDead, then vetting returns them
    assert r.figures["returned_to_service"] == 2
    assert r.figures["detections"] == {"NodeDead": 2}


def test_the_hang_is_declared_by_the_progress_tracker() -> None:
    r = simulate(load_scenario("storage-outage"))
    [ev] = evidence_of(r, ActionKind.RESTART_RUN)
    assert ev.kind is EventKind.RUN_PROGRESS_STALLED and ev.run == "llm"
    assert ev.data["limit_s"] == 30.0  # max(k x median step 10 s, floor 30 s)
    assert ev.message.startswith("no step for 30.5 s (limit 30.0 s)")
    assert 7200 < ev.ts < 7200 + 60


def test_shared_causes_come_from_the_health_reports() -> None:
    r = simulate(load_scenario("storage-outage"))
    faults = [e for e in r.events.values() if e.kind is EventKind.FAULT]
    assert len(faults) == 13
    assert {e.data["cause"] for e in faults} == {"storage:/capstor"}
    assert {e.data["kind"] for e in faults} == {"storage-hang"}
    # recovery: the next report is healthy, the tracker clears NodeUnhealthy
    cleared = [e for e in r.events.values() if e.message == "all probes healthy again"]
    assert len(cleared) == 13 and all(e.ts == 3 * 3600 for e in cleared)


def test_crash_loop_sees_the_tracker_and_the_job_exit() -> None:
    r = simulate(load_scenario("crash-loop"))
    causes = [
        r.events[x.decision.request.evidence[0]].kind
        for x in r.decisions
        if x.decision.request.kind is ActionKind.RESTART_RUN
    ]
    # every failure is first a hang (steps stop 30 s before the job exit is noticed) --
    # each attempt's hang is a transition of its own -- and then an attempt-ended event
    assert causes[0] is EventKind.RUN_PROGRESS_STALLED
    assert causes.count(EventKind.RUN_PROGRESS_STALLED) == 3
    assert set(causes) == {EventKind.RUN_PROGRESS_STALLED, EventKind.ATTEMPT_ENDED}
    blocked = [x.decision for x in r.decisions if x.decision.verdict is Verdict.BLOCK]
    # the third failure: both requests (hang, then job exit) blocked by the crash-loop guard
    assert [d.request.kind for d in blocked] == [ActionKind.RESTART_RUN] * 2
    # the step the ranks last reported (not the checkpoint it rolled back to)
    assert "the last 3 failures all happened at step 1200" in blocked[0].guards[0].detail


TWO_HANGS = """name: two-hangs
duration: 10h
cluster: {nodes: 10}
run: {nodes: 8, checkpoint_interval: 1h}
faults:
  - {at: 1h, kind: hang, label: "NCCL hang"}
  - {at: 5h, kind: hang, label: "NCCL hang again"}
"""


def test_a_hang_in_a_later_attempt_is_restarted_too() -> None:
    f = simulate(parse_scenario(TWO_HANGS, "two-hangs.yaml")).figures
    assert f["restarts"] == 2


def test_observations_become_conditions_only_on_transitions() -> None:
    core = DecisionCore(DetectorSettings(), PolicyEngine(load_policy(None)))
    ev = Event(1.0, EventKind.FAULT, node="n1", message="XID 79")
    obs = [
        Observation(ev, "n1", ConditionType.GPU_FATAL, True, "XID 79"),
        Observation(ev, "n1", ConditionType.GPU_FATAL, True, "XID 79"),
        Observation(ev),
    ]
    assert core.conditions(obs, [7, 8, 9]) == [
        Condition("n1", ConditionType.GPU_FATAL, True, "XID 79", 1.0, (7,))
    ]
