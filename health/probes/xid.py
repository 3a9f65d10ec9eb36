"""XID watcher: XIDs as events, from NVML events and the kernel log, published at once.

Both sources usually report the same XID; one XID per (GPU, code) within
``dedupe_s`` is kept. Without NVML (no driver, or event registration refused) the
watcher still follows the kernel log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from trainwarden.health.faults import XidCatalog
from trainwarden.health.kmsg import KernelLogReader, normalize_pci
from trainwarden.health.nvml.backend import NvmlBackend, NvmlError, XidEvent
from trainwarden.health.probes.base import Fault
from trainwarden.health.probes.gpu import kernel_xids, xid_fault

_POLL_S = 0.05


@dataclass(eq=False)
class XidWatcher:
    nvml: NvmlBackend
    catalog: XidCatalog
    kernel_log: KernelLogReader | None = None
    dedupe_s: float = 5.0
    _nvml_ok: bool | None = None
    _pci_to_gpu: dict[str, int] = field(default_factory=dict)
    _seen: dict[tuple[str, int], float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "xid"

    def _nvml_ready(self) -> bool:
        if self._nvml_ok is None:
            try:
                self.nvml.init()
                for i in range(self.nvml.device_count()):
                    try:
                        self._pci_to_gpu[normalize_pci(self.nvml.sample(i).pci_bus_id)] = i
                    except NvmlError:
                        continue
                self._nvml_ok = True
            except NvmlError:
                self._nvml_ok = False
        return self._nvml_ok

    def _kernel(self) -> list[XidEvent]:
        if self.kernel_log is None:
            return []
        return kernel_xids([line.message for line in self.kernel_log.read_new()])

    def poll(self, timeout_s: float) -> list[Fault]:
        """XID faults since the last call; waits at most ``timeout_s`` for the first one."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._nvml_ready()  # learn PCI -> GPU index before attributing kernel-log XIDs
        events = self._kernel()
        while not events:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            step = min(left, _POLL_S if self.kernel_log is not None else left)
            if self._nvml_ready():
                try:
                    events = self.nvml.wait_xids(step)
                except NvmlError:
                    self._nvml_ok = False
                    time.sleep(step)
            else:
                time.sleep(step)
            events += self._kernel()
        return self._faults(events)

    def _faults(self, events: list[XidEvent]) -> list[Fault]:
        now = time.monotonic()
        self._seen = {k: t for k, t in self._seen.items() if now - t <= self.dedupe_s}
        out = []
        for e in events:
            pci = normalize_pci(e.pci_bus_id) if e.pci_bus_id else "?"
            gpu = e.gpu if e.gpu is not None else self._pci_to_gpu.get(pci)
            key = (str(gpu) if gpu is not None else pci, e.code)
            if key in self._seen:
                continue
            self._seen[key] = now
            out.append(xid_fault(e, self.catalog, gpu)[0])
        return out
