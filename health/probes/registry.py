"""The explicit set of probes and watchers, built from one configuration and one hardware bundle.

``enabled`` works as in gpud: ``"*"`` enables everything, a bare name enables one
probe, ``"-name"`` disables it (``storage`` covers every ``storage:<path>`` probe).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trainwarden.health.clock import Clock, SystemClock
from trainwarden.health.errors import HealthError
from trainwarden.health.faults import XidCatalog
from trainwarden.health.hardware import Hardware, RealHardware
from trainwarden.health.probes.base import EventWatcher, Probe
from trainwarden.health.probes.gpu import GpuProbe, GpuThresholds
from trainwarden.health.probes.host import HostProbe, HostThresholds
from trainwarden.health.probes.network import NetThresholds, NetworkProbe
from trainwarden.health.probes.storage import StorageProbe, StorageThresholds
from trainwarden.health.probes.xid import XidWatcher

PROBE_NAMES = ("gpu", "network", "storage", "host")
WATCHER_NAMES = ("xid",)


@dataclass(frozen=True)
class ProbeConfig:
    expected_gpus: int | None = None
    storage_paths: tuple[str, ...] = ()
    sysfs_root: str = "/sys"
    procfs_root: str = "/proc"
    kmsg_path: str | None = None
    timeout_s: float = 10.0
    xid_overrides: Mapping[str, str] = field(default_factory=dict)
    enabled: tuple[str, ...] = ("*",)
    # Read the kernel log from its start (vetting: anything since boot counts) instead of
    # only what is logged from now on (the agent).
    kmsg_from_start: bool = False
    hold_s: float = 300.0  # how long an XID / OOM / MCE stays in periodic results
    gpu: GpuThresholds = field(default_factory=GpuThresholds)
    network: NetThresholds = field(default_factory=NetThresholds)
    storage: StorageThresholds = field(default_factory=StorageThresholds)
    host: HostThresholds = field(default_factory=HostThresholds)

    def is_enabled(self, name: str) -> bool:
        """gpud-style selection; the last matching entry wins."""
        base = name.split(":", 1)[0]
        known = (*PROBE_NAMES, *WATCHER_NAMES)
        verdict = False
        for entry in self.enabled:
            neg = entry.startswith("-")
            key = entry[1:] if neg else entry
            if key != "*" and key not in known:
                raise HealthError(f"unknown probe {key!r} in enabled; known: {', '.join(known)}")
            if key in ("*", base):
                verdict = not neg
        return verdict

    def catalog(self) -> XidCatalog:
        overrides: dict[int | str, str] = {k: v for k, v in self.xid_overrides.items()}
        return XidCatalog(overrides)


def build_probes(
    config: ProbeConfig, hardware: Hardware, clock: Clock | None = None
) -> list[Probe]:
    """Every enabled periodic probe, in a fixed order: gpu, network, storage paths, host."""
    clock = clock or SystemClock()
    probes: list[Probe] = []
    if config.is_enabled("gpu"):
        thresholds = config.gpu
        if config.expected_gpus is not None:
            thresholds = GpuThresholds(
                config.expected_gpus,
                thresholds.temp_margin_c,
                thresholds.power_over_limit_ratio,
                thresholds.idle_memory_bytes,
            )
        probes.append(
            GpuProbe(
                hardware.nvml,
                thresholds,
                config.catalog(),
                hardware.kernel_log(config.kmsg_from_start),
                clock,
                config.hold_s,
            )
        )
    if config.is_enabled("network"):
        probes.append(NetworkProbe(hardware.sysfs_root, config.network, clock))
    if config.is_enabled("storage"):
        for path in config.storage_paths or hardware.default_storage_paths():
            probes.append(
                StorageProbe(
                    path, hardware.storage, hardware.procfs_root, config.storage, hardware.node
                )
            )
    if config.is_enabled("host"):
        probes.append(
            HostProbe(
                hardware.procfs_root,
                config.host,
                hardware.kernel_log(config.kmsg_from_start),
                clock,
                config.hold_s,
            )
        )
    return probes


def build_watchers(config: ProbeConfig, hardware: Hardware) -> list[EventWatcher]:
    """Event sources the agent polls between periodic checks (XIDs)."""
    watchers: list[EventWatcher] = []
    if config.is_enabled("xid"):
        watchers.append(
            XidWatcher(hardware.nvml, config.catalog(), hardware.kernel_log(config.kmsg_from_start))
        )
    return watchers


def real_hardware(config: ProbeConfig) -> Hardware:
    """The node's real hardware, with the roots and kernel log the configuration names."""
    return RealHardware(
        sysfs_root=config.sysfs_root,
        procfs_root=config.procfs_root,
        kmsg_path=config.kmsg_path,
    )
