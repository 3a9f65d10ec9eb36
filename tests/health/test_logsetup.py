"""Log formats shared by agent and daemon: text, JSON, and journald's priority prefixes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from trainwarden.health.errors import HealthError
from trainwarden.health.logsetup import (
    configure_logging,
    journal_stream,
    package_version,
    parse_level,
    priority,
)

AGENT = (sys.executable, "-m", "trainwarden", "agent", "--simulate", "xid:79")
PREFIX = "<6>INFO trainwarden.health.cli.agent:"
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _as_journal(monkeypatch: pytest.MonkeyPatch, stream: TextIO) -> None:
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def _emit(path: Path) -> list[str]:
    log = logging.getLogger("tw.test")
    log.debug("dbg")
    log.info("hello %s", "world", extra={"node": "n1", "obj": object()})
    log.warning("careful")
    log.error("bad")
    log.critical("worse")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    logging.getLogger().handlers[0].flush()
    return path.read_text().splitlines()


def test_text_has_timestamps_off_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    with open(tmp_path / "log", "w") as out:
        configure_logging("info", "text", out)
        lines = _emit(tmp_path / "log")
    assert STAMP.match(lines[0]) and lines[0].endswith("INFO tw.test: hello world")
    assert not any("dbg" in ln for ln in lines)  # level info
    assert "Traceback (most recent call last):" in lines
    assert lines[-1] == "ValueError: boom"


def test_text_under_journald_has_priorities_and_no_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "log", "w") as out:
        _as_journal(monkeypatch, out)
        configure_logging("DEBUG", "text", out)
        lines = _emit(tmp_path / "log")
    assert lines[:6] == [
        "<7>DEBUG tw.test: dbg",
        "<6>INFO tw.test: hello world",
        "<4>WARNING tw.test: careful",
        "<3>ERROR tw.test: bad",
        "<2>CRITICAL tw.test: worse",
        "<3>ERROR tw.test: failed",
    ]
    # a traceback's lines keep the priority of their record (each is a journal entry)
    assert all(ln.startswith("<3>") for ln in lines[6:]) and lines[-1] == "<3>ValueError: boom"


def test_journal_stream_must_be_our_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inherited from a unit by a process whose stderr goes elsewhere: not the journal."""
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        _as_journal(monkeypatch, a)
        assert journal_stream(a) and not journal_stream(b)
        configure_logging("info", "text", b)
        logging.getLogger("x").info("m")
        b.flush()
    assert STAMP.match((tmp_path / "b").read_text())
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    with open(tmp_path / "a", "w") as a:
        assert not journal_stream(a)


def test_json_one_object_a_line_with_extras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    with open(tmp_path / "log", "w") as out:
        configure_logging("info", "json", out)
        lines = _emit(tmp_path / "log")
    records = [json.loads(ln) for ln in lines]  # every line is one object, tracebacks too
    assert len(records) == 5
    hello = records[0]
    assert set(hello) == {"ts", "level", "logger", "message", "node", "obj"}
    assert (hello["level"], hello["logger"], hello["message"]) == ("INFO", "tw.test", "hello world")
    assert hello["node"] == "n1" and hello["obj"].startswith("<object object")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", hello["ts"])
    failed = records[-1]
    assert failed["message"] == "failed" and failed["exc"].endswith("ValueError: boom")


def test_json_under_journald_keeps_the_priority_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "log", "w") as out:
        _as_journal(monkeypatch, out)
        configure_logging("warning", "json", out)
        lines = _emit(tmp_path / "log")
    assert [ln[:3] for ln in lines] == ["<4>", "<3>", "<2>", "<3>"]
    assert json.loads(lines[0][3:])["message"] == "careful"


def test_configure_twice_keeps_one_handler(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as out:
        configure_logging("info", "text", out)
        configure_logging("info", "json", out)
        assert len(logging.getLogger().handlers) == 1


def test_levels_and_formats_are_checked() -> None:
    assert parse_level("warning") == logging.WARNING and parse_level("15") == 15
    assert priority(15) == 7 and priority(25) == 6 and priority(100) == 2
    with pytest.raises(HealthError, match="log level 'loud'"):
        parse_level("loud")
    with pytest.raises(HealthError, match="log format 'xml'"):
        configure_logging("info", "xml")


def test_version_of_the_installed_package() -> None:
    assert package_version() not in ("", "unknown")


def test_agent_logs_start_and_stop_with_its_version_to_the_journal(tmp_path: Path) -> None:
    """The agent (no broker to reach) under a journal-like stderr, stopped by SIGTERM."""
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        st = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        env.pop("TRAINWARDEN_LOG_FORMAT", None)
        proc = subprocess.Popen(
            [*AGENT, "--node", "tlog1", "--broker", "127.0.0.1:1", "--relay", "off"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 60
            while "starting" not in err_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
    lines = err_path.read_text().splitlines()
    ver = package_version()
    start = f"{PREFIX} trainwarden agent {ver} starting: node tlog1, broker 127.0.0.1:1"
    assert start in lines
    assert lines[-1] == f"{PREFIX} trainwarden agent {ver} stopped: node tlog1"
    assert any(ln.startswith("<4>WARNING trainwarden.health.agent: ") for ln in lines)
