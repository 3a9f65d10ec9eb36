"""GPU probe: NVML state of every GPU plus the XIDs the kernel logged since the last check.

``read_gpus`` does the I/O (NVML, kernel log); ``evaluate_gpus`` is pure. A host
without NVML is data (``nvml_available = False``), healthy when no GPU is expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainwarden.health import faults as fk
from trainwarden.health.clock import Clock, SystemClock
from trainwarden.health.faults import XidCatalog
from trainwarden.health.kmsg import KernelLogReader, normalize_pci, parse_xid
from trainwarden.health.nvml.backend import (
    THROTTLE_HW_POWER_BRAKE,
    THROTTLE_HW_SLOWDOWN,
    THROTTLE_HW_THERMAL,
    THROTTLE_NAMES,
    THROTTLE_SW_THERMAL,
    GpuSample,
    NvmlBackend,
    NvmlError,
    NvmlGpuLost,
    XidEvent,
)
from trainwarden.health.probes.base import Action, CheckResult, Fault, Severity, Value
from trainwarden.health.probes.util import fold

GIB = 1024**3
NVLINK_ERRORS = "nvlink-errors"


@dataclass(frozen=True)
class GpuThresholds:
    expected_gpus: int | None = None
    temp_margin_c: float = 0.0  # degraded at slowdown threshold minus this margin
    power_over_limit_ratio: float = 1.05
    idle_memory_bytes: int = 2 * GIB  # memory held with no process (GH200 page-cache case)
    nvlink_errors_per_s: float = 10.0  # replay + recovery errors, summed over a GPU's links


@dataclass(frozen=True)
class GpuSnapshot:
    """What ``read_gpus`` saw. ``error`` is set when NVML itself is unusable."""

    nvml_available: bool
    error: str = ""
    count: int = 0
    gpus: tuple[GpuSample, ...] = ()
    lost: tuple[int, ...] = ()
    failed: tuple[tuple[int, str], ...] = ()
    xids: tuple[XidEvent, ...] = ()


def read_gpus(nvml: NvmlBackend, xids: tuple[XidEvent, ...] = ()) -> GpuSnapshot:
    """Query NVML for every GPU. Never raises: NVML errors become data."""
    try:
        nvml.init()
        count = nvml.device_count()
    except NvmlError as exc:
        return GpuSnapshot(nvml_available=False, error=str(exc), xids=xids)
    gpus: list[GpuSample] = []
    lost: list[int] = []
    failed: list[tuple[int, str]] = []
    for i in range(count):
        try:
            gpus.append(nvml.sample(i))
        except NvmlGpuLost:
            lost.append(i)
        except NvmlError as exc:
            failed.append((i, str(exc)))
    return GpuSnapshot(True, "", count, tuple(gpus), tuple(lost), tuple(failed), xids)


def kernel_xids(lines: list[str]) -> list[XidEvent]:
    """XID events from kernel log messages (pure)."""
    out = []
    for msg in lines:
        x = parse_xid(msg)
        if x is not None:
            out.append(XidEvent(code=x.code, pci_bus_id=x.pci, detail=x.detail, source="kmsg"))
    return out


def xid_fault(event: XidEvent, catalog: XidCatalog, gpu: int | None) -> tuple[Fault, Action]:
    cls = catalog.classify(event.code)
    where = f"GPU {gpu}" if gpu is not None else f"PCI {event.pci_bus_id or '?'}"
    detail = f"XID {event.code} ({cls.name}) on {where}"
    if event.detail:
        detail += f": {event.detail}"
    return Fault(fk.XID, cls.severity, detail, gpu=gpu, code=event.code), cls.action


def gpu_index(snap: GpuSnapshot, pci: str | None) -> int | None:
    if pci is None:
        return None
    want = normalize_pci(pci)
    for g in snap.gpus:
        if normalize_pci(g.pci_bus_id) == want:
            return g.index
    return None


def _throttle_names(bits: int) -> list[str]:
    return [name for bit, name in THROTTLE_NAMES.items() if bits & bit]


def _evaluate_one(g: GpuSample, t: GpuThresholds) -> tuple[list[Fault], dict[Fault, Action]]:
    faults: list[Fault] = []
    actions: dict[Fault, Action] = {}

    def add(kind: str, sev: Severity, detail: str, action: Action | None = None) -> None:
        f = Fault(kind, sev, f"GPU {g.index}: {detail}", gpu=g.index)
        faults.append(f)
        if action is not None:
            actions[f] = action

    if g.ecc_volatile_uncorrected:
        add(
            fk.ECC_DBE,
            Severity.FATAL,
            f"{g.ecc_volatile_uncorrected} uncorrectable ECC errors since boot",
            Action.RESET_GPU,
        )
    elif g.ecc_aggregate_uncorrected:
        add(
            fk.ECC_DBE,
            Severity.INFO,
            f"{g.ecc_aggregate_uncorrected} uncorrectable ECC errors over its lifetime",
        )
    if g.remap_failure:
        add(fk.ROW_REMAP_FAILURE, Severity.FATAL, "row remapping failed (needs RMA)", Action.DRAIN)
    elif g.remap_pending or g.retired_pages_pending:
        add(
            fk.ROW_REMAP_PENDING,
            Severity.DEGRADED,
            "row remap / page retirement pending (reset the GPU)",
            Action.RESET_GPU,
        )
    hot = (
        g.temperature_c is not None
        and g.slowdown_temp_c is not None
        and g.temperature_c >= g.slowdown_temp_c - t.temp_margin_c
    )
    thermal_bits = g.throttle_reasons & (
        THROTTLE_HW_THERMAL | THROTTLE_SW_THERMAL | THROTTLE_HW_SLOWDOWN
    )
    if hot or thermal_bits:
        add(
            fk.THERMAL_THROTTLE,
            Severity.DEGRADED,
            f"thermal slowdown ({g.temperature_c} C, slowdown at {g.slowdown_temp_c} C, "
            f"reasons {_throttle_names(g.throttle_reasons) or 'none'})",
        )
    if g.throttle_reasons & THROTTLE_HW_POWER_BRAKE:
        add(fk.POWER_THROTTLE, Severity.DEGRADED, "hardware power brake engaged")
    elif (
        g.power_w is not None
        and g.power_limit_w
        and g.power_w > g.power_limit_w * t.power_over_limit_ratio
    ):
        add(
            fk.POWER_THROTTLE,
            Severity.DEGRADED,
            f"power {g.power_w:.0f} W above limit {g.power_limit_w:.0f} W",
        )
    # The link width is fixed once trained; the generation drops at idle to save power,
    # so only a narrow link is a fault (a low generation is recorded as a value).
    if g.pcie_width is not None and g.pcie_width_max and g.pcie_width < g.pcie_width_max:
        add(
            fk.PCIE_DEGRADED,
            Severity.DEGRADED,
            f"PCIe link x{g.pcie_width} of x{g.pcie_width_max} (gen {g.pcie_gen}/{g.pcie_gen_max})",
        )
    down = [i for i, up in enumerate(g.nvlink_active) if not up]
    if down:
        add(
            fk.NVLINK_DOWN,
            Severity.FATAL,
            f"NVLink links {down} of {len(g.nvlink_active)} inactive",
            Action.RESET_GPU,
        )
    if (
        g.process_count == 0
        and g.memory_used_bytes is not None
        and g.memory_used_bytes > t.idle_memory_bytes
    ):
        add(
            fk.GPU_MEM_HELD,
            Severity.DEGRADED,
            f"{g.memory_used_bytes / GIB:.1f} GiB used with no process on the GPU",
        )
    if g.persistence_mode is False:
        add("persistence-off", Severity.INFO, "persistence mode off (slower job start)")
    return faults, actions


def _values(snap: GpuSnapshot, expected: int | None) -> dict[str, Value]:
    v: dict[str, Value] = {
        "nvml_available": snap.nvml_available,
        "gpu_count": snap.count,
        "gpus_expected": expected,
    }
    if snap.error:
        v["nvml_error"] = snap.error
    for g in snap.gpus:
        p = f"gpu{g.index}_"
        v[p + "temperature_c"] = g.temperature_c
        v[p + "power_w"] = g.power_w
        v[p + "memory_used_bytes"] = g.memory_used_bytes
        v[p + "ecc_volatile_uncorrected"] = g.ecc_volatile_uncorrected
        v[p + "pcie_gen"] = g.pcie_gen
        v[p + "pcie_width"] = g.pcie_width
        v[p + "nvlink_errors"] = g.nvlink_errors
        v[p + "throttle_reasons"] = g.throttle_reasons
    v["xids"] = ",".join(str(x.code) for x in snap.xids) or None
    return v


def nvlink_error_faults(
    prev: GpuSnapshot | None, cur: GpuSnapshot, dt: float, t: GpuThresholds
) -> list[Fault]:
    """Pure: NVLink error counters judged as a rate between two snapshots."""
    if prev is None or dt <= 0:
        return []
    before = {g.index: g.nvlink_errors for g in prev.gpus}
    out = []
    for g in cur.gpus:
        delta = g.nvlink_errors - before.get(g.index, g.nvlink_errors)
        if delta > 0 and delta / dt > t.nvlink_errors_per_s:
            out.append(
                Fault(
                    NVLINK_ERRORS,
                    Severity.DEGRADED,
                    f"GPU {g.index}: {delta / dt:.0f} NVLink errors/s "
                    f"(limit {t.nvlink_errors_per_s:g}/s)",
                    gpu=g.index,
                )
            )
    return out


def evaluate_gpus(
    snap: GpuSnapshot, t: GpuThresholds, catalog: XidCatalog, extra: list[Fault] | None = None
) -> CheckResult:
    """Pure: a snapshot and thresholds (and faults found by rate) -> the GPU verdict."""
    faults: list[Fault] = []
    actions: dict[Fault, Action] = {}
    expected = t.expected_gpus
    values = _values(snap, expected)
    if not snap.nvml_available:
        if expected:
            f = Fault(
                fk.GPU_MISSING,
                Severity.FATAL,
                f"expected {expected} GPUs, but NVML is not available ({snap.error})",
            )
            return fold("gpu", [f], values, "")
        return fold("gpu", [], values, f"no GPU expected; NVML not available ({snap.error})")
    for i in snap.lost:
        f = Fault(fk.GPU_LOST, Severity.FATAL, f"GPU {i} is lost (fallen off the bus)", gpu=i)
        faults.append(f)
        actions[f] = Action.REBOOT
    for i, err in snap.failed:
        faults.append(
            Fault(
                fk.NVML_UNAVAILABLE, Severity.DEGRADED, f"GPU {i}: NVML query failed: {err}", gpu=i
            )
        )
    if expected is not None and snap.count < expected:
        faults.append(
            Fault(fk.GPU_MISSING, Severity.FATAL, f"{snap.count} GPUs visible, {expected} expected")
        )
    for g in snap.gpus:
        f_one, a_one = _evaluate_one(g, t)
        faults.extend(f_one)
        actions.update(a_one)
    faults.extend(extra or ())
    for x in snap.xids:
        f, a = xid_fault(x, catalog, x.gpu if x.gpu is not None else gpu_index(snap, x.pci_bus_id))
        faults.append(f)
        actions[f] = a
    return fold("gpu", faults, values, f"{len(snap.gpus)} GPUs healthy", actions)


@dataclass(eq=False)
class GpuProbe:
    """The periodic GPU check. XIDs from the kernel log stay in the result for ``xid_hold_s``."""

    nvml: NvmlBackend
    thresholds: GpuThresholds
    catalog: XidCatalog
    kernel_log: KernelLogReader | None = None
    clock: Clock = field(default_factory=SystemClock)
    xid_hold_s: float = 300.0
    _recent: dict[tuple[str, int], tuple[float, XidEvent]] = field(default_factory=dict)
    _prev: tuple[float, GpuSnapshot] | None = None

    # Judges counters between two checks: vetting takes a baseline first.
    uses_rates = True

    @property
    def name(self) -> str:
        return "gpu"

    def check(self) -> CheckResult:
        now = self.clock.monotonic()
        if self.kernel_log is not None:
            for x in kernel_xids([line.message for line in self.kernel_log.read_new()]):
                self._recent[(normalize_pci(x.pci_bus_id or "?"), x.code)] = (now, x)
        self._recent = {k: v for k, v in self._recent.items() if now - v[0] <= self.xid_hold_s}
        held = tuple(v[1] for v in self._recent.values())
        snap = read_gpus(self.nvml, held)
        prev = self._prev
        rates = nvlink_error_faults(
            prev[1] if prev else None, snap, now - prev[0] if prev else 0.0, self.thresholds
        )
        self._prev = (now, snap)
        return evaluate_gpus(snap, self.thresholds, self.catalog, rates)
