"""Fixtures of the straggler tests (helpers live in straggler_sim.py)."""

from __future__ import annotations

import pytest

from trainwarden.supervisor.detectors.stragglers.detector import StragglerDetector


@pytest.fixture
def detector() -> StragglerDetector:
    return StragglerDetector()
