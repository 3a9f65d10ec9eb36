"""Issue #4's scenarios on a real Slurm cluster: a node killed for real, a GPU fault, a hung
rank and an operator's drain, each with the example job submitted through trainwarden; and an
sbatch refusal. Every scenario checks trainwarden's record, Slurm's own view (sinfo -R,
scontrol) and the job's progress logs (resumed from the newest checkpoint, no step skipped,
none repeated beyond it)."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness import (
    BIN,
    Failover,
    Stack,
    check_resumed_exactly,
    follow_failover,
    read_progress,
    scaled,
    start_run,
    wait_for,
)

from trainwarden.supervisor.scheduler.slurm_parse import parse_record

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.integration]
STEPS = 30
ME = pwd.getpwuid(os.getuid()).pw_name  # who the daemon records: the CLI's user


def _check_failover(stack: Stack, fo: Failover, rule: str) -> str:
    """Checks common to every failover; Slurm's reason for the victim's drain."""
    row = fo.run_row
    assert row["state"] == "completed" and row["attempt"] == 2 and row["restarts"] == 1
    assert fo.victim not in row["nodes"], f"attempt 2 placed on {fo.victim}: {row['nodes']}"
    # the node is drained in Slurm with trainwarden's reason (sinfo -R), by the rule; Slurm's
    # view, read once trainwarden has recorded every action's outcome
    actions = stack.settled_actions()
    reason = stack.cluster.wait_drain_reason(fo.victim, 30)
    assert reason.startswith("trainwarden:") and "by trainwarden" in reason, reason
    drain = [a for a in actions if a["kind"] == "drain"]
    assert [(a["node"], a["rule"], a["status"]) for a in drain] == [(fo.victim, rule, "succeeded")]
    restart = [a for a in actions if a["kind"] == "restart-run"]
    assert [(a["run"], a["rule"], a["status"]) for a in restart] == [(fo.run, rule, "succeeded")]
    # what was left of the first job was cancelled; the second excluded the node
    # (until Slurm marks a dead node DOWN, the job still completes there and only there)
    first = parse_record(
        stack.cluster.slurm("scontrol", "show", "job", "-o", str(fo.first_job)).splitlines()[0]
    )
    assert first["JobState"] == "CANCELLED" or (
        first["JobState"] == "COMPLETING" and first["NodeList"] == fo.victim
    ), first
    # resumed from the newest valid checkpoint: nothing skipped, nothing repeated beyond it
    resumed_from, last_ckpt = check_resumed_exactly(read_progress(fo.ckpt), STEPS, fo.ckpt)
    assert resumed_from == last_ckpt == row["resumed_from_step"]
    assert fo.detect_s is not None and fo.drain_s is not None
    assert fo.resubmit_s is not None and fo.resume_s is not None
    assert fo.detect_s <= fo.drain_s and fo.resubmit_s <= fo.resume_s
    return reason


def test_killed_node_is_drained_and_the_run_resumes_elsewhere(stack: Stack) -> None:
    ckpt, nodes = start_run(stack, "kill", steps=STEPS)
    victim = nodes[1]
    t = stack.kill_node(victim)  # its agent, slurmd, slurmstepd and job processes
    fo = follow_failover(stack, Failover("kill", ckpt, victim, nodes, t), timeout=150)
    _check_failover(stack, fo, "node-dead")
    assert fo.detect_s is not None and fo.detect_s <= 5
    # trainwarden drained it before Slurm itself noticed (SlurmdTimeout)
    assert "DOWN" not in fo.drain_flags and fo.drain_s is not None
    assert fo.drain_s < stack.cluster.slurmd_timeout_s
    dead = [e for e in stack.events(node=victim) if e["message"].startswith("node dead")]
    assert dead and "last will" in dead[0]["message"]


def test_gpu_fault_drains_the_node_and_the_run_resumes(stack: Stack) -> None:
    ckpt, nodes = start_run(stack, "xid", steps=STEPS, at_step=8)
    victim = nodes[0]
    t = time.time()
    subprocess.run(
        [BIN, "hw", "inject", "--state-dir", str(stack.hw_dir(victim)), "xid:79"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    fo = follow_failover(stack, Failover("xid", ckpt, victim, nodes, t), timeout=150)
    reason = _check_failover(stack, fo, "gpu-fatal")
    assert stack.node(victim)["drained_by"] == "trainwarden"
    assert "GpuFatal" in stack.node(victim)["conditions"]
    assert "GpuFatal" in reason, reason
    assert stack.cluster.drain_reasons().get(victim) == reason  # still drained, as recorded


def _stop_job_processes(stack: Stack, node: str) -> list[int]:
    pids = stack.cluster.job_processes(node)
    assert pids, f"no job process found on {node}"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def test_hung_rank_restarts_the_run_without_draining(stack: Stack) -> None:
    ckpt, nodes = start_run(stack, "hang", steps=STEPS, at_step=8)
    stopped = _stop_job_processes(stack, nodes[1])
    t = time.time()
    try:
        wait_for(
            lambda: stack.run("hang").get("attempt") == 2, scaled(60), "the restart after the hang"
        )
    finally:
        for pid in stopped:  # Slurm kills them at the cancel; make sure none stays stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    took = time.time() - t
    assert took >= 10 - 1, f"restarted {took:.1f} s after the hang: before --hang-floor"
    hung = [
        e for e in stack.events(run="hang") if e["kind"] in ("condition-changed", "run-stalled")
    ]
    assert hung, "no hang detection recorded"
    row = stack.wait_completed("hang", timeout=150)
    assert row["attempt"] == 2 and row["restarts"] == 1
    actions = stack.settled_actions()
    assert [a["kind"] for a in actions] == ["restart-run"]
    assert actions[0]["rule"] == "run-hung" and actions[0]["status"] == "succeeded"
    # no evidence against any node: none drained, in trainwarden or in Slurm
    assert stack.cluster.drain_reasons() == {}
    assert all(n["state"] == "healthy" for n in stack.nodes().values())
    resumed_from, last_ckpt = check_resumed_exactly(read_progress(ckpt), STEPS, ckpt)
    assert resumed_from == last_ckpt == row["resumed_from_step"]


def test_operator_drain_is_recorded_and_the_run_moves(stack: Stack) -> None:
    """The shipped rule ``operator-drain``: checkpoint now, then restart without the node."""
    ckpt, nodes = start_run(stack, "opdrain", steps=STEPS, at_step=7)
    node = nodes[1]
    stack.cli("drain", node, "--reason", "fan noise")
    action = next(a for a in stack.settled_actions() if a["kind"] == "drain")
    assert (action["actor"], action["who"], action["reason"], action["node"], action["status"]) == (
        "operator",
        ME,
        "fan noise",
        node,
        "succeeded",
    )
    reason = stack.cluster.wait_drain_reason(node, 30)
    assert reason.startswith("trainwarden: fan noise") and f"operator {ME}" in reason, reason
    assert stack.node(node)["drained_by"] == "operator"
    row = stack.wait_completed("opdrain", timeout=150)
    assert row["attempt"] == 2 and row["restarts"] == 1 and node not in row["nodes"]
    done = [
        (a["kind"], a["actor"], a["rule"] or a["who"], a["status"]) for a in stack.settled_actions()
    ]
    assert done == [
        ("drain", "operator", ME, "succeeded"),
        ("checkpoint-now", "rule", "operator-drain", "succeeded"),
        ("restart-run", "rule", "operator-drain", "succeeded"),
    ]
    # resumed from the checkpoint taken on request: nothing skipped, nothing repeated
    resumed_from, last_ckpt = check_resumed_exactly(read_progress(ckpt), STEPS, ckpt)
    assert resumed_from == last_ckpt == row["resumed_from_step"]
    # the node stays out of service until an operator returns it
    assert stack.cluster.node_flags(node) == {"IDLE", "DRAIN"}
    stack.cli("undrain", node, "--reason", "fan replaced")
    wait_for(lambda: "DRAIN" not in stack.cluster.node_flags(node), scaled(30), f"{node} returned")
    assert node not in stack.cluster.drain_reasons()


def test_sbatch_refusal_is_recorded_and_the_daemon_keeps_serving(
    stack: Stack, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.sbatch"
    bad.write_text("#!/bin/bash\n#SBATCH --partition=no-such-partition\nsrun true\n")
    ckpt = tmp_path / "ckpt-bad"
    stack.cli(
        "runs",
        "add",
        "bad",
        "--scheduler",
        "slurm",
        "--nodes",
        "1",
        "--checkpoint-dir",
        str(ckpt),
        "--",
        str(bad),
    )
    row = stack.run("bad")
    assert row["state"] == "held" and row["attempt"] == 0
    failed = [
        e for e in stack.events(run="bad") if "submission of attempt 1 failed" in e["message"]
    ]
    assert failed and "invalid partition" in failed[0]["message"].lower(), failed
    # a script that does not exist is refused the same way, with a clear sentence
    stack.cli(
        "runs",
        "add",
        "missing",
        "--scheduler",
        "slurm",
        "--nodes",
        "1",
        "--checkpoint-dir",
        str(ckpt),
        "--",
        str(tmp_path / "nope.sbatch"),
    )
    missing = [e for e in stack.events(run="missing") if "failed" in e["message"]]
    assert missing and "does not exist" in missing[0]["message"]
    # the daemon still serves and still sees every node; no job reached Slurm
    assert stack.procs["daemon"].poll() is None
    assert all(n["state"] == "healthy" for n in stack.nodes().values())
    assert stack.cluster.slurm("squeue", "-h").strip() == ""
    listing = stack.cli("runs")
    assert "bad" in listing.stdout and "Traceback" not in listing.stdout + listing.stderr
