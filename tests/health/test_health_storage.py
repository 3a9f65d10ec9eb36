"""Storage probe: mountinfo parsing (pure), evaluation (pure), real round trips, hangs, and
the probe under the agent unit's read-only file system (a mount namespace)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from trainwarden.health import faults as fk
from trainwarden.health.hardware import FsStats, RealStorage
from trainwarden.health.probes.base import Action, Health
from trainwarden.health.probes.runner import run_probes
from trainwarden.health.probes.storage import (
    PROBE_DIR,
    Mount,
    StorageProbe,
    StorageSample,
    StorageThresholds,
    evaluate_storage,
    mount_for,
    parse_mountinfo,
    probe_dir,
)

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "trainwarden-agent.service"


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


def test_evaluate_probe_setup_fault_is_degraded_alert_without_shared_cause() -> None:
    sample = StorageSample("/capstor/a", True, LUSTRE, OK, None, setup_error="cannot create X")
    result = evaluate_storage(sample, StorageThresholds())
    assert result.health is Health.DEGRADED and result.action is Action.ALERT
    [fault] = result.faults
    assert fault.kind == fk.STORAGE_PROBE_SETUP and fault.detail == "cannot create X"
    # many nodes missing one directory must not open a cluster incident on the mount
    assert fault.cause is None


def test_real_round_trip(tmp_path: Path) -> None:
    probe = StorageProbe(str(tmp_path), RealStorage("n"), Path("/proc"), node="n")
    result = probe.check()
    assert result.health is Health.HEALTHY, result.reason
    assert isinstance(result.values["round_trip_s"], float)
    assert isinstance(result.values["free_bytes"], int) and result.values["free_bytes"] > 0
    # it wrote only in its own directory, made on first use, and removed its file
    assert list(tmp_path.iterdir()) == [tmp_path / PROBE_DIR]
    assert list((tmp_path / PROBE_DIR).iterdir()) == [tmp_path / PROBE_DIR / "n"]
    assert list((tmp_path / PROBE_DIR / "n").iterdir()) == []
    assert probe_dir(str(tmp_path), "n") == str(tmp_path / PROBE_DIR / "n")
    # shared like /tmp: vet as root and vet in a user's job probe the same directory
    for d in (tmp_path / PROBE_DIR, tmp_path / PROBE_DIR / "n"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o1777
    assert probe.check().health is Health.HEALTHY  # and uses it again


def test_a_probe_dir_this_user_may_not_write_in_is_a_setup_fault(tmp_path: Path) -> None:
    """E.g. made 0755 by another user: a permission problem, not a reason to drain."""

    class NotMine(RealStorage):
        def round_trip(self, path: str, payload: bytes) -> None:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)

    result = StorageProbe(str(tmp_path), NotMine("n"), Path("/proc"), node="n").check()
    assert result.health is Health.DEGRADED and result.action is Action.ALERT
    assert [f.kind for f in result.faults] == [fk.STORAGE_PROBE_SETUP]
    assert "Permission denied" in result.faults[0].detail


def test_probe_dir_that_cannot_be_made_is_a_setup_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's unit cannot make ``.trainwarden-probe`` at a read-only mount root."""
    real_mkdir = os.mkdir

    def mkdir(path: str, mode: int = 0o777) -> None:
        if os.path.basename(path) == PROBE_DIR:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        real_mkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", mkdir)
    result = StorageProbe(str(tmp_path), RealStorage("n"), Path("/proc"), node="n").check()
    assert result.health is Health.DEGRADED, result.reason
    assert result.action is Action.ALERT
    assert [f.kind for f in result.faults] == [fk.STORAGE_PROBE_SETUP]
    detail = result.faults[0].detail
    assert f"cannot create the probe directory {tmp_path / PROBE_DIR}" in detail
    assert "Read-only file system" in detail and "install -d -m 1777" in detail
    assert result.values["round_trip_s"] is None


def test_write_failure_inside_the_probe_dir_is_a_storage_fault(tmp_path: Path) -> None:
    class ReadOnly(RealStorage):
        def round_trip(self, path: str, payload: bytes) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    result = StorageProbe(str(tmp_path), ReadOnly("n"), Path("/proc"), node="n").check()
    assert result.health is Health.UNHEALTHY and result.action is Action.DRAIN
    assert [f.kind for f in result.faults] == [fk.STORAGE_HANG]
    assert "Read-only file system" in result.faults[0].detail


