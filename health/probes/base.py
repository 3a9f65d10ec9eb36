"""The probe contract every health check follows.

A probe reads (I/O), parses (pure) and evaluates against thresholds (pure), and
returns a :class:`CheckResult` -- failures are data, a probe never raises. The
runner bounds each probe with a timeout (see ``trainwarden.health.probes.runner``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

Value = float | int | str | bool | None


class Health(StrEnum):
    """How a probe judges what it measured; ordered from best to worst by :func:`worst`."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


_RANK = {Health.HEALTHY: 0, Health.UNKNOWN: 1, Health.DEGRADED: 2, Health.UNHEALTHY: 3}


def worst(healths: list[Health] | tuple[Health, ...]) -> Health:
    """The most severe of several verdicts (healthy when there are none)."""
    result = Health.HEALTHY
    for h in healths:
        if _RANK[h] > _RANK[result]:
            result = h
    return result


class Action(StrEnum):
    """What the probe suggests; the policy layer decides what is actually done."""

    NONE = "none"
    RESTART_JOB = "restart-job"
    RESET_GPU = "reset-gpu"
    REBOOT = "reboot"
    DRAIN = "drain"
    INSPECT = "inspect"
    ALERT = "alert"


class Severity(StrEnum):
    """How bad one fault is for the node: fatal faults take a node out of a run."""

    FATAL = "fatal"
    DEGRADED = "degraded"
    INFO = "info"


@dataclass(frozen=True)
class Fault:
    """One concrete thing found wrong (an XID, a link down, a hung mount).

    ``kind`` uses the vocabulary of ``trainwarden.health.faults`` (e.g. ``xid``, ``gpu-lost``,
    ``ib-link-down``, ``storage-hang``). ``cause`` names a shared component when there
    is one (``storage:/capstor``, ``fabric:ib``), which lets the policy layer see a
    correlated, cluster-wide failure instead of many bad nodes.
    """

    kind: str
    severity: Severity
    detail: str
    gpu: int | None = None
    code: int | None = None
    cause: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one probe run. ``values`` are the measurements, in base units."""

    probe: str
    health: Health
    reason: str
    action: Action = Action.NONE
    values: Mapping[str, Value] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()
    duration_s: float = 0.0


class Probe(Protocol):
    """A periodic health check. ``check`` must return, never raise (the runner enforces it)."""

    @property
    def name(self) -> str: ...

    def check(self) -> CheckResult: ...


class EventWatcher(Protocol):
    """A source of faults that arrive as events (NVML XID events, kernel log lines).

    ``poll`` blocks for at most ``timeout_s`` and returns the faults seen since the
    last call; the agent publishes them at once instead of waiting for the interval.
    """

    @property
    def name(self) -> str: ...

    def poll(self, timeout_s: float) -> list[Fault]: ...


@runtime_checkable
class HangSymptom(Protocol):
    """A probe whose hang is itself the finding (a stuck mount): the runner asks it for
    the verdict instead of reporting ``unknown`` when ``check`` runs past the timeout."""

    def on_hang(self, timeout_s: float) -> CheckResult: ...
