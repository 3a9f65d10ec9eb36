"""Session fixture: the real multi-node test Slurm cluster from tests/infra/slurm/.

Started (and Slurm installed when missing) by start.sh; stopped at the end if this session
started it (TW_SLURM_KEEP=1 keeps it running). Skipped only where Slurm cannot be installed,
and never under CI=1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_testcluster import SCRIPTS, SlurmCluster


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    state_dir = Path(os.environ.get("TW_SLURM_DIR", "/tmp/tw-slurm"))
    env = dict(os.environ, TW_SLURM_DIR=str(state_dir))
    status = subprocess.run(
        [str(SCRIPTS / "status.sh")],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    ).stdout
    was_up = "slurmctld: running" in status
    t0 = time.monotonic()
    started = subprocess.run(
        [str(SCRIPTS / "start.sh")],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    start_s = time.monotonic() - t0
    if started.returncode == 3 and not os.environ.get("CI"):
        pytest.skip(f"Slurm cannot be installed here: {started.stderr.strip()}")
    if started.returncode != 0:
        pytest.fail(f"test Slurm cluster did not start:\n{started.stdout}\n{started.stderr}")
    print(f"\nslurm test cluster up in {start_s:.1f} s (already running: {was_up})")
    nodes = tuple(f"n{i}" for i in range(1, int(os.environ.get("TW_SLURM_NODES", "8")) + 1))
    cluster = SlurmCluster(
        state_dir=state_dir, conf=str(state_dir / "slurm.conf"), nodes=nodes, start_s=start_s
    )
    asyncio.run(_clean_slate(cluster))
    yield cluster
    if not was_up and not os.environ.get("TW_SLURM_KEEP"):
        subprocess.run(
            [str(SCRIPTS / "stop.sh")], env=env, capture_output=True, timeout=60, check=False
        )


async def _clean_slate(cluster: SlurmCluster) -> None:
    """No jobs and every node in service, whatever an earlier session left."""
    from trainwarden.supervisor.scheduler.slurm import SlurmScheduler

    sched = SlurmScheduler(cluster.conf)
    for job_id, _run in await sched.jobs_tagged():
        await sched.cancel(job_id)
    for node in cluster.nodes:
        await sched.resume(node)
    deadline = time.monotonic() + 60
    while True:  # a resumed node is NOT_RESPONDING until slurmctld's next ping answers
        out = await cluster.command("sinfo", "-h", "-N", "-o", "%N %t")
        if out and not any(ln.endswith("*") for ln in out.splitlines()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"test cluster nodes not all responding after 60 s:\n{out}")
        await asyncio.sleep(0.3)
