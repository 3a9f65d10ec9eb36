"""The daemon's view of checkpoints: find the newest one a run can safely resume from.

A restart must never pick a checkpoint that was still being written when the job died, so
the checkpoint directory is scanned newest first and the first checkpoint that validates
is chosen. The layouts (PyTorch DCP, Megatron-LM, DeepSpeed, Hugging Face, Lightning) and
their rules live in :mod:`trainwarden.supervisor.checkpoints`; this module keeps the
daemon's entry points, with DCP ``step-N`` as the default format of ``validate`` and
``latest_valid`` (what every caller assumed before formats existed), and ``plan_resume``
for a run's own ``checkpoint_format`` ("auto" by default).

Nothing here raises on a strange directory: problems come back as a
:class:`Validation` with a reason.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainwarden.supervisor.checkpoints import (
    CheckpointInfo,
    ResumePlan,
    Validation,
    plan_resume,
    scan,
    step_in_name,
)
from trainwarden.supervisor.checkpoints import validate as _validate
from trainwarden.supervisor.checkpoints.dcp import (
    METADATA_FILE,
    STEP_DIR_RE,
    DcpLayout,
    step_dir_name,
    torch_available,
)

__all__ = [
    "METADATA_FILE",
    "STEP_DIR_RE",
    "CheckpointInfo",
    "ResumePlan",
    "Validation",
    "discover",
    "latest_valid",
    "plan_resume",
    "prewarm",
    "step_dir_name",
    "step_in_name",
    "validate",
]


def discover(ckpt_dir: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Every DCP ``step-N`` directory under ``ckpt_dir``, newest (highest step) first.

    A missing or unreadable ``ckpt_dir`` gives an empty list.
    """
    return DcpLayout().discover(Path(ckpt_dir))


def validate(
    path: str | os.PathLike[str], *, use_torch: bool | None = None, fmt: str = "dcp"
) -> Validation:
    """Check that the checkpoint at ``path`` is complete (``fmt``: its layout, "auto" to
    tell it from the name; DCP by default).

    ``use_torch``: ``None`` uses torch when it can be imported; ``False`` forces the
    structural reading of DCP metadata (see :mod:`trainwarden.supervisor.checkpoints.dcp`).
    """
    return _validate(path, fmt, use_torch=use_torch)


def latest_valid(
    ckpt_dir: str | os.PathLike[str], *, use_torch: bool | None = None, fmt: str = "dcp"
) -> CheckpointInfo | None:
    """The newest checkpoint under ``ckpt_dir`` that validates, or ``None``."""
    return scan(ckpt_dir, fmt, use_torch=use_torch).latest_valid


def prewarm() -> bool:
    """Import the exact validator's dependencies ahead of time (torch takes seconds to
    import), so the first restart does not pay for it. True when torch is usable."""
    return torch_available()
