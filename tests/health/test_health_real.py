"""The real hardware boundary on this machine (no NVIDIA driver) and parser robustness."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainwarden.health.errors import HealthError
from trainwarden.health.faults import XidCatalog
from trainwarden.health.hardware import RealHardware
from trainwarden.health.kmsg import DevKmsg, parse_line, parse_xid
from trainwarden.health.nvml.backend import NvmlError
from trainwarden.health.nvml.real import RealNvml
from trainwarden.health.probes.host import parse_meminfo, parse_stat_state
from trainwarden.health.probes.registry import ProbeConfig, real_hardware
from trainwarden.health.probes.storage import parse_mountinfo
from trainwarden.health.probes.xid import XidWatcher


def _driver_present() -> bool:
    try:
        RealNvml().init()
    except NvmlError:
        return False
    return True


needs_no_driver = pytest.mark.skipif(_driver_present(), reason="an NVIDIA driver is present")


@needs_no_driver
def test_real_nvml_without_driver_raises_our_error() -> None:
    nvml = RealNvml()
    with pytest.raises(NvmlError, match="NVML is not available"):
        nvml.device_count()
    with pytest.raises(NvmlError):
        nvml.wait_xids(0.01)
    assert isinstance(NvmlError("x"), HealthError)


@needs_no_driver
@pytest.mark.integration  # the watcher really sleeps out its 0.2 s timeout
def test_xid_watcher_without_nvml_or_kernel_log_waits_and_returns_nothing() -> None:
    watcher = XidWatcher(RealNvml(), XidCatalog(), kernel_log=None)
    t0 = time.monotonic()
    assert watcher.poll(0.2) == []
    assert 0.15 <= time.monotonic() - t0 < 1.0


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="/dev/kmsg not readable")
def test_real_dev_kmsg_records_parse() -> None:
    reader = DevKmsg(from_start=True)
    try:
        lines = reader.read_new()
    except OSError as exc:
        pytest.skip(f"/dev/kmsg cannot be read here: {exc}")
    finally:
        reader.close()
    assert lines, "a booted kernel has logged something"
    assert all(line.uptime_s is not None for line in lines)


def test_real_hardware_uses_configured_roots(tmp_path: object) -> None:
    hw = real_hardware(
        ProbeConfig(sysfs_root="/x/sys", procfs_root="/x/proc", kmsg_path="/nonexistent/kern.log")
    )
    assert str(hw.sysfs_root) == "/x/sys" and str(hw.procfs_root) == "/x/proc"
    assert hw.kernel_log() is None  # configured log missing: no source, not an exception
    assert isinstance(hw, RealHardware) and hw.default_storage_paths() == ("/tmp",)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    parse_line(text)
    parse_xid(text)
    parse_mountinfo(text)
    parse_meminfo(text)
    parse_stat_state(text)
