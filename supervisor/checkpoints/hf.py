"""Hugging Face Trainer checkpoints: ``<output_dir>/checkpoint-<global_step>/``.

From ``transformers/trainer.py`` (``Trainer._save_checkpoint``): the Trainer saves, in this
order, the model (``save_model``: ``model.safetensors``, or shards and
``model.safetensors.index.json``; ``pytorch_model.bin`` without safetensors;
``adapter_model.*`` for PEFT), the optimizer (``optimizer.pt``; under DeepSpeed the engine's
own ``global_stepN/`` and ``latest`` inside the checkpoint; under FSDP
``pytorch_model_fsdp_0``/``optimizer_0``), ``scheduler.pt``, ``scaler.pt``, the RNG states,
and **last** ``trainer_state.json``. A checkpoint without ``trainer_state.json`` did not
finish. ``resume_from_checkpoint`` takes the ``checkpoint-N`` folder itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from trainwarden.supervisor.checkpoints.base import CheckpointInfo, Layout, Validation, scan_dirs
from trainwarden.supervisor.checkpoints.dcp import validate_dcp
from trainwarden.supervisor.checkpoints.deepspeed import TAG_DIR_RE, read_latest, validate_tag
from trainwarden.supervisor.checkpoints.files import (
    check_index,
    check_safetensors,
    check_torch_zip,
    read_json,
)

CKPT_DIR_RE = re.compile(r"^checkpoint-(\d{1,12})$")
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
# weights, in the order save_model would have chosen them: (file, how to check it)
_WEIGHTS: tuple[tuple[str, str], ...] = (
    ("model.safetensors.index.json", "st-index"),
    ("model.safetensors", "st"),
    ("pytorch_model.bin.index.json", "bin-index"),
    ("pytorch_model.bin", "bin"),
    ("adapter_model.safetensors", "st"),
    ("adapter_model.bin", "bin"),
    ("pytorch_model_fsdp_0", "dcp"),
    ("pytorch_model_fsdp_0.bin", "bin"),
    ("pytorch_model_fsdp.bin", "bin"),
)


def _check(kind: str, root: Path, name: str) -> Validation:
    path = root / name
    if kind == "st":
        return check_safetensors(path)
    if kind == "st-index":
        return check_index(root, name, check_safetensors)
    if kind == "bin-index":
        return check_index(root, name, check_torch_zip)
    if kind == "dcp":
        verdict = validate_dcp(path)
        return Validation(verdict.valid, f"{name}: {verdict.reason}")
    return check_torch_zip(path)


class HuggingFaceLayout(Layout):
    name = "hf"
    title = "Hugging Face Trainer (checkpoint-N)"

    def evidence(self, names: Mapping[str, bool]) -> int:
        return sum(1 for n, is_dir in names.items() if is_dir and CKPT_DIR_RE.match(n))

    def step_of(self, name: str) -> int | None:
        match = CKPT_DIR_RE.match(name)
        return int(match.group(1)) if match else None

    def discover(self, root: Path) -> list[CheckpointInfo]:
        return scan_dirs(root, CKPT_DIR_RE)

    def validate(self, path: Path, *, use_torch: bool | None = None) -> Validation:
        try:
            if not path.is_dir():
                return Validation(False, f"{path} is not a directory")
            return _validate(path)
        except OSError as exc:
            return Validation(False, f"cannot read {path}: {exc.strerror or exc}")


def _validate(path: Path) -> Validation:
    if not (path / TRAINER_STATE).exists():
        return Validation(
            False,
            f"no {TRAINER_STATE}: the Trainer writes it last, so this save did not finish",
        )
    state, why = read_json(path / TRAINER_STATE)
    if why is not None:
        return Validation(False, why)
    step = state.get("global_step") if isinstance(state, dict) else None
    named = HuggingFaceLayout().step_of(path.name)
    if named is not None and step != named:
        return Validation(False, f"{TRAINER_STATE} says global_step {step}, the folder {named}")
    # under DeepSpeed the engine saves model (ZeRO-3: only there), optimizer and scheduler
    ds_tag = read_latest(path)
    ds_dir = path / ds_tag if ds_tag and TAG_DIR_RE.match(ds_tag) else None
    weights = next(((n, k) for n, k in _WEIGHTS if (path / n).exists()), None)
    if weights is None and ds_dir is None:
        return Validation(False, "no model weights (model.safetensors, pytorch_model.bin, ...)")
    parts: list[str] = []
    if weights is not None:
        verdict = _check(weights[1], path, weights[0])
        if not verdict.valid:
            return verdict
        parts.append(weights[0])
    if ds_dir is not None:
        verdict = validate_tag(ds_dir)
        if not verdict.valid:
            return Validation(False, f"DeepSpeed {ds_dir.name}: {verdict.reason}")
        parts.append(f"DeepSpeed {ds_dir.name}")
    else:
        optimizer = _optimizer(path)
        if not optimizer.valid:
            return optimizer
        parts.append(optimizer.reason)
        verdict = check_torch_zip(path / SCHEDULER)
        if not verdict.valid:
            return verdict
        parts.append(SCHEDULER)
    return Validation(True, f"complete: {TRAINER_STATE} (step {step}), " + ", ".join(parts))


def _optimizer(path: Path) -> Validation:
    if (path / "optimizer_0").is_dir():  # FSDP sharded optimizer state (accelerate)
        verdict = validate_dcp(path / "optimizer_0")
        return Validation(
            verdict.valid, f"optimizer_0: {verdict.reason}" if not verdict.valid else "optimizer_0"
        )
    verdict = check_torch_zip(path / OPTIMIZER)
    return Validation(verdict.valid, verdict.reason if not verdict.valid else OPTIMIZER)
