"""Where a run's wall time went (ETTR and its buckets) and the checkpoint interval to advise.

Pure functions over a run's recorded history, so the daemon, the simulator and the demo
account for time the same way: ``account`` (buckets, ETTR), ``advise`` (Young/Daly interval,
expected ETTR), ``prior`` (the shipped failure traces as the interruption-rate prior).
"""

from __future__ import annotations

from trainwarden.supervisor.goodput.account import (
    BUCKETS,
    AttemptSpan,
    Goodput,
    RunHistory,
    account,
)
from trainwarden.supervisor.goodput.advice import (
    Advice,
    advise,
    daly_interval,
    expected_ettr,
    moved,
    posterior_mtbf,
)

__all__ = [
    "BUCKETS",
    "Advice",
    "AttemptSpan",
    "Goodput",
    "RunHistory",
    "account",
    "advise",
    "daly_interval",
    "demo_figures",
    "expected_ettr",
    "moved",
    "posterior_mtbf",
]


def demo_figures(history: RunHistory) -> dict[str, object]:
    """What the demo's ``--json`` shows: ``ettr`` and the ``goodput`` buckets (they add up to
    the wall time)."""
    g = account(history)
    return {"ettr": round(g.ettr, 4), "goodput": g.as_dict()}
