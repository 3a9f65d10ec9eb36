"""``trainwarden agent`` as a real process: --once on this machine, the last will, live XIDs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_helpers import Collector

from trainwarden.health.report import FaultReport, HealthReport, NodeStatus, parse_message
from trainwarden.health.sim.hardware import SimulatedHardware, inject_into

TRAINWARDEN = [sys.executable, "-m", "trainwarden.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _tw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRAINWARDEN, *args], check=False, capture_output=True, text=True, timeout=60, env=ENV
    )


@pytest.mark.integration  # the console entry point in a fresh interpreter
def test_once_json_on_this_machine_reports_measured_values() -> None:
    out = _tw("agent", "--once", "--json", "--node", "cli-once")
    assert out.returncode == 0, out.stderr
    report = parse_message("trainwarden/v1/node/cli-once/health", out.stdout.encode())
    assert isinstance(report, HealthReport)
    probes = {p.probe.split(":")[0]: p for p in report.probes}
    assert set(probes) >= {"gpu", "host", "storage"}
    gpu = probes["gpu"]
    if gpu.values.get("nvml_available") is False:  # this machine has no GPU: data, not a crash
        assert "NVML" in gpu.reason
    host = probes["host"]
    assert isinstance(host.values["mem_total_bytes"], int) and host.values["mem_total_bytes"] > 0
    storage = probes["storage"]
    assert isinstance(storage.values["round_trip_s"], float)


@pytest.mark.integration  # the console entry point in a fresh interpreter
def test_once_with_simulated_fault_and_bad_arguments() -> None:
    out = _tw("agent", "--once", "--json", "--node", "sim1", "--simulate", "xid:79")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["overall"] == "unhealthy"
    assert any(f["code"] == 79 for p in report["probes"] for f in p["faults"])
    bad = _tw("agent", "--once", "--node", "x", "--simulate", "bogus")
    assert bad.returncode == 2 and "unknown fault 'bogus'" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = _tw("agent", "--broker", "host:port", "--node", "x")
    assert bad.returncode == 2 and "port 'port' is not a number" in bad.stderr


@pytest.mark.integration
def test_sigkill_publishes_the_will_and_xids_are_live(
    tmp_path: Path, node_name: str, collector: Collector
) -> None:
    state = tmp_path / "node"
    SimulatedHardware(node_name, gpus=2, state_dir=state)
    proc = subprocess.Popen(
        [
            *TRAINWARDEN,
            "agent",
            "--node",
            node_name,
            "--broker",
            "127.0.0.1:1883",
            "--interval",
            "5",
            "--heartbeat",
            "1",
            "--simulated-hardware",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    try:
        _, online = collector.wait_for(lambda m: isinstance(m, NodeStatus), timeout=20)
        assert online.state == "online"
        collector.wait_for(lambda m: isinstance(m, HealthReport), timeout=10)
        t0 = time.monotonic()
        inject_into(state, "xid:79")
        arrived, fault = collector.wait_for(lambda m: isinstance(m, FaultReport), timeout=5)
        print(f"\nXID injection -> FaultReport at subscriber: {(arrived - t0) * 1000:.0f} ms")
        assert arrived - t0 < 1.0
        assert fault.faults[0].code == 79
        t1 = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        arrived, will = collector.wait_for(lambda m: isinstance(m, NodeStatus), timeout=10)
        print(f"SIGKILL -> will at subscriber: {(arrived - t1) * 1000:.0f} ms")
        assert (will.state, will.reason) == ("offline", "connection lost")
        assert arrived - t1 < 3.0
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        print(out.decode(errors="replace")[-3000:])


@pytest.mark.integration
def test_sigterm_stops_gracefully(tmp_path: Path, node_name: str, collector: Collector) -> None:
    proc = subprocess.Popen(
        [
            *TRAINWARDEN,
            "agent",
            "--node",
            node_name,
            "--broker",
            "127.0.0.1:1883",
            "--interval",
            "5",
            "--simulate",
            "ecc-dbe",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    try:
        _, report = collector.wait_for(lambda m: isinstance(m, HealthReport), timeout=20)
        assert report.overall.value == "unhealthy"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        _, status = collector.wait_for(
            lambda m: isinstance(m, NodeStatus) and m.state == "offline", timeout=5
        )
        assert status.reason == "agent stopped"
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        print(out.decode(errors="replace")[-3000:])
