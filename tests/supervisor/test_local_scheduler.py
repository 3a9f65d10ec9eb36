"""The local back-end with real processes: placement, env, cancel, node death, drains."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.scheduler.base import JobSpec, JobState, NodeState
from trainwarden.supervisor.scheduler.local import LocalScheduler

# Every test starts real processes (the back-end's whole job), some for seconds.
pytestmark = pytest.mark.integration

PY = sys.executable


def spec(cmd: list[str], nodes: int = 2, **kw: object) -> JobSpec:
    return JobSpec(run="r1", attempt=1, nodes=nodes, command=tuple(cmd), **kw)  # type: ignore[arg-type]


async def test_placement_env_and_completion(tmp_path: Path) -> None:
    s = LocalScheduler(["n1", "n2", "n3"], tmp_path / "logs")
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import os,sys; open(sys.argv[1]+'/'+os.environ['TRAINWARDEN_NODE'],'w').write("
        "os.environ['NODE_RANK']+' '+os.environ['NNODES']+' '+sys.argv[2]+' '+"
        "os.environ['TRAINWARDEN_RESUME_FROM']+' '+os.environ['TRAINWARDEN_ATTEMPT'])"
    )
    job = await s.submit(
        spec(
            [PY, "-c", code, str(out), "{node_rank}/{nnodes}"],
            exclude=("n1",),
            resume_from="/ck/step-10",
        )
    )
    info = await s.wait(job, 20)
    assert info is not None and info.state is JobState.COMPLETED
    assert info.nodes == ("n2", "n3")
    assert (out / "n2").read_text() == "0 2 0/2 /ck/step-10 1"
    assert (out / "n3").read_text() == "1 2 1/2 /ck/step-10 1"
    assert {n.state for n in await s.nodes()} == {NodeState.IDLE}


async def test_cancel_is_idempotent_and_bounded(tmp_path: Path) -> None:
    s = LocalScheduler(["n1", "n2"], tmp_path, stop_grace_s=2.0)
    job = await s.submit(spec([PY, "-c", "import time; time.sleep(60)"]))
    assert [n.state for n in await s.nodes()] == [NodeState.ALLOCATED] * 2
    await s.cancel(job)
    await s.cancel(job)
    info = await s.job(job)
    assert info is not None and info.state is JobState.CANCELLED
    await s.cancel("local-999")  # unknown job: nothing to do


async def test_node_death_fails_the_job_and_drain_keeps_node_out(tmp_path: Path) -> None:
    s = LocalScheduler(["n1", "n2", "n3"], tmp_path, stop_grace_s=2.0)
    job = await s.submit(spec([PY, "-c", "import time; time.sleep(60)"]))
    s.kill_node("n1")
    await s.cancel(job)  # what is left of the job
    info = await s.job(job)
    assert info is not None and info.state is JobState.NODE_FAIL
    await s.drain("n2", "trainwarden: test")
    states = {n.name: (n.state, n.reason) for n in await s.nodes()}
    assert states["n1"][0] is NodeState.DOWN
    assert states["n2"] == (NodeState.DRAINED, "trainwarden: test")
    with pytest.raises(SchedulerError, match="needs 2 nodes, 1 available"):
        await s.submit(spec([PY, "-c", "pass"]))
    await s.resume("n2")
    await s.drain("n2", "again")
    await s.drain("n2", "again")  # draining a drained node is fine
    with pytest.raises(SchedulerError, match="unknown node 'nope'"):
        await s.drain("nope", "x")


async def test_unstartable_command_is_a_scheduler_error(tmp_path: Path) -> None:
    s = LocalScheduler(["n1"], tmp_path)
    with pytest.raises(SchedulerError, match="cannot start run"):
        await s.submit(spec(["/nonexistent/binary"], nodes=1))
    assert [n.state for n in await s.nodes()] == [NodeState.IDLE]


async def test_throttle_slows_and_freeze_stops_a_node_s_processes(tmp_path: Path) -> None:
    import asyncio
    import time

    s = LocalScheduler(["n1", "n2"], tmp_path, stop_grace_s=2.0)
    out = tmp_path / "ticks"
    out.mkdir()
    code = (
        "import sys,time,os\nf=open(sys.argv[1]+'/'+os.environ['TRAINWARDEN_NODE'],'a')\n"
        "while True:\n t=time.perf_counter()\n while time.perf_counter()-t<0.02: pass\n"
        " f.write('x'); f.flush()\n"
    )
    job = await s.submit(spec([PY, "-c", code, str(out)]))
    await asyncio.sleep(1.0)
    s.throttle("n2", 3.0)
    mark = {n: (out / n).stat().st_size for n in ("n1", "n2")}
    t0 = time.monotonic()
    await asyncio.sleep(2.0)
    rate = {n: ((out / n).stat().st_size - mark[n]) / (time.monotonic() - t0) for n in ("n1", "n2")}
    assert rate["n2"] < 0.6 * rate["n1"], rate
    s.throttle("n2", float("inf"))
    await asyncio.sleep(0.3)
    frozen = (out / "n2").stat().st_size
    await asyncio.sleep(1.0)
    assert (out / "n2").stat().st_size == frozen
    await s.cancel(job)  # a frozen process is still cancelled promptly
    info = await s.job(job)
    assert info is not None and info.state is JobState.CANCELLED
