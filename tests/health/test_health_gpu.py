"""GPU evaluation (pure, table-driven) and the GPU probe against a kernel log fixture."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from trainwarden.health import faults as fk
from trainwarden.health.clock import VirtualClock
from trainwarden.health.faults import XidCatalog
from trainwarden.health.kmsg import FileKernelLog
from trainwarden.health.nvml.backend import (
    THROTTLE_HW_POWER_BRAKE,
    THROTTLE_HW_THERMAL,
    THROTTLE_SW_POWER_CAP,
    GpuSample,
    XidEvent,
)
from trainwarden.health.probes.base import Action, Health, Severity
from trainwarden.health.probes.gpu import (
    GpuProbe,
    GpuSnapshot,
    GpuThresholds,
    evaluate_gpus,
    nvlink_error_faults,
    read_gpus,
)
from trainwarden.health.sim.nvml import SimNvml

GIB = 1024**3
CATALOG = XidCatalog()


def healthy(index: int = 0, **changes: Any) -> GpuSample:
    base = GpuSample(
        index=index,
        uuid=f"GPU-{index}",
        pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
        temperature_c=40.0,
        slowdown_temp_c=90.0,
        power_w=100.0,
        power_limit_w=700.0,
        throttle_reasons=0,
        ecc_volatile_uncorrected=0,
        ecc_aggregate_uncorrected=0,
        retired_pages_pending=False,
        remap_pending=False,
        remap_failure=False,
        pcie_gen=5,
        pcie_gen_max=5,
        pcie_width=16,
        pcie_width_max=16,
        nvlink_active=(True,) * 18,
        memory_used_bytes=GIB // 2,
        memory_total_bytes=80 * GIB,
        process_count=0,
        persistence_mode=True,
    )
    return dataclasses.replace(base, **changes)


def snap(*gpus: GpuSample, **kw: Any) -> GpuSnapshot:
    return GpuSnapshot(nvml_available=True, count=kw.pop("count", len(gpus)), gpus=gpus, **kw)


# (case, snapshot, expected_gpus, health, fault kind or None, action)
CASES = [
    ("all healthy", snap(healthy(0), healthy(1)), 2, Health.HEALTHY, None, Action.NONE),
    (
        "sw power cap is normal under load",
        snap(healthy(0, throttle_reasons=THROTTLE_SW_POWER_CAP, power_w=699.0)),
        1,
        Health.HEALTHY,
        None,
        Action.NONE,
    ),
    (
        "idle PCIe gen drop is not a fault",
        snap(healthy(0, pcie_gen=1)),
        1,
        Health.HEALTHY,
        None,
        Action.NONE,
    ),
    (
        "volatile DBE",
        snap(healthy(0, ecc_volatile_uncorrected=3)),
        1,
        Health.UNHEALTHY,
        fk.ECC_DBE,
        Action.RESET_GPU,
    ),
    (
        "aggregate DBE only is info",
        snap(healthy(0, ecc_aggregate_uncorrected=3)),
        1,
        Health.HEALTHY,
        fk.ECC_DBE,
        Action.NONE,
    ),
    (
        "row remap failure",
        snap(healthy(0, remap_failure=True, remap_pending=True)),
        1,
        Health.UNHEALTHY,
        fk.ROW_REMAP_FAILURE,
        Action.DRAIN,
    ),
    (
        "row remap pending",
        snap(healthy(0, remap_pending=True)),
        1,
        Health.DEGRADED,
        fk.ROW_REMAP_PENDING,
        Action.RESET_GPU,
    ),
    (
        "retired pages pending",
        snap(healthy(0, retired_pages_pending=True)),
        1,
        Health.DEGRADED,
        fk.ROW_REMAP_PENDING,
        Action.RESET_GPU,
    ),
    (
        "hot",
        snap(healthy(0, temperature_c=91.0)),
        1,
        Health.DEGRADED,
        fk.THERMAL_THROTTLE,
        Action.INSPECT,
    ),
    (
        "hw thermal bit",
        snap(healthy(0, throttle_reasons=THROTTLE_HW_THERMAL)),
        1,
        Health.DEGRADED,
        fk.THERMAL_THROTTLE,
        Action.INSPECT,
    ),
    (
        "power brake",
        snap(healthy(0, throttle_reasons=THROTTLE_HW_POWER_BRAKE)),
        1,
        Health.DEGRADED,
        fk.POWER_THROTTLE,
        Action.INSPECT,
    ),
    (
        "power over limit",
        snap(healthy(0, power_w=800.0)),
        1,
        Health.DEGRADED,
        fk.POWER_THROTTLE,
        Action.INSPECT,
    ),
    (
        "narrow PCIe",
        snap(healthy(0, pcie_width=8)),
        1,
        Health.DEGRADED,
        fk.PCIE_DEGRADED,
        Action.INSPECT,
    ),
    (
        "nvlink down",
        snap(healthy(0, nvlink_active=(True, False, True))),
        1,
        Health.UNHEALTHY,
        fk.NVLINK_DOWN,
        Action.RESET_GPU,
    ),
    (
        "memory held while idle",
        snap(healthy(0, memory_used_bytes=30 * GIB)),
        1,
        Health.DEGRADED,
        fk.GPU_MEM_HELD,
        Action.INSPECT,
    ),
    (
        "memory used by a job is fine",
        snap(healthy(0, memory_used_bytes=70 * GIB, process_count=1)),
        1,
        Health.HEALTHY,
        None,
        Action.NONE,
    ),
    (
        "persistence off is a note",
        snap(healthy(0, persistence_mode=False)),
        1,
        Health.HEALTHY,
        "persistence-off",
        Action.NONE,
    ),
    (
        "gpu lost",
        snap(healthy(0), count=2, lost=(1,)),
        2,
        Health.UNHEALTHY,
        fk.GPU_LOST,
        Action.REBOOT,
    ),
    (
        "fewer than expected",
        snap(healthy(0), healthy(1)),
        4,
        Health.UNHEALTHY,
        fk.GPU_MISSING,
        Action.DRAIN,
    ),
    (
        "query failed",
        snap(healthy(0), count=2, failed=((1, "Unknown Error"),)),
        2,
        Health.DEGRADED,
        fk.NVML_UNAVAILABLE,
        Action.INSPECT,
    ),
    (
        "no NVML, none expected",
        GpuSnapshot(False, "NVML Shared Library Not Found"),
        None,
        Health.HEALTHY,
        None,
        Action.NONE,
    ),
    (
        "no NVML, 0 expected",
        GpuSnapshot(False, "NVML Shared Library Not Found"),
        0,
        Health.HEALTHY,
        None,
        Action.NONE,
    ),
    (
        "no NVML, 4 expected",
        GpuSnapshot(False, "NVML Shared Library Not Found"),
        4,
        Health.UNHEALTHY,
        fk.GPU_MISSING,
        Action.DRAIN,
    ),
    (
        "xid 79 via pci",
        snap(healthy(0), healthy(1), xids=(XidEvent(79, "0000:19:00"),)),
        2,
        Health.UNHEALTHY,
        fk.XID,
        Action.REBOOT,
    ),
    (
        "xid 13 restarts the job",
        snap(healthy(0), xids=(XidEvent(13, gpu=0),)),
        1,
        Health.DEGRADED,
        fk.XID,
        Action.RESTART_JOB,
    ),
    (
        "xid 79 outranks ecc's reset",
        snap(healthy(0, ecc_volatile_uncorrected=1), xids=(XidEvent(79, gpu=0),)),
        1,
        Health.UNHEALTHY,
        fk.XID,
        Action.REBOOT,
    ),
]


@pytest.mark.parametrize(
    ("case", "s", "expected", "health", "kind", "action"), CASES, ids=[c[0] for c in CASES]
)
def test_evaluate_gpus(
    case: str,
    s: GpuSnapshot,
    expected: int | None,
    health: Health,
    kind: str | None,
    action: Action,
) -> None:
    result = evaluate_gpus(s, GpuThresholds(expected_gpus=expected), CATALOG)
    assert result.probe == "gpu"
    assert result.health is health, result.reason
    assert result.action is action
    assert result.reason
    if kind is None:
        assert not result.faults
    else:
        assert kind in {f.kind for f in result.faults}
    assert result.values["nvml_available"] is s.nvml_available


def test_xid_attributed_to_gpu_by_pci() -> None:
    s = snap(healthy(0), healthy(1), xids=(XidEvent(79, "0000:19:00"),))
    result = evaluate_gpus(s, GpuThresholds(), CATALOG)
    (fault,) = result.faults
    assert (fault.gpu, fault.code, fault.severity) == (1, 79, Severity.FATAL)
    assert "fallen off the bus" in fault.detail


def test_xid_operator_override_downgrades() -> None:
    s = snap(healthy(0), xids=(XidEvent(79, gpu=0),))
    result = evaluate_gpus(s, GpuThresholds(), XidCatalog({"79": "degraded:inspect"}))
    assert result.health is Health.DEGRADED
    assert result.action is Action.INSPECT


def test_no_nvml_is_data_not_traceback() -> None:
    from trainwarden.health.nvml.real import RealNvml

    s = read_gpus(RealNvml())  # this machine has no NVIDIA driver
    if s.nvml_available:
        pytest.skip("a real NVIDIA driver is present")
    assert "NVML" in s.error
    result = evaluate_gpus(s, GpuThresholds(), CATALOG)
    assert result.health is Health.HEALTHY
    assert result.values["nvml_available"] is False
    assert "NVML not available" in result.reason


def test_gpu_probe_holds_kernel_xids(tmp_path: Path, data: Path, sim: Any) -> None:
    log = tmp_path / "kern.log"
    log.write_text((data / "dmesg-xid.txt").read_text())
    clock = VirtualClock()
    probe = GpuProbe(
        SimNvml(sim.state_dir, 4),
        GpuThresholds(expected_gpus=4),
        CATALOG,
        FileKernelLog(log),
        clock,
        xid_hold_s=60.0,
    )
    first = probe.check()
    codes = sorted(f.code for f in first.faults if f.kind == fk.XID and f.code is not None)
    assert codes == [13, 48, 79, 94]
    assert first.health is Health.UNHEALTHY
    by_code = {f.code: f.gpu for f in first.faults if f.kind == fk.XID}
    assert by_code[79] == 2  # PCI 0000:3b:00 is the simulated GPU 2
    clock.advance(30)
    assert probe.check().health is Health.UNHEALTHY  # still held
    clock.advance(31)
    later = probe.check()
    assert later.health is Health.HEALTHY, later.reason


@pytest.mark.parametrize(
    ("before", "after", "dt", "flagged"),
    [
        (0, 0, 10, False),
        (0, 50, 10, False),
        (0, 500, 10, True),
        (500, 0, 10, False),
        (0, 500, 0, False),
    ],
)
def test_nvlink_error_rate(before: int, after: int, dt: float, flagged: bool) -> None:
    prev = snap(healthy(0, nvlink_errors=before))
    cur = snap(healthy(0, nvlink_errors=after))
    faults = nvlink_error_faults(prev, cur, dt, GpuThresholds(nvlink_errors_per_s=10.0))
    assert bool(faults) is flagged
    if flagged:
        result = evaluate_gpus(cur, GpuThresholds(), CATALOG, faults)
        assert result.health is Health.DEGRADED and "NVLink errors/s" in result.reason


def test_nvlink_errors_need_a_previous_sample() -> None:
    assert (
        nvlink_error_faults(None, snap(healthy(0, nvlink_errors=10**6)), 10, GpuThresholds()) == []
    )


def test_xid_attribution_keeps_the_pci_domain() -> None:
    # GH200: every GPU on bus 01 of its own domain.
    gpus = (healthy(0, pci_bus_id="00000009:01:00.0"), healthy(1, pci_bus_id="00000019:01:00.0"))
    result = evaluate_gpus(
        snap(*gpus, xids=(XidEvent(79, "0019:01:00"),)), GpuThresholds(), CATALOG
    )
    assert [f.gpu for f in result.faults] == [1]
