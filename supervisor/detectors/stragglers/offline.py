"""Replay a recorded trace through the same detector the daemon runs, step by step.

Offline analysis must not be a second implementation: the rows are fed in step order
to :class:`StragglerDetector` and it is evaluated after every step, as the daemon would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from trainwarden.supervisor.detectors.stragglers.detector import StragglerDetector
from trainwarden.supervisor.detectors.stragglers.model import (
    JobSlowdown,
    StageImbalance,
    StragglerClear,
    StragglerConfig,
    StragglerFlag,
)
from trainwarden.supervisor.detectors.stragglers.traces import TraceRow

RUN = "trace"


@dataclass
class Analysis:
    steps: int
    ranks: int
    nodes: int
    groups: int
    flags: list[StragglerFlag] = field(default_factory=list)
    clears: list[StragglerClear] = field(default_factory=list)
    imbalance: list[StageImbalance] = field(default_factory=list)
    slowdown: JobSlowdown | None = None

    def as_dict(self) -> dict[str, Any]:
        cleared = {(c.node, c.rank): c.step for c in self.clears}
        flagged = [
            {
                "node": f.node,
                "rank": f.rank,
                "group": f.group,
                "from_step": f.from_step,
                "flagged_at_step": f.step,
                "score": round(f.score, 4),
                "z": round(f.z, 2),
                "window": f.window,
                "ranks": list(f.ranks),
                "cleared_at_step": cleared.get((f.node, f.rank)),
            }
            for f in self.flags
        ]
        job = None
        if self.slowdown is not None:
            job = {
                "active": self.slowdown.active,
                "ratio": round(self.slowdown.ratio, 4),
                "baseline_s": round(self.slowdown.baseline_s, 6),
            }
        return {
            "steps": self.steps,
            "ranks": self.ranks,
            "nodes": self.nodes,
            "groups": self.groups,
            "flagged": flagged,
            "stage_imbalance": [i.as_dict() for i in self.imbalance],
            "job_slowdown": job,
        }


def analyze_rows(rows: Sequence[TraceRow], config: StragglerConfig | None = None) -> Analysis:
    """Run the detector over ``rows`` (any order) and collect what it flags."""
    det = StragglerDetector(config)
    ordered = sorted(rows, key=lambda r: (r.step, r.rank))
    roster = {r.rank: (r.node, r.group) for r in ordered}
    result = Analysis(
        steps=len({r.step for r in ordered}),
        ranks=len(roster),
        nodes=len({n for n, _ in roster.values()}),
        groups=len({g for _, g in roster.values()}),
    )
    clock = 0.0
    for _step, batch in groupby(ordered, key=lambda r: r.step):
        items = list(batch)
        step_time = max((r.step_s or r.compute_s) for r in items)
        clock = max(clock + step_time, *((r.ts or 0.0) for r in items))
        for r in items:
            det.observe(
                RUN,
                r.rank,
                r.node,
                r.group,
                r.step,
                r.compute_s,
                r.step_s if r.step_s is not None else r.compute_s,
                r.ts if r.ts is not None else clock,
            )
        for finding in det.evaluate(clock):
            if isinstance(finding, StragglerFlag):
                result.flags.append(finding)
            else:
                result.clears.append(finding)
    result.imbalance = det.stage_imbalance(RUN)
    slow = [s for s in det.job_slowdowns() if s.run == RUN]
    result.slowdown = slow[0] if slow else None
    return result
