"""Where a run's wall time went, from its recorded history: ETTR and the time buckets.

ETTR = productive time / wall time (Meta's definition, arXiv 2410.21680): productive is time
spent on steps whose results the run keeps. Every instant of the window goes to exactly one
bucket, so the buckets add up to the wall time by construction:

- ``productive``: steps kept (the current attempt's steps count until a fault proves them lost);
- ``rework``: steps done and then thrown away because the next attempt resumed from an older
  checkpoint (the steps between that checkpoint and the last step before the fault), and the
  part of a step in flight when the fault struck;
- ``checkpoint_stall``: training stopped while a checkpoint was written;
- ``detection``: fault -> the daemon knew (a condition, or the job's end);
- ``hung``: steps stopped without the job dying, until the hang was declared;
- ``held``: a restart waited on a guard or an operator's approval;
- ``drain``: detection -> the next attempt's submission (stop the job, drain, choose the
  checkpoint), less what was held;
- ``queue``: submitted -> the scheduler runs it; ``startup``: running -> the first step began;
  ``checkpoint_load``: the part of start-up spent loading the checkpoint, where it is visible;
- ``other``: anything the history does not explain (a daemon outage, no record).

Where intervals overlap, the first bucket of ``BUCKETS`` wins (a save stall inside stepping
is a stall; a hold while the run still steps is stepping).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

BUCKETS = (
    "checkpoint_stall",
    "productive",
    "rework",
    "hung",
    "detection",
    "held",
    "drain",
    "queue",
    "checkpoint_load",
    "startup",
    "other",
)
RESTART_BUCKETS = ("drain", "queue", "startup", "checkpoint_load")
_RANK = {b: i for i, b in enumerate(BUCKETS)}
Interval = tuple[float, float, str]


@dataclass(frozen=True)
class AttemptSpan:
    """One attempt as recorded; None where the history does not say."""

    attempt: int
    submitted_at: float
    running_at: float | None = None  # the scheduler ran it (None: queue wait not visible)
    first_step_at: float | None = None  # the first step completed
    first_step: int | None = None
    resumed_from_step: int | None = None  # None: a fresh start (nothing resumed)
    last_step: int | None = None
    last_step_at: float | None = None
    fault_at: float | None = None  # when the fault struck, if known
    detected_at: float | None = None  # when the daemon knew it had failed or hung
    hung: bool = False  # steps stopped and the job stayed: the gap is hang time
    ended_at: float | None = None
    completed: bool = False  # the job reached its end: no fault
    load_s: float | None = None  # time spent loading the checkpoint, where visible
    step_s: float | None = None  # median step time


@dataclass(frozen=True)
class RunHistory:
    """A run's window [start, end] and what was recorded in it."""

    start: float
    end: float
    attempts: tuple[AttemptSpan, ...]
    checkpoints: tuple[tuple[int, float], ...] = ()  # (step, saved at)
    stalls: tuple[tuple[float, float], ...] = ()  # (start, seconds) a save stopped training
    holds: tuple[tuple[float, float], ...] = ()  # (start, end) a restart waited on a guard


@dataclass(frozen=True)
class Goodput:
    """The buckets of one window; they add up to ``wall_s``."""

    start: float
    end: float
    buckets: Mapping[str, float]
    interruptions: int = 0  # attempts that ended by a fault (not by completing)
    stalls: int = 0
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def ettr(self) -> float:
        return self.buckets.get("productive", 0.0) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def restart_overhead_s(self) -> float:
        return sum(self.buckets.get(b, 0.0) for b in RESTART_BUCKETS)

    def as_dict(self) -> dict[str, object]:
        return {
            "wall_s": round(self.wall_s, 3),
            "ettr": round(self.ettr, 4),
            "buckets": {b: round(self.buckets.get(b, 0.0), 3) for b in BUCKETS},
            "restart_overhead_s": round(self.restart_overhead_s, 3),
            "interruptions": self.interruptions,
        }


def account(h: RunHistory) -> Goodput:
    """Every second of ``[h.start, h.end]`` in one bucket (see the module doc)."""
    atts = sorted(h.attempts, key=lambda a: (a.submitted_at, a.attempt))
    intervals: list[Interval] = []
    interruptions = 0
    for i, a in enumerate(atts):
        nxt = atts[i + 1] if i + 1 < len(atts) else None
        later = [b.resumed_from_step or 0 for b in atts[i + 1 :]]
        keep = min(later) if later else _resumable(a, h.checkpoints)  # what of it survives
        intervals += _attempt(a, nxt.submitted_at if nxt else h.end, keep, h.checkpoints)
        if not a.completed and (a.detected_at is not None or a.ended_at is not None):
            interruptions += 1
    intervals += [(s, e, "held") for s, e in h.holds]
    intervals += [(t, t + d, "checkpoint_stall") for t, d in h.stalls]
    return Goodput(h.start, h.end, _sweep(intervals, h.start, h.end), interruptions, len(h.stalls))


