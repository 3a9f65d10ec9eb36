"""SlurmScheduler refuses bad input before running any Slurm command (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.scheduler.base import JobSpec
from trainwarden.supervisor.scheduler.slurm import SlurmScheduler


@pytest.fixture
def conf(tmp_path: Path) -> str:
    path = tmp_path / "slurm.conf"
    path.write_text("ClusterName=x\n")
    return str(path)


async def test_missing_conf_fails_fast(tmp_path: Path) -> None:
    sched = SlurmScheduler(str(tmp_path / "absent.conf"))
    with pytest.raises(SchedulerError, match=r"absent\.conf does not exist") as err:
        await sched.nodes()
    assert not err.value.retryable


async def test_conf_from_environment(monkeypatch: pytest.MonkeyPatch, conf: str) -> None:
    monkeypatch.setenv("SLURM_CONF", conf)
    assert SlurmScheduler().slurm_conf == conf


@pytest.mark.integration  # really tries to start sinfo (fork, then a failed exec)
async def test_commands_missing(tmp_path: Path, conf: str) -> None:
    sched = SlurmScheduler(conf, bin_dir=str(tmp_path))
    with pytest.raises(SchedulerError, match=r"Slurm command sinfo not found in "):
        await sched.nodes()


def test_bad_timeout(conf: str) -> None:
    with pytest.raises(SchedulerError, match="timeout must be positive"):
        SlurmScheduler(conf, timeout_s=0)


@pytest.mark.parametrize("node", ["", "n1 State=DOWN", "n1,n2", "-n1"])
async def test_bad_node_names(conf: str, node: str) -> None:
    with pytest.raises(SchedulerError, match="not a valid Slurm node name"):
        await SlurmScheduler(conf).drain(node, "x")


@pytest.mark.parametrize("job_id", ["", "abc", "1 2", "-1"])
async def test_bad_job_ids(conf: str, job_id: str) -> None:
    with pytest.raises(SchedulerError, match="not a valid Slurm job id"):
        await SlurmScheduler(conf).cancel(job_id)


async def test_bad_specs(conf: str, tmp_path: Path) -> None:
    sched = SlurmScheduler(conf)
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(SchedulerError, match="no sbatch script"):
        await sched.submit(JobSpec(run="r", attempt=1, nodes=1, command=()))
    with pytest.raises(SchedulerError, match="at least one node"):
        await sched.submit(JobSpec(run="r", attempt=1, nodes=0, command=(str(script),)))
    with pytest.raises(SchedulerError, match=r"job\.shx does not exist"):
        await sched.submit(JobSpec(run="r", attempt=1, nodes=1, command=(f"{script}x",)))
    with pytest.raises(SchedulerError, match="contains ','"):
        await sched.submit(
            JobSpec(run="r", attempt=1, nodes=1, command=(str(script),), env={"A": "x,y"})
        )
