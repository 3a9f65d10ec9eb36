"""Vetting: every probe once plus short active checks, folded into one exit code.

Used as Slurm ``HealthCheckProgram``, as a prolog, in-job, and by the supervisor before
a drained node is resumed. Exit codes follow the Nagios/NPD convention: 0 ok,
1 warning (degraded), 2 critical (unhealthy), 3 unknown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trainwarden.health.clock import Clock, SystemClock
from trainwarden.health.hardware import Hardware
from trainwarden.health.nvml.backend import NvmlBackend, NvmlError
from trainwarden.health.probes.base import Action, CheckResult, Health, Probe, Value, worst
from trainwarden.health.probes.registry import ProbeConfig, build_probes
from trainwarden.health.probes.runner import run_probes

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_UNKNOWN = 0, 1, 2, 3
_EXIT = {
    Health.HEALTHY: EXIT_OK,
    Health.DEGRADED: EXIT_WARNING,
    Health.UNHEALTHY: EXIT_CRITICAL,
    Health.UNKNOWN: EXIT_UNKNOWN,
}
STATUS_WORD = {
    Health.HEALTHY: "OK",
    Health.DEGRADED: "WARNING",
    Health.UNHEALTHY: "CRITICAL",
    Health.UNKNOWN: "UNKNOWN",
}
GIB = 1024**3


def exit_code(results: Sequence[CheckResult]) -> int:
    """The worst verdict as an exit code (same ordering as ``health.probes.base.worst``)."""
    return _EXIT[worst([r.health for r in results])]


@dataclass(frozen=True)
class VetReport:
    node: str
    results: tuple[CheckResult, ...]
    duration_s: float
    simulated: tuple[str, ...] = ()

    @property
    def health(self) -> Health:
        return worst([r.health for r in self.results])

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)

    def lines(self) -> list[str]:
        out = []
        for r in self.results:
            action = f" [action: {r.action.value}]" if r.action is not Action.NONE else ""
            out.append(f"{STATUS_WORD[r.health]:<8} {r.probe:<18} {r.reason}{action}")
        sim = f" (simulated: {', '.join(self.simulated)})" if self.simulated else ""
        out.append(
            f"vet {self.node}: {STATUS_WORD[self.health]} (exit {self.exit_code}) "
            f"in {self.duration_s:.2f} s{sim}"
        )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "status": STATUS_WORD[self.health],
            "health": self.health.value,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "simulated": list(self.simulated),
            "checks": [
                {
                    "check": r.probe,
                    "health": r.health.value,
                    "reason": r.reason,
                    "action": r.action.value,
                    "values": dict(r.values),
                    "duration_s": round(r.duration_s, 4),
                    "faults": [
                        {
                            "kind": f.kind,
                            "severity": f.severity.value,
                            "detail": f.detail,
                            "gpu": f.gpu,
                            "code": f.code,
                            "cause": f.cause,
                        }
                        for f in r.faults
                    ],
                }
                for r in self.results
            ],
        }


@dataclass
class GpuComputeCheck:
    """Active: each GPU can allocate memory and multiply matrices correctly.

    With torch and CUDA it allocates ``alloc_bytes`` and checks a matmul against a known
    answer; otherwise it can only ask NVML whether that much memory is free (and says so).
    """

    nvml: NvmlBackend
    expected_gpus: int | None
    alloc_bytes: int = GIB
    matmul_n: int = 1024
    use_torch: bool = True  # False on simulated hardware: its GPUs are not CUDA devices

    @property
    def name(self) -> str:
        return "gpu-compute"

    def check(self) -> CheckResult:
        try:
            self.nvml.init()
            count = self.nvml.device_count()
        except NvmlError as exc:
            if self.expected_gpus:
                return CheckResult(
                    self.name,
                    Health.UNHEALTHY,
                    f"cannot exercise the {self.expected_gpus} expected GPUs ({exc})",
                    Action.DRAIN,
                )
            return CheckResult(self.name, Health.HEALTHY, f"skipped: no GPU to exercise ({exc})")
        if not self.use_torch:
            return self._with_nvml(count, "simulated GPUs")
        torch = _load_torch()
        if torch is not None and torch.cuda.is_available():
            return self._with_torch(torch, count)
        return self._with_nvml(count, "torch with CUDA is not available")

    def _with_nvml(self, count: int, why: str) -> CheckResult:
        values: dict[str, Value] = {"method": "nvml"}
        short = []
        for i in range(count):
            try:
                s = self.nvml.sample(i)
            except NvmlError as exc:
                short.append(str(exc))
                continue
            if s.memory_total_bytes is None or s.memory_used_bytes is None:
                continue
            free = s.memory_total_bytes - s.memory_used_bytes
            values[f"gpu{i}_free_bytes"] = free
            if free < self.alloc_bytes:
                short.append(f"GPU {i}: only {free / GIB:.1f} GiB free")
        if short:
            return CheckResult(self.name, Health.UNHEALTHY, "; ".join(short), Action.DRAIN, values)
        return CheckResult(
            self.name,
            Health.HEALTHY,
            f"{count} GPUs have {self.alloc_bytes / GIB:.0f} GiB free per NVML (no matmul: {why})",
            Action.NONE,
            values,
        )

    def _with_torch(self, torch: Any, count: int) -> CheckResult:
        values: dict[str, Value] = {"method": "torch"}
        bad = []
        n = self.matmul_n
        for i in range(count):
            dev = torch.device(f"cuda:{i}")
            try:
                block = torch.empty(self.alloc_bytes // 4, dtype=torch.float32, device=dev)
                a = torch.randn(n, n, device=dev)
                eye = torch.eye(n, device=dev)
                t0 = time.perf_counter()
                ok = bool(torch.allclose(a @ eye, a)) and bool(torch.isfinite(a @ a).all())
                torch.cuda.synchronize(dev)
                values[f"gpu{i}_matmul_s"] = round(time.perf_counter() - t0, 4)
                del block
                if not ok:
                    bad.append(f"GPU {i}: wrong matmul result")
            except Exception as exc:
                bad.append(f"GPU {i}: {type(exc).__name__}: {exc}")
        if bad:
            return CheckResult(self.name, Health.UNHEALTHY, "; ".join(bad), Action.DRAIN, values)
        return CheckResult(
            self.name,
            Health.HEALTHY,
            f"{count} GPUs allocated {self.alloc_bytes / GIB:.0f} GiB and "
            f"multiplied {n}x{n} correctly",
            Action.NONE,
            values,
        )


def _load_torch() -> Any:
    try:
        # Deferred: torch is optional (extra "train") and takes over a second to import.
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return torch


def active_checks(config: ProbeConfig, hardware: Hardware) -> list[Probe]:
    checks: list[Probe] = []
    if config.is_enabled("gpu"):
        simulated = bool(getattr(hardware, "simulated", False))
        checks.append(GpuComputeCheck(hardware.nvml, config.expected_gpus, use_torch=not simulated))
    return checks


@dataclass(eq=False)
class _AfterWindow:
    """Runs a counter probe's second sample after the observation window, inside the
    runner, so the window overlaps the other checks instead of adding to them."""

    inner: Probe
    window_s: float

    @property
    def name(self) -> str:
        return self.inner.name

    def check(self) -> CheckResult:
        time.sleep(self.window_s)
        return self.inner.check()


async def vet(
    config: ProbeConfig,
    hardware: Hardware,
    window_s: float = 0.5,
    after_baseline: Callable[[], None] | None = None,
    clock: Clock | None = None,
) -> VetReport:
    """Run every probe once and the active checks, all bounded by ``config.timeout_s``.

    Counter probes (fabric, NVLink) take a baseline, then are judged over ``window_s`` (at
    most half the timeout); ``after_baseline`` runs between the two (the simulator
    injects faults there).
    """
    clock = clock or SystemClock()
    start = time.perf_counter()
    probes = build_probes(config, hardware, clock)
    counters = [p for p in probes if getattr(p, "uses_rates", False)]
    if counters:
        await run_probes(counters, config.timeout_s, clock)
    if after_baseline is not None:
        after_baseline()
    window = min(max(0.0, window_s), config.timeout_s / 2)
    rated = {id(p) for p in counters}
    timed: list[Probe] = [
        _AfterWindow(p, window) if id(p) in rated and window > 0 else p for p in probes
    ]
    results = await run_probes([*timed, *active_checks(config, hardware)], config.timeout_s, clock)
    return VetReport(hardware.node, tuple(results), time.perf_counter() - start)
