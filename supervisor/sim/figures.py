"""The figures of one simulation: actions, incidents, detections, lost work and ETTR.

ETTR = kept training progress / wall time; ``lost_node_hours`` = run nodes x (wall - kept
progress). ``detections`` counts the condition transitions the daemon's detectors produced
(set, by type) and ``events`` the events recorded, by kind.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trainwarden.policies.explain import explain
from trainwarden.policies.model import Event
from trainwarden.supervisor.sim.accounting import goodput
from trainwarden.supervisor.sim.host import Logged, SimHost
from trainwarden.supervisor.sim.scenario import APPROVE_DELAY_S, ASSUMPTION_SOURCES


@dataclass
class SimResult:
    scenario: str
    figures: dict[str, Any]
    decisions: list[Logged] = field(default_factory=list)
    events: dict[int, Event] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)

    def explain_lines(self) -> list[str]:
        out: list[str] = []
        for i, item in enumerate(self.decisions, 1):
            out += explain(item.decision, self.events, ident=f"D{i}", ts=item.ts)
        return out


def result(sim: SimHost) -> SimResult:
    run = sim.cluster.run
    wall = sim.sc.duration_s
    spec = sim.sc.run
    incidents = sim.engine.incidents()
    figures: dict[str, Any] = {
        "scenario": sim.sc.name,
        "mode": sim.sc.mode.value,
        "cluster_nodes": sim.sc.cluster_nodes,
        "run_nodes": spec.nodes,
        "duration_h": round(wall / 3600, 3),
        "faults": sum(max(1, len(f.nodes)) for f in sim.faults),
        "drains": sim.count["drains"],
        "false_drains": sim.count["false_drains"],
        "restarts": sim.count["restarts"],
        "incidents": len(incidents),
        "incident_kinds": dict(Counter(i.kind.value for i in incidents)),
        "guard_blocks": dict(sorted(sim.blocks.items())),
        "guard_holds": dict(sorted(sim.holds.items())),
        "vets": sim.count["vets"],
        "vets_failed": sim.count["vets_failed"],
        "returned_to_service": sim.count["returned"],
        "alerts": sim.count["alerts"],
        "dropped_after_hold": sim.count["dropped_after_hold"],
        "checkpoints_now": sim.count["checkpoints_now"],
        "decisions": len(sim.log),
        "detections": dict(sorted(sim.transitions.items())),
        "events": dict(sorted(Counter(e.kind.value for e in sim.events.events).items())),
        "lost_work_h": round(run.lost_work_s / 3600, 3),
        "hours_by_state": {k: round(v / 3600, 2) for k, v in sorted(run.time_in.items())},
        "slowdown_loss_h": round(
            (run.time_in.get("running", 0.0) - run.progress - run.lost_work_s) / 3600, 3
        ),
        "productive_h": round(run.progress / 3600, 3),
        "lost_node_hours": round(spec.nodes * (wall - run.progress) / 3600, 1),
        "ettr": round(run.progress / wall, 4) if wall > 0 else 0.0,
        # the daemon's own accounting (supervisor.goodput) over the run's recorded history
        "goodput": goodput(sim.spans, run, wall).as_dict(),
        "final_state": run.state.value,
        "assumptions": {
            "checkpoint_interval_s": spec.checkpoint_interval_s,
            "restart_cost_s": spec.restart_cost_s,
            "detect_delay_s": spec.detect_delay_s,
            "will_delay_s": spec.will_delay_s,
            "job_exit_delay_s": spec.job_exit_delay_s,
            "hang_detect_s": spec.hang_detect_s,
            "startup_timeout_s": spec.startup_timeout_s,
            "detectors": {
                "heartbeat_interval_s": sim.settings.heartbeat_interval_s,
                "heartbeat_misses": sim.settings.heartbeat_misses,
                "will_confirm_s": sim.settings.will_confirm_s,
                "hang_k": sim.settings.hang_k,
                "vet_period_s": sim.settings.vet_period_s,
            },
            "sources": ASSUMPTION_SOURCES,
        },
    }
    if sim.sc.mode.value == "dry-run":
        figures["dry_run"] = {k[8:]: v for k, v in sim.count.items() if k.startswith("dry_run_")}
    if sim.sc.mode.value == "approve":
        figures["queued"] = sim.count["queued"]
        figures["approve_delay_s"] = APPROVE_DELAY_S
    mismatches = [
        f"{k}: expected {v}, got {figures.get(k)}"
        for k, v in sim.sc.expect.items()
        if figures.get(k) != v
    ]
    figures["expectations"] = {"checked": len(sim.sc.expect), "failed": mismatches}
    return SimResult(sim.sc.name, figures, sim.log, sim.events.by_id, mismatches)
