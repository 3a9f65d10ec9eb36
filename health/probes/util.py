"""Small helpers shared by probes: reading sysfs/procfs files and folding faults into a result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from trainwarden.health.probes.base import Action, CheckResult, Fault, Health, Severity, Value

_SEVERITY_HEALTH = {
    Severity.FATAL: Health.UNHEALTHY,
    Severity.DEGRADED: Health.DEGRADED,
    Severity.INFO: Health.HEALTHY,
}
_SEVERITY_RANK = {Severity.INFO: 0, Severity.DEGRADED: 1, Severity.FATAL: 2}
# When several faults of the worst severity suggest different actions, the strongest wins.
ACTION_RANK = {
    Action.NONE: 0,
    Action.ALERT: 1,
    Action.INSPECT: 2,
    Action.RESTART_JOB: 3,
    Action.RESET_GPU: 4,
    Action.DRAIN: 5,
    Action.REBOOT: 6,
}


def read_text(path: Path) -> str | None:
    """The stripped content of a small sysfs/procfs file, or None if it cannot be read."""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.split()[0], 0)
    except (ValueError, IndexError):
        return None


def fold(
    probe: str,
    faults: Sequence[Fault],
    values: Mapping[str, Value],
    ok_reason: str,
    actions: Mapping[Fault, Action] | None = None,
) -> CheckResult:
    """One result from a list of faults: health and action from the worst, reason from all.

    Faults of severity INFO stay in the result (as data) but keep it healthy.
    """
    if not faults:
        return CheckResult(probe, Health.HEALTHY, ok_reason, Action.NONE, dict(values))
    worst_fault = max(faults, key=lambda f: _SEVERITY_RANK[f.severity])
    health = _SEVERITY_HEALTH[worst_fault.severity]
    serious = [f for f in faults if f.severity is not Severity.INFO]
    if not serious:
        reason = ok_reason + "; note: " + "; ".join(f.detail for f in faults)
        return CheckResult(probe, Health.HEALTHY, reason, Action.NONE, dict(values), tuple(faults))
    ordered = sorted(serious, key=lambda f: -_SEVERITY_RANK[f.severity])
    reason = "; ".join(f.detail for f in ordered)
    worst_faults = [f for f in faults if f.severity is worst_fault.severity]
    action = max(
        ((actions or {}).get(f) or default_action(f) for f in worst_faults),
        key=ACTION_RANK.__getitem__,
    )
    return CheckResult(probe, health, reason, action, dict(values), tuple(faults))


def default_action(fault: Fault) -> Action:
    if fault.severity is Severity.FATAL:
        return Action.DRAIN
    if fault.severity is Severity.DEGRADED:
        return Action.INSPECT
    return Action.NONE
