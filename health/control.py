"""The daemon's control messages (``checkpoint-now``), from the node's agent to its ranks.

Ranks that report through the relay hold no broker credentials, so they cannot hear the
broker. The agent, which can, writes each control message for a run to a small file
beside its relay socket (``<relay dir>/control/<run>.json``, replaced atomically), and a
rank's reporter looks at that file's modification time when the training loop asks
whether a checkpoint was requested: one ``stat`` a step, no connection, no thread.

A request is taken once per ``request_id``; the one already in the file when a rank
starts is not taken (it was meant for an earlier attempt).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pydantic import ValidationError

from trainwarden.health.report import ControlMessage, check_name

CONTROL_DIR = "control"


def control_dir(relay_path: str | os.PathLike[str]) -> Path:
    """Where the agent whose relay socket is ``relay_path`` leaves control messages."""
    return Path(relay_path).parent / CONTROL_DIR


def control_file(directory: Path, run: str) -> Path:
    return directory / f"{check_name('run', run)}.json"


def write_request(directory: Path, msg: ControlMessage) -> Path:
    """Leave ``msg`` for the ranks of its run on this node (readable by every local user:
    a control message is no secret, and ranks run as the job's user)."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = control_file(directory, msg.run)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msg.model_dump_json().encode())
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


class ControlWatch:
    """A rank's view of its run's control file: :meth:`checkpoint_requested` is True once
    for each new ``checkpoint-now`` the agent left there."""

    def __init__(self, directory: Path, run: str) -> None:
        self.path = control_file(directory, run)
        self._mtime_ns: int | None = None
        self._seen: str | None = None
        self._new_request()  # what is there already was meant for an earlier attempt

    def checkpoint_requested(self) -> bool:
        msg = self._new_request()
        return msg is not None and msg.command == "checkpoint-now"

    def _new_request(self) -> ControlMessage | None:
        """The file's message if it changed since the last look and is a new request."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return None
        if mtime == self._mtime_ns:
            return None
        self._mtime_ns = mtime
        msg: ControlMessage | None = None
        with contextlib.suppress(OSError, ValidationError, ValueError):
            msg = ControlMessage.model_validate_json(self.path.read_bytes())
        if msg is None or msg.request_id == self._seen:
            return None
        self._seen = msg.request_id
        return msg
