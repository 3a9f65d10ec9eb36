"""Failover on a real Slurm cluster: how fast trainwarden notices a dead node, drains it,
resubmits the run without it and resumes from the last checkpoint, against Slurm's own
detection (SlurmdTimeout).

    .venv/bin/python bench/failover.py --json     # ~1.5-2 min on 2 cores

Sets up everything itself with the end-to-end harness (tests/slurm_e2e/harness.py): a private
4-node test Slurm cluster (tests/infra/slurm/, started if needed, stopped again if it started
it), a private Mosquitto, SQLite, the daemon (``--scheduler slurm``) and one agent per node.
It runs the example job on 2 nodes, kills one of them for real (agent, slurmd, slurmstepd and
the job's processes: SIGKILL) and measures, all from the kill:

- detect_s: the NodeDead condition event (the drain cites it as evidence);
- drain_s: ``scontrol`` shows the node DRAIN with trainwarden's reason (polled every 0.2 s);
- resubmit_s: the next attempt submitted (its run-started event);
- resume_s: the first step of the resumed attempt (the job's own progress log);
- slurm_not_responding_s / slurm_down_s: Slurm itself marks the node NOT_RESPONDING / DOWN;
- resumed_from_step vs last_checkpoint_step: the newest checkpoint written before the kill.

Then the same again for a run that holds a spare (``--spares 1``: 3 + 1 nodes, sbatch
--no-kill): trainwarden restarts it inside the same job on the spare, with no new sbatch.
``recovery`` holds, for both restart kinds, resume_s and its split into detect, drain,
swap (spare swap: the job relaunched its step; resubmit: cancel + sbatch returned),
launch_rendezvous (to the ranks' process group; for resubmit it includes the queue wait),
checkpoint_load and first_step; ``spare_faster``: the in-allocation restart resumed sooner.
``--busy-s S``: before each kill another job takes every idle node for S s, as on a busy
machine, so a resubmission queues (default 0: the idle test cluster has no queue).

Prints ONE JSON object; exit 1 (with the JSON) when a check fails: detect_s <= 5, resumed
from the newest checkpoint, steps consecutive, trainwarden's drain before Slurm's DOWN.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "slurm_e2e"))

from harness import (
    Failover,
    SlurmTestCluster,
    Stack,
    attempt_marks,
    check_resumed_exactly,
    follow_failover,
    job_of,
    read_progress,
    start_run,
    wait_for,
)


def measure(
    steps: int,
    ckpt_every: int,
    step_time: float,
    keep: bool,
    spares: bool = True,
    busy_s: float = 0.0,
) -> dict[str, object]:
    cluster = SlurmTestCluster()
    was_up = (cluster.state_dir / "run" / "slurmctld.pid").exists()
    cluster.start()
    cluster.clean_slate()
    tmp = Path(tempfile.mkdtemp(prefix="tw-failover-"))
    stack = Stack(cluster, tmp)
    try:
        stack.start()
        ckpt, nodes = start_run(
            stack,
            "failover",
            steps=steps,
            ckpt_every=ckpt_every,
            at_step=2 * ckpt_every + 2,
            step_time=step_time,
            timings=True,
        )
        _occupy_idle(cluster, busy_s)
        victim = nodes[-1]
        t = stack.kill_node(victim)
        fo = follow_failover(
            stack, Failover("failover", ckpt, victim, nodes, t), timeout=240, wait_slurm_down=True
        )
        error = None
        resumed_from: int | None
        last_ckpt: int | None
        try:
            resumed_from, last_ckpt = check_resumed_exactly(read_progress(ckpt), steps)
        except AssertionError as exc:  # reported in the JSON, not as a traceback
            resumed_from = last_ckpt = None
            error = f"progress logs: {exc}"
        result: dict[str, object] = {
            "detect_s": _r(fo.detect_s),
            "drain_s": _r(fo.drain_s),
            "resubmit_s": _r(fo.resubmit_s),
            "resume_s": _r(fo.resume_s),
            "resumed_from_step": resumed_from,
            "last_checkpoint_step": last_ckpt,
            "slurm_not_responding_s": _r(fo.slurm_not_responding_s),
            "slurm_down_s": _r(fo.slurm_down_s),
            "slurmd_timeout_s": cluster.slurmd_timeout_s,
            "drained_before_slurm_down": fo.drain_s is not None
            and fo.slurm_down_s is not None
            and fo.drain_s < fo.slurm_down_s,
            "victim": victim,
            "nodes_before": nodes,
            "nodes_after": fo.run_row.get("nodes"),
            "final_step": fo.run_row.get("last_step"),
            "attempts": fo.run_row.get("attempt"),
            "sinfo_reason": cluster.drain_reasons().get(victim),
            "steps": steps,
            "ckpt_every": ckpt_every,
            "step_time_s": step_time,
            "error": error,
        }
        recovery: dict[str, dict[str, Any]] = {"resubmit": _split(stack, fo, "failover")}
        if spares:
            stack.stop()
            cluster.clean_slate()
            (tmp / "spare").mkdir()
            stack = Stack(cluster, tmp / "spare")
            stack.start()
            recovery["spare"] = _spare(stack, steps, ckpt_every, step_time, busy_s)
        result["recovery"] = recovery
        result["busy_s"] = busy_s
        spare_s = recovery.get("spare", {}).get("resume_s")
        result["spare_faster"] = (
            None if spare_s is None or fo.resume_s is None else bool(spare_s < fo.resume_s)
        )
        return result
    except BaseException:
        sys.stderr.write(stack.logs())
        raise
    finally:
        stack.stop()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        cluster.clean_slate()  # the killed node back, drains lifted
        if not was_up:
            cluster.stop()


def _occupy_idle(cluster: SlurmTestCluster, seconds: float) -> None:
    """A busy machine: another user's job takes every idle node for ``seconds``, so a
    resubmission waits in the queue for it (a run holding a spare does not)."""
    if seconds <= 0:
        return
    idle = cluster.slurm("sinfo", "-h", "-N", "-t", "idle", "-o", "%N").split()
    if not idle:
        return
    job = cluster.slurm(
        "sbatch",
        "--parsable",
        f"--nodes={len(idle)}",
        f"--nodelist={','.join(idle)}",
        "--output=/dev/null",
        "--job-name=busy",
        f"--wrap=sleep {seconds:g}",
    ).strip()
    wait_for(
        lambda: cluster.slurm("squeue", "-h", "-j", job, "-o", "%T").strip() == "RUNNING",
        30,
        f"filler job {job} running",
    )


def _spare(
    stack: Stack, steps: int, ckpt_every: int, step_time: float, busy_s: float
) -> dict[str, Any]:
    """A 3 + 1 node run with --spares 1 loses its last node: restarted inside its job."""
    ckpt, nodes = start_run(
        stack,
        "spare",
        steps=steps,
        ckpt_every=ckpt_every,
        at_step=2 * ckpt_every + 2,
        step_time=step_time,
        nodes=3,
        spares=1,
        timings=True,
    )
    first_job = job_of(stack, "spare", 1)
    _occupy_idle(stack.cluster, busy_s)
    victim = nodes[-1]  # not the batch host
    t = stack.kill_node(victim)
    fo = follow_failover(stack, Failover("spare", ckpt, victim, nodes, t), timeout=240)
    out = _split(stack, fo, "spare")
    out["same_job"] = job_of(stack, "spare", 2) == first_job
    out["nodes_before"], out["nodes_after"] = nodes, fo.run_row.get("nodes")
    try:
        resumed, last = check_resumed_exactly(read_progress(ckpt), steps)
        out["resumed_exactly"] = resumed == last
    except AssertionError as exc:
        out["resumed_exactly"], out["error"] = False, f"progress logs: {exc}"
    return out


def _split(stack: Stack, fo: Failover, run: str) -> dict[str, Any]:
    """resume_s of attempt 2 and its parts, each the time between two marks after the kill."""
    started = next(
        (
            e
            for e in stack.events(run=run, kind="run-started")
            if e["data"].get("attempt") == 2 and e["data"].get("job_id")
        ),
        None,
    )
    rec = dict(started["data"].get("recovery") or {}) if started else {}
    marks = attempt_marks(fo.ckpt, 2)
    # where the new step began: the job's own launch (spare), the sbatch's return (resubmit)
    launched = rec.get("launched_at") or (started["ts"] if started else None)
    points = [
        ("detect_s", fo.t_fault + fo.detect_s if fo.detect_s is not None else None),
        ("drain_s", fo.t_fault + fo.drain_s if fo.drain_s is not None else None),
        ("swap_s", launched),
        ("launch_rendezvous_s", marks.get("joined")),
        ("checkpoint_load_s", marks.get("resumed")),
        ("first_step_s", marks.get("first_step")),
    ]
    out: dict[str, Any] = {"kind": "in-allocation" if rec else "resubmit"}
    prev: float | None = fo.t_fault
    for key, at in points:
        out[key] = _r(at - prev) if at is not None and prev is not None else None
        prev = at if at is not None else prev
    out["resume_s"] = _r(fo.resume_s)
    out["daemon"] = {k: v for k, v in rec.items() if k != "launched_at"}
    return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _spare_ok(result: dict[str, object]) -> bool:
    recovery = result.get("recovery")
    spare = recovery.get("spare") if isinstance(recovery, dict) else None
    return spare is None or bool(spare.get("same_job") and spare.get("resumed_exactly"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--step-time", type=float, default=0.25)
    p.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    p.add_argument("--no-spares", action="store_true", help="skip the run with a spare node")
    p.add_argument(
        "--busy-s",
        type=float,
        default=0.0,
        help="before the kill, another job takes the idle nodes for this long (a queue)",
    )
    a = p.parse_args()
    t0 = time.monotonic()
    result = measure(a.steps, a.ckpt_every, a.step_time, a.keep, not a.no_spares, a.busy_s)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    ok = (
        isinstance(result["detect_s"], float)
        and result["detect_s"] <= 5
        and result["error"] is None
        and result["resumed_from_step"] == result["last_checkpoint_step"]
        and bool(result["drained_before_slurm_down"])
        and _spare_ok(result)
    )
    result["ok"] = ok
    print(json.dumps(result, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
