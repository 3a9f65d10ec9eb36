"""``trainwarden checkpoints DIR``, run as operators run it: a subprocess, exit codes, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("torch.distributed.checkpoint")

from ckpt_trees import deepspeed_tag, hf_checkpoint, megatron_legacy, truncate

CLI = Path(sys.executable).with_name("trainwarden")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "checkpoints", *args], capture_output=True, text=True, timeout=120
    )


def _json(*args: str) -> tuple[int, dict[str, Any]]:
    done = _run(*args, "--json")
    return done.returncode, json.loads(done.stdout)


def test_json_names_the_newest_valid_and_why_newer_ones_were_refused(tmp_path: Path) -> None:
    deepspeed_tag(tmp_path, 10)
    deepspeed_tag(tmp_path, 20, optim=False)
    code, data = _json(str(tmp_path))
    assert code == 0
    assert data["format"] == "deepspeed"
    assert data["latest_valid"] == {"step": 10, "path": str(tmp_path / "global_step10")}
    assert [(c["step"], c["valid"]) for c in data["checkpoints"]] == [(20, False), (10, True)]
    assert "ZeRO optimizer states missing" in data["checkpoints"][0]["reason"]
    assert set(data["checkpoints"][0]) == {"step", "path", "valid", "reason"}


def test_table_for_people(tmp_path: Path) -> None:
    megatron_legacy(tmp_path, 100)
    newest = megatron_legacy(tmp_path, 200, tracker=False)
    truncate(newest / "mp_rank_00" / "model_optim_rng.pt")
    done = _run(str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "Megatron-LM" in done.stdout and "resume from step 100" in done.stdout
    assert "not a complete zip archive" in done.stdout
    # the command only reads: the tracker is not rewritten
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "100"


def test_no_valid_checkpoint_exits_1(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path, 10, state=False)
    code, data = _json(str(tmp_path))
    assert code == 1 and data["latest_valid"] is None and data["format"] == "hf"
    assert data["checkpoints"][0]["valid"] is False
    empty = tmp_path / "empty"
    empty.mkdir()
    code, data = _json(str(empty))
    assert code == 1 and data["format"] is None and data["checkpoints"] == []
    assert "no valid checkpoint" in _run(str(empty)).stdout


def test_given_format_overrides_detection(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path, 10)
    code, data = _json(str(tmp_path), "--format", "megatron")
    assert code == 1 and data["format"] == "megatron" and data["checkpoints"] == []
    code, data = _json(str(tmp_path), "--format", "hf")
    assert code == 0 and data["latest_valid"]["step"] == 10


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["/no/such/dir"], "does not exist"),
        (["{file}"], "is not a directory"),
        (["{dir}", "--format", "nemo"], "invalid choice: 'nemo'"),
    ],
)
def test_bad_input_exits_2_with_a_sentence(tmp_path: Path, args: list[str], words: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    done = _run(*(a.format(file=afile, dir=tmp_path) for a in args))
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr
