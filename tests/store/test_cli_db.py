"""``trainwarden db upgrade|current|check``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainwarden.cli import main
from trainwarden.supervisor.store.migrate import head_revision


def test_upgrade_current_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    assert main(["db", "check", "--url", url]) == 1
    assert "run `trainwarden db upgrade`" in capsys.readouterr().err
    assert main(["db", "upgrade", "--url", url]) == 0
    assert f"upgraded from revision none to {head_revision()}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--url", url]) == 0
    assert "already at revision" in capsys.readouterr().out
    assert main(["db", "current", "--url", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "url": url,
        "revision": head_revision(),
        "head": head_revision(),
        "at_head": True,
    }
    assert main(["db", "check", "--url", url]) == 0


def test_default_url_from_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TRAINWARDEN_DB_URL", raising=False)
    monkeypatch.setenv("TRAINWARDEN_STATE_DIR", str(tmp_path / "state"))
    assert main(["db", "upgrade"]) == 0
    assert (tmp_path / "state" / "trainwarden.db").is_file()
    capsys.readouterr()
    monkeypatch.setenv("TRAINWARDEN_DB_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert main(["db", "current"]) == 0
    assert "revision none" in capsys.readouterr().out


@pytest.mark.integration  # the console entry point in a fresh interpreter
def test_bad_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "TRAINWARDEN_STATE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "trainwarden.cli", "db", "upgrade", "--url", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "trainwarden: error: invalid database URL 'nonsense': expected "
        "sqlite:///path/to/trainwarden.db or postgresql+psycopg://user@host/dbname"
    ]
