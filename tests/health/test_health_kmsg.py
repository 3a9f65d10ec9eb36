"""Kernel log parsing (pure, table-driven) and reading with a cursor."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.health.kmsg import (
    FileKernelLog,
    is_mce,
    is_oom,
    normalize_pci,
    parse_line,
    parse_xid,
)


@pytest.mark.parametrize(
    ("raw", "message", "uptime"),
    [
        (
            "[ 9002.000001] NVRM: Xid (PCI:0000:3b:00): 79, x",
            "NVRM: Xid (PCI:0000:3b:00): 79, x",
            9002.000001,
        ),
        ("4,5522,9010101010,-;NVRM: hello", "NVRM: hello", 9010.10101),
        ("plain text line\n", "plain text line", None),
        ("[    5.1] a", "a", 5.1),
    ],
)
def test_parse_line(raw: str, message: str, uptime: float | None) -> None:
    line = parse_line(raw)
    assert line.message == message
    assert line.uptime_s == pytest.approx(uptime) if uptime is not None else line.uptime_s is None


@pytest.mark.parametrize(
    ("message", "pci", "code"),
    [
        (
            "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=p, GPU has fallen off the bus.",
            "0000:3b:00",
            79,
        ),
        ("NVRM: Xid (PCI:0000:9A:00.0): 94, pid=2, Contained: SM", "0000:9a:00.0", 94),
        ("NVRM: Xid (PCI:0000:18:00): 13, Graphics SM Warp Exception", "0000:18:00", 13),
        ("NVRM: Xid (0000:02:00): 79, GPU has fallen off the bus.", "0000:02:00", 79),
        (
            "NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen",
            "0000:3b:00",
            79,
        ),
        ("NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.", None, None),
        ("mlx5_core 0000:c1:00.0: Xid-like but not NVRM", None, None),
    ],
)
def test_parse_xid(message: str, pci: str | None, code: int | None) -> None:
    x = parse_xid(message)
    if pci is None:
        assert x is None
    else:
        assert x is not None and (x.pci, x.code) == (pci, code)


@pytest.mark.parametrize(
    ("message", "oom", "mce"),
    [
        ("Out of memory: Killed process 22014 (python3) total-vm:1kB", True, False),
        ("python3 invoked oom-killer: gfp_mask=0x0", False, False),
        ("Memory cgroup out of memory: Killed process 7 (python3) total-vm:1kB", False, False),
        ("mce: [Hardware Error]: Machine check events logged", False, True),
        ("EDAC MC0: 1 CE memory read error", False, False),
    ],
)
def test_oom_mce(message: str, oom: bool, mce: bool) -> None:
    assert (is_oom(message), is_mce(message)) == (oom, mce)


@pytest.mark.parametrize(
    ("bus", "norm"),
    [
        ("00000000:3B:00.0", "0000:3b:00"),
        ("0000:3b:00", "0000:3b:00"),
        ("0000:3b:00.1", "0000:3b:00"),
        ("00000009:01:00.0", "0009:01:00"),
        ("0019:01:00", "0019:01:00"),
        ("3b:00", "0000:3b:00"),
        ("garbage", "garbage"),
    ],
)
def test_normalize_pci(bus: str, norm: str) -> None:
    assert normalize_pci(bus) == norm


def test_file_kernel_log_follows_appends_and_rotation(tmp_path: Path, data: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text((data / "dmesg-xid.txt").read_text())
    reader = FileKernelLog(log, from_start=True)
    first = reader.read_new()
    assert len(first) == 11
    xids = [parse_xid(x.message) for x in first]
    assert [x.code for x in xids if x is not None] == [13, 48, 79, 94]
    assert reader.read_new() == []
    with log.open("a") as f:
        f.write("[ 9999.0] NVRM: Xid (PCI:0000:db:00): 31, pid=1, MMU Fault\npartial")
    new = reader.read_new()
    assert [x.message for x in new] == ["NVRM: Xid (PCI:0000:db:00): 31, pid=1, MMU Fault"]
    log.write_text("[ 1.0] after rotation\n")  # shorter: rotated
    assert [x.message for x in reader.read_new()] == ["after rotation"]


def test_file_kernel_log_from_end_skips_history(tmp_path: Path, data: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text((data / "dmesg-xid.txt").read_text())
    reader = FileKernelLog(log, from_start=False)
    assert reader.read_new() == []
    assert FileKernelLog(tmp_path / "missing.log").read_new() == []


def test_kmsg_records_fixture(data: Path) -> None:
    lines = FileKernelLog(data / "kmsg-records.txt").read_new()
    xids = [parse_xid(line.message) for line in lines]
    assert [x.code for x in xids if x] == [95]
    assert lines[1].uptime_s == pytest.approx(9010.10101)
