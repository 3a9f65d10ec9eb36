"""The resume contract: what the next attempt is told, per framework.

Always ``TRAINWARDEN_RESUME_FROM`` (the chosen checkpoint: a ``step-N``, ``iter_N``,
``global_stepN``, ``checkpoint-N`` folder or a ``.ckpt``), ``TRAINWARDEN_RESUME_STEP`` and
``TRAINWARDEN_CHECKPOINT_FORMAT``; then what the framework itself needs: DeepSpeed the load
tag (``TRAINWARDEN_RESUME_TAG``), Megatron-LM a tracker file that names the chosen
iteration (rewritten when it names a newer, invalid one; the old content kept beside it).
Hugging Face's ``resume_from_checkpoint`` and Lightning's ``ckpt_path`` are
``TRAINWARDEN_RESUME_FROM`` itself. trainwarden never deletes or moves a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.supervisor.checkpoints.base import CheckpointInfo, TrackerRewrite
from trainwarden.supervisor.checkpoints.registry import LAYOUTS, Scan, scan


@dataclass(frozen=True)
class ResumePlan:
    """The checkpoint the next attempt resumes from (None: from scratch) and how."""

    scan: Scan
    env: Mapping[str, str] = field(default_factory=dict)
    tracker: TrackerRewrite | None = None
    notes: tuple[str, ...] = ()

    @property
    def checkpoint(self) -> CheckpointInfo | None:
        return self.scan.latest_valid

    @property
    def format(self) -> str | None:
        return self.scan.format

    def as_dict(self) -> dict[str, Any]:
        """For the attempt's event: the format, what was refused and why, the rewrite."""
        return {
            "format": self.scan.format,
            "detected": self.scan.detected,
            "refused": [
                {"step": j.info.step, "path": j.info.path, "reason": j.validation.reason}
                for j in self.scan.refused
            ],
            "env": dict(self.env),
            "tracker_rewrite": None if self.tracker is None else self.tracker.as_dict(),
            "notes": [*self.scan.notes, *self.notes],
        }


def base_env(chosen: CheckpointInfo, fmt: str) -> dict[str, str]:
    return {
        "TRAINWARDEN_RESUME_FROM": chosen.path,
        "TRAINWARDEN_RESUME_STEP": str(chosen.step),
        "TRAINWARDEN_CHECKPOINT_FORMAT": fmt,
    }


def plan_resume(
    root: str | os.PathLike[str],
    fmt: str = "auto",
    *,
    now: float,
    use_torch: bool | None = None,
) -> ResumePlan:
    """Choose the newest valid checkpoint under ``root`` and prepare the next attempt's
    resume from it (this may rewrite a Megatron-LM tracker file). ``now``: the time
    stamped on a kept tracker copy."""
    found = scan(root, fmt, use_torch=use_torch)
    chosen = found.latest_valid
    if chosen is None or found.format is None:
        return ResumePlan(found)
    contract = LAYOUTS[found.format].contract(Path(root), chosen, now=now)
    env = {**base_env(chosen, found.format), **contract.env}
    return ResumePlan(found, env, contract.tracker, contract.notes)
