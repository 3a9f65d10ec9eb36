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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "slurm_e2e"))

from harness import (
    Failover,
    SlurmTestCluster,
    Stack,
    check_resumed_exactly,
    follow_failover,
    read_progress,
    start_run,
)


def measure(steps: int, ckpt_every: int, step_time: float, keep: bool) -> dict[str, object]:
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
        )
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


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--step-time", type=float, default=0.25)
    p.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    a = p.parse_args()
    t0 = time.monotonic()
    result = measure(a.steps, a.ckpt_every, a.step_time, a.keep)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    ok = (
        isinstance(result["detect_s"], float)
        and result["detect_s"] <= 5
        and result["error"] is None
        and result["resumed_from_step"] == result["last_checkpoint_step"]
        and bool(result["drained_before_slurm_down"])
    )
    result["ok"] = ok
    print(json.dumps(result, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
