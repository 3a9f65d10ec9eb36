"""Checkpoint trees in the states the frameworks really leave behind, for the layout tests.

Only torch is installed here (no transformers, safetensors, lightning, megatron-core or
deepspeed: checked with ``pip list``), so every framework's tree is built by hand after its
save code (cited in each layout module), with real file formats: ``torch.save`` zips, real
DCP saves (``torch.distributed.checkpoint.save``), safetensors files written byte for byte
to the format's specification (8-byte header length, JSON header, tensor bytes).
"""

from __future__ import annotations

import json
import struct
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp


def model_state(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optim": opt.state_dict()}


def dcp_save(path: Path, seed: int) -> Path:
    """A real single-process DCP save into ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(model_state(seed), checkpoint_id=str(path))
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def shard(path: Path) -> Path:
    found = sorted(path.glob("__*.distcp"))
    assert found, f"torch wrote no shard in {path}"
    return found[0]


# --- Megatron-LM ---------------------------------------------------------------------------


def megatron_legacy(root: Path, iteration: int, *, tp: int = 2, tracker: bool = True) -> Path:
    """``iter_N/mp_rank_XX/model_optim_rng.pt`` for ``tp`` tensor-parallel ranks (no
    pipeline parallelism: no ``_YYY``), then the tracker, as ``save_checkpoint`` does."""
    it = root / f"iter_{iteration:07d}"
    for rank in range(tp):
        d = it / f"mp_rank_{rank:02d}"
        d.mkdir(parents=True)
        state = model_state(iteration + rank)
        torch.save(
            {"iteration": iteration, "model": state["model"], "optimizer": state["optim"]},
            d / "model_optim_rng.pt",
        )
    if tracker:
        (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return it


def megatron_dist(root: Path, iteration: int, *, finished: bool = True) -> Path:
    """A ``torch_dist`` iteration: DCP shards + ``.metadata``, ``common.pt``, then
    ``metadata.json`` and the tracker (``finished``); an async save cut short leaves the
    shards only."""
    it = root / f"iter_{iteration:07d}"
    dcp_save(it, iteration)
    torch.save({"iteration": iteration, "args": {"tp": 1}}, it / "common.pt")
    if finished:
        (it / "metadata.json").write_text(
            json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1})
        )
        (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    else:
        (it / ".metadata").unlink()
    return it


# --- DeepSpeed -----------------------------------------------------------------------------


def deepspeed_tag(
    root: Path, step: int, *, dp: int = 2, zero_stage: int = 2, optim: bool = True
) -> Path:
    """``global_stepN/`` as ``DeepSpeedEngine.save_checkpoint`` writes it: the model states
    (with the fields ``_save_checkpoint`` records), the ZeRO optimizer states of every data
    parallel rank, then ``latest``."""
    tag = root / f"global_step{step}"
    tag.mkdir(parents=True)
    state = model_state(step)
    zero = zero_stage > 0
    torch.save(
        {
            "module": state["model"],
            "buffer_names": [],
            "optimizer": None if zero else state["optim"],
            "param_shapes": [OrderedDict(weight=torch.Size([4, 8]))] if zero else None,
            "lr_scheduler": None,
            "global_steps": step,
            "dp_world_size": dp,
            "mp_world_size": 1,
            "ds_config": {"zero_optimization": {"stage": zero_stage}},
            "ds_version": "0.16.4",
        },
        tag / "mp_rank_00_model_states.pt",
    )
    if zero and optim:
        for rank in range(dp):
            torch.save(
                {"optimizer_state_dict": state["optim"], "ds_config": {}, "ds_version": "0.16.4"},
                tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
            )
    if optim:
        (root / "latest").write_text(tag.name)
    return tag


# --- Hugging Face --------------------------------------------------------------------------


def safetensors_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file written to the format's specification."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        data = tensor.contiguous().numpy().tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def hf_checkpoint(root: Path, step: int, *, sharded: bool = False, state: bool = True) -> Path:
    """``checkpoint-N/`` in ``Trainer._save_checkpoint``'s order: weights, optimizer.pt,
    scheduler.pt, RNG state, and last ``trainer_state.json`` (absent when ``state`` is
    False: the save was cut short)."""
    ck = root / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    st = model_state(step)
    tensors = {k: v for k, v in st["model"].items()}
    (ck / "config.json").write_text(json.dumps({"model_type": "toy"}))
    if sharded:
        weight_map = {}
        for i, (name, tensor) in enumerate(tensors.items()):
            fname = f"model-{i + 1:05d}-of-{len(tensors):05d}.safetensors"
            safetensors_file(ck / fname, {name: tensor})
            weight_map[name] = fname
        (ck / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 144}, "weight_map": weight_map})
        )
    else:
        safetensors_file(ck / "model.safetensors", tensors)
    torch.save(st["optim"], ck / "optimizer.pt")
    torch.save({"last_epoch": step}, ck / "scheduler.pt")
    torch.save({"python": None, "cpu": torch.random.get_rng_state()}, ck / "rng_state.pth")
    if state:
        (ck / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "epoch": 1.0, "log_history": []})
        )
    return ck


# --- Lightning -----------------------------------------------------------------------------


def lightning_ckpt(root: Path, epoch: int, step: int, *, name: str | None = None) -> Path:
    """A ``.ckpt`` file with the keys ``Trainer.save_checkpoint`` dumps."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / (name or f"epoch={epoch}-step={step}.ckpt")
    st = model_state(step)
    torch.save(
        {
            "epoch": epoch,
            "global_step": step,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": st["model"],
            "loops": {},
            "callbacks": {},
            "optimizer_states": [st["optim"]],
            "lr_schedulers": [],
        },
        path,
    )
    return path


def lightning_sharded(root: Path, epoch: int, step: int, *, meta: bool = True) -> Path:
    """A ``.ckpt`` folder of an FSDP sharded save: DCP, then ``meta.pt`` from rank 0."""
    path = root / f"epoch={epoch}-step={step}.ckpt"
    dcp_save(path, step)
    if meta:
        torch.save({"epoch": epoch, "global_step": step}, path / "meta.pt")
    return path
