"""The simulated NVML backend: healthy H100-like GPUs, bent by the active faults.

It reads the state directory on every call, so a fault injected by another process
shows on the next query; XID events are followed in ``xid-events.jsonl``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from trainwarden.health.nvml.backend import (
    THROTTLE_HW_POWER_BRAKE,
    THROTTLE_HW_THERMAL,
    GpuSample,
    NvmlError,
    NvmlGpuLost,
    XidEvent,
)
from trainwarden.health.sim import state as st

GIB = 1024**3
NVLINKS = 18
_POLL_S = 0.02


def targets(active: list[str], name: str) -> set[int]:
    """GPUs a persistent fault applies to (``ecc-dbe`` -> GPU 0, ``ecc-dbe@2`` -> GPU 2)."""
    out = set()
    for a in active:
        base, _, gpu = a.partition("@")
        if base == name:
            out.add(int(gpu) if gpu else 0)
    return out


class SimNvml:
    def __init__(self, state_dir: Path, gpus: int) -> None:
        self._dir = state_dir
        self._gpus = gpus
        events = state_dir / "xid-events.jsonl"
        self._offset = events.stat().st_size if events.exists() else 0

    def _active(self) -> list[str]:
        return st.active(self._dir)

    def init(self) -> None:
        if "nvml-unavailable" in self._active():
            raise NvmlError("NVML is not available: NVML Shared Library Not Found (simulated)")

    def device_count(self) -> int:
        act = self._active()
        self.init()
        return self._gpus - len(targets(act, "gpu-missing"))

    def sample(self, index: int) -> GpuSample:
        act = self._active()
        if index < 0 or index >= self._gpus:
            raise NvmlError(f"GPU {index}: Invalid Argument")
        if index in targets(act, "gpu-lost"):
            raise NvmlGpuLost(f"GPU {index}: GPU is lost (fallen off the bus)")

        def has(name: str) -> bool:
            return index in targets(act, name)

        hot = has("thermal-throttle")
        return GpuSample(
            index=index,
            uuid=f"GPU-5157a1e0-0000-4000-8000-{index:012d}",
            pci_bus_id=f"0000{st.pci_of(index)}.0".upper(),
            name="NVIDIA H100 80GB HBM3 (simulated)",
            temperature_c=93.0 if hot else 41.0,
            slowdown_temp_c=90.0,
            power_w=690.0 if has("power-brake") else 118.0,
            power_limit_w=700.0,
            throttle_reasons=(THROTTLE_HW_THERMAL if hot else 0)
            | (THROTTLE_HW_POWER_BRAKE if has("power-brake") else 0),
            ecc_volatile_uncorrected=2 if has("ecc-dbe") else 0,
            ecc_aggregate_uncorrected=2 if has("ecc-dbe") else 0,
            retired_pages_pending=False,
            remap_pending=has("row-remap-pending") or has("row-remap-failure"),
            remap_failure=has("row-remap-failure"),
            pcie_gen=5,
            pcie_gen_max=5,
            pcie_width=8 if has("pcie-degraded") else 16,
            pcie_width_max=16,
            nvlink_active=tuple(not (has("nvlink-down") and link == 3) for link in range(NVLINKS)),
            nvlink_errors=st.counters(self._dir).get(f"nvlink_errors@{index}", 0),
            memory_used_bytes=(38 * GIB) if has("gpu-mem-held") else GIB // 2,
            memory_total_bytes=80 * GIB,
            process_count=0,
            persistence_mode=True,
        )

    def _read_events(self) -> list[XidEvent]:
        path = self._dir / "xid-events.jsonl"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return []
        if size <= self._offset:
            return []
        with path.open("rb") as f:
            f.seek(self._offset)
            data = f.read(size - self._offset)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        out = []
        for line in data[: end + 1].decode().splitlines():
            try:
                e = json.loads(line)
                out.append(
                    XidEvent(
                        code=int(e["code"]),
                        pci_bus_id=e.get("pci"),
                        gpu=e.get("gpu"),
                        detail=e.get("detail", ""),
                        source="nvml",
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def wait_xids(self, timeout_s: float) -> list[XidEvent]:
        self.init()
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            events = self._read_events()
            left = deadline - time.monotonic()
            if events or left <= 0:
                return events
            time.sleep(min(_POLL_S, left))
