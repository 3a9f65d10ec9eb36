"""Interconnect probe: sysfs parsing on the fixture tree and counter rates (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.health import faults as fk
from trainwarden.health.clock import VirtualClock
from trainwarden.health.probes.base import Health
from trainwarden.health.probes.network import (
    ETH_LINK_FLAP,
    Link,
    NetSample,
    NetThresholds,
    NetworkProbe,
    evaluate_links,
    parse_ib_state,
    read_cxi,
    read_eth,
    read_ib,
)


@pytest.mark.parametrize(
    ("text", "up", "name"),
    [
        ("4: ACTIVE", True, "ACTIVE"),
        ("1: DOWN", False, "DOWN"),
        ("2: INIT", False, "INIT"),
        ("3: ARMED\n", False, "ARMED"),
        (None, False, "unreadable"),
        ("", False, "unreadable"),
    ],
)
def test_parse_ib_state(text: str | None, up: bool, name: str) -> None:
    assert parse_ib_state(text) == (up, name)


def test_read_fixture_tree(data: Path) -> None:
    sysfs = data / "sysfs"
    ib = {link.name: link for link in read_ib(sysfs)}
    assert ib["mlx5_0/1"].up and not ib["mlx5_1/1"].up
    assert ib["mlx5_0/1"].counters["port_xmit_discards"] == 12
    assert ib["mlx5_1/1"].state == "DOWN (3: Disabled)"
    assert ib["mlx5_0/1"].rate.startswith("200 Gb/sec")
    eth = {link.name: link for link in read_eth(sysfs)}
    assert sorted(eth) == ["eth0", "eth1", "eth2"]  # lo has no device: skipped
    assert eth["eth0"].up and not eth["eth1"].up and not eth["eth2"].admin_up
    cxi = {link.name: link for link in read_cxi(sysfs)}
    assert cxi["cxi0"].up and not cxi["cxi1"].up
    assert cxi["cxi0"].counters == {"pcs_errors": 0}


def test_fixture_tree_verdict(data: Path) -> None:
    probe = NetworkProbe(data / "sysfs", clock=VirtualClock())
    result = probe.check()
    assert result.health is Health.UNHEALTHY
    kinds = sorted(f.kind for f in result.faults)
    # mlx5_1 down, cxi1 down, eth1 up without carrier; eth2 is administratively down: fine.
    assert kinds == sorted([fk.IB_LINK_DOWN, fk.CXI_LINK_DOWN, fk.ETH_LINK_DOWN])
    # without topology a link fault is the node's own, not a shared fabric cause
    assert {f.cause for f in result.faults if f.kind == fk.IB_LINK_DOWN} == {None}
    assert result.values["ib_mlx5_0_1_up"] is True


def test_link_faults_name_the_fabric_domain_when_known(data: Path) -> None:
    probe = NetworkProbe(
        data / "sysfs", NetThresholds(fabric_domain="leaf-r07"), clock=VirtualClock()
    )
    causes = {f.kind: f.cause for f in probe.check().faults}
    assert causes[fk.IB_LINK_DOWN] == causes[fk.CXI_LINK_DOWN] == "fabric:leaf-r07"


def ib(downed: int = 0, symbol: int = 0, up: bool = True) -> Link:
    return Link(
        "ib",
        "mlx5_0/1",
        up,
        "ACTIVE" if up else "DOWN",
        {"link_downed": downed, "symbol_error": symbol},
    )


def eth(changes: int = 0, rx: int = 0) -> Link:
    return Link(
        "eth", "eth0", True, "up", {"carrier_changes": changes, "rx_errors": rx, "tx_errors": 0}
    )


# (case, previous links or None, current links, seconds between, health, fault kinds)
RATE_CASES = [
    ("first sample: states only", None, (ib(5, 100),), 0, Health.HEALTHY, []),
    ("stable counters", (ib(5, 100),), (ib(5, 100),), 10, Health.HEALTHY, []),
    ("link flapped", (ib(5),), (ib(7),), 10, Health.DEGRADED, [fk.IB_LINK_FLAP]),
    ("errors below the rate", (ib(symbol=0),), (ib(symbol=5),), 10, Health.HEALTHY, []),
    (
        "errors above the rate",
        (ib(symbol=0),),
        (ib(symbol=500),),
        10,
        Health.DEGRADED,
        [fk.IB_ERRORS],
    ),
    ("counter reset is not negative", (ib(symbol=500),), (ib(symbol=0),), 10, Health.HEALTHY, []),
    ("link down", (ib(),), (ib(up=False),), 10, Health.UNHEALTHY, [fk.IB_LINK_DOWN]),
    ("eth carrier flap", (eth(3),), (eth(5),), 10, Health.DEGRADED, [ETH_LINK_FLAP]),
    ("eth errors", (eth(rx=0),), (eth(rx=1000),), 10, Health.DEGRADED, ["eth-errors"]),
]


@pytest.mark.parametrize(
    ("case", "prev", "cur", "dt", "health", "kinds"), RATE_CASES, ids=[c[0] for c in RATE_CASES]
)
def test_evaluate_links(
    case: str,
    prev: tuple[Link, ...] | None,
    cur: tuple[Link, ...],
    dt: float,
    health: Health,
    kinds: list[str],
) -> None:
    before = NetSample(100.0, prev) if prev is not None else None
    result = evaluate_links(before, NetSample(100.0 + dt, cur), NetThresholds(1.0))
    assert result.health is health, result.reason
    assert sorted(f.kind for f in result.faults) == sorted(kinds)


def test_probe_keeps_previous_sample(tmp_path: Path) -> None:
    port = tmp_path / "class/infiniband/mlx5_0/ports/1"
    (port / "counters").mkdir(parents=True)
    (port / "state").write_text("4: ACTIVE\n")
    (port / "counters/link_downed").write_text("0\n")
    clock = VirtualClock()
    probe = NetworkProbe(tmp_path, clock=clock)
    assert probe.check().health is Health.HEALTHY
    (port / "counters/link_downed").write_text("3\n")
    clock.advance(10)
    flapped = probe.check()
    assert flapped.health is Health.DEGRADED
    assert "went down 3 times in 10 s" in flapped.reason
    clock.advance(10)
    assert probe.check().health is Health.HEALTHY


def test_empty_tree(tmp_path: Path) -> None:
    result = NetworkProbe(tmp_path).check()
    assert result.health is Health.HEALTHY
    assert result.reason == "no fabric or Ethernet device found"
