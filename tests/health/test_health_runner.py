"""The runner: timeouts, exceptions, hangs; one probe never spoils or delays the others."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from trainwarden.health.probes.base import Action, CheckResult, Health
from trainwarden.health.probes.runner import run_probes


@dataclass(eq=False)
class Fixed:
    name: str
    health: Health = Health.HEALTHY
    calls: int = 0

    def check(self) -> CheckResult:
        self.calls += 1
        return CheckResult(self.name, self.health, f"{self.name} measured", values={"v": 1})


@dataclass(eq=False)
class Raising:
    name: str = "raising"

    def check(self) -> CheckResult:
        raise RuntimeError("sysfs vanished")


@dataclass(eq=False)
class Hanging:
    """Blocks until released: a real blocked thread, like a read on a hung mount."""

    name: str = "hanging"
    release: threading.Event = field(default_factory=threading.Event)
    started: int = 0

    def check(self) -> CheckResult:
        self.started += 1
        self.release.wait()
        return CheckResult(self.name, Health.HEALTHY, "released")


@dataclass(eq=False)
class HangingSymptom(Hanging):
    name: str = "storage:/x"

    def on_hang(self, timeout_s: float) -> CheckResult:
        return CheckResult(self.name, Health.UNHEALTHY, "storage hung", Action.DRAIN)


@dataclass(eq=False)
class WrongType:
    name: str = "wrong"

    def check(self) -> CheckResult:
        return "healthy"  # type: ignore[return-value]


def run(probes: Sequence[object], timeout: float) -> tuple[list[CheckResult], float]:
    t0 = time.monotonic()
    results = asyncio.run(run_probes(probes, timeout))  # type: ignore[arg-type]
    return results, time.monotonic() - t0


def test_results_in_order_with_durations() -> None:
    probes = [Fixed("a"), Fixed("b", Health.DEGRADED), Fixed("c")]
    results, _ = run(probes, 1.0)
    assert [r.probe for r in results] == ["a", "b", "c"]
    assert [r.health for r in results] == [Health.HEALTHY, Health.DEGRADED, Health.HEALTHY]
    assert all(r.duration_s >= 0 for r in results)


def test_exception_becomes_unknown() -> None:
    results, _ = run([Fixed("a"), Raising(), Fixed("c")], 1.0)
    assert results[1].health is Health.UNKNOWN
    assert "RuntimeError: sysfs vanished" in results[1].reason
    assert results[0].reason == "a measured" and results[2].reason == "c measured"


def test_wrong_return_type_becomes_unknown() -> None:
    (result,), _ = run([WrongType()], 1.0)
    assert result.health is Health.UNKNOWN
    assert "not CheckResult" in result.reason


def test_hang_neither_empties_nor_delays_the_report() -> None:
    hang = Hanging()
    try:
        results, elapsed = run([Fixed("a"), hang, Fixed("c")], 0.3)
        assert 0.25 <= elapsed < 1.0
        assert [r.probe for r in results] == ["a", "hanging", "c"]
        assert results[1].health is Health.UNKNOWN
        assert "timed out after 0.3 s" in results[1].reason
        assert results[0].health is Health.HEALTHY and results[2].health is Health.HEALTHY
    finally:
        hang.release.set()


def test_hang_where_hang_is_the_symptom() -> None:
    hang = HangingSymptom()
    try:
        (result,), elapsed = run([hang], 0.2)
        assert elapsed < 1.0
        assert result.health is Health.UNHEALTHY
        assert result.reason == "storage hung"
    finally:
        hang.release.set()


def test_stuck_probe_is_not_started_twice() -> None:
    hang = Hanging()
    try:
        run([hang], 0.1)
        results, elapsed = run([hang, Fixed("b")], 5.0)
        assert elapsed < 1.0  # answered at once, not after another 5 s
        assert hang.started == 1
        assert results[0].health is Health.UNKNOWN
        assert "still stuck" in results[0].reason
        assert results[1].health is Health.HEALTHY
    finally:
        hang.release.set()
    deadline = time.monotonic() + 2
    results, _ = run([hang], 1.0)
    while results[0].reason != "released" and time.monotonic() < deadline:
        results, _ = run([hang], 1.0)
    assert results[0].reason == "released"  # runs again once it came back


def test_many_hung_probes_do_not_exhaust_a_pool() -> None:
    hangs = [Hanging(name=f"h{i}") for i in range(40)]
    try:
        results, elapsed = run([*hangs, Fixed("ok")], 0.3)
        assert elapsed < 1.5
        assert results[-1].health is Health.HEALTHY
        assert all(r.health is Health.UNKNOWN for r in results[:-1])
    finally:
        for h in hangs:
            h.release.set()


@pytest.mark.parametrize("count", [0, 1])
def test_empty_and_single(count: int) -> None:
    results, _ = run([Fixed("a")] * count, 0.5)
    assert len(results) == count
