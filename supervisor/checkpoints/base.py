"""The one interface every checkpoint layout implements, and what it answers with.

A layout knows three things about one framework's checkpoints: which entries of a
checkpoint directory are checkpoints (and of which step), whether one of them is complete
enough to resume from, and what the next attempt must be told to resume from it. Answers
are data: a :class:`Validation` says why a checkpoint is refused, and nothing here raises
on a strange directory.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

# every format a run may name; "auto" (detect from the directory) is not one of them
FORMATS: tuple[str, ...] = ("dcp", "megatron", "deepspeed", "hf", "lightning")
FORMAT_CHOICES: tuple[str, ...] = ("auto", *FORMATS)


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint under a checkpoint root (not yet known to be valid)."""

    step: int
    path: str
    mtime: float


@dataclass(frozen=True)
class Validation:
    """Whether a checkpoint can be resumed from, and why not when it cannot."""

    valid: bool
    reason: str


@dataclass(frozen=True)
class Judged:
    """A checkpoint with its verdict."""

    info: CheckpointInfo
    validation: Validation


@dataclass(frozen=True)
class TrackerRewrite:
    """A framework pointer file trainwarden rewrote so the next attempt loads the chosen
    checkpoint; ``old`` is what it said before (kept beside it at ``kept_at``)."""

    path: str
    old: str | None
    new: str
    kept_at: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "old": self.old, "new": self.new, "kept_at": self.kept_at}


@dataclass(frozen=True)
class Contract:
    """What one framework needs beyond ``TRAINWARDEN_RESUME_FROM`` to resume."""

    env: Mapping[str, str] = field(default_factory=dict)
    tracker: TrackerRewrite | None = None
    notes: tuple[str, ...] = ()


def scan_dirs(root: Path, pattern: re.Pattern[str]) -> list[CheckpointInfo]:
    """Every directory directly under ``root`` whose name matches ``pattern`` (group 1: the
    step), highest step first; a missing or unreadable ``root`` gives an empty list."""
    found: list[CheckpointInfo] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        found.append(CheckpointInfo(int(match.group(1)), entry.path, mtime))
    return newest_first(found)


def newest_first(found: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    return sorted(found, key=lambda c: (c.step, c.mtime), reverse=True)


def entry_names(root: Path) -> dict[str, bool]:
    """The names directly under ``root`` and whether each is a directory (for detection:
    names only, nothing is opened)."""
    out: dict[str, bool] = {}
    try:
        for entry in os.scandir(root):
            try:
                out[entry.name] = entry.is_dir()
            except OSError:
                continue
    except OSError:
        return {}
    return out


class Layout(ABC):
    """One framework's checkpoint layout."""

    name: ClassVar[str]
    title: ClassVar[str]

    @abstractmethod
    def evidence(self, names: Mapping[str, bool]) -> int:
        """How many entries of a root's listing (name -> is a directory) are this layout's
        checkpoints or marker files: the detector picks the layout with the most."""

    @abstractmethod
    def step_of(self, name: str) -> int | None:
        """The step a checkpoint entry of this name holds, or None if it names none."""

    @abstractmethod
    def discover(self, root: Path) -> list[CheckpointInfo]:
        """Every checkpoint under ``root``, newest (highest step) first."""

    @abstractmethod
    def validate(self, path: Path, *, use_torch: bool | None = None) -> Validation:
        """Whether the checkpoint at ``path`` is complete (never raises)."""

    def judge(
        self, root: Path, found: list[CheckpointInfo], *, exhaustive: bool, use_torch: bool | None
    ) -> tuple[list[Judged], list[str]]:
        """Verdicts newest first, down to the first valid one (all of them when
        ``exhaustive``), and notes on the root as a whole."""
        out: list[Judged] = []
        have_valid = False
        for info in found:
            if have_valid and not exhaustive:
                break
            verdict = self.validate(Path(info.path), use_torch=use_torch)
            out.append(Judged(info, verdict))
            have_valid = have_valid or verdict.valid
        return out, []

    def contract(self, root: Path, chosen: CheckpointInfo, *, now: float) -> Contract:
        """What the next attempt needs besides ``TRAINWARDEN_RESUME_FROM``."""
        return Contract()
