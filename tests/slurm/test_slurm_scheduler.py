"""SlurmScheduler against the real test cluster: node states, drain/resume, submit with
--exclude and env, multi-node srun steps, cancel, a real node death (NODE_FAIL, DOWN after
SlurmdTimeout) and the error cases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from slurm_testcluster import SlurmCluster

from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.scheduler.base import JobInfo, JobSpec, JobState, NodeState, SchedNode
from trainwarden.supervisor.scheduler.slurm import SlurmScheduler

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.timeout(180)]

SRUN_SCRIPT = """#!/bin/bash
# $1: folder to write into; one file per task, named after the node Slurm says it runs on
srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 bash -c \
  'env | grep -E "^(TRAINWARDEN_|EXTRA_)" | sort > "$0/$SLURMD_NODENAME.env"; \
   echo "$SLURM_PROCID $1" > "$0/$SLURMD_NODENAME.task"' "$1" "$2"
"""


@pytest.fixture
def sched(slurm_cluster: SlurmCluster) -> SlurmScheduler:
    return SlurmScheduler(slurm_cluster.conf, timeout_s=15)


def script(tmp_path: Path, body: str, name: str = "job.sh") -> str:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


async def wait_job(
    sched: SlurmScheduler, job_id: str, ok: Callable[[JobInfo], bool], limit_s: float = 30
) -> JobInfo:
    end = time.monotonic() + limit_s
    info = None
    while time.monotonic() < end:
        info = await sched.job(job_id)
        if info is not None and ok(info):
            return info
        await asyncio.sleep(0.3)
    raise AssertionError(f"job {job_id} not as expected after {limit_s} s: {info}")


async def wait_node(
    sched: SlurmScheduler, name: str, state: NodeState, limit_s: float = 30
) -> None:
    end = time.monotonic() + limit_s
    while (node := await node_of(sched, name)).state is not state:
        assert time.monotonic() < end, f"{node} not {state} after {limit_s} s"
        await asyncio.sleep(0.3)


async def node_of(sched: SlurmScheduler, name: str) -> SchedNode:
    return next(n for n in await sched.nodes() if n.name == name)


async def test_nodes_listed(sched: SlurmScheduler, slurm_cluster: SlurmCluster) -> None:
    nodes = await sched.nodes()
    assert [n.name for n in nodes] == list(slurm_cluster.nodes)
    busy = [n for n in nodes if n.state not in (NodeState.IDLE, NodeState.ALLOCATED)]
    assert not busy


async def test_drain_twice_then_resume(sched: SlurmScheduler, slurm_cluster: SlurmCluster) -> None:
    await sched.drain("n8", "xid 79 on GPU 3 (event 42)")
    await sched.drain("n8", "again after a daemon restart")  # idempotent, first reason kept
    node = await node_of(sched, "n8")
    assert node.state is NodeState.DRAINED
    assert node.reason == "trainwarden: xid 79 on GPU 3 (event 42)"
    sinfo_r = await slurm_cluster.command("sinfo", "-R", "-h", "-o", "%N|%E")
    assert "n8|trainwarden: xid 79 on GPU 3 (event 42)" in sinfo_r.splitlines()
    assert (await sched.node("n8")).reason == "trainwarden: xid 79 on GPU 3 (event 42)"
    await sched.resume("n8")
    await sched.resume("n8")  # already in service: fine
    await wait_node(sched, "n8", NodeState.IDLE)


async def test_submit_exclude_env_and_srun_steps(sched: SlurmScheduler, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    spec = JobSpec(
        run="r-submit",
        attempt=2,
        nodes=2,
        command=(script(tmp_path, SRUN_SCRIPT), str(out), "arg-two"),
        exclude=("n1", "n2", "n3", "n4", "n5"),
        resume_from="/ckpt/step_100",
        env={"EXTRA_FLAG": "yes"},
        workdir=str(tmp_path),
    )
    job_id = await sched.submit(spec)
    info = await wait_job(sched, job_id, lambda j: j.state.finished)
    assert info.state is JobState.COMPLETED, info
    assert info.exit_code == 0
    assert len(info.nodes) == 2
    assert set(info.nodes) <= {"n6", "n7", "n8"}
    assert sorted(p.stem for p in out.glob("*.task")) == sorted(info.nodes)
    ranks = sorted((out / f"{n}.task").read_text().split()[0] for n in info.nodes)
    assert ranks == ["0", "1"]
    for node in info.nodes:
        assert (out / f"{node}.task").read_text().split()[1] == "arg-two"
        env = (out / f"{node}.env").read_text().splitlines()
        assert env == [
            "EXTRA_FLAG=yes",
            "TRAINWARDEN_ATTEMPT=2",
            "TRAINWARDEN_RESUME_FROM=/ckpt/step_100",
            "TRAINWARDEN_RUN=r-submit",
        ]


async def test_failed_job_exit_code(sched: SlurmScheduler, tmp_path: Path) -> None:
    spec = JobSpec(
        run="r-fail",
        attempt=1,
        nodes=1,
        command=(script(tmp_path, "#!/bin/bash\nexit 3\n"),),
        workdir=str(tmp_path),
    )
    info = await wait_job(sched, await sched.submit(spec), lambda j: j.state.finished)
    assert info.state is JobState.FAILED
    assert info.exit_code == 3


async def test_job_log_is_the_batch_scripts_stdout(sched: SlurmScheduler, tmp_path: Path) -> None:
    """Where the daemon follows a run's progress when it reads it from the log."""
    spec = JobSpec(
        run="r-log",
        attempt=1,
        nodes=1,
        command=(script(tmp_path, "#!/bin/bash\necho ' iteration        1/      10 |'\n"),),
        workdir=str(tmp_path),
    )
    job_id = await sched.submit(spec)
    path = await sched.job_log(job_id)
    assert path == str(tmp_path / f"slurm-{job_id}.out")
    await wait_job(sched, job_id, lambda j: j.state.finished)
    assert "iteration        1/" in Path(path).read_text()
    assert await sched.job_log("999999") is None


