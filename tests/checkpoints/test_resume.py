"""The resume contract per framework, and the daemon's restart handing it to the next
attempt (trees from ckpt_trees.py: real torch.save files and DCP saves)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("torch.distributed.checkpoint")

from ckpt_trees import (
    dcp_save,
    deepspeed_tag,
    hf_checkpoint,
    lightning_ckpt,
    megatron_legacy,
    truncate,
)

from trainwarden.health.clock import VirtualClock
from trainwarden.policies.model import Event, EventKind
from trainwarden.supervisor.checkpoints import megatron, plan_resume
from trainwarden.supervisor.daemon.runs import RunManager
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.errors import ConfigError
from trainwarden.supervisor.model.cluster import ClusterState, RunInfo, RunSpec
from trainwarden.supervisor.scheduler.base import (
    JobInfo,
    JobSpec,
    JobState,
    NodeState,
    SchedNode,
)

NOW = 1_700_000_000.0
TRACKER = "latest_checkpointed_iteration.txt"


def test_megatron_tracker_rewritten_to_the_fallback_old_content_kept(tmp_path: Path) -> None:
    megatron_legacy(tmp_path, 100)
    newest = megatron_legacy(tmp_path, 200)  # the tracker says 200 ...
    truncate(newest / "mp_rank_01" / "model_optim_rng.pt")  # ... whose file was cut short
    plan = plan_resume(tmp_path, now=NOW)
    assert plan.checkpoint is not None and plan.checkpoint.step == 100
    assert plan.format == "megatron"
    assert (tmp_path / TRACKER).read_text() == "100"
    assert plan.tracker is not None
    assert plan.tracker.old == "200" and plan.tracker.new == "100"
    kept = Path(plan.tracker.kept_at or "")
    assert kept.name == f"{TRACKER}.trainwarden-20231114T221320Z"
    assert kept.read_text() == "200"
    assert plan.env["TRAINWARDEN_RESUME_FROM"] == str(tmp_path / "iter_0000100")
    assert plan.env["TRAINWARDEN_RESUME_STEP"] == "100"
    record = plan.as_dict()
    assert record["tracker_rewrite"]["kept_at"] == str(kept)
    assert record["refused"][0]["step"] == 200
    assert any("names iteration 200, which is not valid" in n for n in record["notes"])
    # nothing was deleted or moved, and no temporary file is left
    assert newest.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["iter_0000100", "iter_0000200", TRACKER, kept.name]
    )
    # a second restart finds the tracker right: nothing more is rewritten
    again = plan_resume(tmp_path, now=NOW + 60)
    assert again.checkpoint.step == 100 and again.tracker is None  # type: ignore[union-attr]


def test_megatron_tracker_already_right_is_left_alone(tmp_path: Path) -> None:
    megatron_legacy(tmp_path, 100)
    newest = megatron_legacy(tmp_path, 200, tracker=False)
    truncate(newest / "mp_rank_00" / "model_optim_rng.pt")
    before = os.stat(tmp_path / TRACKER).st_mtime_ns
    plan = plan_resume(tmp_path, now=NOW)
    assert plan.checkpoint.step == 100 and plan.tracker is None  # type: ignore[union-attr]
    assert os.stat(tmp_path / TRACKER).st_mtime_ns == before


def test_megatron_missing_tracker_is_written(tmp_path: Path) -> None:
    megatron_legacy(tmp_path, 100, tracker=False)
    plan = plan_resume(tmp_path, now=NOW)
    assert plan.tracker is not None and plan.tracker.old is None and plan.tracker.kept_at is None
    assert (tmp_path / TRACKER).read_text() == "100"


def test_megatron_unwritable_tracker_is_a_note_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    megatron_legacy(tmp_path, 100)
    megatron_legacy(tmp_path, 200)
    truncate(tmp_path / "iter_0000200" / "mp_rank_00" / "model_optim_rng.pt")

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(megatron.os, "replace", refuse)
    plan = plan_resume(tmp_path, now=NOW)
    assert plan.checkpoint.step == 100 and plan.tracker is None  # type: ignore[union-attr]
    assert any("could not point" in n and "Permission denied" in n for n in plan.notes)
    assert (tmp_path / TRACKER).read_text() == "200"
    assert not [p for p in tmp_path.iterdir() if "trainwarden" in p.name]  # no temp left


def test_deepspeed_gets_the_load_tag(tmp_path: Path) -> None:
    deepspeed_tag(tmp_path, 10)
    deepspeed_tag(tmp_path, 20, optim=False)
    (tmp_path / "latest").write_text("global_step20")  # rank 0 got that far
    plan = plan_resume(tmp_path, now=NOW)
    assert plan.env["TRAINWARDEN_RESUME_TAG"] == "global_step10"
    assert plan.env["TRAINWARDEN_RESUME_FROM"] == str(tmp_path / "global_step10")
    assert (tmp_path / "latest").read_text() == "global_step20"  # left alone
    assert "latest names global_step20: load tag global_step10" in plan.notes


def test_hf_resume_from_checkpoint_is_the_folder(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path, 10)
    hf_checkpoint(tmp_path, 20, state=False)
    plan = plan_resume(tmp_path, now=NOW)
    assert plan.env == {
        "TRAINWARDEN_RESUME_FROM": str(tmp_path / "checkpoint-10"),
        "TRAINWARDEN_RESUME_STEP": "10",
        "TRAINWARDEN_CHECKPOINT_FORMAT": "hf",
    }


def test_lightning_and_dcp_resume_from_the_checkpoint(tmp_path: Path) -> None:
    ckpt = lightning_ckpt(tmp_path / "pl", 0, 10)
    assert plan_resume(tmp_path / "pl", now=NOW).env["TRAINWARDEN_RESUME_FROM"] == str(ckpt)
    step = dcp_save(tmp_path / "dcp" / "step-00000010", 10)
    assert plan_resume(tmp_path / "dcp", now=NOW).env["TRAINWARDEN_RESUME_FROM"] == str(step)


def test_nothing_valid_gives_no_env(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path, 10, state=False)
    plan = plan_resume(tmp_path, now=NOW)
    assert plan.checkpoint is None and plan.env == {}
    assert plan.as_dict()["refused"][0]["reason"].startswith("no trainer_state.json")


def test_run_spec_carries_the_format() -> None:
    spec = RunSpec(command=("x",), nodes=1, checkpoint_dir="/c", checkpoint_format="megatron")
    assert RunSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "checkpoint_format"}
    assert RunSpec.from_dict(old).checkpoint_format == "auto"  # specs stored before formats
    with pytest.raises(ConfigError, match="checkpoint_format 'nemo'"):
        RunSpec.from_dict({**spec.to_dict(), "checkpoint_format": "nemo"})


def test_api_literal_matches_the_formats() -> None:
    from typing import get_args

    from trainwarden.supervisor.api.contract import RunSpecIn
    from trainwarden.supervisor.checkpoints import FORMAT_CHOICES

    field = RunSpecIn.model_fields["checkpoint_format"]
    assert get_args(field.annotation) == FORMAT_CHOICES
    assert field.default == "auto"


class _Scheduler:
    """Just enough of a scheduler for one restart: it records what was submitted."""

    name = "local"

    def __init__(self) -> None:
        self.submitted: list[JobSpec] = []

    async def nodes(self) -> list[SchedNode]:
        return [SchedNode("n1", NodeState.IDLE)]

    async def submit(self, spec: JobSpec) -> str:
        self.submitted.append(spec)
        return str(len(self.submitted))

    async def cancel(self, job_id: str) -> None:
        return None

    async def job(self, job_id: str) -> JobInfo | None:
        return JobInfo(job_id, JobState.PENDING, ("n1",))

    async def drain(self, node: str, reason: str) -> None:
        return None

    async def resume(self, node: str) -> None:
        return None

    async def jobs_tagged(self) -> list[tuple[str, str]]:
        return []


def test_restart_hands_the_contract_to_the_next_attempt(tmp_path: Path) -> None:
    megatron_legacy(tmp_path, 100)
    newest = megatron_legacy(tmp_path, 200)
    truncate(newest / "mp_rank_00" / "model_optim_rng.pt")
    scheduler = _Scheduler()
    events: list[Event] = []

    async def emit(batch: list[Event]) -> None:
        events.extend(batch)

    async def save_attempt(run: RunInfo, fields: dict[str, Any]) -> None:
        return None

    async def observe(batch: list[Any]) -> None:
        return None

    spec = RunSpec(command=("train",), nodes=1, checkpoint_dir=str(tmp_path), env={"USER_VAR": "1"})
    run = RunInfo("r1", "local", spec, created_at=NOW)
    manager = RunManager(
        ClusterState(),
        scheduler,  # type: ignore[arg-type]
        VirtualClock(NOW),
        ProgressTracker(),
        emit,
        save_attempt,
        observe,
    )
    result = asyncio.run(manager.restart(run, set(), "test"))
    assert result.ok and result.resumed_from_step == 100
    env = scheduler.submitted[0].job_env()
    assert env["TRAINWARDEN_RESUME_FROM"] == str(tmp_path / "iter_0000100")
    assert env["TRAINWARDEN_CHECKPOINT_FORMAT"] == "megatron" and env["USER_VAR"] == "1"
    assert (tmp_path / TRACKER).read_text() == "100"
    started = next(e for e in events if e.kind is EventKind.RUN_STARTED)
    record = started.data["checkpoint"]
    assert record["format"] == "megatron"
    assert record["tracker_rewrite"]["old"] == "200"
    assert record["refused"][0]["path"] == str(newest)
