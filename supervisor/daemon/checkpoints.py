"""Find the newest checkpoint a run can safely resume from.

A training job saves torch.distributed.checkpoint (DCP) checkpoints into
``<ckpt_dir>/step-<8-digit step>/``. A restart must never pick a checkpoint that was
still being written when the job died, so :func:`latest_valid` walks the step
directories newest first and returns the first one that :func:`validate` accepts.

A DCP checkpoint is complete when its ``.metadata`` file (written by the coordinator
rank *after* every rank finished writing its shards) exists and loads, and every shard
file the metadata references exists and holds at least the bytes the metadata says
(``offset + length`` of every entry stored in it).

Two ways of reading the metadata:

- with torch importable: ``FileSystemReader(path).read_metadata()`` (the exact storage
  table, byte ranges included);
- without torch (the structural fallback, e.g. on a login node without torch): the
  ``.metadata`` pickle is *scanned*, never executed, with :mod:`pickletools`; the shard
  file names it mentions (``__<rank>_<n>.distcp``) must exist and be non-empty. Byte
  ranges are not checked in this mode, so a truncated-but-non-empty shard is only caught
  when torch is available.

Nothing here raises on a strange directory: problems come back as a
:class:`Validation` with a reason.
"""

from __future__ import annotations

import os
import pickletools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

METADATA_FILE = ".metadata"
STEP_DIR_RE = re.compile(r"^step-(\d{1,12})$")
_SHARD_RE = re.compile(r"^__\d+_\d+\.distcp$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One step directory under a checkpoint root (not yet known to be valid)."""

    step: int
    path: str
    mtime: float


@dataclass(frozen=True)
class Validation:
    """Whether a checkpoint can be resumed from, and why not when it cannot."""

    valid: bool
    reason: str


def step_dir_name(step: int) -> str:
    """The directory name a job uses for the checkpoint of ``step``."""
    return f"step-{step:08d}"


def discover(ckpt_dir: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Every ``step-N`` directory under ``ckpt_dir``, newest (highest step) first.

    A missing or unreadable ``ckpt_dir`` gives an empty list.
    """
    found: list[CheckpointInfo] = []
    try:
        entries = list(os.scandir(ckpt_dir))
    except OSError:
        return []
    for entry in entries:
        match = STEP_DIR_RE.match(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        found.append(CheckpointInfo(int(match.group(1)), entry.path, mtime))
    found.sort(key=lambda c: (c.step, c.mtime), reverse=True)
    return found


def validate(path: str | os.PathLike[str], *, use_torch: bool | None = None) -> Validation:
    """Check that the DCP checkpoint at ``path`` is complete.

    ``use_torch``: ``None`` uses torch when it can be imported; ``False`` forces the
    structural fallback (see the module docstring).
    """
    root = Path(path)
    try:
        if not root.is_dir():
            return Validation(False, f"{root} is not a directory")
        meta = root / METADATA_FILE
        if not meta.is_file():
            shards = [p.name for p in _list_shards(root)]
            what = f"{len(shards)} shard file(s) but " if shards else ""
            return Validation(
                False,
                f"{what}no {METADATA_FILE}: checkpoint incomplete "
                "(still being written or the save failed)",
            )
        if meta.stat().st_size == 0:
            return Validation(False, f"{METADATA_FILE} is empty")
        if use_torch is None:
            use_torch = _torch_available()
        if use_torch:
            return _validate_with_torch(root)
        return _validate_structural(root)
    except OSError as exc:
        return Validation(False, f"cannot read {root}: {exc.strerror or exc}")


def latest_valid(
    ckpt_dir: str | os.PathLike[str], *, use_torch: bool | None = None
) -> CheckpointInfo | None:
    """The newest checkpoint under ``ckpt_dir`` that validates, or ``None``."""
    for info in discover(ckpt_dir):
        if validate(info.path, use_torch=use_torch).valid:
            return info
    return None


def _list_shards(root: Path) -> Iterator[Path]:
    for p in root.iterdir():
        if _SHARD_RE.match(p.name):
            yield p


def prewarm() -> bool:
    """Import the exact validator's dependencies ahead of time (torch takes seconds to
    import), so the first restart does not pay for it. True when torch is usable."""
    return _torch_available()


def _torch_available() -> bool:
    try:
        import torch.distributed.checkpoint  # noqa: F401
    except Exception:  # torch missing or broken: use the fallback
        return False
    return True


def _validate_with_torch(root: Path) -> Validation:
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    try:
        metadata = FileSystemReader(str(root)).read_metadata()
    except Exception as exc:  # a truncated/garbled pickle raises many things
        return Validation(False, f"{METADATA_FILE} does not load: {type(exc).__name__}: {exc}")
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict) or not storage:
        return Validation(False, f"{METADATA_FILE} lists no stored data")
    needed: dict[str, int] = {}
    for info in storage.values():
        rel = getattr(info, "relative_path", None)
        offset = getattr(info, "offset", None)
        length = getattr(info, "length", None)
        if not isinstance(rel, str) or not isinstance(offset, int) or not isinstance(length, int):
            return Validation(False, f"{METADATA_FILE} has an unreadable storage entry")
        needed[rel] = max(needed.get(rel, 0), offset + length)
    return _check_files(root, needed)


def _validate_structural(root: Path) -> Validation:
    names: set[str] = set()
    try:
        data = (root / METADATA_FILE).read_bytes()
        for _op, arg, _pos in pickletools.genops(data):
            if isinstance(arg, str) and _SHARD_RE.match(arg):
                names.add(arg)
    except Exception as exc:  # pickletools raises ValueError and friends on garbage
        return Validation(False, f"{METADATA_FILE} is not a readable pickle: {exc}")
    if not names:
        return Validation(False, f"{METADATA_FILE} references no shard files")
    return _check_files(root, dict.fromkeys(names, 1))


def _check_files(root: Path, needed: dict[str, int]) -> Validation:
    for rel, size in sorted(needed.items()):
        shard = root / rel
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            return Validation(
                False, f"{METADATA_FILE} references a path outside the checkpoint: {rel!r}"
            )
        try:
            actual = shard.stat().st_size
        except FileNotFoundError:
            return Validation(False, f"shard {rel} referenced by {METADATA_FILE} is missing")
        if actual < size:
            return Validation(
                False, f"shard {rel} is truncated: {actual} bytes, metadata needs {size}"
            )
    return Validation(True, f"complete: {len(needed)} shard file(s) present")
