"""Simulated hardware: every fault name through the real probes, clearing, injection from
another process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainwarden.health import faults as fk
from trainwarden.health.errors import HealthError
from trainwarden.health.probes.base import CheckResult, Fault, Health
from trainwarden.health.probes.registry import ProbeConfig, build_probes, build_watchers
from trainwarden.health.probes.runner import run_probes
from trainwarden.health.probes.storage import StorageThresholds
from trainwarden.health.sim.faults import FAULTS
from trainwarden.health.sim.hardware import SimulatedHardware, fault_names, inject_into
from trainwarden.health.vet import vet

TRAINWARDEN = Path(sys.executable).parent / "trainwarden"

# fault -> (probe name prefix, health, fault kind in the result)
EXPECTED: dict[str, tuple[str, Health, str]] = {
    "xid:79": ("gpu", Health.UNHEALTHY, fk.XID),
    "gpu-lost": ("gpu", Health.UNHEALTHY, fk.GPU_LOST),
    "gpu-missing": ("gpu", Health.UNHEALTHY, fk.GPU_MISSING),
    "ecc-dbe": ("gpu", Health.UNHEALTHY, fk.ECC_DBE),
    "row-remap-failure": ("gpu", Health.UNHEALTHY, fk.ROW_REMAP_FAILURE),
    "row-remap-pending": ("gpu", Health.DEGRADED, fk.ROW_REMAP_PENDING),
    "nvlink-down": ("gpu", Health.UNHEALTHY, fk.NVLINK_DOWN),
    "pcie-degraded": ("gpu", Health.DEGRADED, fk.PCIE_DEGRADED),
    "nvlink-errors": ("gpu", Health.DEGRADED, "nvlink-errors"),
    "thermal-throttle": ("gpu", Health.DEGRADED, fk.THERMAL_THROTTLE),
    "power-brake": ("gpu", Health.DEGRADED, fk.POWER_THROTTLE),
    "gpu-mem-held": ("gpu", Health.DEGRADED, fk.GPU_MEM_HELD),
    "nvml-unavailable": ("gpu", Health.UNHEALTHY, fk.GPU_MISSING),
    "ib-link-down": ("network", Health.UNHEALTHY, fk.IB_LINK_DOWN),
    "ib-link-flap": ("network", Health.DEGRADED, fk.IB_LINK_FLAP),
    "ib-errors": ("network", Health.DEGRADED, fk.IB_ERRORS),
    "cxi-link-down": ("network", Health.UNHEALTHY, fk.CXI_LINK_DOWN),
    "eth-link-down": ("network", Health.DEGRADED, fk.ETH_LINK_DOWN),
    "storage-hang": ("storage", Health.UNHEALTHY, fk.STORAGE_HANG),
    "storage-slow": ("storage", Health.DEGRADED, fk.STORAGE_SLOW),
    "storage-full": ("storage", Health.UNHEALTHY, fk.STORAGE_FULL),
    "host-oom": ("host", Health.DEGRADED, fk.HOST_OOM),
    "host-mce": ("host", Health.DEGRADED, fk.HOST_MCE),
    "host-memory-low": ("host", Health.DEGRADED, fk.HOST_MEMORY_LOW),
    "host-d-state": ("host", Health.DEGRADED, fk.HOST_D_STATE),
}


def test_every_fault_name_is_covered() -> None:
    names = {n if n != "xid:<code>" else "xid:79" for n in fault_names()}
    assert names == set(EXPECTED)


def config(**kw: object) -> ProbeConfig:
    # Limits loose enough for a loaded CI machine; the simulated slow storage takes 1.3 s.
    base: dict[str, object] = dict(
        expected_gpus=4, timeout_s=3.0, storage=StorageThresholds(slow_s=1.0)
    )
    base.update(kw)
    return ProbeConfig(**base)  # type: ignore[arg-type]


def by_probe(results: tuple[CheckResult, ...] | list[CheckResult], prefix: str) -> CheckResult:
    (r,) = [r for r in results if r.probe.split(":")[0] == prefix]
    return r


# The slow and hung storage faults are real: 1.3 s of I/O, a 1 s probe timeout.
_WALL_CLOCK_FAULTS = {"storage-slow", "storage-hang"}


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(f, marks=pytest.mark.integration) if f in _WALL_CLOCK_FAULTS else f
        for f in sorted(EXPECTED)
    ],
)
def test_fault_through_real_probes(fault: str, tmp_path: Path) -> None:
    fabric = "slingshot" if fault == "cxi-link-down" else "ib"
    hw = SimulatedHardware("n", 4, tmp_path / "hw", fabric=fabric, storage_slow_s=1.3)
    cfg = config(timeout_s=1.0) if fault == "storage-hang" else config()
    try:
        report = asyncio.run(vet(cfg, hw, window_s=0.05, after_baseline=lambda: hw.inject(fault)))
        probe, health, kind = EXPECTED[fault]
        result = by_probe(report.results, probe)
        assert result.health is health, result.reason
        assert kind in {f.kind for f in result.faults}
        assert result.reason
        others = [r for r in report.results if r is not result and r.probe != "gpu-compute"]
        assert all(r.health is Health.HEALTHY for r in others), [r.reason for r in others]
        if FAULTS.get(fault, (False,))[0]:  # persistent faults clear; events are history
            hw.clear(fault)
            after = asyncio.run(vet(cfg, hw, window_s=0.0))
            assert after.health is Health.HEALTHY, after.lines()
    finally:
        hw.close()


def test_gpu_scoped_fault_and_clear_all(sim: SimulatedHardware) -> None:
    sim.inject("ecc-dbe@2")
    sim.inject("pcie-degraded@3")
    assert sorted(sim.active_faults()) == ["ecc-dbe@2", "pcie-degraded@3"]
    (gpu,) = asyncio.run(run_probes(build_probes(config(enabled=("gpu",)), sim), 1.0))
    assert {(f.kind, f.gpu) for f in gpu.faults} == {(fk.ECC_DBE, 2), (fk.PCIE_DEGRADED, 3)}
    sim.clear("ecc-dbe")  # without @: every GPU
    assert sim.active_faults() == ["pcie-degraded@3"]
    sim.clear()
    assert sim.active_faults() == []


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("gpu-melted", "valid faults: xid:<code>, gpu-lost"),
        ("xid:abc", "xid:<code>"),
        ("xid:0", "1..999"),
        ("ib-link-down@1", "does not take a GPU"),
        ("ecc-dbe@x", "bad GPU"),
        ("ecc-dbe@9", "GPUs 0..3"),
        ("cxi-link-down", "slingshot"),
    ],
)
def test_bad_fault_names(sim: SimulatedHardware, fault: str, message: str) -> None:
    with pytest.raises(HealthError, match=message.replace("(", r"\(").replace(".", r"\.")):
        sim.inject(fault)
    assert sim.active_faults() == []


def test_inject_into_requires_a_simulated_node(tmp_path: Path) -> None:
    with pytest.raises(HealthError, match="not a simulated node"):
        inject_into(tmp_path / "nothing", "ecc-dbe")
    assert not (tmp_path / "nothing").exists()


@pytest.mark.integration  # injects through `trainwarden hw inject` in a subprocess
def test_xid_from_another_process_surfaces_as_event_then_in_probe(sim: SimulatedHardware) -> None:
    cfg = config()
    (watcher,) = build_watchers(cfg, sim)
    probes = build_probes(cfg, sim)
    assert watcher.poll(0.05) == []
    t0 = time.monotonic()
    subprocess.run(
        [str(TRAINWARDEN), "hw", "inject", "--state-dir", str(sim.state_dir), "xid:79@1"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    injected = time.monotonic()
    faults: list[Fault] = []
    while not faults and time.monotonic() - t0 < 10:
        faults = watcher.poll(1.0)
    assert time.monotonic() - injected < 1.0
    (fault,) = faults  # NVML event and kernel log line: reported once
    assert (fault.kind, fault.code, fault.gpu) == (fk.XID, 79, 1)
    assert watcher.poll(0.2) == []
    gpu = by_probe(asyncio.run(run_probes(probes, 1.0)), "gpu")
    assert gpu.health is Health.UNHEALTHY
    assert any(f.code == 79 and f.gpu == 1 for f in gpu.faults)


def test_storage_hang_is_real_and_released_by_clear(sim: SimulatedHardware) -> None:
    (storage,) = build_probes(config(enabled=("storage",)), sim)
    sim.inject("storage-hang")
    t0 = time.monotonic()
    (first,) = asyncio.run(run_probes([storage], 0.3))
    assert time.monotonic() - t0 < 1.0
    assert first.health is Health.UNHEALTHY
    assert first.faults[0].cause == f"storage:{sim.state_dir}/mnt/lustre"
    (again,) = asyncio.run(run_probes([storage], 0.3))
    assert "storage hung" in again.reason  # still stuck: answered without a new thread
    sim.clear("storage-hang")
    deadline = time.monotonic() + 3
    result = again
    while time.monotonic() < deadline:
        (result,) = asyncio.run(run_probes([storage], 0.5))
        if result.health is Health.HEALTHY:
            break
    assert result.health is Health.HEALTHY, result.reason


def test_state_dir_is_shared_between_instances(tmp_path: Path) -> None:
    a = SimulatedHardware("n1", gpus=2, state_dir=tmp_path / "hw")
    b = SimulatedHardware("ignored", gpus=8, state_dir=tmp_path / "hw")  # reuses n1's
    assert (b.node, b.gpus) == ("n1", 2)
    b.inject("ib-link-down")
    assert a.active_faults() == ["ib-link-down"]
    a.close()


def test_temporary_state_dir_is_removed() -> None:
    hw = SimulatedHardware("n")
    d = hw.state_dir
    assert (d / "sys/class/infiniband/mlx5_0/ports/1/state").read_text() == "4: ACTIVE\n"
    hw.close()
    assert not d.exists()
