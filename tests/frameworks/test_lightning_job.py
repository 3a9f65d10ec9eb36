"""A real Lightning job killed mid-run and resumed from its own ``.ckpt`` files: the newest
complete one is chosen, a truncated newer one is refused, and the resumed job goes on from the
chosen step (read from its own bar and the checkpoints' ``global_step``).

Found here (Lightning 2.6.6): an attempt resumed mid-epoch never calls ``on_train_epoch_start``
(``_FitLoop.on_advance_start`` skips it when ``restarted_mid_epoch``), so ``TQDMProgressBar``
keeps its first description and an unknown total: ``Training: |  | 11/? [...]``, not
``Epoch 0: ... 11/20``, until the next epoch begins. The daemon's ``lightning`` log parser reads
such ``Training`` bars as the epoch it resumed in (the test below holds real captured lines).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from framework_jobs import PL_JOB, job_env, needs_pl

from trainwarden.supervisor.checkpoints import plan_resume, scan
from trainwarden.supervisor.detectors.logprogress.parsers import make_parser

torch = pytest.importorskip("torch")

STEPS, EVERY = 20, 5
# TQDMProgressBar's train bar, with the epoch's description or, resumed mid-epoch, without
TRAIN_BAR = re.compile(r"(?:^|\r|\n)(?:Epoch \d+|Training): [^|\r\n]*\|[^|\r\n]*\| (\d+)/")
# what the resumed attempt below printed (Lightning 2.6.6), one redraw a line
RESUMED_BAR = """\
Training: |          | 0/? [00:00<?, ?it/s]
Training: |          | 11/? [00:00<00:00, 838.95it/s]
Training: |          | 11/? [00:00<00:00, 821.34it/s, loss=0.194]
Training: |          | 12/? [00:00<00:00, 795.13it/s, loss=0.194]
"""


def global_step(ckpt: Path) -> int:
    # our own job's file: its loop state is plain Python, not only tensors
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.integration  # real Lightning processes
@needs_pl
def test_a_killed_lightning_job_resumes_from_its_newest_complete_checkpoint(
    tmp_path: Path, start_job: Any
) -> None:
    ck = tmp_path / "ck"
    args = ["--ckpt-dir", str(ck), "--steps", str(STEPS), "--save-steps", str(EVERY)]
    first = start_job(PL_JOB, args, tmp_path / "attempt1.log", job_env(tmp_path, HANG_AT_STEP="17"))
    first.wait_line("hanging at step 17")
    first.kill()
    names = sorted(p.name for p in ck.glob("*.ckpt"))
    assert names == ["epoch=0-step=10.ckpt", "epoch=0-step=15.ckpt", "epoch=0-step=5.ckpt"]
    found = scan(ck, "lightning")
    assert found.latest_valid is not None and found.latest_valid.step == 15

    # a copy cut short (a shared file system, a full disk): the newest file is truncated
    newest = ck / "epoch=0-step=15.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    found = scan(ck, "lightning")
    [refused] = found.refused
    assert refused.info.step == 15 and refused.info.path == str(newest)
    assert "epoch=0-step=15.ckpt" in refused.validation.reason
    assert "not a complete zip archive" in refused.validation.reason
    plan = plan_resume(ck, "lightning", now=time.time())
    chosen = ck / "epoch=0-step=10.ckpt"
    assert plan.env == {
        "TRAINWARDEN_RESUME_FROM": str(chosen),
        "TRAINWARDEN_RESUME_STEP": "10",
        "TRAINWARDEN_CHECKPOINT_FORMAT": "lightning",
    }
    assert global_step(chosen) == 10

    t0 = time.monotonic()
    second = start_job(PL_JOB, args, tmp_path / "attempt2.log", job_env(tmp_path, **plan.env))
    assert second.finish() == 0, second.tail()
    text = second.text()
    assert f"ckpt_path={chosen}" in text
    assert "starting at global_step 10" in text
    drawn = [int(n) for n in TRAIN_BAR.findall(text)]
    assert min(n for n in drawn if n > 0) == 11  # the bar goes on from the checkpoint
    assert max(drawn) == STEPS
    print(f"resumed run: {time.monotonic() - t0:.1f} s")

    assert global_step(ck / "epoch=0-step=20.ckpt") == STEPS
    # the save of step 15 again: ModelCheckpoint versions the name, the refused file is left
    assert global_step(ck / "epoch=0-step=15-v1.ckpt") == 15
    every = scan(ck, "lightning", exhaustive=True)
    assert [(Path(j.info.path).name, j.validation.valid) for j in every.checkpoints] == [
        ("epoch=0-step=20.ckpt", True),
        ("epoch=0-step=15-v1.ckpt", True),
        ("epoch=0-step=15.ckpt", False),
        ("epoch=0-step=10.ckpt", True),
        ("epoch=0-step=5.ckpt", True),
    ]


def test_the_lightning_parser_reads_a_bar_resumed_mid_epoch() -> None:
    parser = make_parser("lightning")
    steps = [got.step for line in RESUMED_BAR.splitlines() if (got := parser.parse(line))]
    assert steps[-1] == 12
