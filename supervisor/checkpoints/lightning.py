"""PyTorch Lightning checkpoints: ``*.ckpt`` files, or ``*.ckpt`` folders of a sharded save.

- A ``.ckpt`` file is one ``torch.save`` zip (``TorchCheckpointIO.save_checkpoint`` ->
  ``lightning_fabric.utilities.cloud_io._atomic_save``: saved to memory, then written
  through an fsspec transaction, so on a local disk it appears whole; on a shared file
  system a copy cut short is a truncated zip). Its step: ``step=N`` in the name
  (``ModelCheckpoint``'s default ``epoch={epoch}-step={step}``), else ``global_step`` read
  from its ``data.pkl``; ``last.ckpt`` is the same checkpoint as the newest one.
- A ``.ckpt`` folder from FSDP / ModelParallel with ``state_dict_type="sharded"``: a DCP
  checkpoint, then ``meta.pt`` written by rank 0 after it (``FSDPStrategy.save_checkpoint``).
- A ``.ckpt`` folder from the DeepSpeed strategy: the engine's tag ``checkpoint/`` and
  ``latest`` (``DeepSpeedStrategy.save_checkpoint`` uses ``tag="checkpoint"``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from trainwarden.supervisor.checkpoints.base import (
    CheckpointInfo,
    Layout,
    Validation,
    newest_first,
)
from trainwarden.supervisor.checkpoints.dcp import has_dcp_files, validate_dcp
from trainwarden.supervisor.checkpoints.deepspeed import validate_tag
from trainwarden.supervisor.checkpoints.files import check_torch_zip, pickle_fields, torch_pickle

SUFFIX = ".ckpt"
META_FILE = "meta.pt"  # lightning's _METADATA_FILENAME
DEEPSPEED_TAG = "checkpoint"
_STEP_RE = re.compile(r"(?:^|[-_])step=(\d{1,12})(?:$|[-_.])")
UNKNOWN_STEP = -1


def _step_from_pickle(path: Path) -> int:
    data = torch_pickle(path)
    if data is None:
        return UNKNOWN_STEP
    step = pickle_fields(data, ("global_step",)).get("global_step")
    return step if isinstance(step, int) else UNKNOWN_STEP


class LightningLayout(Layout):
    name = "lightning"
    title = "PyTorch Lightning (*.ckpt)"

    def evidence(self, names: Mapping[str, bool]) -> int:
        return sum(1 for n in names if n.endswith(SUFFIX))

    def step_of(self, name: str) -> int | None:
        if not name.endswith(SUFFIX):
            return None
        match = _STEP_RE.search(name[: -len(SUFFIX)] + ".")
        return int(match.group(1)) if match else UNKNOWN_STEP

    def discover(self, root: Path) -> list[CheckpointInfo]:
        found: dict[str, CheckpointInfo] = {}
        try:
            entries = list(os.scandir(root))
        except OSError:
            return []
        for entry in entries:
            if not entry.name.endswith(SUFFIX):
                continue
            try:
                real = os.path.realpath(entry.path)
                mtime = os.stat(real).st_mtime
                is_dir = os.path.isdir(real)
            except OSError:
                continue
            step = self.step_of(entry.name)
            if step == UNKNOWN_STEP:  # last.ckpt and custom names: ask the file
                target = Path(real) / META_FILE if is_dir else Path(real)
                step = _step_from_pickle(target)
            info = CheckpointInfo(UNKNOWN_STEP if step is None else step, entry.path, mtime)
            known = found.get(real)
            # last.ckpt as a link to the newest: listed once, under the name with the step
            if known is None or (known.step == UNKNOWN_STEP and info.step != UNKNOWN_STEP):
                found[real] = info
        return newest_first(found.values())

    def validate(self, path: Path, *, use_torch: bool | None = None) -> Validation:
        try:
            if path.is_file():
                return _validate_file(path)
            if path.is_dir():
                return _validate_folder(path, use_torch)
        except OSError as exc:
            return Validation(False, f"cannot read {path}: {exc.strerror or exc}")
        return Validation(False, f"{path} does not exist")


def _validate_file(path: Path) -> Validation:
    verdict = check_torch_zip(path)
    if not verdict.valid:
        return verdict
    keys = pickle_fields(torch_pickle(path) or b"", ("state_dict",))
    if "state_dict" not in keys:
        return Validation(False, f"{path.name} holds no state_dict: not a Lightning checkpoint")
    return verdict


def _validate_folder(path: Path, use_torch: bool | None) -> Validation:
    if (path / DEEPSPEED_TAG).is_dir():
        verdict = validate_tag(path / DEEPSPEED_TAG)
        if not verdict.valid:
            return Validation(False, f"DeepSpeed {DEEPSPEED_TAG}/: {verdict.reason}")
        return Validation(True, f"DeepSpeed strategy: {verdict.reason}")
    if not has_dcp_files(path):
        return Validation(False, f"{path.name} is neither a sharded nor a DeepSpeed checkpoint")
    verdict = validate_dcp(path, use_torch=use_torch)
    if not verdict.valid:
        return verdict
    if not (path / META_FILE).exists():
        return Validation(
            False,
            f"no {META_FILE}: Lightning writes it after the sharded save, which did not finish",
        )
    meta = check_torch_zip(path / META_FILE)
    if not meta.valid:
        return meta
    return Validation(True, f"sharded: {verdict.reason}, {META_FILE} complete")
