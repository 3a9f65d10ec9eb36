"""The NVML interface the GPU probe and the XID watcher use.

Everything the probe needs from one GPU comes back as one :class:`GpuSample` (plain
numbers, no NVML handles), so evaluation stays pure and the simulated backend only has
to fill in a dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from trainwarden.health.errors import HealthError

# NVML clock-throttle-reason bits (nvml.h, nvmlClocksEventReasons*).
THROTTLE_SW_POWER_CAP = 0x4
THROTTLE_HW_SLOWDOWN = 0x8
THROTTLE_SW_THERMAL = 0x20
THROTTLE_HW_THERMAL = 0x40
THROTTLE_HW_POWER_BRAKE = 0x80

THROTTLE_NAMES: dict[int, str] = {
    THROTTLE_SW_POWER_CAP: "sw-power-cap",
    THROTTLE_HW_SLOWDOWN: "hw-slowdown",
    THROTTLE_SW_THERMAL: "sw-thermal",
    THROTTLE_HW_THERMAL: "hw-thermal",
    THROTTLE_HW_POWER_BRAKE: "hw-power-brake",
}


class NvmlError(HealthError):
    """NVML is not usable (no library, no driver) or a query failed."""


class NvmlGpuLost(NvmlError):
    """A GPU answered NVML_ERROR_GPU_IS_LOST: it has fallen off the bus."""


@dataclass(frozen=True)
class GpuSample:
    """What one GPU reports. ``None`` means the GPU does not support the query."""

    index: int
    uuid: str
    pci_bus_id: str
    name: str = "GPU"
    temperature_c: float | None = None
    slowdown_temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    throttle_reasons: int = 0
    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    retired_pages_pending: bool | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    pcie_gen: int | None = None
    pcie_gen_max: int | None = None
    pcie_width: int | None = None
    pcie_width_max: int | None = None
    nvlink_active: tuple[bool, ...] = ()
    nvlink_errors: int = 0
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    process_count: int = 0
    persistence_mode: bool | None = None


@dataclass(frozen=True)
class XidEvent:
    """One XID reported by the driver (NVML event or kernel log line)."""

    code: int
    pci_bus_id: str | None = None
    gpu: int | None = None
    detail: str = ""
    source: str = "nvml"
    extra: dict[str, str] = field(default_factory=dict)


class NvmlBackend(Protocol):
    """The few NVML queries trainwarden needs. Methods raise :class:`NvmlError`."""

    def init(self) -> None:
        """Load NVML; raises NvmlError when no library or driver is present."""
        ...

    def device_count(self) -> int: ...

    def sample(self, index: int) -> GpuSample:
        """One GPU's state; raises NvmlGpuLost when the GPU is lost."""
        ...

    def wait_xids(self, timeout_s: float) -> list[XidEvent]:
        """XID events since the last call, waiting at most ``timeout_s`` for one."""
        ...
