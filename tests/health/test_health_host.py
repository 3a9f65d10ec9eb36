"""Host probe: procfs parsing (pure), evaluation (pure) and the fixture tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.health import faults as fk
from trainwarden.health.clock import VirtualClock
from trainwarden.health.kmsg import FileKernelLog
from trainwarden.health.probes.base import Health
from trainwarden.health.probes.host import (
    HostProbe,
    HostSample,
    HostThresholds,
    count_cpus,
    evaluate_host,
    parse_loadavg,
    parse_meminfo,
    parse_stat_state,
    read_host,
)


def test_parse_captured_meminfo(data: Path) -> None:
    mem = parse_meminfo((data / "captured/meminfo.txt").read_text())
    assert mem["MemTotal"] > mem["MemAvailable"] > 0
    assert mem["MemTotal"] % 1024 == 0  # kB -> bytes
    assert "HugePages_Total" in mem  # unitless counts kept as they are


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("1 (systemd) S 0 1", "S"),
        ("301 (a) (b) R 1 301", "R"),
        ("300 (tmux: server) D 1", "D"),
        ("garbage", None),
        ("5 (x)", None),
    ],
)
def test_parse_stat_state(text: str, state: str | None) -> None:
    assert parse_stat_state(text) == state


@pytest.mark.parametrize(
    ("text", "load"), [("0.52 0.58 0.59 3/712 30012", 0.52), ("", None), ("x y", None)]
)
def test_parse_loadavg(text: str, load: float | None) -> None:
    assert parse_loadavg(text) == load


def test_count_cpus() -> None:
    assert count_cpus("cpu  1 2\ncpu0 1\ncpu1 1\nintr 0\n") == 2
    assert count_cpus("") == 1


def test_read_fixture_tree(data: Path) -> None:
    s = read_host(data / "procfs", [])
    assert (s.d_state, s.zombies, s.cpus, s.load1) == (1, 1, 2, 0.52)
    assert s.mem_available_bytes is not None and s.mem_available_bytes > 0


def sample(**kw: object) -> HostSample:
    base: dict[str, object] = dict(
        mem_total_bytes=100,
        mem_available_bytes=50,
        swap_total_bytes=0,
        swap_free_bytes=0,
        load1=1.0,
        cpus=4,
        d_state=0,
        zombies=0,
    )
    base.update(kw)
    return HostSample(**base)  # type: ignore[arg-type]


CASES = [
    ("healthy", sample(), Health.HEALTHY, []),
    ("memory low", sample(mem_available_bytes=2), Health.DEGRADED, [fk.HOST_MEMORY_LOW]),
    ("load high", sample(load1=40.0), Health.DEGRADED, ["host-load"]),
    ("D state", sample(d_state=30), Health.DEGRADED, [fk.HOST_D_STATE]),
    ("zombies", sample(zombies=500), Health.DEGRADED, ["host-zombies"]),
    (
        "oom",
        sample(oom_lines=("Out of memory: Killed process 1 (x)",)),
        Health.DEGRADED,
        [fk.HOST_OOM],
    ),
    (
        "mce",
        sample(mce_lines=("mce: [Hardware Error]: Machine check events logged",)),
        Health.DEGRADED,
        [fk.HOST_MCE],
    ),
    ("unknown memory", sample(mem_total_bytes=None, mem_available_bytes=None), Health.HEALTHY, []),
]


@pytest.mark.parametrize(("case", "s", "health", "kinds"), CASES, ids=[c[0] for c in CASES])
def test_evaluate_host(case: str, s: HostSample, health: Health, kinds: list[str]) -> None:
    result = evaluate_host(s, HostThresholds())
    assert result.health is health, result.reason
    assert [f.kind for f in result.faults] == kinds
    assert result.values["d_state_processes"] == s.d_state


def test_probe_reads_kernel_log_and_forgets(data: Path) -> None:
    clock = VirtualClock()
    probe = HostProbe(
        data / "procfs", kernel_log=FileKernelLog(data / "dmesg-xid.txt"), clock=clock, hold_s=100
    )
    first = probe.check()
    assert first.health is Health.DEGRADED
    assert {f.kind for f in first.faults} == {fk.HOST_OOM, fk.HOST_MCE}
    assert first.values["oom_kills"] == 1  # "Killed process"; "invoked oom-killer" precedes it
    clock.advance(101)
    assert probe.check().health is Health.HEALTHY
