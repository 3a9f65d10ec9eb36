"""The daemon process: the message and tick loops, the executor, upkeep, restore, runs,
checkpoints, the store thread, systemd notify, the embedded broker and the metrics."""

from __future__ import annotations
