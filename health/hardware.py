"""The hardware boundary: what probes read, bundled once and handed to every probe.

Real hardware is NVML (pynvml), the sysfs/procfs roots, the kernel log and the
filesystem. :class:`trainwarden.health.sim.hardware.SimulatedHardware` implements the same
protocol with a fixture tree in a state directory, so the real parsing code runs in
tests, the demo and the benchmarks.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from trainwarden.health.kmsg import DevKmsg, FileKernelLog, KernelLogReader
from trainwarden.health.nvml.backend import NvmlBackend
from trainwarden.health.nvml.real import RealNvml


@dataclass(frozen=True)
class FsStats:
    """Space and inodes of one filesystem, in bytes and counts."""

    total_bytes: int
    free_bytes: int
    total_inodes: int
    free_inodes: int


class StorageOps(Protocol):
    """Filesystem operations the storage probe times; they may block (a hung mount)."""

    def statvfs(self, path: str) -> FsStats: ...

    def round_trip(self, path: str, payload: bytes) -> None:
        """Write ``payload`` to a fresh file under ``path``, fsync, read it back, unlink.

        Raises OSError on failure and ValueError if the data read back differs.
        """
        ...


class Hardware(Protocol):
    """Everything probes and watchers need from the node."""

    @property
    def node(self) -> str: ...

    @property
    def nvml(self) -> NvmlBackend: ...

    @property
    def sysfs_root(self) -> Path: ...

    @property
    def procfs_root(self) -> Path: ...

    @property
    def storage(self) -> StorageOps: ...

    def kernel_log(self, from_start: bool = False) -> KernelLogReader | None:
        """A new reader with its own cursor, or None when no kernel log is readable."""
        ...

    def default_storage_paths(self) -> tuple[str, ...]:
        """Paths to check when the configuration names none."""
        ...


class RealStorage:
    """Plain POSIX calls; the probe file name is unique per host, process and call."""

    def __init__(self, node: str) -> None:
        self._node = node
        self._seq = 0
        self._lock = threading.Lock()

    def statvfs(self, path: str) -> FsStats:
        st = os.statvfs(path)
        return FsStats(
            total_bytes=st.f_blocks * st.f_frsize,
            free_bytes=st.f_bavail * st.f_frsize,
            total_inodes=st.f_files,
            free_inodes=st.f_favail,
        )

    def round_trip(self, path: str, payload: bytes) -> None:
        with self._lock:
            self._seq += 1
            seq = self._seq
        target = os.path.join(path, f".trainwarden-probe-{self._node}-{os.getpid()}-{seq}")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            with open(target, "rb") as f:
                back = f.read()
        finally:
            os.unlink(target)
        if back != payload:
            raise ValueError(
                f"read back {len(back)} bytes that differ from the {len(payload)} written"
            )


class RealHardware:
    """This node's real hardware (what ``real_hardware`` returns)."""

    def __init__(
        self,
        sysfs_root: str = "/sys",
        procfs_root: str = "/proc",
        kmsg_path: str | None = None,
        node: str | None = None,
    ) -> None:
        self._node = node or socket.gethostname()
        self._nvml = RealNvml()
        self._sysfs = Path(sysfs_root)
        self._procfs = Path(procfs_root)
        self._kmsg_path = kmsg_path
        self._storage = RealStorage(self._node)

    @property
    def node(self) -> str:
        return self._node

    @property
    def nvml(self) -> NvmlBackend:
        return self._nvml

    @property
    def sysfs_root(self) -> Path:
        return self._sysfs

    @property
    def procfs_root(self) -> Path:
        return self._procfs

    @property
    def storage(self) -> StorageOps:
        return self._storage

    def kernel_log(self, from_start: bool = False) -> KernelLogReader | None:
        candidates = [self._kmsg_path] if self._kmsg_path else ["/dev/kmsg"]
        for path in candidates:
            try:
                mode = os.stat(path).st_mode
            except (OSError, TypeError):
                continue
            if stat.S_ISCHR(mode):
                reader = DevKmsg(path, from_start=from_start)
                try:
                    reader.open()
                    return reader
                except OSError:
                    reader.close()
                    continue
            if stat.S_ISREG(mode) and os.access(path, os.R_OK):
                return FileKernelLog(path, from_start=from_start)
        return None

    def default_storage_paths(self) -> tuple[str, ...]:
        return ("/tmp",)
