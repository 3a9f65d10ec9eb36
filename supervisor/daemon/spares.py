"""The control file between the daemon and a Slurm job that holds spare nodes.

A run with ``spares`` is submitted on nodes + spares nodes with ``--no-kill``; its batch
script (examples/slurm/train.sbatch with ``TW_CONTROL_FILE`` set) runs the training step on
the nodes the control file names and relaunches it when the file's generation changes. So a
restart is a file write instead of a new sbatch: no queue wait. The script appends one
``generation=G launched=T nodes=L`` line to ``<control>.ack`` per launch, which tells the
daemon that (and when) its relaunch happened.

The file is also the daemon's record of a swap it decided: a generation one past the run's
stored attempt, naming nodes, is a swap a crashed daemon wrote and did not record. The next
daemon finishes that swap from the file, never writes it again.

This module is the file protocol alone, as the script follows it; when to swap, onto which
nodes, and how a swap becomes the run's next attempt are ``in_allocation``'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CONTROL_NAME = ".trainwarden-control"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ACK = re.compile(r"generation=(\d+) launched=([0-9.]+) nodes=(\S*)")


def control_path(checkpoint_dir: str) -> Path:
    """Beside the checkpoints: the one directory both the daemon and the job already share."""
    return Path(checkpoint_dir) / CONTROL_NAME


def ack_path(control: Path) -> Path:
    return control.with_name(control.name + ".ack")


def write_control(
    control: Path, generation: int, nodes: Sequence[str], env: Mapping[str, str]
) -> None:
    """Atomically (rename) so the script never reads half a file."""
    lines = [f"generation={generation}", f"nodes={','.join(nodes)}"]
    for key, value in sorted(env.items()):
        if not _KEY.fullmatch(key) or "\n" in value:
            raise ValueError(f"environment entry {key!r} cannot go in a control file")
        lines.append(f"{key}={value}")
    control.parent.mkdir(parents=True, exist_ok=True)
    tmp = control.with_name(control.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, control)


@dataclass(frozen=True)
class Control:
    """What a control file asks the job for: the generation, its nodes, its environment."""

    generation: int
    nodes: tuple[str, ...]  # empty: the first N of the allocation (a fresh submission)
    env: dict[str, str]


def read_control(control: Path) -> Control | None:
    """The control file as the script reads it; None when it is missing or has no
    generation (the daemon then knows of no swap in flight)."""
    try:
        text = control.read_text()
    except OSError:
        return None
    head: dict[str, str] = {}  # the script takes the first generation= and nodes= line
    env: dict[str, str] = {}  # and exports the other lines in order
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key in ("generation", "nodes"):
            head.setdefault(key, value)
        else:
            env[key] = value
    try:
        generation = int(head["generation"])
    except (KeyError, ValueError):
        return None
    return Control(generation, tuple(n for n in head.get("nodes", "").split(",") if n), env)


@dataclass(frozen=True)
class Launch:
    generation: int
    launched_at: float  # wall time the script started the step
    nodes: tuple[str, ...]


def launches(control: Path) -> list[Launch]:
    """Every launch the script acknowledged, oldest first."""
    try:
        text = ack_path(control).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        m = _ACK.fullmatch(line.strip())
        if m:
            out.append(Launch(int(m[1]), float(m[2]), tuple(n for n in m[3].split(",") if n)))
    return out


def launch_of(control: Path, generation: int) -> Launch | None:
    return next((ln for ln in reversed(launches(control)) if ln.generation == generation), None)
