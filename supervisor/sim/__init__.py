"""The virtual-time simulator behind `trainwarden sim`: the daemon's detectors and policy engine.

``simulate(scenario)`` runs a :class:`~supervisor.sim.scenario.Scenario` (a shipped name or a
YAML file, see ``scenarios/``) and returns figures (drains, restarts, incidents, guard blocks,
false drains, lost node-hours, ETTR) plus every decision for ``--explain``.
"""

from __future__ import annotations

from pathlib import Path

from trainwarden.policies.rules import Policy, load_policy, parse_policy
from trainwarden.supervisor.sim import llama3
from trainwarden.supervisor.sim.runner import SimResult, Simulation
from trainwarden.supervisor.sim.scenario import Scenario, load_scenario, shipped_names
from trainwarden.supervisor.sim.trace import replay


def scenario_policy(sc: Scenario, base_dir: Path | None = None) -> Policy:
    """The policy a scenario runs under: inline, a file (relative to the scenario), or default."""
    if sc.policy_text is not None:
        return parse_policy(
            sc.policy_text, f"{sc.source or sc.name} (inline policy)", *sc.policy_at
        )
    if sc.policy_file is not None:
        p = Path(sc.policy_file)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        return load_policy(p)
    return load_policy(None)


def simulate(sc: Scenario, policy: Policy | None = None, base_dir: Path | None = None) -> SimResult:
    policy = policy or scenario_policy(sc, base_dir)
    if sc.trace is not None and sc.trace.source == "llama3":
        return llama3.compare(sc, policy)  # two runs: (a) baseline, (b) advised
    faults = list(sc.faults)
    if sc.trace is not None:
        names = sc.node_names()
        faults += replay(names, sc.trace.days, sc.trace.offset_days)
    return Simulation(sc, policy, faults).run()


__all__ = [
    "SimResult",
    "Simulation",
    "load_scenario",
    "scenario_policy",
    "shipped_names",
    "simulate",
]
