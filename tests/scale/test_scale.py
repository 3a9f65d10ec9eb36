"""Scale: 2,000 simulated nodes at the agents' default rates for 30 s through the real
Mosquitto and the real daemon (bench/ingest_e2e.py's machinery): no node may be judged dead
and none drained, and the daemon must have taken every message off the bus."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ingest_e2e.py"
NODES = 2000
DURATION_S = 30.0


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tw_bench_ingest_e2e", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
@pytest.mark.timeout(150)
def test_2000_nodes_steady_no_false_dead_or_drain() -> None:
    bench = _bench()
    try:
        r: dict[str, Any] = bench.steady(NODES, DURATION_S, fault_every=0)
    finally:
        bench.cleanup()
    print(r)
    assert r["publishers_kept_rate"], f"the publishers fell behind their schedule: {r}"
    assert r["node_dead_detections"] == 0, f"false NodeDead at {NODES} nodes: {r}"
    assert r["false_drains"] == 0, f"nodes drained with nothing wrong: {r}"
    assert r["processed_all"], f"the daemon did not take every message off the bus: {r}"
