"""Host probe: memory, swap, load, D-state and zombie processes (procfs), OOM kills and
machine checks (kernel log). Reads under a configurable procfs root."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainwarden.health import faults as fk
from trainwarden.health.clock import Clock, SystemClock
from trainwarden.health.kmsg import KernelLogReader, is_mce, is_oom
from trainwarden.health.probes.base import CheckResult, Fault, Severity, Value
from trainwarden.health.probes.util import fold, read_text

HOST_ZOMBIES = "host-zombies"
HOST_LOAD = "host-load"


@dataclass(frozen=True)
class HostThresholds:
    min_available_ratio: float = 0.05
    max_load_per_cpu: float = 4.0
    max_d_state: int = 10
    max_zombies: int = 200


@dataclass(frozen=True)
class HostSample:
    mem_total_bytes: int | None
    mem_available_bytes: int | None
    swap_total_bytes: int | None
    swap_free_bytes: int | None
    load1: float | None
    cpus: int
    d_state: int
    zombies: int
    oom_lines: tuple[str, ...] = ()
    mce_lines: tuple[str, ...] = ()


def parse_meminfo(text: str) -> dict[str, int]:
    """``MemAvailable:  123 kB`` -> {"MemAvailable": 125952} (bytes)."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            out[key.strip()] = int(parts[0]) * scale
    return out


def parse_loadavg(text: str) -> float | None:
    try:
        return float(text.split(maxsplit=1)[0])
    except (ValueError, IndexError):
        return None


def parse_stat_state(text: str) -> str | None:
    """``/proc/<pid>/stat`` -> the one-letter state (after the command, which may hold spaces)."""
    end = text.rfind(")")
    if end < 0:
        return None
    rest = text[end + 1 :].split()
    return rest[0] if rest else None


def count_cpus(stat_text: str) -> int:
    return (
        sum(1 for line in stat_text.splitlines() if line.startswith("cpu") and line[3:4].isdigit())
        or 1
    )


def read_host(procfs: Path, kernel_lines: list[str]) -> HostSample:
    mem = parse_meminfo(read_text(procfs / "meminfo") or "")
    d_state = zombies = 0
    for pid in procfs.iterdir():
        if not pid.name.isdigit():
            continue
        state = parse_stat_state(read_text(pid / "stat") or "")
        if state == "D":
            d_state += 1
        elif state == "Z":
            zombies += 1
    return HostSample(
        mem.get("MemTotal"),
        mem.get("MemAvailable"),
        mem.get("SwapTotal"),
        mem.get("SwapFree"),
        parse_loadavg(read_text(procfs / "loadavg") or ""),
        count_cpus(read_text(procfs / "stat") or ""),
        d_state,
        zombies,
        tuple(m for m in kernel_lines if is_oom(m)),
        tuple(m for m in kernel_lines if is_mce(m)),
    )


def evaluate_host(s: HostSample, t: HostThresholds) -> CheckResult:
    """Pure: host sample -> verdict."""
    faults: list[Fault] = []
    values: dict[str, Value] = {
        "mem_total_bytes": s.mem_total_bytes,
        "mem_available_bytes": s.mem_available_bytes,
        "swap_total_bytes": s.swap_total_bytes,
        "swap_free_bytes": s.swap_free_bytes,
        "load1": s.load1,
        "cpus": s.cpus,
        "d_state_processes": s.d_state,
        "zombie_processes": s.zombies,
        "oom_kills": len(s.oom_lines),
        "machine_checks": len(s.mce_lines),
    }
    if s.mem_total_bytes and s.mem_available_bytes is not None:
        ratio = s.mem_available_bytes / s.mem_total_bytes
        values["mem_available_ratio"] = round(ratio, 4)
        if ratio < t.min_available_ratio:
            faults.append(
                Fault(
                    fk.HOST_MEMORY_LOW, Severity.DEGRADED, f"only {ratio:.1%} of memory available"
                )
            )
    if s.load1 is not None and s.load1 / s.cpus > t.max_load_per_cpu:
        faults.append(Fault(HOST_LOAD, Severity.DEGRADED, f"load {s.load1:.1f} on {s.cpus} CPUs"))
    if s.d_state > t.max_d_state:
        faults.append(
            Fault(
                fk.HOST_D_STATE,
                Severity.DEGRADED,
                f"{s.d_state} processes in uninterruptible sleep (D state)",
            )
        )
    if s.zombies > t.max_zombies:
        faults.append(Fault(HOST_ZOMBIES, Severity.DEGRADED, f"{s.zombies} zombie processes"))
    if s.oom_lines:
        faults.append(Fault(fk.HOST_OOM, Severity.DEGRADED, f"OOM killer ran: {s.oom_lines[-1]}"))
    if s.mce_lines:
        faults.append(
            Fault(fk.HOST_MCE, Severity.DEGRADED, f"machine check logged: {s.mce_lines[-1]}")
        )
    avail = (
        f"{s.mem_available_bytes / 2**30:.1f} GiB memory available"
        if s.mem_available_bytes is not None
        else "memory unknown"
    )
    return fold("host", faults, values, f"{avail}, load {s.load1}, {s.d_state} in D state")


@dataclass(eq=False)
class HostProbe:
    """The periodic host check; OOM and MCE lines stay in the result for ``hold_s``."""

    procfs_root: Path
    thresholds: HostThresholds = field(default_factory=HostThresholds)
    kernel_log: KernelLogReader | None = None
    clock: Clock = field(default_factory=SystemClock)
    hold_s: float = 300.0
    _recent: list[tuple[float, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "host"

    def check(self) -> CheckResult:
        now = self.clock.monotonic()
        if self.kernel_log is not None:
            for line in self.kernel_log.read_new():
                if is_oom(line.message) or is_mce(line.message):
                    self._recent.append((now, line.message))
        self._recent = [(t, m) for t, m in self._recent if now - t <= self.hold_s]
        return evaluate_host(
            read_host(self.procfs_root, [m for _, m in self._recent]), self.thresholds
        )
