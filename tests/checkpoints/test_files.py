"""The bounded readers under every layout, and validators that never raise on garbage."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckpt_trees import (  # noqa: E402
    deepspeed_tag,
    hf_checkpoint,
    lightning_ckpt,
    megatron_legacy,
    safetensors_file,
    truncate,
)

from trainwarden.supervisor.checkpoints import LAYOUTS, scan, validate  # noqa: E402
from trainwarden.supervisor.checkpoints.files import (  # noqa: E402
    OTHER,
    check_safetensors,
    check_torch_zip,
    pickle_fields,
    torch_pickle,
)


def test_torch_zip_complete_truncated_and_not_torch(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(100)}, path)
    assert check_torch_zip(path).valid
    for keep in (0.99, 0.5, 0.01):
        cut = tmp_path / f"cut{keep}.pt"
        cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
        assert "not a complete zip" in check_torch_zip(cut).reason
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("hello.txt", "hi")
    assert "without data.pkl" in check_torch_zip(plain).reason
    assert "is missing" in check_torch_zip(tmp_path / "none.pt").reason
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "is empty" in check_torch_zip(tmp_path / "empty.pt").reason


def test_pickle_fields_reads_scalars_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    torch.save(
        {"global_step": 1234, "param_shapes": [{"a": 1}], "none": None, "dp_world_size": 8},
        path,
    )
    data = torch_pickle(path)
    assert data is not None
    fields = pickle_fields(data, ("global_step", "param_shapes", "none", "dp_world_size", "x"))
    assert fields == {"global_step": 1234, "param_shapes": OTHER, "none": None, "dp_world_size": 8}
    assert pickle_fields(b"\x80\x04garbage", ("a",)) == {}


def test_safetensors_header_and_length(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors_file(path, {"a": torch.ones(3, 3), "b": torch.zeros(5)})
    assert check_safetensors(path).valid
    data = path.read_bytes()
    path.write_bytes(data[:-4])
    assert "is truncated" in check_safetensors(path).reason
    path.write_bytes(data + b"xx")
    assert "longer than its header" in check_safetensors(path).reason
    path.write_bytes(data[:20])
    assert not check_safetensors(path).valid
    path.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    assert "implausible header length" in check_safetensors(path).reason


def test_validators_never_raise_on_garbage(tmp_path: Path) -> None:
    """Every file of real trees replaced by random bytes, cut, or emptied: a verdict each."""
    rng = random.Random(7)
    megatron_legacy(tmp_path / "megatron", 10)
    deepspeed_tag(tmp_path / "deepspeed", 10)
    hf_checkpoint(tmp_path / "hf", 10, sharded=True)
    lightning_ckpt(tmp_path / "lightning", 0, 10)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    for i, path in enumerate(files):
        choice = i % 3
        if choice == 0:
            path.write_bytes(rng.randbytes(rng.randrange(0, 300)))
        elif choice == 1:
            truncate(path, keep=rng.random())
        else:
            path.write_bytes(b"")
    for fmt in ("megatron", "deepspeed", "hf", "lightning"):
        result = scan(tmp_path / fmt, fmt, exhaustive=True)
        assert result.latest_valid is None, (fmt, result)
        assert all(j.validation.reason for j in result.checkpoints)
    for layout in LAYOUTS.values():
        for path in [tmp_path, *files, tmp_path / "missing"]:
            verdict = layout.validate(path)
            assert not verdict.valid and verdict.reason
    assert not validate(tmp_path / "missing", "auto").valid
