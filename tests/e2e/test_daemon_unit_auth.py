"""The daemon started exactly as deploy/trainwarden-daemon.service starts it (its ExecStart,
its Environment defaults, the shipped deploy/trainwarden.toml; only paths, ports, the
scheduler and the broker login made private): nothing on TCP lets an unauthenticated caller
act, root's CLI drains with no extra flag, /metrics reads, `config show` names the file."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from trainwarden.supervisor.scheduler.local import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
BIN = str(Path(sys.executable).parent / "trainwarden")
ME = pwd.getpwuid(os.getuid()).pw_name  # root on CI: an admin by uid 0
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "trainwarden-daemon.service"
SHIPPED_CONFIG = "/etc/trainwarden/trainwarden.toml"


def unit_command(text: str, overrides: dict[str, str]) -> list[str]:
    """ExecStart as systemd runs it: ``${VAR}`` replaced by its Environment= default (or
    the override), each such word one argument even when empty."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    env.update(overrides)
    joined = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", text, re.M)
    assert joined is not None, "no ExecStart in the unit"
    words = shlex.split(joined.group(1).replace("\\\n", " "))

    def expand(word: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word)

    return [expand(w) for w in words]


def shipped_config(daemon: dict[str, str | None]) -> str:
    """deploy/trainwarden.toml with these keys of [daemon] set (TOML values; None: the
    shipped value commented out)."""
    out: list[str] = []
    section = ""
    for line in (DEPLOY / "trainwarden.toml").read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        key = line.partition("=")[0].strip()
        shipped = section == "daemon" and not line.startswith("#") and key in daemon
        out.append("#" + line if shipped else line)
        if line == "[daemon]":
            out += [f"{k} = {v}" for k, v in daemon.items() if v is not None]
    return "\n".join(out) + "\n"


@dataclass
class UnitDaemon:
    proc: subprocess.Popen[bytes]
    socket: str
    metrics: str
    log: Path
    config: Path


@pytest.fixture
def unit_daemon(tmp_path: Path) -> Iterator[UnitDaemon]:
    state = tmp_path / "state"
    state.mkdir()
    run_dir = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))  # RuntimeDirectory, 0755
    run_dir.chmod(0o755)
    sock = str(run_dir / "api.sock")
    metrics = f"127.0.0.1:{free_port()}"
    conf = tmp_path / "trainwarden.toml"
    private = {"scheduler": '"local"', "api": json.dumps(sock), "metrics": json.dumps(metrics)}
    # the machine's broker takes anonymous clients: the shipped daemon login is not there
    conf.write_text(shipped_config({**private, "mqtt_username": None, "mqtt_password_file": None}))
    argv = unit_command(UNIT.read_text(), {})
    assert argv[:2] == ["/opt/trainwarden/.venv/bin/trainwarden", "daemon"], argv
    assert argv[2:4] == ["--config", SHIPPED_CONFIG], argv
    argv[0], argv[3] = BIN, str(conf)
    # the local scheduler's nodes and job logs; a client id of its own on the shared broker
    argv += ["--local-nodes", "n1,n2", "--local-log-dir", str(tmp_path / "jobs")]
    argv += ["--client-id", f"tw-unit-{uuid.uuid4().hex[:6]}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINWARDEN_")}
    env["TRAINWARDEN_STATE_DIR"] = str(state)  # StateDirectory=
    db = f"sqlite:///{state / 'trainwarden.db'}"
    subprocess.run([BIN, "db", "upgrade", "--url", db], check=True, capture_output=True)
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
    daemon = UnitDaemon(proc, sock, f"http://{metrics}", log, conf)
    try:
        deadline = time.monotonic() + 30
        while not _nodes_listed(daemon):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield daemon
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(run_dir, ignore_errors=True)


def _cli(daemon: UnitDaemon, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINWARDEN_")}
    env["TRAINWARDEN_API"] = daemon.socket  # the only pointer: the unit's socket is elsewhere
    return subprocess.run([BIN, *argv], capture_output=True, text=True, timeout=30, env=env)


def _nodes_listed(daemon: UnitDaemon) -> bool:
    proc = _cli(daemon, "nodes", "--json")
    return proc.returncode == 0 and len(json.loads(proc.stdout)) == 2


def _post(url: str) -> int:
    req = urllib.request.Request(
        url, data=b'{"reason": "x"}', method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_unit_serves_no_write_on_tcp_and_roots_cli_drains(unit_daemon: UnitDaemon) -> None:
    mode = stat.S_IMODE(os.stat(unit_daemon.socket).st_mode)
    assert mode == 0o666  # every local user connects; the role decides
    listening = {
        c.laddr.port
        for c in psutil.Process(unit_daemon.proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    metrics_port = int(unit_daemon.metrics.rsplit(":", 1)[1])
    assert listening == {metrics_port}  # no API on TCP unless --api-tcp is given
    for port in listening:
        for path in ("/api/v1/nodes/n1/drain", "/api/v1/runs", "/api/v1/actions/1/approve"):
            status = _post(f"http://127.0.0.1:{port}{path}")
            assert status in (401, 403, 404, 405), (port, path, status)
    actions = json.loads(_cli(unit_daemon, "actions", "--json").stdout)
    assert actions == []  # nothing changed
    # root's CLI, no flag beyond where the socket is: an admin by uid 0
    done = _cli(unit_daemon, "drain", "n1", "--reason", "fan noise", "--json")
    assert done.returncode in (0, 1), done.stderr  # recorded (dry-run mode may not act)
    row = json.loads(done.stdout)
    assert (row["kind"], row["who"], row["reason"]) == ("drain", ME, "fan noise")
    with urllib.request.urlopen(unit_daemon.metrics + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert "trainwarden_leader 1.0" in text
    with urllib.request.urlopen(unit_daemon.metrics + "/healthz", timeout=10) as resp:
        assert json.loads(resp.read())["leader"] is True
    assert unit_daemon.proc.poll() is None
    # what the daemon ran with, and from where: the file's lines, not flags or defaults
    conf = str(unit_daemon.config)
    shown = _cli(unit_daemon, "config", "show", "--config", conf, "--for", "daemon", "--json")
    assert shown.returncode == 0, shown.stderr
    shown_daemon = json.loads(shown.stdout)["daemon"]
    for key, value in (("api", unit_daemon.socket), ("metrics", metrics_port)):
        row = shown_daemon[key]
        assert row["source"] == "file" and str(value) in str(row["value"]), row
        assert row["where"].startswith(f"{unit_daemon.config}:"), row
    assert shown_daemon["mode"]["value"] == "dry-run"  # the shipped choice
