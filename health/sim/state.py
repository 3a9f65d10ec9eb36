"""The simulated node's state directory: the one place both the simulator and injectors touch.

Layout (all plain files, so another process can inject)::

    config.json        node, GPU count, fabric, slow-storage delay, creation time
    state.json         active persistent faults, counters (link_downed, ...)
    xid-events.jsonl   NVML XID events, appended
    kmsg               kernel log, appended (dmesg format)
    sys/ proc/         the fixture trees the real probes read, rewritten on each change
    mnt/lustre/        the simulated shared filesystem (a real directory)
    hang.fifo          a FIFO nobody reads: opening it for writing is a real hang
    lock               fcntl lock serialising writers
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.health.errors import HealthError

PCI_BUSES = ("18", "2a", "3b", "5d", "9a", "ab", "ba", "db")


def pci_of(gpu: int) -> str:
    """The kernel's spelling (``0000:3b:00``) of the simulated GPU's PCI address."""
    bus = PCI_BUSES[gpu] if gpu < len(PCI_BUSES) else f"{0xE0 + gpu - len(PCI_BUSES):02x}"
    return f"0000:{bus}:00"


@dataclass
class SimState:
    node: str
    gpus: int
    fabric: str = "ib"
    storage_slow_s: float = 1.5
    created: float = field(default_factory=time.time)
    active: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def config_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "gpus": self.gpus,
            "fabric": self.fabric,
            "storage_slow_s": self.storage_slow_s,
            "created": self.created,
        }


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(state_dir: Path) -> SimState:
    try:
        cfg = json.loads((state_dir / "config.json").read_text())
    except FileNotFoundError:
        raise HealthError(
            f"{state_dir} is not a simulated node's state directory "
            "(no config.json); start the simulated node first"
        ) from None
    except (OSError, ValueError) as exc:
        raise HealthError(f"cannot read {state_dir}/config.json: {exc}") from None
    try:
        st = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        st = {}
    return SimState(
        cfg["node"],
        int(cfg["gpus"]),
        cfg.get("fabric", "ib"),
        float(cfg.get("storage_slow_s", 1.5)),
        float(cfg.get("created", time.time())),
        list(st.get("active", [])),
        dict(st.get("counters", {})),
    )


def active(state_dir: Path) -> list[str]:
    """Active persistent faults (cheap; read on every simulated NVML or storage call)."""
    try:
        return list(json.loads((state_dir / "state.json").read_text()).get("active", []))
    except (OSError, ValueError):
        return []


def counters(state_dir: Path) -> dict[str, int]:
    """Event counters (link_downed, NVLink errors per GPU...)."""
    try:
        return dict(json.loads((state_dir / "state.json").read_text()).get("counters", {}))
    except (OSError, ValueError):
        return {}


def save(state_dir: Path, state: SimState) -> None:
    atomic_write(state_dir / "config.json", json.dumps(state.config_json()))
    atomic_write(
        state_dir / "state.json", json.dumps({"active": state.active, "counters": state.counters})
    )


def append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()


def kmsg_line(state: SimState, message: str) -> str:
    return f"[{max(0.0, time.time() - state.created) + 12.0:12.6f}] {message}"
