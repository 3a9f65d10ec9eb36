"""Each framework's layout, in the states its saves really leave behind (trees built in
ckpt_trees.py with real torch.save files and DCP saves; see there for what is installed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.checkpoint")

from ckpt_trees import (  # noqa: E402
    dcp_save,
    deepspeed_tag,
    hf_checkpoint,
    lightning_ckpt,
    lightning_sharded,
    megatron_dist,
    megatron_legacy,
    safetensors_file,
    shard,
    truncate,
)

from trainwarden.supervisor.checkpoints import detect, scan, validate  # noqa: E402


def _steps(root: Path, fmt: str = "auto") -> list[tuple[int, bool]]:
    return [(j.info.step, j.validation.valid) for j in scan(root, fmt).checkpoints]


# --- torchtitan / DCP ----------------------------------------------------------------------


@pytest.mark.parametrize("use_torch", [True, False])
def test_torchtitan_metadata_tmp_without_metadata_is_incomplete(
    tmp_path: Path, use_torch: bool
) -> None:
    folder = tmp_path / "dump" / "checkpoint"  # torchtitan: <dump_folder>/checkpoint/step-N
    dcp_save(folder / "step-10", 10)
    newest = dcp_save(folder / "step-20", 20)
    # cut short between writing .metadata.tmp and renaming it (FileSystemWriter.finish)
    (newest / ".metadata").rename(newest / ".metadata.tmp")
    verdict = validate(newest, "dcp", use_torch=use_torch)
    assert not verdict.valid and ".metadata.tmp" in verdict.reason
    for root in (tmp_path / "dump", folder):  # the dump folder or the checkpoint folder
        result = scan(root, use_torch=use_torch)
        assert result.format == "dcp"
        assert result.latest_valid is not None and result.latest_valid.step == 10
        assert [j.info.step for j in result.refused] == [20]


def test_unpadded_and_padded_step_names_sort_by_number(tmp_path: Path) -> None:
    dcp_save(tmp_path / "step-9", 9)
    dcp_save(tmp_path / "step-00000010", 10)
    assert scan(tmp_path).latest_valid.step == 10  # type: ignore[union-attr]


# --- Megatron-LM legacy --------------------------------------------------------------------


def test_megatron_truncated_newest_rank_file_tracker_at_older(tmp_path: Path) -> None:
    megatron_legacy(tmp_path, 100)
    newest = megatron_legacy(tmp_path, 200, tracker=False)  # died before the tracker
    truncate(newest / "mp_rank_01" / "model_optim_rng.pt")
    assert detect(tmp_path).format == "megatron"
    result = scan(tmp_path)
    assert result.latest_valid is not None and result.latest_valid.step == 100
    refused = result.refused[0]
    assert refused.info.step == 200
    assert "mp_rank_01/model_optim_rng.pt" in refused.validation.reason
    assert "not a complete zip" in refused.validation.reason
    assert any("names iteration 100" in n for n in result.notes)


def test_megatron_complete_iteration_newer_than_tracker_is_refused(tmp_path: Path) -> None:
    megatron_legacy(tmp_path, 100)
    megatron_legacy(tmp_path, 200, tracker=False)  # every file whole, tracker never moved
    result = scan(tmp_path)
    assert result.latest_valid.step == 100  # type: ignore[union-attr]
    assert "newer than iteration 100" in result.refused[0].validation.reason


def test_megatron_tracker_names_iteration_truncated_afterwards(tmp_path: Path) -> None:
    megatron_legacy(tmp_path, 100)
    newest = megatron_legacy(tmp_path, 200)  # tracker says 200 ...
    truncate(newest / "mp_rank_00" / "model_optim_rng.pt", keep=0.9)  # ... then cut short
    result = scan(tmp_path)
    assert result.latest_valid.step == 100  # type: ignore[union-attr]
    assert any("names iteration 200, which is not valid" in n for n in result.notes)


def test_megatron_missing_rank_folder_and_pipeline_names(tmp_path: Path) -> None:
    it = tmp_path / "iter_0000300"
    for tp, pp in ((0, 0), (0, 1), (1, 0)):  # (1, 1) never written
        d = it / f"mp_rank_{tp:02d}_{pp:03d}"
        d.mkdir(parents=True)
        torch.save({"iteration": 300}, d / "model_optim_rng.pt")
    verdict = validate(it, "megatron")
    assert not verdict.valid and "mp_rank_01_001" in verdict.reason
    (it / "mp_rank_01_001").mkdir()
    torch.save({"iteration": 300}, it / "mp_rank_01_001" / "model_optim_rng.pt")
    assert validate(it, "megatron").valid


def test_megatron_distributed_optimizer_file_checked_on_every_rank(tmp_path: Path) -> None:
    it = megatron_legacy(tmp_path, 100)
    torch.save({"param_state": 1}, it / "mp_rank_00" / "distrib_optim.pt")
    verdict = validate(it, "megatron")
    assert not verdict.valid and "mp_rank_01/distrib_optim.pt is missing" in verdict.reason


# --- Megatron-LM torch_dist ----------------------------------------------------------------


@pytest.mark.parametrize("use_torch", [True, False])
def test_megatron_torch_dist_async_save_not_finished(tmp_path: Path, use_torch: bool) -> None:
    megatron_dist(tmp_path, 100)
    newest = megatron_dist(tmp_path, 200, finished=False)  # shards, no .metadata/metadata.json
    verdict = validate(newest, "megatron", use_torch=use_torch)
    assert not verdict.valid
    assert "shards but no .metadata or metadata.json" in verdict.reason
    result = scan(tmp_path, use_torch=use_torch)
    assert result.format == "megatron"
    assert result.latest_valid.step == 100  # type: ignore[union-attr]
    assert validate(tmp_path / "iter_0000100", "megatron", use_torch=use_torch).valid


def test_megatron_torch_dist_without_common_pt_is_refused(tmp_path: Path) -> None:
    """megatron-core writes common.pt (the non-tensor state) whenever common_backend is
    torch, the only one; loading fails without it (seen with megatron-core 0.16.1)."""
    it = megatron_dist(tmp_path, 100)
    (it / "common.pt").unlink()
    verdict = validate(it, "megatron")
    assert not verdict.valid and "common.pt is missing" in verdict.reason


def test_megatron_torch_dist_metadata_without_config(tmp_path: Path) -> None:
    it = megatron_dist(tmp_path, 100)
    (it / "metadata.json").unlink()
    verdict = validate(it, "megatron")
    assert not verdict.valid and ".metadata but no metadata.json" in verdict.reason


def test_megatron_torch_dist_truncated_shard(tmp_path: Path) -> None:
    it = megatron_dist(tmp_path, 100)
    truncate(shard(it))
    verdict = validate(it, "megatron", use_torch=True)
    assert not verdict.valid and "truncated" in verdict.reason


# --- DeepSpeed -----------------------------------------------------------------------------


def test_deepspeed_newest_tag_with_model_states_but_no_optimizer_states(tmp_path: Path) -> None:
    deepspeed_tag(tmp_path, 10)
    newest = deepspeed_tag(tmp_path, 20, optim=False)  # latest still names global_step10
    assert (tmp_path / "latest").read_text() == "global_step10"
    assert detect(tmp_path).format == "deepspeed"
    verdict = validate(newest, "deepspeed")
    assert not verdict.valid
    assert "ZeRO optimizer states missing for 2 of 2" in verdict.reason
    result = scan(tmp_path)
    assert result.latest_valid.step == 10  # type: ignore[union-attr]
    assert "latest names global_step10" in result.notes


def test_deepspeed_one_rank_of_optimizer_states_missing_or_truncated(tmp_path: Path) -> None:
    tag = deepspeed_tag(tmp_path, 10, dp=4)
    assert validate(tag, "deepspeed").valid
    truncate(tag / "zero_pp_rank_3_mp_rank_00_optim_states.pt")
    verdict = validate(tag, "deepspeed")
    assert not verdict.valid and "zero_pp_rank_3" in verdict.reason
    (tag / "zero_pp_rank_3_mp_rank_00_optim_states.pt").unlink()
    verdict = validate(tag, "deepspeed")
    assert not verdict.valid and "1 of 4 rank(s) (first: dp rank 3" in verdict.reason


def test_deepspeed_without_zero_needs_no_optimizer_shards(tmp_path: Path) -> None:
    tag = deepspeed_tag(tmp_path, 10, zero_stage=0)
    verdict = validate(tag, "deepspeed")
    assert verdict.valid, verdict.reason
    truncate(tag / "mp_rank_00_model_states.pt")
    assert not validate(tag, "deepspeed").valid


# --- Hugging Face --------------------------------------------------------------------------


def test_hf_checkpoint_without_trainer_state_is_incomplete(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path, 500)
    newest = hf_checkpoint(tmp_path, 1000, state=False)
    assert detect(tmp_path).format == "hf"
    verdict = validate(newest, "hf")
    assert not verdict.valid and "no trainer_state.json" in verdict.reason
    result = scan(tmp_path)
    assert result.latest_valid.step == 500  # type: ignore[union-attr]


def test_hf_sharded_weights_need_every_shard(tmp_path: Path) -> None:
    ck = hf_checkpoint(tmp_path, 500, sharded=True)
    assert validate(ck, "hf").valid, validate(ck, "hf").reason
    (ck / "model-00002-of-00002.safetensors").unlink()
    verdict = validate(ck, "hf")
    assert not verdict.valid and "model-00002-of-00002.safetensors is missing" in verdict.reason


def test_hf_truncated_weights_optimizer_and_mismatched_state(tmp_path: Path) -> None:
    ck = hf_checkpoint(tmp_path, 500)
    pristine = tmp_path / "pristine"
    shutil.copytree(ck, pristine)
    truncate(ck / "model.safetensors", keep=0.9)
    assert "model.safetensors is truncated" in validate(ck, "hf").reason
    shutil.copy(pristine / "model.safetensors", ck / "model.safetensors")
    truncate(ck / "optimizer.pt")
    assert "optimizer.pt is not a complete zip" in validate(ck, "hf").reason
    shutil.copy(pristine / "optimizer.pt", ck / "optimizer.pt")
    (ck / "trainer_state.json").write_text('{"global_step": 499}')
    assert "global_step 499" in validate(ck, "hf").reason


def test_hf_under_deepspeed_takes_the_engine_folder(tmp_path: Path) -> None:
    ck = tmp_path / "checkpoint-20"
    ck.mkdir()
    safetensors_file(ck / "model.safetensors", {"w": torch.ones(2, 2)})
    deepspeed_tag(ck, 20, optim=False)  # Trainer -> model_wrapped.save_checkpoint(output_dir)
    (ck / "latest").write_text("global_step20")
    (ck / "trainer_state.json").write_text('{"global_step": 20}')
    verdict = validate(ck, "hf")
    assert not verdict.valid and "DeepSpeed global_step20" in verdict.reason


# --- Lightning -----------------------------------------------------------------------------


def test_lightning_truncated_newest_ckpt_and_last_link(tmp_path: Path) -> None:
    lightning_ckpt(tmp_path, 0, 10)
    newest = lightning_ckpt(tmp_path, 1, 20)
    os.symlink(newest.name, tmp_path / "last.ckpt")  # save_last="link"
    truncate(newest)
    assert detect(tmp_path).format == "lightning"
    result = scan(tmp_path)
    assert [j.info.step for j in result.checkpoints] == [20, 10]  # last.ckpt listed once
    assert result.latest_valid.step == 10  # type: ignore[union-attr]
    assert "not a complete zip" in result.refused[0].validation.reason


def test_lightning_step_from_the_file_when_the_name_has_none(tmp_path: Path) -> None:
    lightning_ckpt(tmp_path, 0, 10)
    lightning_ckpt(tmp_path, 3, 40, name="last.ckpt")  # save_last=True: a copy
    result = scan(tmp_path)
    assert result.latest_valid is not None
    assert result.latest_valid.step == 40 and result.latest_valid.path.endswith("last.ckpt")


@pytest.mark.parametrize("use_torch", [True, False])
def test_lightning_sharded_folder_needs_meta(tmp_path: Path, use_torch: bool) -> None:
    lightning_sharded(tmp_path, 0, 10)
    newest = lightning_sharded(tmp_path, 1, 20, meta=False)
    verdict = validate(newest, "lightning", use_torch=use_torch)
    assert not verdict.valid and "no meta.pt" in verdict.reason
    assert scan(tmp_path, use_torch=use_torch).latest_valid.step == 10  # type: ignore[union-attr]


# --- detection and the whole directory -----------------------------------------------------


def test_detection_of_each_layout(tmp_path: Path) -> None:
    builders = {
        "dcp": lambda r: dcp_save(r / "step-00000010", 10),
        "megatron": lambda r: megatron_legacy(r, 10, tp=1),
        "deepspeed": lambda r: deepspeed_tag(r, 10),
        "hf": lambda r: hf_checkpoint(r, 10),
        "lightning": lambda r: lightning_ckpt(r, 0, 10),
    }
    for fmt, build in builders.items():
        root = tmp_path / fmt
        root.mkdir()
        build(root)
        found = detect(root)
        assert found.format == fmt, found
        result = scan(root)
        assert result.format == fmt and result.latest_valid is not None, result
        assert result.latest_valid.step == 10
        # the wrong format given finds nothing, and says so through an empty list
        other = "hf" if fmt != "hf" else "dcp"
        assert scan(root, other).latest_valid is None


def test_nothing_saved_yet(tmp_path: Path) -> None:
    assert detect(tmp_path).format is None
    result = scan(tmp_path)
    assert result.format is None and result.latest_valid is None and not result.checkpoints
    assert scan(tmp_path / "missing").latest_valid is None


def test_exhaustive_scan_judges_older_ones_too(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        hf_checkpoint(tmp_path, step)
    assert _steps(tmp_path) == [(30, True)]
    result = scan(tmp_path, exhaustive=True)
    assert [(j.info.step, j.validation.valid) for j in result.checkpoints] == [
        (30, True),
        (20, True),
        (10, True),
    ]


def test_unknown_format_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        scan(tmp_path, "nemo")
