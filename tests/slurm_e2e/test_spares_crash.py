"""A daemon SIGKILLed in the middle of an in-allocation restart, on a real Slurm cluster: it
has written the job's control file (generation 2, the survivors and the spare) and dies
before the job acknowledges the relaunch. The job relaunches on its own while no daemon
runs; the daemon started again with the same arguments adopts that launch as attempt 2:
one relaunch of the step, no second sbatch, the store naming the nodes the step runs on."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    SlurmTestCluster,
    Stack,
    check_resumed_exactly,
    job_of,
    read_progress,
    scaled,
    start_run,
    wait_for,
)

from trainwarden.supervisor.daemon import spares

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.integration]
STEPS = 40


@pytest.fixture
def short_lease_stack(e2e_cluster: SlurmTestCluster, tmp_path: Path) -> Iterator[Stack]:
    """A stack whose daemon's lease is short: its successor waits it out after a kill."""
    e2e_cluster.clean_slate()
    s = Stack(e2e_cluster, tmp_path, lease_ttl_s=4.0)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        sys.stderr.write(s.logs())


class KillOnControl(threading.Thread):
    """SIGKILLs the daemon the moment the control file asks for ``generation``; notes
    whether the job had acknowledged that launch by then (it must not have)."""

    def __init__(self, stack: Stack, control: Path, generation: int) -> None:
        super().__init__(daemon=True)
        self.stack, self.control, self.generation = stack, control, generation
        self.killed_at: float | None = None
        self.acked_before_kill: bool | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            written = spares.read_control(self.control)
            if written is not None and written.generation == self.generation:
                self.killed_at = self.stack.kill_daemon()
                self.acked_before_kill = spares.launch_of(self.control, self.generation) is not None
                return
            time.sleep(0.005)


def test_daemon_killed_between_control_file_and_relaunch(short_lease_stack: Stack) -> None:
    stack = short_lease_stack
    ckpt, nodes = start_run(stack, "spare-crash", steps=STEPS, nodes=3, spares=1)
    first_job = job_of(stack, "spare-crash", 1)
    control = spares.control_path(str(ckpt))
    killer = KillOnControl(stack, control, 2)
    killer.start()
    victim = nodes[-1]
    stack.kill_node(victim)
    try:
        wait_for(
            lambda: killer.killed_at is not None, scaled(90), "the daemon writing generation 2"
        )
    finally:
        killer.stop.set()
    assert killer.acked_before_kill is False  # killed before the job relaunched
    written = spares.read_control(control)
    assert written is not None and victim not in written.nodes
    # no daemon runs: the job relaunches by itself on what the control file names
    launch = wait_for(lambda: spares.launch_of(control, 2), scaled(60), "the job's relaunch")
    assert launch.nodes == written.nodes
    stack.start_daemon(wait=True)
    row = stack.wait_completed("spare-crash", timeout=150)
    assert row["attempt"] == 2 and row["restarts"] == 1, row
    assert tuple(row["nodes"]) == launch.nodes, (row["nodes"], launch.nodes)
    assert [ln.generation for ln in spares.launches(control)] == [1, 2]  # one relaunch
    started = [
        e
        for e in stack.events(run="spare-crash", kind="run-started")
        if e["data"].get("attempt") == 2 and e["data"].get("job_id")
    ]
    assert len(started) == 1, [e["message"] for e in started]
    data = started[0]["data"]
    assert data["in_allocation"] is True and data["job_id"] == first_job, data
    [spare] = [n for n in launch.nodes if n not in nodes]
    assert f"(spare {spare} in for {victim})" in started[0]["message"], started[0]["message"]
    assert data["recovery"].get("after_daemon_restart") is True, data
    jobs = {e["data"].get("job_id") for e in stack.events(run="spare-crash", kind="run-started")}
    assert jobs - {None} == {first_job}  # no second sbatch
    tagged = stack.cluster.slurm("squeue", "-h", "-n", "trainwarden:spare-crash", "-o", "%i")
    assert tagged.split() in ([], [first_job]), tagged
    restart = [a for a in stack.actions() if a["kind"] == "restart-run"]
    assert [a["status"] for a in restart] == ["succeeded"], restart
    resumed_from, last_ckpt = check_resumed_exactly(read_progress(ckpt), STEPS, ckpt)
    assert (
        resumed_from == row["resumed_from_step"] == int(written.env["TRAINWARDEN_RESUME_STEP"])
    ), (resumed_from, last_ckpt, row["resumed_from_step"], written.env)
