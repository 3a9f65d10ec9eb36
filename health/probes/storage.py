"""Storage probe: one per configured path -- mount and filesystem, space, and a timed round trip.

The round trip (write, fsync, read, unlink) is the part that hangs on a stuck Lustre or
NFS mount; the runner bounds it and asks :meth:`StorageProbe.on_hang` for the verdict,
which is ``unhealthy: storage hung`` with ``cause="storage:<mount point>"`` so the
policy layer can see one outage behind many nodes.

The round trip writes only in ``<path>/.trainwarden-probe/<node>/`` (:func:`probe_dir`):
the agent's unit keeps the whole file system read-only but those directories
(``ReadWritePaths=``), and one directory per node keeps thousands of nodes from creating
files in one shared directory. A ``<path>/.trainwarden-probe`` that is missing and cannot
be made, or a directory this user may not write in, is a setup fault (degraded, alert;
the unit cannot make it), while a failed write inside it -- a read-only remount, EIO --
is the storage fault it always was.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainwarden.health import faults as fk
from trainwarden.health.hardware import FsStats, StorageOps
from trainwarden.health.probes.base import Action, CheckResult, Fault, Health, Severity, Value
from trainwarden.health.probes.util import fold, read_text


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str


@dataclass(frozen=True)
class StorageThresholds:
    slow_s: float = 1.0  # round trip slower than this is degraded
    low_free_ratio: float = 0.05  # degraded below
    full_free_ratio: float = 0.01  # unhealthy below
    payload_bytes: int = 4096


def _unescape(field_text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mountinfo(text: str) -> list[Mount]:
    """``/proc/self/mountinfo`` -> mounts, in file order (later mounts shadow earlier)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 2:
            continue
        mounts.append(Mount(_unescape(lf[4]), rf[0], rf[1]))
    return mounts


def mount_for(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount a path lives on: the longest mount-point prefix, the last one mounted."""
    best: Mount | None = None
    norm = os.path.normpath(path)
    for m in mounts:
        mp = m.mount_point
        under = norm == mp or norm.startswith(mp.rstrip("/") + "/") or mp == "/"
        if under and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best


@dataclass(frozen=True)
class StorageSample:
    path: str
    exists: bool
    mount: Mount | None
    stats: FsStats | None
    round_trip_s: float | None
    error: str = ""
    setup_error: str = ""  # no directory to write in: the round trip did not run


def evaluate_storage(s: StorageSample, t: StorageThresholds) -> CheckResult:
    """Pure: one path's sample -> verdict."""
    name = f"storage:{s.path}"
    mp = s.mount.mount_point if s.mount else s.path
    cause = f"storage:{mp}"
    values: dict[str, Value] = {
        "path": s.path,
        "mount_point": s.mount.mount_point if s.mount else None,
        "fstype": s.mount.fstype if s.mount else None,
        "round_trip_s": s.round_trip_s,
    }
    faults: list[Fault] = []
    if not s.exists:
        faults.append(
            Fault(
                fk.STORAGE_UNMOUNTED,
                Severity.FATAL,
                f"{s.path} does not exist (not mounted?)",
                cause=cause,
            )
        )
        return fold(name, faults, values, "")
    if s.stats is not None:
        st = s.stats
        free_ratio = st.free_bytes / st.total_bytes if st.total_bytes else 1.0
        inode_ratio = st.free_inodes / st.total_inodes if st.total_inodes else 1.0
        values.update(
            free_bytes=st.free_bytes,
            total_bytes=st.total_bytes,
            free_inodes=st.free_inodes,
            total_inodes=st.total_inodes,
            free_ratio=round(free_ratio, 4),
        )
        low = min(free_ratio, inode_ratio)
        what = "inodes" if inode_ratio < free_ratio else "space"
        if low < t.full_free_ratio:
            faults.append(
                Fault(
                    fk.STORAGE_FULL,
                    Severity.FATAL,
                    f"{mp} is full ({low:.1%} {what} free)",
                    cause=cause,
                )
            )
        elif low < t.low_free_ratio:
            faults.append(
                Fault(
                    fk.STORAGE_FULL,
                    Severity.DEGRADED,
                    f"{mp} is nearly full ({low:.1%} {what} free)",
                    cause=cause,
                )
            )
    if s.setup_error:
        # No shared cause: many nodes missing one directory is a setup fault, and must not
        # open a cluster incident that pauses automation on that mount.
        faults.append(Fault(fk.STORAGE_PROBE_SETUP, Severity.DEGRADED, s.setup_error))
    elif s.error:
        faults.append(
            Fault(
                fk.STORAGE_HANG,
                Severity.FATAL,
                f"{s.path}: write/read failed: {s.error}",
                cause=cause,
            )
        )
    elif s.round_trip_s is not None and s.round_trip_s > t.slow_s:
        faults.append(
            Fault(
                fk.STORAGE_SLOW,
                Severity.DEGRADED,
                f"{mp}: write+fsync+read took {s.round_trip_s:.2f} s (limit {t.slow_s} s)",
                cause=cause,
            )
        )
    fs = f"{s.mount.fstype} at {s.mount.mount_point}" if s.mount else "unknown mount"
    rt = f"{s.round_trip_s * 1000:.1f} ms" if s.round_trip_s is not None else "n/a"
    actions = {f: Action.ALERT for f in faults if f.kind == fk.STORAGE_PROBE_SETUP}
    return fold(name, faults, values, f"{s.path} ({fs}) round trip {rt}", actions)


PROBE_DIR = ".trainwarden-probe"
# errors of making a directory that mean "not allowed here", not "the storage is broken"
_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)


