"""The demo scenarios end to end, as a user runs them: `trainwarden demo --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
BIN = Path(sys.executable).parent / "trainwarden"


def run_demo(*args: str) -> tuple[dict[str, Any], str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN), "demo", "--json", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), proc.stderr, wall


def test_demo_recovers_from_a_gpu_fault() -> None:
    out, timeline, wall = run_demo()
    assert out["fault"]["kind"] == "xid:79"
    assert out["drained"] == [out["fault"]["node"]]
    assert out["detected_after_s"] is not None and out["detected_after_s"] <= 5
    assert out["restarts"] == 1
    assert out["resumed_from_step"] == out["last_checkpoint_before_fault"]
    assert out["resumed_from_step"] is not None and out["resumed_from_step"] > 0
    assert out["final_step"] == out["target_step"]
    assert 0 <= out["steps_lost"] <= out["checkpoint_interval"]
    assert wall < 180, f"demo took {wall:.0f} s"
    for needle in ("INJECT xid:79", "drain (allow)", "RECOVERED"):
        assert needle in timeline
    # where the run's time went: ETTR, and buckets that add up to its wall time
    assert 0 < out["ettr"] <= 1
    goodput = out["goodput"]
    assert goodput["interruptions"] == 1 and goodput["buckets"]["productive"] > 0
    assert abs(sum(goodput["buckets"].values()) - goodput["wall_s"]) <= 0.01 * goodput["wall_s"]
    assert goodput["buckets"]["productive"] / goodput["wall_s"] == pytest.approx(out["ettr"], 1e-3)


def test_demo_evicts_a_straggler_after_checkpointing() -> None:
    out, timeline, _wall = run_demo("--scenario", "straggler")
    assert out["drained"] == [out["fault"]["node"]]
    assert out["restarts"] == 1
    # checkpoint before eviction: resumed from a checkpoint taken after the flag, not the
    # periodic one before the slowdown
    assert out["resumed_from_step"] > out["last_checkpoint_before_fault"]
    assert out["steps_lost"] <= 1
    assert out["final_step"] == out["target_step"]
    assert "straggler-evict" in timeline and "checkpoint-now (allow)" in timeline


def test_demo_restarts_a_hung_run_without_draining() -> None:
    out, timeline, _wall = run_demo("--scenario", "hang")
    assert out["drained"] == []
    assert out["restarts"] == 1
    # within 2 x median step time + 30 s (the demo's hang floor is 10 s)
    assert out["detected_after_s"] is not None and out["detected_after_s"] <= 40
    assert out["resumed_from_step"] == out["last_checkpoint_before_fault"]
    assert out["final_step"] == out["target_step"]
    stalled = next(line for line in timeline.splitlines() if "run-stalled" in line)
    # the frozen rank is named as the culprit -- unless every rank's last report landed at
    # the same step, when the detector says there is no single culprit; never another rank
    assert (
        f"stopped first: rank 3 on {out['fault']['node']}" in stalled
        or "no single culprit" in stalled
    ), stalled
