"""The demo scenario end to end, as a user runs it: `trainwarden demo --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
BIN = Path(sys.executable).parent / "trainwarden"


def test_demo_recovers_from_a_gpu_fault() -> None:
    started = time.monotonic()
    proc = subprocess.run([str(BIN), "demo", "--json"], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert out["fault"]["kind"] == "xid:79"
    assert out["fault"]["node"] in out["drained"]
    assert out["drained"] == [out["fault"]["node"]]
    assert out["detected_after_s"] is not None and out["detected_after_s"] <= 5
    assert out["restarts"] == 1
    assert out["resumed_from_step"] == out["last_checkpoint_before_fault"]
    assert out["resumed_from_step"] is not None and out["resumed_from_step"] > 0
    assert out["final_step"] == out["target_step"]
    assert 0 <= out["steps_lost"] <= out["checkpoint_interval"]
    assert wall < 180, f"demo took {wall:.0f} s"
    # the live timeline went to stderr and tells the story
    for needle in ("INJECT xid:79", "drain", "RECOVERED"):
        assert needle in proc.stderr
