"""Guard invariants hold on random fault timelines (hypothesis), in every mode."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainwarden.policies.engine import Mode
from trainwarden.policies.model import ActionKind, Verdict
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.sim import load_scenario, simulate
from trainwarden.supervisor.sim.runner import Simulation
from trainwarden.supervisor.sim.scenario import FaultSpec, RunSpec, Scenario

KINDS = ["gpu-fatal", "node-dead", "node-unhealthy"]

faults = st.lists(
    st.tuples(
        st.floats(0, 20 * 3600),
        st.integers(0, 99),
        st.sampled_from(KINDS),
        st.one_of(st.none(), st.sampled_from(["storage:/capstor", "fabric:leaf-r1"])),
        st.floats(600, 12 * 3600),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults)
def test_drain_limits_hold_on_random_timelines(
    spec: list[tuple[float, int, str, str | None, float]],
) -> None:
    sc = Scenario("random", "", 24 * 3600.0, 100, 10, RunSpec(nodes=80))
    fs = [
        FaultSpec(at, kind, (f"n{node:04d}",), cause, dur, "crash")
        for at, node, kind, cause, dur in spec
    ]
    policy = load_policy()
    sim = Simulation(sc, policy, fs)
    result = sim.run()
    limits = policy.guards.drains
    drains = [
        x.ts
        for x in result.decisions
        if x.decision.request.kind is ActionKind.DRAIN and x.decision.verdict is Verdict.ALLOW
    ]
    for t in drains:  # never more than max_per_window in any window
        assert sum(1 for u in drains if t <= u < t + limits.window_s) <= limits.max_per_window
    drained_now = sum(1 for n in sim.cluster.nodes.values() if n.drained)
    assert drained_now <= max(1, int(limits.max_cluster_fraction * 100))
    assert result.figures["false_drains"] == 0 or any(f.cause for f in fs)
    assert 0.0 <= result.figures["ettr"] <= 1.0


@pytest.mark.parametrize(
    "name", ["single-gpu-failure", "storage-outage", "crash-loop", "lemon-node", "straggler-evict"]
)
def test_dry_run_changes_nothing(name: str) -> None:
    from dataclasses import replace

    sc = replace(load_scenario(name), mode=Mode.DRY_RUN)
    f = simulate(sc).figures
    assert f["drains"] == 0 and f["restarts"] == 0 and f["returned_to_service"] == 0
    assert sum(f["dry_run"].values()) > 0


def test_approve_mode_acts_after_the_operator() -> None:
    from dataclasses import replace

    enforce = simulate(load_scenario("single-gpu-failure")).figures
    approve = simulate(replace(load_scenario("single-gpu-failure"), mode=Mode.APPROVE)).figures
    assert (approve["drains"], approve["restarts"]) == (1, 1)
    assert approve["queued"] >= 2
    assert approve["ettr"] < enforce["ettr"]  # waiting for a person costs training time


def test_a_hold_released_at_its_own_deadline_does_not_spin() -> None:
    """Two identical faults plus a death: a vet held by the cooldown falls due at a time the
    guard, by a rounding error, still refuses; the simulation goes on to its end."""
    t = 65123.030616825745
    sc = Scenario("spin", "", 24 * 3600.0, 100, 10, RunSpec(nodes=80))
    fs = [
        FaultSpec(t, "node-unhealthy", ("n0083",), None, 14364.485287407782, "crash"),
        FaultSpec(t, "node-unhealthy", ("n0083",), None, 14364.485287407782, "crash"),
        FaultSpec(t, "node-dead", ("n0074",), None, 600.0, "crash"),
    ]
    result = Simulation(sc, load_policy(), fs).run()
    assert result.figures["drains"] == 2
    assert result.figures["returned_to_service"] >= 1
