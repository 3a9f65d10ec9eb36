"""Checkpoint discovery and validation against real DCP checkpoints written by torch."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from trainwarden.supervisor.daemon.checkpoints import (
    discover,
    latest_valid,
    step_dir_name,
    validate,
)

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")


def _save(root: Path, step: int) -> Path:
    torch.manual_seed(step)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    path = root / step_dir_name(step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": model.state_dict(), "optim": opt.state_dict()}, checkpoint_id=str(path))
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    for step in (10, 20):
        _save(root, step)
    return root


@pytest.fixture
def ckpts(pristine: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ckpt"
    shutil.copytree(pristine, root)
    return root


def _shard(step_dir: Path) -> Path:
    shards = sorted(step_dir.glob("__*.distcp"))
    assert shards, f"torch wrote no shard in {step_dir}"
    return shards[0]


def test_discover_newest_first_ignores_other_entries(ckpts: Path) -> None:
    (ckpts / "step-00000005").mkdir()
    (ckpts / "progress-rank0.log").write_text("x\n")
    (ckpts / "step-notanumber").mkdir()
    (ckpts / "step-00000099").write_text("a file, not a dir")
    assert [c.step for c in discover(ckpts)] == [20, 10, 5]
    assert discover(ckpts)[0].path == str(ckpts / "step-00000020")


def test_discover_missing_dir_is_empty(tmp_path: Path) -> None:
    assert discover(tmp_path / "nope") == []
    assert latest_valid(tmp_path / "nope") is None


@pytest.mark.parametrize("use_torch", [True, False])
def test_real_checkpoint_is_valid(ckpts: Path, use_torch: bool) -> None:
    result = validate(ckpts / "step-00000020", use_torch=use_torch)
    assert result.valid, result.reason
    info = latest_valid(ckpts, use_torch=use_torch)
    assert info is not None and info.step == 20


@pytest.mark.parametrize("use_torch", [True, False])
def test_shards_without_metadata_are_skipped(ckpts: Path, use_torch: bool) -> None:
    newest = ckpts / "step-00000020"
    (newest / ".metadata").unlink()
    result = validate(newest, use_torch=use_torch)
    assert not result.valid and "no .metadata" in result.reason
    info = latest_valid(ckpts, use_torch=use_torch)
    assert info is not None and info.step == 10


@pytest.mark.parametrize("use_torch", [True, False])
def test_metadata_without_shards_is_invalid(ckpts: Path, use_torch: bool) -> None:
    newest = ckpts / "step-00000020"
    _shard(newest).unlink()
    result = validate(newest, use_torch=use_torch)
    assert not result.valid and "missing" in result.reason
    assert latest_valid(ckpts, use_torch=use_torch).step == 10  # type: ignore[union-attr]


def test_truncated_shard_is_invalid_with_torch(ckpts: Path) -> None:
    newest = ckpts / "step-00000020"
    shard = _shard(newest)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    result = validate(newest, use_torch=True)
    assert not result.valid and "truncated" in result.reason
    assert latest_valid(ckpts, use_torch=True).step == 10  # type: ignore[union-attr]


def test_empty_shard_is_invalid_without_torch(ckpts: Path) -> None:
    newest = ckpts / "step-00000020"
    _shard(newest).write_bytes(b"")
    result = validate(newest, use_torch=False)
    assert not result.valid and "truncated" in result.reason


@pytest.mark.parametrize("use_torch", [True, False])
@pytest.mark.parametrize("garbage", [b"", b"\x80\x04not a pickle", b"hello"])
def test_garbled_metadata_is_invalid(ckpts: Path, use_torch: bool, garbage: bytes) -> None:
    newest = ckpts / "step-00000020"
    (newest / ".metadata").write_bytes(garbage)
    result = validate(newest, use_torch=use_torch)
    assert not result.valid, result.reason
    assert result.reason


def test_weird_paths_never_raise(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assert not validate(tmp_path / "afile").valid
    assert not validate(tmp_path / "missing").valid
    empty = tmp_path / "step-00000001"
    empty.mkdir()
    assert "no .metadata" in validate(empty).reason
    assert latest_valid(tmp_path) is None


def test_no_valid_checkpoint_gives_none(ckpts: Path) -> None:
    for step_dir in ckpts.iterdir():
        (step_dir / ".metadata").unlink()
    assert latest_valid(ckpts) is None
