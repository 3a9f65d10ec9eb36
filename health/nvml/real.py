"""The real NVML backend, on pynvml (nvidia-ml-py).

Importing pynvml loads no driver (that happens in ``nvmlInit``), so hosts without one can
still import trainwarden; every pynvml error is turned into :class:`NvmlError` (or
:class:`NvmlGpuLost`) at this boundary. Optional queries a GPU does not support come back
as ``None``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml as nv

from trainwarden.health.nvml.backend import GpuSample, NvmlError, NvmlGpuLost, XidEvent

T = TypeVar("T")

_GPU_IS_LOST = 15
_TIMEOUT = 10


def _translate(exc: Exception, what: str) -> NvmlError:
    value = getattr(exc, "value", None)
    if value == _GPU_IS_LOST:
        return NvmlGpuLost(f"{what}: GPU is lost (fallen off the bus)")
    return NvmlError(f"{what}: {exc}")


class RealNvml:
    """NVML through pynvml. ``init`` raises NvmlError where no driver is installed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._event_set: Any = None

    def init(self) -> None:
        with self._lock:
            if self._ready:
                return
            try:
                nv.nvmlInit()
            except nv.NVMLError as exc:
                raise NvmlError(f"NVML is not available: {exc}") from None
            self._ready = True

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except nv.NVMLError as exc:
            raise _translate(exc, what) from None

    def _opt(self, fn: Callable[..., T], *args: Any) -> T | None:
        """An optional query: None when unsupported; a lost GPU still raises."""
        try:
            return fn(*args)
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) == _GPU_IS_LOST:
                raise _translate(exc, fn.__name__) from None
            return None

    def device_count(self) -> int:
        self.init()
        return int(self._call("device count", nv.nvmlDeviceGetCount))

    def _handle(self, index: int) -> Any:
        return self._call(f"GPU {index}", nv.nvmlDeviceGetHandleByIndex, index)

    def sample(self, index: int) -> GpuSample:
        self.init()
        h = self._handle(index)
        uuid = str(self._call(f"GPU {index} uuid", nv.nvmlDeviceGetUUID, h))
        pci = self._call(f"GPU {index} pci", nv.nvmlDeviceGetPciInfo, h)
        bus_id = pci.busId.decode() if isinstance(pci.busId, bytes) else str(pci.busId)
        name = self._opt(nv.nvmlDeviceGetName, h)
        temp = self._opt(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        slow = self._opt(
            nv.nvmlDeviceGetTemperatureThreshold, h, nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
        )
        power = self._opt(nv.nvmlDeviceGetPowerUsage, h)
        limit = self._opt(nv.nvmlDeviceGetEnforcedPowerLimit, h)
        reasons = self._opt(nv.nvmlDeviceGetCurrentClocksEventReasons, h)
        unc = nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        ecc_v = self._opt(nv.nvmlDeviceGetTotalEccErrors, h, unc, nv.NVML_VOLATILE_ECC)
        ecc_a = self._opt(nv.nvmlDeviceGetTotalEccErrors, h, unc, nv.NVML_AGGREGATE_ECC)
        retired = self._opt(nv.nvmlDeviceGetRetiredPagesPendingStatus, h)
        remap = self._opt(nv.nvmlDeviceGetRemappedRows, h)
        links: list[bool] = []
        link_errors = 0
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            state = self._opt(nv.nvmlDeviceGetNvLinkState, h, link)
            if state is None:
                break
            links.append(bool(state))
            for counter in (nv.NVML_NVLINK_ERROR_DL_REPLAY, nv.NVML_NVLINK_ERROR_DL_RECOVERY):
                link_errors += int(
                    self._opt(nv.nvmlDeviceGetNvLinkErrorCounter, h, link, counter) or 0
                )
        mem = self._opt(nv.nvmlDeviceGetMemoryInfo, h)
        procs = self._opt(nv.nvmlDeviceGetComputeRunningProcesses, h) or []
        persistence = self._opt(nv.nvmlDeviceGetPersistenceMode, h)
        return GpuSample(
            index=index,
            uuid=uuid,
            pci_bus_id=bus_id,
            name=name.decode() if isinstance(name, bytes) else str(name or "GPU"),
            temperature_c=None if temp is None else float(temp),
            slowdown_temp_c=None if slow is None else float(slow),
            power_w=None if power is None else power / 1000.0,
            power_limit_w=None if limit is None else limit / 1000.0,
            throttle_reasons=int(reasons or 0),
            ecc_volatile_uncorrected=None if ecc_v is None else int(ecc_v),
            ecc_aggregate_uncorrected=None if ecc_a is None else int(ecc_a),
            retired_pages_pending=None if retired is None else bool(retired),
            remap_pending=None if remap is None else bool(remap[2]),
            remap_failure=None if remap is None else bool(remap[3]),
            pcie_gen=self._opt(nv.nvmlDeviceGetCurrPcieLinkGeneration, h),
            pcie_gen_max=self._opt(nv.nvmlDeviceGetMaxPcieLinkGeneration, h),
            pcie_width=self._opt(nv.nvmlDeviceGetCurrPcieLinkWidth, h),
            pcie_width_max=self._opt(nv.nvmlDeviceGetMaxPcieLinkWidth, h),
            nvlink_active=tuple(links),
            nvlink_errors=link_errors,
            memory_used_bytes=None if mem is None else int(mem.used),
            memory_total_bytes=None if mem is None else int(mem.total),
            process_count=len(procs),
            persistence_mode=None if persistence is None else bool(persistence),
        )

    def _events(self) -> Any:
        if self._event_set is None:
            event_set = self._call("event set", nv.nvmlEventSetCreate)
            for i in range(self.device_count()):
                # Some GPUs refuse XID registration; the kernel log still carries them.
                self._opt(
                    nv.nvmlDeviceRegisterEvents,
                    self._handle(i),
                    nv.nvmlEventTypeXidCriticalError,
                    event_set,
                )
            self._event_set = event_set
        return self._event_set

    def wait_xids(self, timeout_s: float) -> list[XidEvent]:
        self.init()
        event_set = self._events()
        try:
            data = nv.nvmlEventSetWait_v2(event_set, max(0, int(timeout_s * 1000)))
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) == _TIMEOUT:
                return []
            raise _translate(exc, "XID event wait") from None
        bus = None
        pci = self._opt(nv.nvmlDeviceGetPciInfo, data.device)
        if pci is not None:
            bus = pci.busId.decode() if isinstance(pci.busId, bytes) else str(pci.busId)
        return [XidEvent(code=int(data.eventData), pci_bus_id=bus, source="nvml")]
