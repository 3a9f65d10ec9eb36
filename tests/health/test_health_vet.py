"""Vet's exit codes, lines and JSON (pure), and the overlap of the fabric window."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from trainwarden.health.probes.base import Action, CheckResult, Health
from trainwarden.health.probes.registry import ProbeConfig
from trainwarden.health.sim.hardware import SimulatedHardware
from trainwarden.health.vet import VetReport, exit_code, vet


def r(name: str, health: Health) -> CheckResult:
    return CheckResult(
        name,
        health,
        f"{name} is {health.value}",
        Action.DRAIN if health is Health.UNHEALTHY else Action.NONE,
    )


@pytest.mark.parametrize(
    ("healths", "code"),
    [
        ([], 0),
        ([Health.HEALTHY], 0),
        ([Health.HEALTHY, Health.DEGRADED], 1),
        ([Health.UNKNOWN, Health.HEALTHY], 3),
        ([Health.UNKNOWN, Health.DEGRADED], 1),
        ([Health.DEGRADED, Health.UNHEALTHY, Health.UNKNOWN], 2),
    ],
)
def test_exit_code(healths: list[Health], code: int) -> None:
    assert exit_code([r(f"c{i}", h) for i, h in enumerate(healths)]) == code


def test_lines_and_json() -> None:
    report = VetReport(
        "n1", (r("gpu", Health.UNHEALTHY), r("host", Health.HEALTHY)), 1.234, ("ecc-dbe",)
    )
    lines = report.lines()
    assert lines[0].startswith("CRITICAL gpu") and lines[0].endswith("[action: drain]")
    assert lines[1].startswith("OK       host")
    assert lines[-1] == "vet n1: CRITICAL (exit 2) in 1.23 s (simulated: ecc-dbe)"
    data = report.as_json()
    assert data["exit_code"] == 2 and [c["check"] for c in data["checks"]] == ["gpu", "host"]


@pytest.mark.integration  # 1.2 s of real slow storage inside a 1.5 s window
def test_window_overlaps_the_other_checks(tmp_path: Path) -> None:
    hw = SimulatedHardware("n", state_dir=tmp_path / "hw", storage_slow_s=1.2)
    try:
        hw.inject("storage-slow")
        t0 = time.monotonic()
        report = asyncio.run(vet(ProbeConfig(expected_gpus=4, timeout_s=4.0), hw, window_s=1.5))
        elapsed = time.monotonic() - t0
    finally:
        hw.close()
    assert elapsed < 2.5  # in sequence it would be at least 1.5 + 1.2 s
    assert report.exit_code == 1  # 1.2 s is over the default 1 s limit
    assert [r.probe.split(":")[0] for r in report.results] == [
        "gpu",
        "network",
        "storage",
        "host",
        "gpu-compute",
    ]
