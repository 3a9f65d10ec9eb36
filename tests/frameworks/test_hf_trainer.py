"""A real Hugging Face Trainer job killed mid-run and resumed from its own checkpoint layout:
the newest complete ``checkpoint-N`` is chosen, a half-written newer one is refused, and the
resumed job goes on from the chosen step (read from its own bar and trainer_state.json)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from framework_jobs import HF_JOB, first_trained_step, job_env, needs_hf

from trainwarden.supervisor.checkpoints import plan_resume, scan

pytestmark = [pytest.mark.integration, needs_hf]

STEPS, EVERY = 20, 5


def state(ckpt: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ckpt / "trainer_state.json").read_text())
    return data


def logged_steps(trainer_state: dict[str, Any]) -> list[int]:
    """The steps of the Trainer's per-step loss records (logging_steps=1)."""
    return [e["step"] for e in trainer_state["log_history"] if "loss" in e]


def test_a_killed_trainer_resumes_from_its_newest_complete_checkpoint(
    tmp_path: Path, start_job: Any
) -> None:
    out = tmp_path / "out"
    args = ["--output-dir", str(out), "--steps", str(STEPS), "--save-steps", str(EVERY)]
    first = start_job(HF_JOB, args, tmp_path / "attempt1.log", job_env(tmp_path, HANG_AT_STEP="17"))
    first.wait_line("hanging at step 17")
    first.kill()
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == [
        "checkpoint-10",
        "checkpoint-15",
        "checkpoint-5",
    ]
    found = scan(out, "hf")
    assert found.latest_valid is not None and found.latest_valid.step == 15

    # as if the kill had come during the save of step 15: the Trainer writes this file last
    (out / "checkpoint-15" / "trainer_state.json").unlink()
    found = scan(out, "hf")
    [refused] = found.refused
    assert refused.info.step == 15
    assert refused.validation.reason.startswith("no trainer_state.json")
    plan = plan_resume(out, "hf", now=time.time())
    assert plan.env == {
        "TRAINWARDEN_RESUME_FROM": str(out / "checkpoint-10"),
        "TRAINWARDEN_RESUME_STEP": "10",
        "TRAINWARDEN_CHECKPOINT_FORMAT": "hf",
    }

    t0 = time.monotonic()
    second = start_job(HF_JOB, args, tmp_path / "attempt2.log", job_env(tmp_path, **plan.env))
    assert second.finish() == 0, second.tail()
    text = second.text()
    assert f"resume_from_checkpoint={out / 'checkpoint-10'}" in text
    assert "starting at global_step 10" in text
    assert first_trained_step(text, "hf") > 10  # the bar goes on from the checkpoint
    print(f"resumed run: {time.monotonic() - t0:.1f} s")

    final = state(out / "checkpoint-20")
    assert final["global_step"] == STEPS
    # every step once: 1-10 carried over from checkpoint-10, 11-20 trained by the second run
    assert logged_steps(final) == list(range(1, STEPS + 1))
    assert final["log_history"][:10] == state(out / "checkpoint-10")["log_history"][:10]
    # the refused save was made again, whole
    assert state(out / "checkpoint-15")["global_step"] == 15
    every = scan(out, "hf", exhaustive=True)
    assert [(j.info.step, j.validation.valid) for j in every.checkpoints] == [
        (20, True),
        (15, True),
        (10, True),
        (5, True),
    ]
