"""SIGHUP reads the configuration again: the roles and the policy file's path are taken at
once (an operator revoked in the file loses the role without a restart), a change to any
other setting is named as needing a restart, and a file that no longer reads keeps what was
in effect. A real daemon process on the machine's broker, and the daemon object itself."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainwarden.cli import build_parser
from trainwarden.health import config
from trainwarden.health.errors import HealthError
from trainwarden.supervisor.api.auth import Authenticator, RoleMap, Tokens
from trainwarden.supervisor.cli.daemon import build_config, rereader
from trainwarden.supervisor.daemon.process import Daemon, DaemonConfig
from trainwarden.supervisor.daemon.reload import split_changes
from trainwarden.supervisor.errors import ConfigError
from trainwarden.supervisor.scheduler.local import free_port

BIN = str(Path(sys.executable).parent / "trainwarden")


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of this machine, and no /etc file, decides a value here."""
    for name in list(os.environ):
        if name.startswith("TRAINWARDEN_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.toml"))


def test_split_changes_takes_the_live_settings_and_names_the_rest() -> None:
    old = DaemonConfig(db_url="sqlite://", roles=RoleMap(operators=("daemon",)))
    new = DaemonConfig(
        db_url="sqlite:///other.db", broker_port=1884, roles=RoleMap(), policy_file="/p.yaml"
    )
    now, taken, later = split_changes(old, new)
    assert taken == ("roles", "policy_file") and later == ("db_url", "broker_port")
    assert now.roles == RoleMap() and now.policy_file == "/p.yaml"
    assert (now.db_url, now.broker_port) == ("sqlite://", 1883)  # as the daemon runs
    assert split_changes(old, old)[1:] == ((), ())