def probe_dir(path: str, node: str) -> str:
    """Where the round trip writes: ``<path>/.trainwarden-probe/<node>``."""
    return os.path.join(path, PROBE_DIR, node.replace("/", "_") or "node")


def _is_real_dir(path: str) -> bool:
    """A directory and not a link (a planted link would send the probe's writes elsewhere)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _make_shared_dir(path: str) -> None:
    """``mkdir`` with mode 1777 (as ``/tmp``): the agent, ``trainwarden vet`` run as root by
    Slurm and ``vet`` in a user's job all probe the same node's directory; the sticky bit
    keeps each from removing the others' files, and probe files are made with O_EXCL."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o1777)  # not through mkdir's mode: the umask would strip it


def ensure_probe_dir(path: str, node: str) -> tuple[str, str]:
    """Make ``probe_dir(path, node)`` if absent: ``(directory, "")``, or ``("", why not)``
    when it cannot be made for a reason that is not the storage's fault.

    Raises OSError for the other failures (EIO, ENOSPC, a read-only remount inside an
    existing ``.trainwarden-probe``): those are storage faults.
    """
    base = os.path.join(path, PROBE_DIR)
    work = probe_dir(path, node)
    fix = f"`install -d -m 1777 {base}` once per file system, then restart the agent"
    for d in (base, work):
        if os.path.lexists(d) and not _is_real_dir(d):
            return "", f"{d} is not a directory; remove it (the probe writes only in there)"
    if not _is_real_dir(base):
        try:
            _make_shared_dir(base)
        except OSError as exc:
            if exc.errno not in _NOT_ALLOWED:
                raise
            return "", (
                f"cannot create the probe directory {base}: {exc.strerror}; the agent's "
                f"unit lets it write nowhere else: {fix}"
            )
    if not _is_real_dir(work):
        try:
            _make_shared_dir(work)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM):
                raise  # EROFS in .trainwarden-probe, which the unit makes writable: a fault
            return "", f"cannot create {work}: {exc.strerror}; {base} must be mode 1777 ({fix})"
    return work, ""


@dataclass(eq=False)
class StorageProbe:
    path: str
    ops: StorageOps
    procfs_root: Path
    thresholds: StorageThresholds = field(default_factory=StorageThresholds)
    node: str = ""  # names this node's probe directory (default: the short host name)
    _mount: Mount | None = None

    @property
    def name(self) -> str:
        return f"storage:{self.path}"

    def read(self) -> StorageSample:
        text = read_text(self.procfs_root / "self" / "mountinfo") or ""
        self._mount = mount_for(self.path, parse_mountinfo(text))
        if not os.path.isdir(self.path):
            return StorageSample(self.path, False, self._mount, None, None)
        stats = self.ops.statvfs(self.path)
        payload = os.urandom(self.thresholds.payload_bytes)
        node = self.node or socket.gethostname().split(".")[0]
        try:
            work, why_not = ensure_probe_dir(self.path, node)
        except OSError as exc:
            return StorageSample(self.path, True, self._mount, stats, None, str(exc))
        if why_not:
            return StorageSample(self.path, True, self._mount, stats, None, setup_error=why_not)
        start = time.perf_counter()
        try:
            self.ops.round_trip(work, payload)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):  # whose directory, not its health
                why_not = f"cannot write in {work}: {exc.strerror}; it must be mode 1777"
                return StorageSample(self.path, True, self._mount, stats, None, setup_error=why_not)
            return StorageSample(self.path, True, self._mount, stats, None, str(exc))
        except ValueError as exc:
            return StorageSample(self.path, True, self._mount, stats, None, str(exc))
        return StorageSample(self.path, True, self._mount, stats, time.perf_counter() - start)

    def check(self) -> CheckResult:
        return evaluate_storage(self.read(), self.thresholds)

    def on_hang(self, timeout_s: float) -> CheckResult:
        """The verdict when the check did not return in time: the mount is hung."""
        mp = self._mount.mount_point if self._mount else self.path
        fault = Fault(
            fk.STORAGE_HANG,
            Severity.FATAL,
            f"storage hung: {self.path} did not answer within {timeout_s:g} s",
            cause=f"storage:{mp}",
        )
        return CheckResult(
            self.name,
            Health.UNHEALTHY,
            fault.detail,
            Action.DRAIN,
            {"path": self.path, "mount_point": mp, "timeout_s": timeout_s},
            (fault,),
        )
