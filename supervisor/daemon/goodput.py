"""A run's goodput in the daemon: its recorded history (store) into the shared accounting.

``history_of`` is pure: attempts, checkpoints and run events as the store keeps them, plus
what the progress tracker and the ledger know of the current attempt, become a
:class:`~trainwarden.supervisor.goodput.RunHistory`. What the store does not say is estimated,
and said so here: an ended attempt's last step time is the hang's ``silent_s`` before the
stall event, else its newest checkpoint plus its steps since at the median step time; a
fault's time is one step after the last step. ``GoodputLedger`` is the live part: the save
stalls seen in the step reports (a gap between consecutive steps beyond the median around a
checkpoint) and the last advice given per run (an event when it moves by more than 20 %).
An asynchronous save shows as a short stall and a checkpoint reported well after it: the time
from the step's end (plus its stall) to the report is the background write, which the advice
counts (``advice.py``).
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from trainwarden.health.report import StepSample
from trainwarden.policies.model import Event, EventKind
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.detectors.progress import AttemptProgress, ProgressTracker
from trainwarden.supervisor.goodput import (
    Advice,
    AttemptSpan,
    Goodput,
    RunHistory,
    account,
    advise,
    moved,
    prior,
)
from trainwarden.supervisor.model.cluster import RunInfo
from trainwarden.supervisor.store.records import AttemptRecord, CheckpointRecord

EXPORT_EVERY_S = 60.0  # counters and advice are recomputed from the store this often
GPUS_PER_NODE = 8  # for the prior when the run does not say (ranks per node is GPUs per node)
STALL_MIN_S = 1.0
PERSIST_MIN_S = 2.0  # a report this soon after the stall is a synchronous save
STEP_TIMES = 8192  # step end times kept per run, to time a checkpoint report against


@dataclass
class _Frontier:
    attempt: int
    step: int
    ts: float
    step_s: deque[float] = field(default_factory=lambda: deque(maxlen=200))


@dataclass
class GoodputLedger:
    """Save stalls per run, from the step reports; the last advice per run."""

    stalls: dict[str, deque[tuple[float, float, int]]] = field(default_factory=dict)
    advised: dict[str, float] = field(default_factory=dict)
    persist_min_s: float = PERSIST_MIN_S
    _front: dict[str, _Frontier] = field(default_factory=dict)
    _ends: dict[str, deque[tuple[int, int, float, float]]] = field(default_factory=dict)
    _reports: dict[str, deque[tuple[int, int, float, float]]] = field(default_factory=dict)

    def steps(self, run: str, attempt: int, samples: Sequence[StepSample]) -> None:
        """The run's progress frontier; a gap between consecutive steps longer than the
        median step by more than ``STALL_MIN_S`` is a stall at that step (kept if a
        checkpoint of that step is recorded)."""
        f = self._front.get(run)
        ends = self._ends.setdefault(run, deque(maxlen=STEP_TIMES))
        for s in sorted(samples, key=lambda s: s.step):
            if not ends or (attempt, s.step) > ends[-1][:2]:
                ends.append((attempt, s.step, s.ts, s.step_s))
            if f is None or f.attempt != attempt:
                f = self._front[run] = _Frontier(attempt, s.step, s.ts)
                continue
            if s.step <= f.step:
                continue
            med = statistics.median(f.step_s) if f.step_s else s.step_s
            gap = (s.ts - f.ts) - med * (s.step - f.step)
            if s.step == f.step + 1 and gap > max(STALL_MIN_S, 0.5 * med):
                self.stalls.setdefault(run, deque(maxlen=10_000)).append((f.ts, gap, f.step))
            if s.step_s > 0:
                f.step_s.append(s.step_s)
            f.step, f.ts = s.step, s.ts

    def save_stalls(self, run: str, checkpoint_steps: set[int]) -> list[tuple[float, float]]:
        return [(t, d) for t, d, k in self.stalls.get(run, ()) if k in checkpoint_steps]

    def checkpoint(self, run: str, attempt: int, step: int, reported_at: float) -> None:
        """A checkpoint of ``step`` was reported; timed against the step's end in
        ``persist_s``, once the next step shows whether the save stalled training."""
        end = next(
            (ts for a, k, ts, _ in reversed(self._ends.get(run, ())) if (a, k) == (attempt, step)),
            None,
        )
        if end is not None:  # else the step's end was not seen (a log-only run, or long ago)
            self._reports.setdefault(run, deque(maxlen=1000)).append(
                (attempt, step, end, reported_at)
            )

    def background(self, run: str) -> tuple[float, float, float]:
        """Asynchronous saves, as medians over their reports: the background write (the
        report's delay after the step's end and its stall), the training time it cost (steps
        slower than the median while it ran) and the stall (the copy to host memory, often too
        short to count as a stall in ``steps``); zeros for synchronous saves."""
        ends = list(self._ends.get(run, ()))
        med = statistics.median(d for *_, d in ends) if ends else 0.0
        at_step = {(a, k): i for i, (a, k, _, _) in enumerate(ends)}
        wrote, lost, stalls = [], [], []
        for attempt, step, end, at in self._reports.get(run, ()):
            i = at_step.get((attempt, step))
            if i is None or i + 1 >= len(ends) or ends[i + 1][:2] != (attempt, step + 1):
                continue  # the next step has not come (or was not seen): the stall is unknown
            stall = max(0.0, ends[i + 1][2] - end - ends[i + 1][3])
            if at - end - stall < 0:
                continue
            wrote.append(at - end - stall)
            stalls.append(stall)
            slower = 0.0
            for a, _, ts, d in itertools.islice(ends, i + 1, None):
                if a != attempt or ts > at:
                    break  # steps come in order: the write was over by then
                slower += max(0.0, d - med)
            lost.append(slower)
        persist = statistics.median(wrote) if wrote else 0.0
        if persist < self.persist_min_s:
            return 0.0, 0.0, 0.0
        return persist, statistics.median(lost), statistics.median(stalls)

    def advice_event(self, run: str, adv: Advice, now: float) -> Event | None:
        """An event when the advice moved by more than 20 % (or is the first)."""
        old = self.advised.get(run)
        if not moved(old, adv.interval_s):
            return None
        self.advised[run] = adv.interval_s
        was = "" if old is None else f" (was {old:.0f} s)"
        return Event(
            now,
            EventKind.ACTION,
            run=run,
            message=f"checkpoint interval advice: every {adv.interval_s:.0f} s{was}; expected "
            f"ETTR {adv.ettr_advised:.3f}",
            data={"goodput_advice": adv.as_dict(), "previous_interval_s": old},
        )


def history_of(
    attempts: Sequence[AttemptRecord],
    checkpoints: Sequence[CheckpointRecord],
    events: Iterable[Event],
    now: float,
    *,
    current: AttemptProgress | None = None,
    stalls: Sequence[tuple[float, float]] = (),
    completed_at: float | None = None,
) -> RunHistory:
    first: dict[int, tuple[int, float]] = {}
    stalled: dict[int, tuple[float, float]] = {}  # attempt -> (detected, last step at)
    ended: dict[int, float] = {}
    held: dict[int, float] = {}
    holds: list[tuple[float, float]] = []
    for ev in sorted(events, key=lambda e: e.ts):
        d = ev.data
        att = d.get("attempt")
        if ev.kind is EventKind.RUN_STARTED and "step" in d and isinstance(att, int):
            first.setdefault(att, (int(d["step"]), ev.ts))
        elif ev.kind is EventKind.RUN_PROGRESS_STALLED and isinstance(att, int):
            stalled.setdefault(att, (ev.ts, ev.ts - float(d.get("silent_s", 0.0))))
        elif ev.kind is EventKind.ATTEMPT_ENDED and isinstance(att, int):
            ended.setdefault(att, ev.ts)
        elif ev.kind is EventKind.ACTION and d.get("kind") == "restart-run":
            aid = d.get("action_id")
            if d.get("verdict") in ("hold", "queued") and isinstance(aid, int):
                held.setdefault(aid, ev.ts)
            elif aid in held:
                holds.append((held.pop(aid), ev.ts))
    holds += [(t, now) for t in held.values()]
    ckpts = sorted((c.step, c.reported_at) for c in checkpoints if c.valid is not False)
    med = current.median_step_s() if current is not None else None
    spans = []
    for a in sorted(attempts, key=lambda a: a.attempt):
        if a.submitted_at is None:
            continue
        f = first.get(a.attempt)
        live = current is not None and current.attempt == a.attempt and current.active
        last_step, last_at = a.last_step, None
        if live and current is not None and current.last_progress_at is not None:
            last_step, last_at = current.last_step, current.last_progress_at
        hang = stalled.get(a.attempt)
        detected = hang[0] if hang else ended.get(a.attempt)
        if a.state in ("failed", "stopped") and detected is None:
            detected = a.ended_at
        if f is not None and last_at is None and last_step is not None:
            last_at = hang[1] if hang else _estimate(f, last_step, ckpts, med, detected or now)
        spans.append(
            AttemptSpan(
                a.attempt,
                a.submitted_at,
                running_at=a.started_at,
                first_step_at=f[1] if f else None,
                first_step=f[0] if f else None,
                resumed_from_step=a.resumed_from_step,
                last_step=last_step,
                last_step_at=last_at,
                detected_at=None if live else detected,
                hung=hang is not None and not live,
                ended_at=a.ended_at,
                completed=a.state == "completed",
                step_s=med,
            )
        )
    start = spans[0].submitted_at if spans else now
    return RunHistory(
        start, completed_at or now, tuple(spans), tuple(ckpts), tuple(stalls), tuple(holds)
    )


def _estimate(
    first: tuple[int, float],
    last: int,
    ckpts: list[tuple[int, float]],
    med: float | None,
    cap: float,
) -> float:
    """When an ended attempt's last step completed: from its newest checkpoint (or its first
    step) on at the median step time, never after it was seen to end."""
    k0, t0 = first
    for k, t in ckpts:
        if k0 <= k <= last and t >= t0:
            k0, t0 = k, t
    return min(cap, t0 + (last - k0) * (med or 0.0))


def advice_for(
    g: Goodput,
    *,
    gpus: int,
    stalls: Sequence[tuple[float, float]],
    current_interval_s: float | None,
    restart_s: float | None = None,
    persist_s: float = 0.0,
    background_loss_s: float = 0.0,
    async_stall_s: float = 0.0,
) -> Advice | None:
    """The advice from the measured save stalls and the run's own interruptions, pooled with
    the Llama 3 prior; None until a save has been measured. An asynchronous save costs its
    stall (``async_stall_s``, as ``GoodputLedger.background`` measures it) plus what its
    background write slowed training (``background_loss_s``)."""
    if persist_s > 0:
        delta = max(async_stall_s, 1e-3) + background_loss_s
    elif stalls:
        delta = statistics.median(d for _, d in stalls)
    else:
        return None
    per = (g.restart_overhead_s + g.buckets.get("detection", 0) + g.buckets.get("hung", 0)) / max(
        1, g.interruptions
    )
    return advise(
        delta,
        interruptions=g.interruptions,
        exposure_s=g.wall_s,
        prior_mtbf_s=prior.prior_mtbf_s(gpus),
        restart_s=restart_s if restart_s is not None else per,
        current_interval_s=current_interval_s,
        persist_s=persist_s,
    )


def checkpoint_interval(checkpoints: Sequence[CheckpointRecord]) -> float | None:
    """The run's current checkpoint interval: the median gap between its checkpoints."""
    times = sorted(c.reported_at for c in checkpoints)
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    return statistics.median(gaps) if gaps else None


