"""Log output of the long-running commands (``trainwarden agent``, ``trainwarden daemon``).

Under systemd (``$JOURNAL_STREAM`` names our stderr) journald stamps every line itself and
reads a ``<N>`` syslog priority prefix, so lines carry no timestamp and journalctl can
filter by priority (``-p warning``). ``--log-format json`` prints one JSON object a line
(``ts``, ``level``, ``logger``, ``message`` and any ``extra=`` fields) for log shippers.
Lives in ``health/``, the lowest layer, so the node agent and the daemon share it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TextIO

from trainwarden.health import config
from trainwarden.health.errors import HealthError

FORMATS = ("text", "json")
FORMAT_ENV = "TRAINWARDEN_LOG_FORMAT"
# syslog priorities (sd-daemon(3)): what journald reads from a "<N>" prefix
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
# the attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def package_version() -> str:
    """The installed trainwarden's version, for start and stop lines."""
    try:
        return version("trainwarden")
    except PackageNotFoundError:
        return "unknown"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between the named ones round down)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def journal_stream(stream: TextIO) -> bool:
    """True when ``stream`` is the journal: ``$JOURNAL_STREAM`` (``device:inode``) is the file
    systemd connected to it, not merely inherited by a process whose stderr went elsewhere."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``2025-01-01 12:00:00,000 INFO logger: message``; under journald ``<6>INFO logger:
    message`` (journald adds the time). Extras are for machines: only JSON carries them."""

    def __init__(self, journal: bool) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__(fmt if journal else "%(asctime)s " + fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            # a traceback's lines become journal entries of their own, at the same priority
            prefix = f"<{priority(record.levelno)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``exc`` (a traceback, if any) and the record's extras."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        obj: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exc"] = record.exc_text
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        for key, value in _extras(record).items():
            obj.setdefault(key, value)
        line = json.dumps(obj, default=str, ensure_ascii=False)
        return f"<{priority(record.levelno)}>{line}" if self.journal else line


def parse_level(level: str) -> int:
    """``info``/``INFO``/``20`` -> 20; a clear error for anything else."""
    text = level.strip()
    if text.isdigit():
        return int(text)
    value = logging.getLevelNamesMapping().get(text.upper())
    if value is None:
        raise HealthError(
            f"log level {level!r} is not one of debug, info, warning, error, critical"
        )
    return value


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send the root logger's records to ``stream`` (stderr) in format ``fmt``, replacing
    any handler set before (so calling it twice does not print every line twice)."""
    if fmt not in FORMATS:
        raise HealthError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = sys.stderr if stream is None else stream
    journal = journal_stream(out)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(journal) if fmt == "json" else TextFormatter(journal))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(parse_level(level))


def add_log_format_argument(parser: argparse.ArgumentParser) -> None:
    """``--log-format text|json``, default ``$TRAINWARDEN_LOG_FORMAT`` or text."""
    action = parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="log lines as text or as one JSON object a line (default: "
        f"${FORMAT_ENV}, else text); under systemd without timestamps, with <N> priorities",
    )
    config.env(action, FORMAT_ENV)
