"""Kernel log: reading (``/dev/kmsg`` or a text file) and parsing the lines trainwarden cares for.

Reading keeps a cursor per reader, so each consumer (the XID watcher, the GPU probe,
the host probe) sees every new line once. Parsing is pure: ``parse_line`` strips the
``/dev/kmsg`` record header or the ``dmesg`` timestamp; ``parse_xid`` extracts
``NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the bus.``.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_KMSG_RECORD = re.compile(r"^\d+,\d+,(?P<usec>\d+),[^;]*;(?P<msg>.*)$")
_DMESG_TS = re.compile(r"^\[\s*(?P<sec>\d+\.\d+)\]\s?(?P<msg>.*)$")
_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?)\): "
    r"(?P<code>\d+),\s*(?P<rest>.*)$"
)
# The global OOM killer only: a job's cgroup hitting its limit ("Memory cgroup out of
# memory: Killed process ...", also preceded by "invoked oom-killer") is the job's
# problem, not the node's.
_OOM = re.compile(r"(?<!cgroup )Out of memory: Killed process (?P<pid>\d+) \((?P<comm>[^)]*)\)")
_MCE = re.compile(r"mce: \[Hardware Error\]|Machine check events logged|Machine Check Exception")


@dataclass(frozen=True)
class KernelLine:
    """One kernel log message; ``uptime_s`` when the source carried a timestamp."""

    message: str
    uptime_s: float | None = None


@dataclass(frozen=True)
class XidLine:
    """An XID parsed from the kernel log."""

    pci: str
    code: int
    detail: str


def parse_line(raw: str) -> KernelLine:
    """One raw line (kmsg record, dmesg line or plain text) -> message and uptime."""
    raw = raw.rstrip("\n")
    m = _KMSG_RECORD.match(raw)
    if m:
        return KernelLine(m.group("msg"), int(m.group("usec")) / 1e6)
    m = _DMESG_TS.match(raw)
    if m:
        return KernelLine(m.group("msg"), float(m.group("sec")))
    return KernelLine(raw)


def parse_xid(message: str) -> XidLine | None:
    m = _XID.search(message)
    if not m:
        return None
    return XidLine(m.group("pci").lower(), int(m.group("code")), m.group("rest").strip())


def is_oom(message: str) -> bool:
    return _OOM.search(message) is not None


def is_mce(message: str) -> bool:
    return _MCE.search(message) is not None


def normalize_pci(bus_id: str) -> str:
    """NVML says ``00000000:3B:00.0``, the kernel ``0000:3b:00``: both become ``0000:3b:00``.

    The domain is kept: on GH200 nodes every GPU sits on bus 01 of its own domain.
    """
    parts = bus_id.strip().lower().split(":")
    if len(parts) == 2:
        parts.insert(0, "0")
    if len(parts) != 3:
        return bus_id.lower()
    try:
        domain = f"{int(parts[0], 16):04x}"
    except ValueError:
        return bus_id.lower()
    return f"{domain}:{parts[1]}:{parts[2].split('.')[0]}"


class KernelLogReader(Protocol):
    """New kernel log lines since the last call (never blocks)."""

    def read_new(self) -> list[KernelLine]: ...


class FileKernelLog:
    """A text file of kernel log lines (kern.log, a dmesg capture, the simulator's log).

    Follows appends by offset and starts over when the file shrinks (rotation).
    """

    def __init__(self, path: str | Path, from_start: bool = True) -> None:
        self.path = Path(path)
        self._offset = 0
        if not from_start:
            try:
                self._offset = self.path.stat().st_size
            except OSError:
                self._offset = 0

    def read_new(self) -> list[KernelLine]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self._offset:
            self._offset = 0
        if size == self._offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read(size - self._offset)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        text = data[: end + 1].decode("utf-8", errors="replace")
        return [parse_line(line) for line in text.splitlines() if line.strip()]


class DevKmsg:
    """``/dev/kmsg``: one record per read, non-blocking; needs root (or CAP_SYSLOG)."""

    def __init__(self, path: str | Path = "/dev/kmsg", from_start: bool = True) -> None:
        self.path = str(path)
        self._fd: int | None = None
        self._from_start = from_start

    def open(self) -> int:
        if self._fd is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            if not self._from_start:
                os.lseek(fd, 0, os.SEEK_END)
            self._fd = fd
        return self._fd

    def read_new(self) -> list[KernelLine]:
        fd = self.open()
        out: list[KernelLine] = []
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them
                    continue
                raise
            if not rec:
                break
            out.append(parse_line(rec.decode("utf-8", errors="replace").split("\n", 1)[0]))
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