def test_a_link_in_place_of_the_node_dir_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "mnt" / PROBE_DIR).mkdir(parents=True)
    (tmp_path / "mnt" / PROBE_DIR / "n").symlink_to(elsewhere)
    result = StorageProbe(str(tmp_path / "mnt"), RealStorage("n"), Path("/proc"), node="n").check()
    assert result.health is Health.DEGRADED
    assert [f.kind for f in result.faults] == [fk.STORAGE_PROBE_SETUP]
    assert "is not a directory" in result.faults[0].detail
    assert list(elsewhere.iterdir()) == []


# -- under the agent unit's sandbox ------------------------------------------------------

# Run in a private mount namespace: each root read-only (ProtectSystem=strict), and for
# "ok" its .trainwarden-probe bound read-write again (ReadWritePaths=, as systemd does it).
_SANDBOX = r"""
set -e
for root in "$OK" "$BARE" "$RO"; do
    mount --bind "$root" "$root"
    mount -o remount,bind,ro "$root"
done
mount --bind "$OK/.trainwarden-probe" "$OK/.trainwarden-probe"
mount -o remount,bind,rw "$OK/.trainwarden-probe"
exec "$PYTHON" "$SCRIPT"
"""
_CHECK = """
import json, os, sys
from pathlib import Path
from trainwarden.health.hardware import RealStorage
from trainwarden.health.probes.storage import StorageProbe

out = {}
for name in ("OK", "BARE", "RO"):
    r = StorageProbe(os.environ[name], RealStorage("n1"), Path("/proc"), node="n1").check()
    out[name] = {"health": r.health.value, "kinds": [f.kind for f in r.faults],
                 "action": r.action.value, "reason": r.reason}
try:  # what the probe did before: a file at the mount root
    RealStorage("n1").round_trip(os.environ["OK"], b"x")
    out["at_root"] = "written"
except OSError as exc:
    out["at_root"] = exc.strerror
print(json.dumps(out))
"""


def _unit_read_write_paths() -> list[str]:
    paths: list[str] = []
    for line in UNIT.read_text().splitlines():
        if line.startswith("ReadWritePaths="):
            paths += line.partition("=")[2].split()
    return paths


def test_the_agent_unit_grants_exactly_the_probe_dirs_of_the_config_file() -> None:
    shipped = tomllib.loads((REPO / "deploy" / "trainwarden.toml").read_text())
    storage = shipped["agent"]["storage"]
    assert storage, "trainwarden.toml names no [agent] storage paths"
    granted = _unit_read_write_paths()
    # "-": a path that is missing (a file system not mounted) does not stop the unit
    assert sorted(granted) == sorted(f"-{p}/{PROBE_DIR}" for p in storage)
    assert "ProtectSystem=strict" in UNIT.read_text().splitlines()


def test_probe_under_the_units_read_only_file_system(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs root with unshare(1) and mount(8) for a private mount namespace")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(f"mount namespaces are not permitted here: {probe.stderr.strip()}")
    roots = {name: tmp_path / name.lower() for name in ("OK", "BARE", "RO")}
    for root in roots.values():
        root.mkdir()
    (roots["OK"] / PROBE_DIR).mkdir()
    (roots["RO"] / PROBE_DIR / "n1").mkdir(parents=True)  # made once, then remounted ro
    script = tmp_path / "check.py"
    script.write_text(_CHECK)
    env = {
        **os.environ,
        **{k: str(v) for k, v in roots.items()},
        "PYTHON": sys.executable,
        "SCRIPT": str(script),
    }
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SANDBOX],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 and "mount" in done.stderr and not done.stdout:
        pytest.skip(f"bind mounts are not permitted here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # the unit's paths: the probe is healthy, though the mount root is read-only ...
    assert out["OK"]["health"] == "healthy", out["OK"]
    assert out["at_root"] == "Read-only file system"  # ... where the old probe wrote
    # no .trainwarden-probe: the sandbox cannot make it -- a setup fault, no drain
    assert out["BARE"]["health"] == "degraded", out["BARE"]
    assert out["BARE"]["kinds"] == [fk.STORAGE_PROBE_SETUP]
    assert out["BARE"]["action"] == "alert"
    # read-only inside .trainwarden-probe (a read-only remount): a real storage fault
    assert out["RO"]["health"] == "unhealthy", out["RO"]
    assert out["RO"]["kinds"] == [fk.STORAGE_HANG] and out["RO"]["action"] == "drain"
    assert "Read-only file system" in out["RO"]["reason"]
    # the namespace's mounts are gone with it; the probe left only its own directory
    assert sorted(p.name for p in roots["OK"].iterdir()) == [PROBE_DIR]
    assert [p.name for p in (roots["OK"] / PROBE_DIR).iterdir()] == ["n1"]


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
