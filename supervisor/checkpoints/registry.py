"""The explicit list of layouts, detection of a directory's layout, and a scan of it.

Detection reads names only (one listing of the root): each layout counts the entries that
are its checkpoints or marker files, and the one with the most wins (ties: the order of
:data:`LAYOUTS`). The scan then validates newest first down to the first valid checkpoint,
so it costs one look at each newer, refused checkpoint and one at the chosen one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainwarden.supervisor.checkpoints.base import (
    FORMAT_CHOICES,
    CheckpointInfo,
    Judged,
    Layout,
    Validation,
    entry_names,
)
from trainwarden.supervisor.checkpoints.dcp import DcpLayout
from trainwarden.supervisor.checkpoints.deepspeed import DeepSpeedLayout
from trainwarden.supervisor.checkpoints.hf import HuggingFaceLayout
from trainwarden.supervisor.checkpoints.lightning import LightningLayout
from trainwarden.supervisor.checkpoints.megatron import MegatronLayout

# most specific marker first: a tie goes to the earlier one
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        MegatronLayout(),
        DeepSpeedLayout(),
        HuggingFaceLayout(),
        LightningLayout(),
        DcpLayout(),
    )
}


@dataclass(frozen=True)
class Detection:
    format: str | None  # None: no layout recognised (e.g. nothing saved yet)
    why: str


@dataclass(frozen=True)
class Scan:
    """What a checkpoint directory holds: its layout and the verdicts, newest first."""

    root: str
    format: str | None
    detected: str  # how the format was chosen
    checkpoints: tuple[Judged, ...]
    notes: tuple[str, ...] = ()

    @property
    def latest_valid(self) -> CheckpointInfo | None:
        return next((j.info for j in self.checkpoints if j.validation.valid), None)

    @property
    def refused(self) -> tuple[Judged, ...]:
        """The checkpoints newer than the chosen one (all of them when none is valid)."""
        out = []
        for judged in self.checkpoints:
            if judged.validation.valid:
                break
            out.append(judged)
        return tuple(out)

    def as_dict(self) -> dict[str, Any]:
        best = self.latest_valid
        return {
            "root": self.root,
            "format": self.format,
            "detected": self.detected,
            "latest_valid": None if best is None else {"step": best.step, "path": best.path},
            "checkpoints": [
                {
                    "step": j.info.step,
                    "path": j.info.path,
                    "valid": j.validation.valid,
                    "reason": j.validation.reason,
                }
                for j in self.checkpoints
            ],
            "notes": list(self.notes),
        }


def check_format(fmt: str) -> str:
    """``fmt`` when it is a known format or "auto"; ValueError otherwise."""
    if fmt not in FORMAT_CHOICES:
        raise ValueError(
            f"unknown checkpoint format {fmt!r}: expected one of {', '.join(FORMAT_CHOICES)}"
        )
    return fmt


def detect(root: str | os.PathLike[str]) -> Detection:
    """Which layout the checkpoint directory ``root`` uses, from its names alone."""
    names = entry_names(Path(root))
    scores = [(layout.evidence(names), layout.name) for layout in LAYOUTS.values()]
    best = max(scores, key=lambda s: s[0])  # max keeps the first of equal scores
    if best[0] == 0:
        return Detection(None, "no known checkpoint layout (nothing saved yet?)")
    others = [f"{name} {score}" for score, name in scores if score and name != best[1]]
    why = f"detected: {best[0]} matching entr{'y' if best[0] == 1 else 'ies'}"
    return Detection(best[1], why + (f" (also {', '.join(others)})" if others else ""))


def layout_for_path(path: Path) -> Layout:
    """The layout whose checkpoint naming matches ``path``'s name, else the one detected
    in its parent folder, else DCP (the format of checkpoints before formats existed)."""
    for layout in LAYOUTS.values():
        if layout.step_of(path.name) is not None:
            return layout
    found = detect(path.parent)
    return LAYOUTS[found.format or "dcp"]


def scan(
    root: str | os.PathLike[str],
    fmt: str = "auto",
    *,
    exhaustive: bool = False,
    use_torch: bool | None = None,
) -> Scan:
    """Find the checkpoints under ``root`` and judge them newest first, down to the first
    valid one (every one when ``exhaustive``). Never raises on what the disk holds;
    ValueError on an unknown ``fmt``."""
    check_format(fmt)
    base = Path(root)
    if fmt == "auto":
        found = detect(base)
        if found.format is None:
            return Scan(str(base), None, found.why, ())
        fmt, how = found.format, found.why
    else:
        how = "given"
    layout = LAYOUTS[fmt]
    judged, notes = layout.judge(
        base, layout.discover(base), exhaustive=exhaustive, use_torch=use_torch
    )
    return Scan(str(base), fmt, how, tuple(judged), tuple(notes))


def validate(
    path: str | os.PathLike[str], fmt: str = "dcp", *, use_torch: bool | None = None
) -> Validation:
    """Whether the one checkpoint at ``path`` is complete, read as ``fmt`` ("auto": from
    its name or its folder). Never raises on what the disk holds."""
    check_format(fmt)
    target = Path(path)
    layout = layout_for_path(target) if fmt == "auto" else LAYOUTS[fmt]
    try:
        return layout.validate(target, use_torch=use_torch)
    except Exception as exc:  # a validator's bug must not take the daemon down
        return Validation(False, f"cannot validate {target}: {type(exc).__name__}: {exc}")


def step_in_name(path: str | os.PathLike[str], fmt: str = "auto") -> int | None:
    """The step a checkpoint's name states (``step-N``, ``iter_N``, ...), or None."""
    name = Path(os.path.normpath(path)).name
    layouts = LAYOUTS.values() if fmt == "auto" else [LAYOUTS[check_format(fmt)]]
    for layout in layouts:
        step = layout.step_of(name)
        if step is not None and step >= 0:
            return step
    return None
