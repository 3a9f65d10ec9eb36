"""`trainwarden daemon --config FILE` and nothing else on its command line: the real daemon
(local scheduler, SQLite, the machine's Mosquitto) serves its API socket and /metrics where
the file says, and `config show` names the file's lines as the sources."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from trainwarden.supervisor.scheduler.local import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
BIN = str(Path(sys.executable).parent / "trainwarden")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRAINWARDEN_")}


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *argv], capture_output=True, text=True, timeout=30, env=_env())


def test_the_daemon_serves_what_its_config_file_names(tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))  # short enough for a socket
    sock = str(run_dir / "api.sock")
    port = free_port()
    db = f"sqlite:///{tmp_path / 'tw.db'}"
    conf = tmp_path / "trainwarden.toml"
    conf.write_text(
        "[mqtt]\n"
        'broker = "127.0.0.1:1883"\n'
        "\n"
        "[daemon]\n"
        f"db = {json.dumps(db)}\n"
        f"api = {json.dumps(sock)}\n"
        f'metrics = "127.0.0.1:{port}"\n'
        'scheduler = "local"\n'
        'local_nodes = "n[1-2]"\n'
        f"local_log_dir = {json.dumps(str(tmp_path / 'jobs'))}\n"
        f'client_id = "tw-conf-{uuid.uuid4().hex[:6]}"\n'
        'mode = "approve"\n'
        "\n"
        "[cli]\n"
        f"api = {json.dumps(sock)}\n"
    )
    subprocess.run([BIN, "db", "upgrade", "--url", db], check=True, capture_output=True)
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [BIN, "daemon", "--config", str(conf)], stdout=out, stderr=out, env=_env()
        )
    try:
        deadline = time.monotonic() + 30
        while True:  # the CLI finds the socket through [cli] of the same file
            listed = subprocess.run(
                [BIN, "nodes", "--json"],
                capture_output=True,
                text=True,
                timeout=30,
                env={**_env(), "TRAINWARDEN_CONFIG": str(conf)},
            )
            if listed.returncode == 0 and len(json.loads(listed.stdout)) == 2:
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:] + listed.stderr
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert "trainwarden_leader 1.0" in resp.read().decode()
        shown = _cli("config", "show", "--config", str(conf), "--json")
        assert shown.returncode == 0, shown.stderr
        daemon = json.loads(shown.stdout)["daemon"]
        for key, line in (("broker", 2), ("db", 5), ("api", 6), ("metrics", 7), ("mode", 12)):
            assert daemon[key]["source"] == "file", daemon[key]
            assert daemon[key]["where"] == f"{conf}:{line}", daemon[key]
        assert daemon["api"]["value"] == sock
        assert f"configuration file {conf}" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
