"""Checkpoint-interval advice: Young/Daly from the measured save cost and interruption rate.

Interval (Daly 2006, "A higher order estimate of the optimum checkpoint interval for restart
dumps", FGCS 22(3)): tau = sqrt(2 delta M) [1 + (1/3) sqrt(delta / 2M) + (1/9)(delta / 2M)] - delta
for delta < 2M, else M; delta = the time a save stops training, M = the mean time between
interruptions. Expected ETTR, from the same paper's complete model (exponential failures, which
may also strike during a restart of R seconds): T_wall / T_solve = M e^(R/M) (e^((tau+delta)/M) - 1)
/ tau, so ETTR = tau / (M e^(R/M) (e^((tau+delta)/M) - 1)).

An asynchronous save stops training only for its copy to host memory (delta) and is written in
the background for P seconds more; the newest checkpoint is usable only once written, so a
failure loses P more work on average (the restart cost is taken as R + P, first order), and a
save cannot start before the previous one is written: the interval is at least P.

The rate M is pooled (Gamma-Poisson): a Gamma prior worth ``PRIOR_EVENTS`` interruptions at the
shipped traces' rate (``prior.py``), updated with the interruptions observed on the run's own
allocation over its exposure; the posterior mean is used. The prior dominates until the run has
seen about as many interruptions as it is worth, so one lucky week moves the advice little.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PRIOR_EVENTS = 5.0  # what the prior is worth, in interruptions
ADVICE_MOVE = 0.20  # an event when the advice moves by more than this fraction


def daly_interval(delta_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum compute time between checkpoints (seconds)."""
    if delta_s <= 0 or mtbf_s <= 0:
        raise ValueError("the checkpoint cost and the mean time between failures must be > 0")
    if delta_s >= 2 * mtbf_s:
        return mtbf_s
    x = delta_s / (2 * mtbf_s)
    return math.sqrt(2 * delta_s * mtbf_s) * (1 + math.sqrt(x) / 3 + x / 9) - delta_s


def expected_ettr(interval_s: float, delta_s: float, mtbf_s: float, restart_s: float) -> float:
    """Daly's expected share of wall time that is kept computation (see module doc)."""
    if interval_s <= 0 or mtbf_s <= 0:
        return 0.0
    wall = mtbf_s * math.exp(restart_s / mtbf_s) * math.expm1((interval_s + delta_s) / mtbf_s)
    return interval_s / wall


def posterior_mtbf(
    interruptions: int, exposure_s: float, prior_mtbf_s: float, prior_events: float = PRIOR_EVENTS
) -> float:
    """Posterior mean time between interruptions: (w M0 + T) / (w + n)."""
    return (prior_events * prior_mtbf_s + max(0.0, exposure_s)) / (prior_events + interruptions)


def advised_interval(delta_s: float, mtbf_s: float, persist_s: float = 0.0) -> float:
    """Daly's optimum, but never shorter than an asynchronous save takes to be written."""
    return max(daly_interval(delta_s, mtbf_s), persist_s)


def ettr_at(
    interval_s: float, delta_s: float, mtbf_s: float, restart_s: float, persist_s: float = 0.0
) -> float:
    """Expected ETTR at an interval, an asynchronous save's write counted as lost work."""
    return expected_ettr(max(interval_s, persist_s), delta_s, mtbf_s, restart_s + persist_s)


def stall_for(
    target: float, mtbf_s: float, restart_s: float, persist_s: float = 0.0
) -> float | None:
    """The largest save stall at which the advised interval still reaches ``target`` ETTR
    (None: unreachable even with a free checkpoint, the restart alone costs too much)."""

    def ettr(delta: float) -> float:
        tau = advised_interval(delta, mtbf_s, persist_s)
        return ettr_at(tau, delta, mtbf_s, restart_s, persist_s)

    if ettr(1e-6) < target:
        return None
    lo, hi = 1e-6, mtbf_s
    for _ in range(60):
        mid = (lo + hi) / 2
        if ettr(mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def restart_for(
    target: float, delta_s: float, mtbf_s: float, persist_s: float = 0.0
) -> float | None:
    """The largest restart cost at which the advised interval still reaches ``target`` ETTR
    (None: unreachable even with an instant restart, the checkpoints alone cost too much)."""
    tau = advised_interval(delta_s, mtbf_s, persist_s)
    if ettr_at(tau, delta_s, mtbf_s, 0.0, persist_s) < target:
        return None
    lo, hi = 0.0, mtbf_s
    for _ in range(60):
        mid = (lo + hi) / 2
        if ettr_at(tau, delta_s, mtbf_s, mid, persist_s) >= target:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class Advice:
    interval_s: float  # advised compute time between checkpoints
    current_interval_s: float | None
    checkpoint_cost_s: float  # delta: what one save stops training for
    persist_s: float  # P: an asynchronous save's background write (0: synchronous)
    mtbf_s: float  # M used (posterior mean)
    restart_s: float  # R used in the expected ETTR
    ettr_current: float | None
    ettr_advised: float
    interruptions: int  # observed on the run's allocation
    exposure_s: float
    prior_mtbf_s: float
    basis: str  # how M was found

    def as_dict(self) -> dict[str, object]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def advise(
    checkpoint_cost_s: float,
    *,
    interruptions: int,
    exposure_s: float,
    prior_mtbf_s: float,
    restart_s: float,
    current_interval_s: float | None = None,
    prior_events: float = PRIOR_EVENTS,
    persist_s: float = 0.0,
) -> Advice:
    m = posterior_mtbf(interruptions, exposure_s, prior_mtbf_s, prior_events)
    p = max(0.0, persist_s)
    tau = advised_interval(checkpoint_cost_s, m, p)
    basis = (
        f"pooled Gamma-Poisson: prior worth {prior_events:g} interruptions at "
        f"{prior_mtbf_s / 3600:.2f} h, observed {interruptions} in {exposure_s / 3600:.1f} h"
    )
    return Advice(
        tau,
        current_interval_s,
        checkpoint_cost_s,
        p,
        m,
        restart_s,
        None
        if current_interval_s is None
        else ettr_at(current_interval_s, checkpoint_cost_s, m, restart_s, p),
        ettr_at(tau, checkpoint_cost_s, m, restart_s, p),
        interruptions,
        exposure_s,
        prior_mtbf_s,
        basis,
    )


def moved(old_s: float | None, new_s: float, threshold: float = ADVICE_MOVE) -> bool:
    """Whether the advice moved enough to say so (an event), by more than ``threshold``."""
    return old_s is None or old_s <= 0 or abs(new_s - old_s) / old_s > threshold
