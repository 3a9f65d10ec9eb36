"""Checkpoint layouts of the training frameworks trainwarden restarts, behind one interface.

One module per framework (``dcp``, ``megatron``, ``deepspeed``, ``hf``, ``lightning``),
each a :class:`~trainwarden.supervisor.checkpoints.base.Layout`: which entries are
checkpoints, whether one is complete (read from the order the framework writes its files,
cited in each module), and the resume contract for the next attempt. ``registry`` detects a
directory's layout and scans it; ``resume`` prepares the next attempt.
"""

from __future__ import annotations

from trainwarden.supervisor.checkpoints.base import (
    FORMAT_CHOICES,
    FORMATS,
    CheckpointInfo,
    Judged,
    Layout,
    TrackerRewrite,
    Validation,
)
from trainwarden.supervisor.checkpoints.registry import (
    LAYOUTS,
    Detection,
    Scan,
    check_format,
    detect,
    scan,
    step_in_name,
    validate,
)
from trainwarden.supervisor.checkpoints.resume import ResumePlan, plan_resume

__all__ = [
    "FORMATS",
    "FORMAT_CHOICES",
    "LAYOUTS",
    "CheckpointInfo",
    "Detection",
    "Judged",
    "Layout",
    "ResumePlan",
    "Scan",
    "TrackerRewrite",
    "Validation",
    "check_format",
    "detect",
    "plan_resume",
    "scan",
    "step_in_name",
    "validate",
]
