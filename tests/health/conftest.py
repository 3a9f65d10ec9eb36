"""Fixtures for the health tests: the fixture trees and a simulated node per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trainwarden.health.sim.hardware import SimulatedHardware

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data() -> Path:
    return DATA


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatedHardware]:
    hw = SimulatedHardware("node-a", gpus=4, state_dir=tmp_path / "hw", storage_slow_s=0.3)
    yield hw
    hw.close()