async def test_cancel_and_tagged(sched: SlurmScheduler, tmp_path: Path) -> None:
    spec = JobSpec(
        run="r-cancel",
        attempt=1,
        nodes=1,
        command=(script(tmp_path, "#!/bin/bash\nsleep 300\n"),),
        workdir=str(tmp_path),
    )
    job_id = await sched.submit(spec)
    await wait_job(sched, job_id, lambda j: j.state is JobState.RUNNING)
    assert (job_id, "r-cancel") in await sched.jobs_tagged()
    await sched.cancel(job_id)
    info = await wait_job(sched, job_id, lambda j: j.state.finished)
    assert info.state is JobState.CANCELLED
    await sched.cancel(job_id)  # already gone: fine
    await sched.cancel("99999999")  # never existed: fine
    assert await sched.job("99999999") is None


async def test_error_cases(
    sched: SlurmScheduler, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    with pytest.raises(SchedulerError, match=r"does not know node 'nosuch'") as err:
        await sched.drain("nosuch", "x")
    assert not err.value.retryable
    with pytest.raises(SchedulerError, match="does not know node"):
        await sched.resume("nosuch")
    with pytest.raises(SchedulerError, match="not a valid Slurm node name"):
        await sched.drain("n1 State=DOWN", "x")
    with pytest.raises(SchedulerError, match="not a valid Slurm job id"):
        await sched.cancel("1; rm")
    with pytest.raises(SchedulerError, match="does not exist"):
        await sched.submit(JobSpec(run="r", attempt=1, nodes=1, command=("/nonexistent.sh",)))
    with pytest.raises(SchedulerError, match="does not look like a batch script"):
        await sched.submit(
            JobSpec(run="r", attempt=1, nodes=1, command=(script(tmp_path, "echo no shebang\n"),))
        )
    with pytest.raises(SchedulerError, match="Invalid node name specified"):
        await sched.submit(
            JobSpec(
                run="r",
                attempt=1,
                nodes=1,
                exclude=("zz9",),
                command=(script(tmp_path, "#!/bin/bash\ntrue\n"),),
            )
        )

    missing = SlurmScheduler(str(tmp_path / "nope.conf"))
    with pytest.raises(SchedulerError, match=r"nope.conf does not exist"):
        await missing.nodes()
    broken = tmp_path / "broken.conf"
    broken.write_text("this is not slurm\n")
    with pytest.raises(SchedulerError, match=r"cannot read its configuration .*Parse error"):
        await SlurmScheduler(str(broken)).nodes()

    # slurmctld unreachable: the same cluster config pointing at a port where nothing listens
    conf = Path(slurm_cluster.conf).read_text().splitlines()
    down = tmp_path / "down.conf"
    down.write_text(
        "\n".join("SlurmctldPort=1" if ln.startswith("SlurmctldPort=") else ln for ln in conf)
        + "\n"
    )
    unreachable = SlurmScheduler(str(down))
    with pytest.raises(SchedulerError, match="slurmctld") as err:
        await unreachable.nodes()
    assert err.value.retryable
    with pytest.raises(SchedulerError, match="Unable to contact slurm controller") as err:
        await unreachable.drain("n1", "x")
    assert err.value.retryable
    with pytest.raises(SchedulerError, match=r"did not finish within 0\.5 s") as err:
        await SlurmScheduler(str(down), timeout_s=0.5).job("1")
    assert err.value.retryable


async def test_node_death_node_fail_and_return(
    sched: SlurmScheduler, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """Kill a node of a running 2-node job the hard way; Slurm must mark it NOT_RESPONDING,
    then DOWN after SlurmdTimeout, and fail the job with NODE_FAIL."""
    body = "#!/bin/bash\nsrun --nodes=2 --ntasks-per-node=1 sleep 300\n"
    spec = JobSpec(
        run="r-nodefail",
        attempt=1,
        nodes=2,
        command=(script(tmp_path, body),),
        exclude=("n1", "n2", "n3", "n4"),
        workdir=str(tmp_path),
    )
    job_id = await sched.submit(spec)
    info = await wait_job(sched, job_id, lambda j: j.state is JobState.RUNNING)
    # the batch host: with the batch script gone, only slurmctld's verdict can end the job
    # (killing another node races srun's own "task lost" exit, giving FAILED instead)
    rec = await slurm_cluster.command("scontrol", "show", "job", "-o", job_id)
    victim = rec.split("BatchHost=", 1)[1].split()[0]
    assert victim in info.nodes
    end = time.monotonic() + 30  # the srun step runs on every node: the job is fully launched
    while f"{job_id}.0" not in await slurm_cluster.command(
        "squeue", "-h", "-s", "-j", job_id, "-o", "%i"
    ):
        assert time.monotonic() < end, "srun step never started"
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    slurm_cluster.kill_node(victim)
    seen: dict[str, float] = {}
    # until both are seen: the job's NODE_FAIL and the node's DOWN come in either order
    while time.monotonic() - t0 < 90 and not {"node_fail", "down"} <= set(seen):
        raw = await slurm_cluster.command("scontrol", "show", "node", "-o", victim)
        if "NOT_RESPONDING" in raw:
            seen.setdefault("not_responding", time.monotonic() - t0)
        if (await sched.node(victim)).state is NodeState.DOWN:
            seen.setdefault("down", time.monotonic() - t0)
        job = await sched.job(job_id)
        if job is not None and job.state is JobState.NODE_FAIL:
            seen.setdefault("node_fail", time.monotonic() - t0)
        await asyncio.sleep(0.5)
    print(f"\nnode {victim} killed: detection seconds {seen}")
    assert "node_fail" in seen, f"job {job_id} never became NODE_FAIL: {await sched.job(job_id)}"
    assert "down" in seen
    job = await sched.job(job_id)
    assert job is not None and job.state is JobState.NODE_FAIL and victim in job.nodes
    await sched.drain(victim, "slurmd lost (test)")  # draining a DOWN node works
    assert (await sched.node(victim)).state is NodeState.DOWN

    # bring it back: restart its slurmd. Drained while DOWN, Slurm keeps it out of service
    # (ReturnToService=1 returns only nodes DOWN for "Not responding") until resumed.
    slurm_cluster.restart_missing()
    end = time.monotonic() + 30
    while "NOT_RESPONDING" in await slurm_cluster.command("scontrol", "show", "node", "-o", victim):
        assert time.monotonic() < end, "restarted slurmd never answered"
        await asyncio.sleep(0.3)
    back = await sched.node(victim)
    assert back.state is NodeState.DOWN and back.reason == "trainwarden: slurmd lost (test)"
    await sched.resume(victim)
    await wait_node(sched, victim, NodeState.IDLE)
