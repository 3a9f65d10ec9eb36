"""Storage probe: mountinfo parsing (pure), evaluation (pure), real round trips, hangs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from trainwarden.health import faults as fk
from trainwarden.health.hardware import FsStats, RealStorage
from trainwarden.health.probes.base import Health
from trainwarden.health.probes.runner import run_probes
from trainwarden.health.probes.storage import (
    Mount,
    StorageProbe,
    StorageSample,
    StorageThresholds,
    evaluate_storage,
    mount_for,
    parse_mountinfo,
)


def test_parse_mountinfo_fixture(data: Path) -> None:
    mounts = parse_mountinfo((data / "mountinfo-cluster.txt").read_text())
    assert [m.fstype for m in mounts] == [
        "overlay",
        "proc",
        "sysfs",
        "lustre",
        "lustre",
        "nfs4",
        "gpfs",
    ]
    assert mounts[3] == Mount("/capstor", "lustre", "10.100.0.1@o2ib:10.100.0.2@o2ib:/capstor")
    assert mounts[6].mount_point == "/gpfs/data set"  # \040 unescaped


def test_parse_captured_mountinfo(data: Path) -> None:
    mounts = parse_mountinfo((data / "captured/mountinfo-container.txt").read_text())
    assert mount_for("/tmp", mounts) == Mount("/", "ext4", "/dev/vda")


@pytest.mark.parametrize(
    ("path", "mount_point", "fstype"),
    [
        ("/capstor/users/x", "/capstor", "lustre"),
        ("/capstor/scratch/run1", "/capstor/scratch", "lustre"),
        ("/capstor", "/capstor", "lustre"),
        ("/capstorX/a", "/", "overlay"),
        ("/users/alice", "/users", "nfs4"),
        ("/gpfs/data set/x", "/gpfs/data set", "gpfs"),
        ("/", "/", "overlay"),
    ],
)
def test_mount_for(data: Path, path: str, mount_point: str, fstype: str) -> None:
    m = mount_for(path, parse_mountinfo((data / "mountinfo-cluster.txt").read_text()))
    assert m is not None and (m.mount_point, m.fstype) == (mount_point, fstype)


LUSTRE = Mount("/capstor", "lustre", "x")
OK = FsStats(1000, 500, 100, 50)
# (case, sample, health, fault kinds)
CASES = [
    ("healthy", StorageSample("/capstor/a", True, LUSTRE, OK, 0.01), Health.HEALTHY, []),
    (
        "missing",
        StorageSample("/capstor/a", False, LUSTRE, None, None),
        Health.UNHEALTHY,
        [fk.STORAGE_UNMOUNTED],
    ),
    (
        "slow",
        StorageSample("/capstor/a", True, LUSTRE, OK, 2.5),
        Health.DEGRADED,
        [fk.STORAGE_SLOW],
    ),
    (
        "nearly full",
        StorageSample("/capstor/a", True, LUSTRE, FsStats(1000, 30, 100, 50), 0.01),
        Health.DEGRADED,
        [fk.STORAGE_FULL],
    ),
    (
        "full",
        StorageSample("/capstor/a", True, LUSTRE, FsStats(1000, 5, 100, 50), 0.01),
        Health.UNHEALTHY,
        [fk.STORAGE_FULL],
    ),
    (
        "out of inodes",
        StorageSample("/capstor/a", True, LUSTRE, FsStats(1000, 500, 1000, 0), 0.01),
        Health.UNHEALTHY,
        [fk.STORAGE_FULL],
    ),
    (
        "write failed",
        StorageSample("/capstor/a", True, LUSTRE, OK, None, "EIO"),
        Health.UNHEALTHY,
        [fk.STORAGE_HANG],
    ),
]


@pytest.mark.parametrize(("case", "sample", "health", "kinds"), CASES, ids=[c[0] for c in CASES])
def test_evaluate_storage(
    case: str, sample: StorageSample, health: Health, kinds: list[str]
) -> None:
    result = evaluate_storage(sample, StorageThresholds(slow_s=1.0))
    assert result.health is health, result.reason
    assert [f.kind for f in result.faults] == kinds
    assert all(f.cause == "storage:/capstor" for f in result.faults)
    assert result.probe == "storage:/capstor/a"


def test_real_round_trip(tmp_path: Path) -> None:
    probe = StorageProbe(str(tmp_path), RealStorage("n"), Path("/proc"))
    result = probe.check()
    assert result.health is Health.HEALTHY, result.reason
    assert isinstance(result.values["round_trip_s"], float)
    assert isinstance(result.values["free_bytes"], int) and result.values["free_bytes"] > 0
    assert list(tmp_path.iterdir()) == []  # probe file removed


class HangingStorage(RealStorage):
    """A round trip that blocks on an event until released (the runner must not wait)."""

    def __init__(self) -> None:
        super().__init__("n")
        self.release = __import__("threading").Event()

    def round_trip(self, path: str, payload: bytes) -> None:
        self.release.wait()


def test_hang_is_unhealthy_with_mount_cause(tmp_path: Path, data: Path) -> None:
    ops = HangingStorage()
    probe = StorageProbe(str(tmp_path), ops, data / "procfs")  # mountinfo: overlay at /
    try:
        t0 = time.monotonic()
        (result,) = asyncio.run(run_probes([probe], 0.3))
        assert time.monotonic() - t0 < 1.0
        assert result.health is Health.UNHEALTHY
        assert result.reason.startswith("storage hung")
        assert result.faults[0].kind == fk.STORAGE_HANG
        assert result.faults[0].cause == "storage:/"
    finally:
        ops.release.set()
