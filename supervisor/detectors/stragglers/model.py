"""Plain data in and out of the straggler detector: its configuration, GPU evidence, findings.

Findings are frozen dataclasses with ``event()`` (and, for node flags, ``condition()``)
mapping them onto :mod:`trainwarden.policies.model`; what to do about them is the policy's business.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from trainwarden.health.nvml.backend import THROTTLE_NAMES
from trainwarden.policies.model import Condition, ConditionType, Event, EventKind
from trainwarden.supervisor.errors import ConfigError

# NVML clock-throttle reasons that slow a GPU down (names as the agents report them).
# The agents' own names for NVML's clock-throttle reasons (health/nvml/backend.py); every
# one of them slows the GPU down.
SLOWING_THROTTLE_REASONS = frozenset(THROTTLE_NAMES.values())


@dataclass(frozen=True)
class StragglerConfig:
    """Thresholds of the detector. Windows and persistence count steps, not seconds."""

    short_window: int = 5  # steps; catches large slowdowns fast
    short_quantile: float = 0.25  # of the short window: a spike-proof low quantile
    mid_window: int = 12  # steps; moderate slowdowns in noisy runs
    long_window: int = 32  # steps; catches small slowdowns reliably
    min_window_fraction: float = 0.5  # of a window's steps a rank must have reported
    z_threshold: float = 6.0  # robust z against the peers' spread
    z_threshold_alert: float = 5.5  # the same while the run is slow or GPU evidence agrees
    short_min_slowdown: float = 0.08  # minimum effect the short window must show
    mid_min_slowdown: float = 0.05  # minimum effect the middle window must show
    long_min_slowdown: float = 0.03  # minimum effect the long window must show
    clear_fraction: float = 0.5  # hysteresis: clear below this fraction of both thresholds
    persist_steps: int = 3  # steps a score must stay bad before a flag
    persist_steps_alert: int = 2  # the same while the run is slow or GPU evidence agrees
    clear_steps: int = 10  # steps a flagged rank must stay good before it clears
    min_peers: int = 3  # fewer peers than this: no judgement
    sigma_floor: float = 0.005  # relative floor of the peers' spread
    min_coverage: float = 0.9  # share of ranks that must have finished a step to score it
    buffer_steps: int = 64  # distinct steps kept per run
    max_step_jump: int = 1_000_000  # a step this far ahead of the run is rejected as bogus
    max_seconds: float = 86_400.0  # a time above this is absurd
    job_slowdown: float = 0.03  # run step time this much above its own baseline: look harder
    job_baseline_steps: int = 256
    stage_imbalance: float = 0.05  # slowest vs fastest group above this: a finding
    gpu_max_age_s: float = 300.0

    def __post_init__(self) -> None:
        checks = [
            (
                1 <= self.short_window <= self.mid_window <= self.long_window,
                "windows must satisfy 1 <= short_window <= mid_window <= long_window",
            ),
            (self.long_window + 8 <= self.buffer_steps, "buffer_steps must exceed long_window+8"),
            (0.0 < self.min_window_fraction <= 1.0, "min_window_fraction must be in (0, 1]"),
            (
                0 < self.z_threshold_alert <= self.z_threshold,
                "z thresholds must be positive, z_threshold_alert <= z_threshold",
            ),
            (0.0 < self.short_quantile <= 0.5, "short_quantile must be in (0, 0.5]"),
            (
                min(self.short_min_slowdown, self.mid_min_slowdown, self.long_min_slowdown) > 0,
                "minimum slowdowns must be positive",
            ),
            (0.0 < self.clear_fraction < 1.0, "clear_fraction must be in (0, 1)"),
            (1 <= self.persist_steps_alert <= self.persist_steps, "persist steps must be >= 1"),
            (self.clear_steps >= 1, "clear_steps must be >= 1"),
            (self.min_peers >= 2, "min_peers must be >= 2"),
            (self.sigma_floor > 0, "sigma_floor must be positive"),
            (0.0 < self.min_coverage <= 1.0, "min_coverage must be in (0, 1]"),
            (
                self.job_slowdown > 0 and self.job_baseline_steps >= 4 * self.short_window,
                "job_slowdown must be positive, job_baseline_steps >= 4 x short_window",
            ),
            (self.stage_imbalance > 0, "stage_imbalance must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"straggler config: {message}")

    def windows(self) -> tuple[tuple[str, int, float, float], ...]:
        """(label, steps, quantile, minimum slowdown) of each scoring window, fastest first."""
        return (
            ("short", self.short_window, self.short_quantile, self.short_min_slowdown),
            ("mid", self.mid_window, 0.5, self.mid_min_slowdown),
            ("long", self.long_window, 0.5, self.long_min_slowdown),
        )


@dataclass(frozen=True)
class GpuSignal:
    """One node's GPU evidence from its agent (NVML clocks, throttle reasons, power)."""

    ts: float
    sm_clock_mhz: float | None = None
    max_sm_clock_mhz: float | None = None
    throttle_reasons: tuple[str, ...] = ()
    power_w: float | None = None
    power_limit_w: float | None = None

    @property
    def clock_ratio(self) -> float | None:
        if self.sm_clock_mhz is None or not self.max_sm_clock_mhz:
            return None
        return self.sm_clock_mhz / self.max_sm_clock_mhz

    @property
    def degraded(self) -> bool:
        """Whether this evidence by itself says the GPU runs slow."""
        ratio = self.clock_ratio
        slow_clock = ratio is not None and math.isfinite(ratio) and ratio < 0.9
        return slow_clock or bool(SLOWING_THROTTLE_REASONS.intersection(self.throttle_reasons))


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class StragglerFlag:
    """A rank (``rank`` set) or a node (``rank`` None) is consistently slower than its peers."""

    run: str
    node: str
    rank: int | None
    group: str | None
    from_step: int  # first step of the bad streak
    step: int  # step at which the persistence window was met
    ts: float
    score: float  # its time / its peers' typical time (1.10 = 10 % slower)
    z: float
    window: str  # "short", "mid" or "long": which window found it
    ranks: tuple[int, ...] = ()  # for a node flag: its bad ranks
    gpu: GpuSignal | None = None
    corroborated: bool = False
    job_slowdown: float | None = None  # the run's own slowdown ratio at the time

    @property
    def subject(self) -> str:
        return self.node if self.rank is None else f"{self.node}/rank{self.rank}"

    def evidence(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpu"] = None if self.gpu is None else _clean(asdict(self.gpu))
        data["ranks"] = list(self.ranks)
        return _clean(data)

    def event(self) -> Event:
        what = "node" if self.rank is None else f"rank {self.rank} on"
        return Event(
            ts=self.ts,
            kind=EventKind.STRAGGLER_FLAGGED,
            node=self.node,
            run=self.run,
            message=f"{what} {self.node} is {self.score:.2f}x its peers since step "
            f"{self.from_step} (z={self.z:.1f}, {self.window} window)",
            data=self.evidence(),
        )

    def condition(self) -> Condition:
        return Condition(
            subject=self.node,
            type=ConditionType.STRAGGLER,
            status=True,
            reason=f"{self.score:.2f}x peers in run {self.run} since step {self.from_step}",
            since=self.ts,
        )


@dataclass(frozen=True)
class StragglerClear:
    """A flagged rank or node has been back in line for the clearing window."""

    run: str
    node: str
    rank: int | None
    step: int
    ts: float
    score: float

    def event(self) -> Event:
        what = "node" if self.rank is None else f"rank {self.rank} on"
        return Event(
            ts=self.ts,
            kind=EventKind.STRAGGLER_CLEARED,
            node=self.node,
            run=self.run,
            message=f"{what} {self.node} back in line with its peers at step {self.step}",
            data=_clean(asdict(self)),
        )

    def condition(self) -> Condition:
        return Condition(
            subject=self.node,
            type=ConditionType.STRAGGLER,
            status=False,
            reason=f"back in line in run {self.run} at step {self.step}",
            since=self.ts,
        )


@dataclass(frozen=True)
class StageImbalance:
    """Groups (pipeline stages) that differ by design: a partitioning finding, never a drain."""

    run: str
    step: int
    levels: tuple[tuple[str, float], ...]  # (group, typical seconds), slowest first
    ratio: float  # slowest / fastest
    slow_ranks: tuple[int, ...] = ()

    @property
    def slowest(self) -> str:
        return self.levels[0][0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "step": self.step,
            "slowest_group": self.slowest,
            "ratio": round(self.ratio, 4),
            "slow_ranks": list(self.slow_ranks),
            "groups": {g: round(v, 6) for g, v in self.levels},
            "finding": "stage imbalance: a partitioning problem, not a bad node",
        }


@dataclass(frozen=True)
class JobSlowdown:
    """The run's step time against its own baseline (a reason to look harder)."""

    run: str
    step: int
    baseline_s: float
    recent_s: float
    active: bool
    history: int = field(default=0)  # steps behind the baseline

    @property
    def ratio(self) -> float:
        return self.recent_s / self.baseline_s if self.baseline_s > 0 else math.nan
