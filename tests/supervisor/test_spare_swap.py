"""Restarts inside the allocation (RunSpec.spares): the control file, the submission with the
spares held, the swap onto a spare and every fall-back to a resubmission. A fake Slurm and a
fake batch script (it acknowledges the control file), no cluster."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from trainwarden.health.clock import VirtualClock
from trainwarden.policies.model import Event, EventKind
from trainwarden.supervisor.daemon import spares
from trainwarden.supervisor.daemon.runs import RunManager
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.errors import ConfigError
from trainwarden.supervisor.model.cluster import ClusterState, RunInfo, RunSpec
from trainwarden.supervisor.model.lifecycle import AttemptPhase, NodePhase, RunPhase
from trainwarden.supervisor.scheduler.base import (
    JobInfo,
    JobSpec,
    JobState,
    NodeState,
    SchedNode,
)

NOW = 1_800_000_000.0
ALLOC = ("n1", "n2", "n3", "n4")


class _Slurm:
    """A job that holds ALLOC and runs; records submissions and cancels."""

    name = "slurm"

    def __init__(self, alloc: tuple[str, ...] = ALLOC, size: int = 8) -> None:
        self.alloc = alloc
        self.size = size
        self.submitted: list[JobSpec] = []
        self.cancelled: list[str] = []

    async def nodes(self) -> list[SchedNode]:
        return [SchedNode(f"n{i}", NodeState.ALLOCATED) for i in range(1, self.size + 1)]

    async def submit(self, spec: JobSpec) -> str:
        self.submitted.append(spec)
        return str(100 + len(self.submitted))

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    async def job(self, job_id: str) -> JobInfo | None:
        if job_id in self.cancelled:
            return JobInfo(job_id, JobState.CANCELLED, self.alloc)
        return JobInfo(job_id, JobState.RUNNING, self.alloc)

    async def drain(self, node: str, reason: str) -> None:
        return None

    async def resume(self, node: str) -> None:
        return None

    async def job_log(self, job_id: str) -> str | None:
        return None

    async def jobs_tagged(self) -> list[tuple[str, str]]:
        return []


def _manager(sched: _Slurm, events: list[Event], state: ClusterState) -> RunManager:
    async def emit(batch: list[Event]) -> None:
        events.extend(batch)

    async def save_attempt(run: RunInfo, fields: dict[str, Any]) -> None:
        return None

    async def observe(batch: list[Any]) -> None:
        return None

    return RunManager(
        state,
        sched,
        VirtualClock(NOW),
        ProgressTracker(),
        emit,
        save_attempt,
        observe,
        stop_timeout_s=1.0,
        swap_timeout_s=2.0,
    )


def _run(tmp_path: Path, spares_: int = 1) -> RunInfo:
    spec = RunSpec(command=("train.sbatch",), nodes=3, checkpoint_dir=str(tmp_path), spares=spares_)
    return RunInfo("r1", "slurm", spec, created_at=NOW)


def _script(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch script's loop, at once: every control file written is acknowledged."""
    write = spares.write_control

    def write_and_ack(control: Path, generation: int, nodes: Any, env: Any) -> None:
        write(control, generation, nodes, env)
        with spares.ack_path(control).open("a") as f:
            f.write(f"generation={generation} launched={NOW + 1:.3f} nodes={','.join(nodes)}\n")

    monkeypatch.setattr(spares, "write_control", write_and_ack)


async def _started_and_restarted(
    tmp_path: Path, sched: _Slurm, exclude: set[str], monkeypatch: pytest.MonkeyPatch | None
) -> tuple[RunInfo, list[Event], ClusterState]:
    """Start the run, then restart it without ``exclude``; the script acknowledges
    relaunches unless ``monkeypatch`` is None."""
    events: list[Event] = []
    state = ClusterState()
    manager = _manager(sched, events, state)
    run = _run(tmp_path)
    if monkeypatch is not None:
        _script(monkeypatch)
    assert (await manager.start(run)).ok
    run.move_attempt(AttemptPhase.RUNNING)
    for n in exclude:
        state.node(n).move(NodePhase.FAILED)
    result = await manager.restart(run, exclude, "node dead")
    assert result.ok, result
    return run, events, state


def test_spec_round_trip_and_default_unchanged() -> None:
    spec = RunSpec(command=("s",), nodes=3, checkpoint_dir="/c", spares=2)
    assert RunSpec.from_dict(spec.to_dict()).spares == 2
    plain = RunSpec(command=("s",), nodes=3, checkpoint_dir="/c")
    assert "spares" not in plain.to_dict() and RunSpec.from_dict(plain.to_dict()).spares == 0
    with pytest.raises(ConfigError):
        RunSpec.from_dict({**spec.to_dict(), "spares": -1})