def _resumable(a: AttemptSpan, checkpoints: Iterable[tuple[int, float]]) -> float:
    """What of the last attempt survives: all of it while it runs or once it completed; after
    a fault, up to the newest checkpoint written before it (the next attempt's resume point)."""
    failed_at = a.detected_at if a.detected_at is not None else a.ended_at
    if a.completed or failed_at is None:
        return math.inf
    fault = a.fault_at if a.fault_at is not None else failed_at
    base = a.resumed_from_step or 0
    return float(max([base, *(k for k, t in checkpoints if t <= fault and k > base)]))


def _attempt(
    a: AttemptSpan, until: float, keep: float, checkpoints: Iterable[tuple[int, float]]
) -> list[Interval]:
    """The intervals of one attempt, from its submission to ``until`` (the next one's)."""
    run_at = a.running_at if a.running_at is not None else a.submitted_at
    out: list[Interval] = [(a.submitted_at, run_at, "queue")]
    detected = a.detected_at
    if detected is None and a.ended_at is not None and not a.completed:
        detected = a.ended_at  # the job's end is when the daemon knew
    step_s = a.step_s or 0.0
    if a.first_step_at is None or a.first_step is None:  # it never stepped
        stop = min(x for x in (detected, a.ended_at, until) if x is not None)
        fault = stop if a.fault_at is None else min(max(a.fault_at, run_at), stop)
        out += [(run_at, fault, "startup"), (fault, stop, "detection")]
        after = stop
    else:
        s0 = max(run_at, a.first_step_at - step_s)  # the first step began
        load = min(a.load_s or 0.0, s0 - run_at)
        out += [(run_at, s0 - load, "startup"), (s0 - load, s0, "checkpoint_load")]
        first = a.first_step
        last = a.last_step if a.last_step is not None else first
        last_at = a.last_step_at if a.last_step_at is not None else a.first_step_at
        base = a.resumed_from_step if a.resumed_from_step is not None else max(0, first - 1)
        kept = min(float(last), keep)
        if kept <= base:
            kept_at = s0
        elif kept >= last:
            kept_at = last_at
        else:
            knots = [(float(base), s0), (float(first), a.first_step_at), (float(last), last_at)]
            knots += [
                (float(k), t)
                for k, t in checkpoints
                if first < k < last and a.first_step_at < t < last_at
            ]
            kept_at = _time_of(kept, sorted(knots))
        out += [(s0, kept_at, "productive"), (kept_at, last_at, "rework")]
        after = last_at
    if a.completed:
        out.append((after, a.ended_at if a.ended_at is not None else until, "productive"))
        return out
    if detected is None:  # still running: the step in flight is work in progress
        out.append((after, until, "productive"))
        return out
    detected = max(detected, after)
    if a.hung:
        out.append((after, detected, "hung"))
    else:
        fault = a.fault_at if a.fault_at is not None else min(detected, after + step_s)
        fault = min(max(fault, after), detected)
        out += [(after, fault, "rework"), (fault, detected, "detection")]
    out.append((detected, until, "drain"))
    return out


def _time_of(step: float, knots: list[tuple[float, float]]) -> float:
    """When ``step`` completed, interpolated between recorded (step, time) points."""
    steps = [k for k, _ in knots]
    j = min(max(1, bisect_left(steps, step)), len(knots) - 1)
    (k0, t0), (k1, t1) = knots[j - 1], knots[j]
    if k1 <= k0:
        return t1
    return t0 + (t1 - t0) * (step - k0) / (k1 - k0)


def _sweep(intervals: list[Interval], start: float, end: float) -> dict[str, float]:
    """Each instant of [start, end] to the best-ranked bucket covering it (else ``other``)."""
    marks: list[tuple[float, int, int]] = []  # (time, +1/-1, bucket rank)
    for s0, e0, b in intervals:
        s, e = max(s0, start), min(e0, end)
        if e > s:
            marks += [(s, 1, _RANK[b]), (e, -1, _RANK[b])]
    marks.sort()
    active = [0] * len(BUCKETS)
    out = dict.fromkeys(BUCKETS, 0.0)
    t = start
    for when, delta, rank in marks:
        if when > t:
            best = next((i for i, n in enumerate(active) if n > 0), _RANK["other"])
            out[BUCKETS[best]] += when - t
            t = when
        active[rank] += delta
    if end > t:
        best = next((i for i, n in enumerate(active) if n > 0), _RANK["other"])
        out[BUCKETS[best]] += end - t
    return out
