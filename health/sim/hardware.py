"""Simulated node hardware: implements :class:`health.hardware.Hardware` over a state directory.

Faults are injected by name, in process (:meth:`SimulatedHardware.inject`) or from
another process (:func:`inject_into`); a running agent sees them at its next probe or
poll. A storage hang is a real one: the round trip blocks opening a FIFO nobody reads,
until the fault is cleared.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
import weakref
from pathlib import Path

from trainwarden.health.errors import HealthError
from trainwarden.health.hardware import FsStats, RealStorage, StorageOps
from trainwarden.health.kmsg import FileKernelLog, KernelLogReader
from trainwarden.health.nvml.backend import NvmlBackend
from trainwarden.health.sim import state as st
from trainwarden.health.sim.faults import apply_fault, clear_fault, fault_names, parse_fault
from trainwarden.health.sim.nvml import SimNvml
from trainwarden.health.sim.tree import render, storage_dir

__all__ = ["SimulatedHardware", "clear_in", "fault_names", "inject_into"]


def inject_into(state_dir: str | Path, fault: str) -> None:
    """Inject ``fault`` into the simulated node whose state lives in ``state_dir``."""
    d = Path(state_dir)
    parse_fault(fault)  # validate before touching anything
    st.load(d)  # a clear error when d is not a simulated node (and nothing created there)
    with st.locked(d):
        state = st.load(d)
        apply_fault(d, state, fault)
        st.save(d, state)
        render(d, state)


def clear_in(state_dir: str | Path, fault: str | None = None) -> None:
    """Clear one persistent fault (``None``: all of them) and release a hung storage call."""
    d = Path(state_dir)
    if fault is not None:
        parse_fault(fault)
    st.load(d)
    with st.locked(d):
        state = st.load(d)
        clear_fault(state, fault)
        st.save(d, state)
        render(d, state)
    release_hang(d)


def release_hang(state_dir: Path) -> None:
    """Open the FIFO for reading once, so writers blocked on it return."""
    fifo = state_dir / "hang.fifo"
    if not fifo.exists():
        return
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    time.sleep(0.01)
    os.close(fd)


class SimStorage:
    """Real file operations on the simulated mount, bent by storage faults."""

    def __init__(self, state_dir: Path, node: str, slow_s: float) -> None:
        self._dir = state_dir
        self._real = RealStorage(node)
        self._slow_s = slow_s

    def statvfs(self, path: str) -> FsStats:
        real = self._real.statvfs(path)
        if "storage-full" in st.active(self._dir):
            return FsStats(
                real.total_bytes, real.total_bytes // 200, real.total_inodes, real.free_inodes
            )
        return real

    def round_trip(self, path: str, payload: bytes) -> None:
        active = st.active(self._dir)
        if "storage-hang" in active:
            # Blocks in the kernel until a reader opens the FIFO (clear_in does).
            fd = os.open(self._dir / "hang.fifo", os.O_WRONLY)
            os.close(fd)
            raise OSError(errno.EIO, "simulated storage hang was released")
        if "storage-slow" in active:
            time.sleep(self._slow_s)
        self._real.round_trip(path, payload)


class SimulatedHardware:
    """One simulated node: ``gpus`` GPUs, an InfiniBand HCA (or a Slingshot NIC), Ethernet,
    a Lustre-like mount, a host; all in ``state_dir`` (a new temporary one by default)."""

    simulated = True

    def __init__(
        self,
        node: str | None = None,
        gpus: int = 4,
        state_dir: str | Path | None = None,
        fabric: str = "ib",
        storage_slow_s: float = 1.5,
    ) -> None:
        if fabric not in ("ib", "slingshot"):
            raise HealthError(f"fabric must be 'ib' or 'slingshot', not {fabric!r}")
        if gpus < 0:
            raise HealthError(f"a simulated node needs 0 or more GPUs, not {gpus}")
        self._owned = state_dir is None
        if state_dir is None:
            state_dir = tempfile.mkdtemp(prefix="trainwarden-sim-")
            self._finalizer = weakref.finalize(self, _remove, Path(state_dir))
        self.state_dir = Path(state_dir).resolve()
        with st.locked(self.state_dir):
            if (self.state_dir / "config.json").exists():
                state = st.load(self.state_dir)
            else:
                state = st.SimState(node or socket.gethostname(), gpus, fabric, storage_slow_s)
                st.save(self.state_dir, state)
                (self.state_dir / "kmsg").touch()
                (self.state_dir / "xid-events.jsonl").touch()
            fifo = self.state_dir / "hang.fifo"
            if not fifo.exists():
                os.mkfifo(fifo)
            render(self.state_dir, state)
        self._node = state.node
        self._gpus = state.gpus
        self._nvml = SimNvml(self.state_dir, state.gpus)
        self._storage = SimStorage(self.state_dir, state.node, state.storage_slow_s)

    @property
    def node(self) -> str:
        return self._node

    @property
    def gpus(self) -> int:
        return self._gpus

    @property
    def nvml(self) -> NvmlBackend:
        return self._nvml

    @property
    def sysfs_root(self) -> Path:
        return self.state_dir / "sys"

    @property
    def procfs_root(self) -> Path:
        return self.state_dir / "proc"

    @property
    def storage(self) -> StorageOps:
        return self._storage

    def kernel_log(self, from_start: bool = False) -> KernelLogReader | None:
        return FileKernelLog(self.state_dir / "kmsg", from_start=from_start)

    def default_storage_paths(self) -> tuple[str, ...]:
        return (str(storage_dir(self.state_dir)),)

    def inject(self, fault: str) -> None:
        inject_into(self.state_dir, fault)

    def clear(self, fault: str | None = None) -> None:
        clear_in(self.state_dir, fault)

    def active_faults(self) -> list[str]:
        return st.active(self.state_dir)

    def close(self) -> None:
        """Release any hung storage call; remove the state directory if it was ours."""
        if self.state_dir.exists():
            clear_in(self.state_dir, "storage-hang")
        if self._owned:
            self._finalizer()


def _remove(path: Path) -> None:
    release_hang(path)
    shutil.rmtree(path, ignore_errors=True)
