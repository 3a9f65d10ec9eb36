"""torch.distributed.checkpoint (DCP) checkpoints in ``step-N`` directories.

Two namings: ``<dir>/step-<8-digit step>/`` (this project's example job) and torchtitan's
``<dump_folder>/checkpoint/step-<step>/`` without padding (torchtitan
``CheckpointManager._create_checkpoint_id``; its own ``_find_load_step`` counts a step only
once ``step-N/.metadata`` exists). Given the dump folder, the ``checkpoint/`` under it is
looked in.

A DCP checkpoint is complete when its ``.metadata`` file exists and loads, and every shard
file the metadata references holds at least the bytes the metadata says (``offset +
length`` of every entry stored in it). The coordinator writes ``.metadata`` only after
every rank finished its shards (``FileSystemWriter.finish``), first as ``.metadata.tmp``
and then renamed: a ``.metadata.tmp`` without ``.metadata`` is a save cut short while the
metadata was being written.

Two ways of reading the metadata:

- with torch importable: ``FileSystemReader(path).read_metadata()`` (the exact storage
  table, byte ranges included);
- without torch (e.g. a login node without torch): the ``.metadata`` pickle is *scanned*,
  never executed, with :mod:`pickletools`; the shard files it mentions
  (``__<rank>_<n>.distcp``) must exist and be non-empty. Byte ranges are not checked in
  this mode, so a truncated-but-non-empty shard is only caught when torch is available.
"""

from __future__ import annotations

import os
import pickletools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from trainwarden.supervisor.checkpoints.base import (
    CheckpointInfo,
    Layout,
    Validation,
    newest_first,
    scan_dirs,
)

METADATA_FILE = ".metadata"
METADATA_TMP = ".metadata.tmp"
STEP_DIR_RE = re.compile(r"^step-(\d{1,12})$")
TORCHTITAN_FOLDER = "checkpoint"  # torchtitan's default [checkpoint] folder
_SHARD_RE = re.compile(r"^__\d+_\d+\.distcp$")


def step_dir_name(step: int) -> str:
    """The directory name this project's example job uses for the checkpoint of ``step``."""
    return f"step-{step:08d}"


def torch_available() -> bool:
    try:
        import torch.distributed.checkpoint  # noqa: F401
    except Exception:  # torch missing or broken: use the fallback
        return False
    return True


def validate_dcp(root: Path, *, use_torch: bool | None = None) -> Validation:
    """Check that the DCP checkpoint in directory ``root`` is complete."""
    try:
        if not root.is_dir():
            return Validation(False, f"{root} is not a directory")
        meta = root / METADATA_FILE
        if not meta.is_file():
            shards = [p.name for p in _list_shards(root)]
            what = f"{len(shards)} shard file(s) but " if shards else ""
            if (root / METADATA_TMP).exists():
                return Validation(
                    False,
                    f"{what}only {METADATA_TMP}, no {METADATA_FILE}: the save was cut short "
                    "while its metadata was written (DCP renames it into place last)",
                )
            return Validation(
                False,
                f"{what}no {METADATA_FILE}: checkpoint incomplete "
                "(still being written or the save failed)",
            )
        if meta.stat().st_size == 0:
            return Validation(False, f"{METADATA_FILE} is empty")
        if use_torch is None:
            use_torch = torch_available()
        if use_torch:
            return _validate_with_torch(root)
        return _validate_structural(root)
    except OSError as exc:
        return Validation(False, f"cannot read {root}: {exc.strerror or exc}")


def has_dcp_files(root: Path) -> bool:
    """Whether ``root`` holds any DCP file (metadata, its temp file, or a shard)."""
    try:
        return (
            (root / METADATA_FILE).exists()
            or (root / METADATA_TMP).exists()
            or next(_list_shards(root), None) is not None
        )
    except OSError:
        return False


class DcpLayout(Layout):
    name = "dcp"
    title = "PyTorch DCP (step-N)"

    def evidence(self, names: Mapping[str, bool]) -> int:
        count = sum(1 for n, is_dir in names.items() if is_dir and STEP_DIR_RE.match(n))
        if count == 0 and names.get(TORCHTITAN_FOLDER):
            return 1  # torchtitan's dump folder: looked into by discover()
        return count

    def step_of(self, name: str) -> int | None:
        match = STEP_DIR_RE.match(name)
        return int(match.group(1)) if match else None

    def discover(self, root: Path) -> list[CheckpointInfo]:
        found = scan_dirs(root, STEP_DIR_RE)
        if not found:
            found = scan_dirs(root / TORCHTITAN_FOLDER, STEP_DIR_RE)
        return newest_first(found)

    def validate(self, path: Path, *, use_torch: bool | None = None) -> Validation:
        return validate_dcp(path, use_torch=use_torch)


def _list_shards(root: Path) -> Iterator[Path]:
    for p in root.iterdir():
        if _SHARD_RE.match(p.name):
            yield p


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