async def test_reload_takes_the_roles_and_keeps_everything_on_a_bad_file(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = DaemonConfig(db_url="sqlite://", roles=RoleMap(operators=("daemon",)))
    reread: list[DaemonConfig | Exception] = []

    def again() -> DaemonConfig:
        item = reread.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    d = Daemon(before, reread=again)
    d.auth = Authenticator(before.roles)
    caplog.set_level(logging.INFO, "trainwarden")

    reread.append(DaemonConfig(db_url="sqlite://", roles=RoleMap(), lease_ttl_s=30.0))
    await d._reload_config()
    assert d.auth.roles == RoleMap() and d.cfg.roles == RoleMap()  # revoked now
    assert d.cfg.lease_ttl_s == 15.0
    said = caplog.text
    assert "configuration reloaded: roles now in effect" in said
    assert "only a restart applies it (systemctl restart trainwarden-daemon): lease_ttl_s" in said

    caplog.clear()
    reread.append(ConfigError("trainwarden.toml:3: lease_ttl: not a number"))
    await d._reload_config()
    assert "configuration reload failed, keeping the settings read before" in caplog.text
    assert "trainwarden.toml:3" in caplog.text and d.auth.roles == RoleMap()

    caplog.clear()
    nobody_known = f"no-such-user-{uuid.uuid4().hex[:6]}"
    reread.append(DaemonConfig(db_url="sqlite://", roles=RoleMap(operators=(nobody_known,))))
    await d._reload_config()  # a typo must not take the on-call operator's rights away
    assert nobody_known in caplog.text and d.auth.roles == RoleMap()


def _given(*argv: str) -> argparse.Namespace:
    return build_parser(("daemon",)).parse_args(["daemon", "--db", "sqlite://", *argv])


def test_the_reread_resolves_the_parsed_arguments_against_the_file_again(
    tmp_path: Path,
) -> None:
    """What the daemon's SIGHUP calls: the flags as parsed, resolved again (a flag still
    beats the file; the file's new value beats the old one)."""
    toml = tmp_path / "trainwarden.toml"
    toml.write_text('[daemon]\noperators = "daemon"\nlease_ttl = 15\n')
    given = _given("--config", str(toml), "--lease-ttl", "20")
    start = config.resolve(given)
    first = build_config(start)
    toml.write_text('[daemon]\noperators = ""\nlease_ttl = 30\n')
    second = rereader(given, start.config_file)()
    assert first.roles.operators == ("daemon",) and second.roles.operators == ()
    assert first.lease_ttl_s == second.lease_ttl_s == 20.0


@pytest.mark.parametrize("how", ["removed", "emptied", "commented out"])
def test_a_file_gone_or_emptied_is_refused_not_read_as_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Read as no file, it would make everyone a viewer again and drop the policy named
    there; a configuration manager rewriting it, or an rm, must not do that."""
    toml = tmp_path / "etc.toml"
    toml.write_text('[daemon]\nviewers = "root"\npolicy = "/etc/strict.yaml"\n')
    monkeypatch.setattr(config, "DEFAULT_PATH", str(toml))  # the file nobody names
    given = _given()
    start = config.resolve(given)
    assert build_config(start).roles.viewers == ("root",)
    if how == "removed":
        toml.unlink()
    else:
        toml.write_text("" if how == "emptied" else '#viewers = "root"\n')
    with pytest.raises(ConfigError, match=r"etc\.toml (was read at start|names no setting)"):
        rereader(given, start.config_file)()


async def test_a_reload_step_that_fails_does_not_keep_the_others_from_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable MQTT password file (mid-rotation) fails the configuration step; the
    tokens file is reread all the same (a revoked token must stop working)."""

    def unreadable() -> DaemonConfig:
        raise HealthError("/etc/trainwarden/mqtt.password: cannot read it: Permission denied")

    tokens = tmp_path / "tokens"
    tokens.write_text("")
    tokens.chmod(0o600)
    cfg = DaemonConfig(db_url="sqlite://", api_tokens=str(tokens))
    d = Daemon(cfg, reread=unreadable)
    d.auth = Authenticator(cfg.roles, Tokens.load(str(tokens)))
    before = d.auth.tokens
    caplog.set_level(logging.INFO, "trainwarden")
    await d.reload()
    assert "configuration reload failed" in caplog.text and "mqtt.password" in caplog.text
    assert "tokens reloaded from" in caplog.text and d.auth.tokens is not before
    assert "Traceback" not in caplog.text


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """``trainwarden daemon`` with a configuration file, on the machine's broker (it only
    subscribes, under a client id of its own); its log and its file."""
    toml = tmp_path / "trainwarden.toml"
    toml.write_text('[daemon]\noperators = "daemon"\nlease_ttl = 15\n')
    sock_dir = tempfile.mkdtemp(prefix="tw-", dir="/tmp")
    log = tmp_path / "daemon.log"
    db = f"sqlite:///{tmp_path / 'tw.db'}"
    subprocess.run([BIN, "db", "upgrade", "--url", db], check=True, capture_output=True)
    argv = [
        BIN, "daemon", "--config", str(toml), "--db", db,
        "--broker", "127.0.0.1:1883", "--api", os.path.join(sock_dir, "api.sock"),
        "--metrics", f"127.0.0.1:{free_port()}", "--scheduler", "local",
        "--local-nodes", "n1", "--local-log-dir", str(tmp_path / "jobs"),
        "--client-id", f"tw-reload-{uuid.uuid4().hex[:8]}",
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
    try:
        said(log, "trainwarden daemon ready", 60, proc)
        yield proc, log, toml
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def said(
    log: Path, text: str, within: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> str:
    """The daemon's log once it holds ``text``; fails with the log's end otherwise."""
    deadline = time.monotonic() + within
    while True:
        content = log.read_text(errors="replace")
        if text in content:
            return content
        ended = proc is not None and proc.poll() is not None
        assert time.monotonic() < deadline and not ended, (
            f"{text!r} not in the daemon's log:\n{content[-3000:]}"
        )
        time.sleep(0.1)


@pytest.mark.integration
def test_sighup_applies_the_roles_names_the_rest_and_survives_a_broken_file(
    daemon_process: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    proc, log, toml = daemon_process
    toml.write_text('[daemon]\noperators = ""\nlease_ttl = 30\n')
    proc.send_signal(signal.SIGHUP)
    said(log, "configuration reloaded: roles now in effect")
    said(log, "only a restart applies it (systemctl restart trainwarden-daemon): lease_ttl_s")
    said(log, "policy reloaded from the shipped default")

    toml.write_text('[daemon]\noperators = ""\nlease_ttl = "soon"\n')
    proc.send_signal(signal.SIGHUP)
    text = said(log, "configuration reload failed, keeping the settings read before")
    assert "lease_ttl" in text.rsplit("configuration reload failed", 1)[1].splitlines()[0]
    assert "Traceback" not in text
    time.sleep(0.5)
    assert proc.poll() is None  # still serving