def test_control_file_and_acks(tmp_path: Path) -> None:
    control = spares.control_path(str(tmp_path))
    spares.write_control(control, 3, ("n1", "n4"), {"TRAINWARDEN_ATTEMPT": "3"})
    assert control.read_text() == "generation=3\nnodes=n1,n4\nTRAINWARDEN_ATTEMPT=3\n"
    with pytest.raises(ValueError):
        spares.write_control(control, 4, (), {"BAD KEY": "x"})
    spares.ack_path(control).write_text(
        "generation=2 launched=10.5 nodes=n1,n2\nnoise\ngeneration=3 launched=12.0 nodes=n1,n4\n"
    )
    assert spares.launch_of(control, 3) == spares.Launch(3, 12.0, ("n1", "n4"))
    assert spares.launch_of(control, 9) is None


async def test_submission_holds_the_spares_and_names_the_control_file(tmp_path: Path) -> None:
    sched = _Slurm()
    events: list[Event] = []
    state = ClusterState()
    run = _run(tmp_path)
    assert (await _manager(sched, events, state).start(run)).ok
    spec = sched.submitted[0]
    assert spec.nodes == 3 and spec.spares == 1
    control = spares.control_path(str(tmp_path))
    assert spec.env["TW_CONTROL_FILE"] == str(control) and spec.env["TW_TRAIN_NODES"] == "3"
    assert control.read_text().startswith("generation=1\nnodes=\n")
    assert run.nodes == ("n1", "n2", "n3")  # the step's nodes; n4 waits as the spare


async def test_restart_swaps_the_spare_in_inside_the_same_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sched = _Slurm()
    run, events, _ = await _started_and_restarted(tmp_path, sched, {"n3"}, monkeypatch)
    assert len(sched.submitted) == 1 and sched.cancelled == []  # no new sbatch, no scancel
    assert run.attempt == 2 and run.job_id == "101" and run.restarts == 1
    assert run.nodes == ("n1", "n2", "n4") and run.phase is RunPhase.RUNNING
    assert run.attempt_phase is AttemptPhase.RUNNING and "n3" in run.excluded
    control = spares.control_path(str(tmp_path)).read_text()
    assert "generation=2\nnodes=n1,n2,n4\n" in control and "TRAINWARDEN_ATTEMPT=2" in control
    started = [e for e in events if e.kind is EventKind.RUN_STARTED]
    data = started[-1].data
    assert data["in_allocation"] is True and data["job_id"] == "101" and data["attempt"] == 2
    assert data["spares_left"] == 0
    assert data["recovery"]["kind"] == "in-allocation"
    assert data["recovery"]["spare_swap_s"] is not None


async def test_spares_used_up_resubmits_with_exclude(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sched = _Slurm(alloc=("n1", "n2", "n3"))  # the spare is gone already
    run, _, _ = await _started_and_restarted(tmp_path, sched, {"n3"}, monkeypatch)
    assert len(sched.submitted) == 2 and sched.cancelled == ["101"]
    assert "n3" in sched.submitted[1].exclude and sched.submitted[1].spares == 1
    assert run.job_id == "102" and run.attempt == 2


async def test_bad_batch_host_resubmits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sched = _Slurm()
    run, _, _ = await _started_and_restarted(tmp_path, sched, {"n1"}, monkeypatch)
    assert len(sched.submitted) == 2 and run.job_id == "102"


async def test_no_relaunch_in_time_resubmits(tmp_path: Path) -> None:
    sched = _Slurm()
    run, _, _ = await _started_and_restarted(tmp_path, sched, {"n3"}, None)
    assert len(sched.submitted) == 2 and sched.cancelled == ["101"] and run.job_id == "102"


async def test_sbatch_holds_nodes_plus_spares_with_no_kill(tmp_path: Path) -> None:
    from trainwarden.supervisor.scheduler.slurm import SlurmScheduler

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "args"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {record}\necho 42\n')
    sbatch.chmod(0o755)
    conf = tmp_path / "slurm.conf"
    conf.write_text("")
    script = tmp_path / "train.sbatch"
    script.write_text("#!/bin/bash\n")
    sched = SlurmScheduler(slurm_conf=str(conf), bin_dir=str(bin_dir))
    spec = JobSpec(run="r1", attempt=1, nodes=3, command=(str(script),), exclude=("n9",))
    assert await sched.submit(replace(spec, spares=1)) == "42"
    args = record.read_text().splitlines()
    assert "--nodes=4" in args and "--no-kill" in args and "--exclude=n9" in args
    assert await sched.submit(spec) == "42"  # without spares: as before
    args = record.read_text().splitlines()
    assert "--nodes=3" in args and "--no-kill" not in args


async def test_too_few_nodes_for_the_spares_submits_without(tmp_path: Path) -> None:
    sched = _Slurm(size=3)
    run = _run(tmp_path)
    assert (await _manager(sched, [], ClusterState()).start(run)).ok
    spec = sched.submitted[0]
    assert spec.spares == 0 and "TW_CONTROL_FILE" not in spec.env and spec.nodes == 3