HISTORY_KINDS = (
    EventKind.RUN_STARTED,
    EventKind.RUN_PROGRESS_STALLED,
    EventKind.ATTEMPT_ENDED,
    EventKind.ACTION,
)


def report(
    attempts: Sequence[AttemptRecord],
    checkpoints: Sequence[CheckpointRecord],
    events: Iterable[Event],
    now: float,
    *,
    ledger: GoodputLedger,
    run: str,
    gpus: int,
    current: AttemptProgress | None = None,
    completed_at: float | None = None,
) -> tuple[Goodput, Advice | None]:
    """The run's accounting and advice from what the store and the ledger hold."""
    stalls = ledger.save_stalls(run, {c.step for c in checkpoints})
    h = history_of(
        attempts,
        checkpoints,
        events,
        now,
        current=current,
        stalls=stalls,
        completed_at=completed_at,
    )
    g = account(h)
    persist, lost, staged = ledger.background(run)
    adv = advice_for(
        g,
        gpus=gpus,
        stalls=stalls,
        current_interval_s=checkpoint_interval(checkpoints),
        persist_s=persist,
        background_loss_s=lost,
        async_stall_s=staged,
    )
    return g, adv


async def run_report(
    store: AsyncStore,
    info: RunInfo,
    ledger: GoodputLedger,
    progress: AttemptProgress | None,
    now: float,
    *,
    settled: bool = False,
) -> tuple[Goodput, Advice | None]:
    """``report`` over what the store holds for ``info``. ``settled``: only up to the current
    attempt's newest checkpoint (what a later fault can no longer re-classify), for counters."""
    attempts = await store.call(store.store.attempts, info.name)
    ckpts = await store.call(store.store.checkpoints, info.name)
    events = await store.call(store.store.events, run=info.name, kinds=HISTORY_KINDS, limit=None)
    end = now
    live = progress is not None and progress.active and progress.attempt == info.attempt
    if settled and live and progress is not None:
        end = max(
            [progress.started_at, *(c.reported_at for c in ckpts if c.attempt == info.attempt)]
        )
    return report(
        attempts,
        ckpts,
        events,
        end,
        ledger=ledger,
        run=info.name,
        gpus=info.spec.nodes * (info.spec.ranks_per_node or GPUS_PER_NODE),
        current=progress,
    )


async def export(
    store: AsyncStore,
    runs: Iterable[RunInfo],
    ledger: GoodputLedger,
    progress: ProgressTracker,
    metrics: Metrics,
    now: float,
) -> list[Event]:
    """Counters and the advice gauge for every run; the events of advice that moved."""
    out: list[Event] = []
    for info in runs:
        g, adv = await run_report(store, info, ledger, progress.get(info.name), now, settled=True)
        metrics.run_goodput(info.name, g.buckets)
        if adv is not None:
            metrics.run_advice(info.name, adv.interval_s)
            ev = ledger.advice_event(info.name, adv, now)
            if ev is not None:
                out.append(ev)
    return out


__all__ = [
    "HISTORY_KINDS",
    "GoodputLedger",
    "advice_for",
    "export",
    "history_of",
    "report",
    "run_report",
]
