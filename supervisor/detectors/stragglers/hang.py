"""Which ranks and nodes stopped reporting first, for the hang detector's evidence.

When a synchronous job hangs, every rank stops; the culprits are the ones that stopped
*first*: behind the others in steps, or, at the same step, silent for longer. When
everyone stopped together there is no single culprit (more likely fabric or storage),
and the answer says so by being empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankLast:
    """A rank's last report: where it is, which step it last finished, and when."""

    node: str
    step: int
    ts: float


@dataclass(frozen=True)
class HangCulprits:
    ranks: tuple[int, ...]
    nodes: tuple[str, ...]  # nodes of those ranks, most culprit ranks first
    step: int | None  # the last step the culprits finished
    last_ts: float | None  # the latest report among the culprits
    reason: str


def hang_culprits(last: Mapping[int, RankLast], *, margin_s: float = 5.0) -> HangCulprits:
    """Name the ranks (and their nodes) that stopped reporting first.

    Ranks behind the median rank's step are culprits (the furthest behind first); if all
    are at the same step, ranks whose last report is more than ``margin_s`` older than the
    median's are. A majority is never named: a cause shared by most ranks is not theirs.
    """
    if not last:
        return HangCulprits((), (), None, None, "no rank has reported")
    ranks = np.array(sorted(last), dtype=np.int64)
    steps = np.array([last[int(r)].step for r in ranks], dtype=np.int64)
    times = np.array([last[int(r)].ts for r in ranks], dtype=np.float64)
    median_step = float(np.median(steps))
    lowest = int(steps.min())
    if lowest < median_step:
        chosen = steps == lowest
        reason = f"stopped at step {lowest} while most ranks reached step {int(median_step)}"
    else:
        cutoff = float(np.median(times)) - margin_s
        chosen = times < cutoff
        reason = f"silent for more than {margin_s:g}s longer than most ranks at the same step"
    if not chosen.any() or chosen.sum() * 2 > len(ranks):
        return HangCulprits((), (), None, None, "all ranks stopped together: no single culprit")
    picked = [int(r) for r in ranks[chosen]]
    counts: dict[str, int] = {}
    for r in picked:
        counts[last[r].node] = counts.get(last[r].node, 0) + 1
    nodes = tuple(sorted(counts, key=lambda n: (-counts[n], n)))
    return HangCulprits(
        ranks=tuple(picked),
        nodes=nodes,
        step=int(steps[chosen].max()),
        last_ts=float(times[chosen].max()),
        reason=reason,
    )
