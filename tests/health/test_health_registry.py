"""Probe selection (gpud-style enable list) and what the registry builds."""

from __future__ import annotations

import pytest

from trainwarden.health.errors import HealthError
from trainwarden.health.probes.registry import ProbeConfig, build_probes, build_watchers
from trainwarden.health.sim.hardware import SimulatedHardware


@pytest.mark.parametrize(
    ("enabled", "names"),
    [
        (("*",), ["gpu", "network", "storage", "host"]),
        (("*", "-gpu"), ["network", "storage", "host"]),
        (("gpu", "host"), ["gpu", "host"]),
        (("*", "-storage", "storage"), ["gpu", "network", "storage", "host"]),
        ((), []),
    ],
)
def test_enabled(sim: SimulatedHardware, enabled: tuple[str, ...], names: list[str]) -> None:
    probes = build_probes(ProbeConfig(enabled=enabled), sim)
    assert [p.name.split(":")[0] for p in probes] == names


def test_unknown_probe_name_is_a_clear_error(sim: SimulatedHardware) -> None:
    with pytest.raises(HealthError, match=r"unknown probe 'gpus'.*known: gpu, network"):
        build_probes(ProbeConfig(enabled=("*", "-gpus")), sim)


def test_one_storage_probe_per_path(sim: SimulatedHardware) -> None:
    probes = build_probes(ProbeConfig(storage_paths=("/a", "/b"), enabled=("storage",)), sim)
    assert [p.name for p in probes] == ["storage:/a", "storage:/b"]


def test_watchers(sim: SimulatedHardware) -> None:
    assert [w.name for w in build_watchers(ProbeConfig(), sim)] == ["xid"]
    assert build_watchers(ProbeConfig(enabled=("*", "-xid")), sim) == []


def test_bad_xid_override_is_a_clear_error(sim: SimulatedHardware) -> None:
    with pytest.raises(HealthError, match="XID override for 79"):
        build_probes(ProbeConfig(xid_overrides={"79": "terrible"}), sim)
