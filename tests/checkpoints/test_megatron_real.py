"""Megatron-LM ``torch_dist`` checkpoints written by the real megatron-core
``dist_checkpointing.save`` (single-process gloo group, CPU tensors), laid out the way
``megatron/training/checkpointing.py`` lays them out: rank 0 creates ``iter_<7 digits>/``,
every rank saves into it, a barrier, then rank 0 writes ``latest_checkpointed_iteration.txt``.

megatron-core's torch_dist writer calls ``torch.cuda.synchronize()`` (staging tensors to
host) and makes its failure flag on ``torch.cuda.current_device()`` (finalize), so on a
CPU-only torch those two are stood in for: neither touches what is written to disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

from trainwarden.supervisor.checkpoints import plan_resume, scan

pytestmark = pytest.mark.integration

TRACKER = "latest_checkpointed_iteration.txt"
NOW = 1_700_000_000.0


@pytest.fixture
def gloo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'pg-store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def save_iteration(root: Path, iteration: int) -> Path:
    """What ``save_checkpoint`` does for ``--ckpt-format torch_dist``, synchronous save."""
    it = root / f"iter_{iteration:07d}"
    if dist.get_rank() == 0:
        it.mkdir(parents=True, exist_ok=True)
    state = {
        "model": {
            "weight": ShardedTensor.from_rank_offsets(
                "model.weight", torch.full((4, 3), float(iteration))
            ),
            "bias": ShardedTensor.from_rank_offsets("model.bias", torch.arange(5.0)),
        },
        "iteration": iteration,  # common (non-tensor) entries go to common.pt
        "args": {"lr": 0.1, "tensor_model_parallel_size": 1},
    }
    dist_checkpointing.save(
        state,
        str(it),
        TorchDistSaveShardedStrategy("torch_dist", 1),
        content_metadata={"singleton_local_shards": False},
    )
    dist.barrier()
    if dist.get_rank() == 0:
        (root / TRACKER).write_text(str(iteration))
    return it


def test_real_torch_dist_saves_are_valid_and_match_the_layout(tmp_path: Path, gloo: None) -> None:
    root = tmp_path / "ckpt"
    save_iteration(root, 10)
    newest = save_iteration(root, 20)
    names = sorted(p.name for p in newest.iterdir())
    assert ".metadata" in names and "metadata.json" in names and "common.pt" in names
    assert [n for n in names if n.endswith(".distcp")]
    assert all(n.startswith("__0_") for n in names if n.endswith(".distcp"))
    config = json.loads((newest / "metadata.json").read_text())
    assert config["sharded_backend"] == "torch_dist" and config["common_backend"] == "torch"
    assert dist_checkpointing.check_is_distributed_checkpoint(str(newest))
    assert (root / TRACKER).read_text() == "20"
    for use_torch in (True, False):
        found = scan(root, "megatron", exhaustive=True, use_torch=use_torch)
        assert [(j.info.step, j.validation.valid) for j in found.checkpoints] == [
            (20, True),
            (10, True),
        ], found.as_dict()
        assert found.latest_valid is not None and found.latest_valid.step == 20
    assert scan(root).format == "megatron"  # detected from the names


@pytest.mark.parametrize(
    ("victim", "reason"),
    [
        (".metadata", "no .metadata"),
        ("metadata.json", ".metadata but no metadata.json"),
        ("common.pt", "common.pt"),
    ],
)
def test_real_save_missing_a_file_is_refused_and_the_tracker_points_back(
    tmp_path: Path, gloo: None, victim: str, reason: str
) -> None:
    root = tmp_path / "ckpt"
    save_iteration(root, 10)
    newest = save_iteration(root, 20)
    (newest / victim).unlink()
    found = scan(root, "megatron")
    assert found.latest_valid is not None and found.latest_valid.step == 10
    refused = found.refused
    assert len(refused) == 1 and refused[0].info.step == 20
    assert reason in (refused[0].validation.reason or ""), refused[0].validation.reason
    plan = plan_resume(root, now=NOW)
    assert plan.checkpoint is not None and plan.checkpoint.step == 10
    assert plan.tracker is not None and plan.tracker.old == "20" and plan.tracker.new == "10"
    assert (root / TRACKER).read_text() == "10"
    assert plan.env["TRAINWARDEN_RESUME_FROM"] == str(root / "iter_0000010")
