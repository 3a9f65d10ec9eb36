"""A simulated fault's ``node:`` takes a Slurm hostlist, as every other place naming nodes."""

from __future__ import annotations

import pytest

from trainwarden.policies.errors import PolicyError
from trainwarden.policies.model import ActionKind
from trainwarden.supervisor.sim import simulate
from trainwarden.supervisor.sim.scenario import parse_scenario

HEAD = "name: s\nduration: 4h\ncluster: {nodes: 16}\nrun: {nodes: 12}\nfaults:\n"


def test_a_fault_on_a_hostlist_hits_each_node() -> None:
    sc = parse_scenario(
        HEAD + "  - {at: 1h, kind: gpu-fatal, node: 'n[0002-0003],n0007'}\n", "s.yaml"
    )
    assert sc.faults[0].nodes == ("n0002", "n0003", "n0007")
    one = parse_scenario(HEAD + "  - {at: 1h, kind: gpu-fatal, node: n0002}\n", "s.yaml")
    assert one.faults[0].nodes == ("n0002",)  # one name as before
    r = simulate(sc)
    assert r.figures["faults"] == 3
    # each node's fault asks for its drain (the guards then let one through on 16 nodes)
    asked = {
        d.decision.request.node for d in r.decisions if d.decision.request.kind is ActionKind.DRAIN
    }
    assert asked == {"n0002", "n0003", "n0007"}


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("'n[0003-0001]'", "faults[0].node: descending range '0003-0001'"),
        ("'n[0001-'", "faults[0].node: unbalanced '['"),
        ("'n[0015-0017]'", "faults[0].node: no nodes n[0016-0017] (nodes are n0000..n0015)"),
        ("n0099", "faults[0].node: no node 'n0099'"),
    ],
)
def test_bad_fault_hostlists_name_the_place(node: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_scenario(HEAD + f"  - {{at: 1h, kind: gpu-fatal, node: {node}}}\n", "s.yaml")
    assert expected in str(info.value), str(info.value)
    assert "a node fault needs" not in str(info.value)
