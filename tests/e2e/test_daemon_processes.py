"""The daemon, agents and CLI as separate processes on the real Mosquitto and SQLite:
what an operator sees when an agent dies, a GPU faults, and a node is drained by hand."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trainwarden.supervisor.scheduler.local import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
BIN = str(Path(sys.executable).parent / "trainwarden")
ME = pwd.getpwuid(os.getuid()).pw_name  # who the daemon records: the CLI's user


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tag = uuid.uuid4().hex[:6]
        self.nodes = [f"e{self.tag}-n{i}" for i in (1, 2, 3)]
        # the API's socket, in a directory short enough for a socket path
        self.sock_dir = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))
        self.api = str(self.sock_dir / "api.sock")
        self.metrics = f"127.0.0.1:{free_port()}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        db = f"sqlite:///{self.tmp / 'tw.db'}"
        subprocess.run([BIN, "db", "upgrade", "--url", db], check=True, capture_output=True)
        log = (self.tmp / "daemon.log").open("wb")
        self.procs["daemon"] = subprocess.Popen(
            [
                BIN,
                "daemon",
                "--db",
                db,
                "--broker",
                "127.0.0.1:1883",
                "--api",
                self.api,
                "--metrics",
                self.metrics,
                "--scheduler",
                "local",
                "--local-nodes",
                ",".join(self.nodes),
                "--local-log-dir",
                str(self.tmp / "jobs"),
                "--will-confirm",
                "1.0",
                "--client-id",
                f"tw-test-{self.tag}",
            ],
            stdout=log,
            stderr=log,
        )
        for n in self.nodes:
            self.start_agent(n)

    def start_agent(self, node: str) -> None:
        log = (self.tmp / f"agent-{node}.log").open("wb")
        self.procs[node] = subprocess.Popen(
            [
                BIN,
                "agent",
                "--node",
                node,
                "--broker",
                "127.0.0.1:1883",
                "--heartbeat",
                "0.5",
                "--interval",
                "2",
                "--simulated-hardware",
                str(self.tmp / "hw" / node),
            ],
            stdout=log,
            stderr=log,
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [BIN, *args, "--api", self.api],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "USER": "tester"},
        )
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def nodes_json(self) -> dict[str, dict[str, Any]]:
        proc = self.cli("nodes", "--json", check=False)
        if proc.returncode != 0:
            return {}
        return {r["name"]: r for r in json.loads(proc.stdout)}

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - t0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.start()
    try:
        wait_for(
            lambda: all(c.nodes_json().get(n, {}).get("state") == "healthy" for n in c.nodes),
            40,
            "three healthy nodes",
        )
        yield c
    finally:
        c.stop()
        for f in sorted(tmp_path.glob("*.log")):
            sys.stderr.write(f"--- {f.name}\n{f.read_text()[-3000:]}\n")


def test_killed_agent_is_detected_within_seconds(cluster: Cluster) -> None:
    victim = cluster.nodes[1]
    cluster.procs[victim].kill()  # SIGKILL: the broker publishes the last will
    took = wait_for(
        lambda: "NodeDead" in cluster.nodes_json()[victim]["conditions"], 10, "the dead node"
    )
    assert took <= 5
    assert cluster.nodes_json()[victim]["state"] in ("failed", "drained")
    # not in a run: the shipped policy still drains a dead node
    wait_for(lambda: cluster.nodes_json()[victim]["state"] == "drained", 10, "the drain")
    events = json.loads(cluster.cli("events", "--json", "--node", victim).stdout)
    assert any("last will" in e["message"] for e in events)


def test_injected_xid_drains_the_node(cluster: Cluster) -> None:
    victim = cluster.nodes[2]
    subprocess.run(
        [BIN, "hw", "inject", "--state-dir", str(cluster.tmp / "hw" / victim), "xid:79"],
        check=True,
        capture_output=True,
    )
    took = wait_for(lambda: cluster.nodes_json()[victim]["state"] == "drained", 10, "drain")
    assert took <= 5
    row = cluster.nodes_json()[victim]
    assert row["drained_by"] == "trainwarden" and "GpuFatal" in row["conditions"]
    actions = json.loads(cluster.cli("actions", "--json").stdout)
    drain = next(a for a in actions if a["kind"] == "drain" and a["node"] == victim)
    why = cluster.cli("actions", "--explain", str(drain["id"])).stdout
    assert "XID 79" in why and "gpu-fatal" in why


def test_operator_drain_and_bad_input(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    cluster.cli("drain", node, "--reason", "fan noise")
    row = cluster.nodes_json()[node]
    assert row["state"] == "drained" and row["drained_by"] == "operator"
    actions = json.loads(cluster.cli("actions", "--json").stdout)
    assert any(a["who"] == ME and a["reason"] == "fan noise" for a in actions)
    bad = cluster.cli("drain", "no-such-node", "--reason", "x", check=False)
    assert bad.returncode == 2 and "unknown node 'no-such-node'" in bad.stderr
    assert "Traceback" not in bad.stderr
    cluster.cli("undrain", node, "--reason", "fixed")
    assert cluster.nodes_json()[node]["state"] == "healthy"
    # a malformed message on the bus is rejected and the daemon keeps serving
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-t",
            f"trainwarden/v1/node/{node}/heartbeat",
            "-m",
            "{oops",
        ],
        check=True,
    )
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-t",
            f"trainwarden/v1/node/{node}/heartbeat",
            "-m",
            json.dumps(
                {
                    "v": 1,
                    "kind": "heartbeat",
                    "node": cluster.nodes[1],
                    "ts": 1,
                    "seq": 1,
                    "interval_s": 1,
                }
            ),
        ],
        check=True,
    )
    wait_for(
        lambda: (
            len(json.loads(cluster.cli("events", "--json", "--kind", "rejected-message").stdout))
            >= 2
        ),
        10,
        "rejections",
    )
    assert cluster.procs["daemon"].poll() is None
    assert cluster.nodes_json()[node]["state"] == "healthy"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--db", "nonsense://x"], "nonsense"),
        (["--db", "sqlite:////nonexistent/dir/tw.db"], "trainwarden db upgrade"),
        (["--db", "postgresql+psycopg://postgres@127.0.0.1:1/none"], "127.0.0.1"),
    ],
)
def test_daemon_refuses_a_bad_database_url_with_one_line(args: list[str], needle: str) -> None:
    proc = subprocess.run(
        [BIN, "daemon", "--scheduler", "local", "--local-nodes", "n1", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    # one sentence for the error; the rest are the daemon's start and stop log lines
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("trainwarden: error:")]
    assert errors == [lines[-1]] and needle in errors[0], proc.stderr
    assert all(" INFO " in line for line in lines[:-1]), proc.stderr


def test_daemon_refuses_an_invalid_policy(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        "version: 1\nrules:\n  - name: r\n    when: {condition: NoSuchThing}\n    then: [drain]\n"
    )
    db = f"sqlite:///{tmp_path / 'tw.db'}"
    subprocess.run([BIN, "db", "upgrade", "--url", db], check=True, capture_output=True)
    proc = subprocess.run(
        [
            BIN,
            "daemon",
            "--scheduler",
            "local",
            "--local-nodes",
            "n1",
            "--db",
            db,
            "--policy",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "policy.yaml" in proc.stderr and "NoSuchThing" in proc.stderr
    assert "Traceback" not in proc.stderr
