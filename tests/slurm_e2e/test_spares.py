"""Issue #15 item 3 on a real Slurm cluster: a run that holds a spare node (``--spares 1``,
sbatch --nodes 3+1 --no-kill) loses a node and is restarted inside the same job on the spare,
with no new sbatch; its restart event splits the recovery time."""

from __future__ import annotations

import pytest
from harness import (
    Failover,
    Stack,
    check_resumed_exactly,
    follow_failover,
    job_of,
    read_progress,
    start_run,
)

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.integration]
STEPS = 30


def test_killed_node_is_replaced_by_the_spare_inside_the_job(stack: Stack) -> None:
    ckpt, nodes = start_run(stack, "spare", steps=STEPS, nodes=3, spares=1)
    assert len(nodes) == 3, nodes
    first_job = job_of(stack, "spare", 1)
    alloc = stack.cluster.slurm("squeue", "-h", "-j", str(first_job), "-o", "%D").strip()
    assert alloc == "4", f"job {first_job} holds {alloc} node(s), not 3 + 1 spare"
    victim = nodes[-1]  # not the batch host (the first node): the job survives it
    t = stack.kill_node(victim)
    fo = follow_failover(stack, Failover("spare", ckpt, victim, nodes, t), timeout=150)
    row = fo.run_row
    assert row["state"] == "completed" and row["attempt"] == 2 and row["restarts"] == 1
    assert victim not in row["nodes"] and len(row["nodes"]) == 3, row["nodes"]
    assert set(nodes) - {victim} < set(row["nodes"])  # the survivors kept, one spare in
    started = [
        e
        for e in stack.events(run="spare", kind="run-started")
        if e["data"].get("attempt") == 2 and e["data"].get("job_id")
    ]
    assert len(started) == 1, [(e["message"], e["data"].get("job_id")) for e in started]
    data = started[0]["data"]
    print("restart event data:", {k: v for k, v in data.items() if k != "checkpoint"})
    assert data["in_allocation"] is True and data["job_id"] == first_job, data
    assert data["spares_left"] == 0
    rec = data["recovery"]
    assert rec["kind"] == "in-allocation" and rec["spare_swap_s"] is not None, rec
    assert rec["spare_swap_s"] < 10, rec
    resumed_from, last_ckpt = check_resumed_exactly(read_progress(ckpt), STEPS, ckpt)
    assert resumed_from == last_ckpt == row["resumed_from_step"]
    # no second sbatch: the first job is the only one trainwarden submitted for the run
    jobs = {e["data"].get("job_id") for e in stack.events(run="spare", kind="run-started")}
    assert jobs - {None} == {first_job}
    assert fo.resume_s is not None and fo.detect_s is not None


def test_batch_host_lost_falls_back_to_a_resubmission(stack: Stack) -> None:
    ckpt, nodes = start_run(stack, "spare-bh", steps=STEPS, nodes=3, spares=1)
    first_job = job_of(stack, "spare-bh", 1)
    victim = nodes[0]  # the batch script dies with it: the job cannot relaunch anything
    t = stack.kill_node(victim)
    fo = follow_failover(stack, Failover("spare-bh", ckpt, victim, nodes, t), timeout=200)
    row = fo.run_row
    assert row["state"] == "completed" and row["attempt"] == 2, row
    assert victim not in row["nodes"] and len(row["nodes"]) == 3, row["nodes"]
    second = job_of(stack, "spare-bh", 2)
    assert second is not None and second != first_job  # resubmitted, with --exclude
    started = [
        e
        for e in stack.events(run="spare-bh", kind="run-started")
        if e["data"].get("attempt") == 2 and e["data"].get("job_id")
    ]
    assert not started[0]["data"].get("in_allocation") and victim in started[0]["data"]["exclude"]
    # rank 1's log: rank 0 died with the batch host, perhaps before logging its last save
    resumed_from, last_ckpt = check_resumed_exactly(read_progress(ckpt, rank=1), STEPS, ckpt)
    assert resumed_from == last_ckpt == row["resumed_from_step"]
