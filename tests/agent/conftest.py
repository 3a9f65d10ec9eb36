"""Fixtures of the agent tests (helpers live in agent_helpers.py)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import Collector, PrivateMosquitto


@pytest.fixture
def node_name() -> str:
    return f"n{uuid.uuid4().hex[:10]}"


@pytest.fixture
def collector(node_name: str) -> Iterator[Collector]:
    c = Collector(f"trainwarden/v1/node/{node_name}/+")
    yield c
    c.close()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")
    b = PrivateMosquitto(tmp_path)
    b.start()
    yield b
    b.stop()
