"""Straggler detection: each rank and node against its peers of the same step, in virtual time.

Peers are the ranks of one group (ranks doing the same work, e.g. one pipeline stage); a
whole group being slower than another is a stage imbalance -- a partitioning finding that
is never a flag. Per step, a rank's time is divided by its group's median; the median of
those ratios over a short window (a spike-proof low quantile: fast, for large slowdowns),
a middle and a long window (medians: for smaller ones) is scored with the group's median
and MAD. A rank -- and its node -- is flagged only after it stays bad for ``persist_steps``
steps (fewer, at a lower z, when the node's GPU evidence or the run's own slowdown against
its baseline says to look harder) and clears with hysteresis. ``observe`` is cheap;
``evaluate(now)`` does the vectorised work once per newly completed step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from trainwarden.health.report import StepReport
from trainwarden.supervisor.detectors.stragglers.hang import HangCulprits, RankLast, hang_culprits
from trainwarden.supervisor.detectors.stragglers.model import (
    GpuSignal,
    JobSlowdown,
    StageImbalance,
    StragglerClear,
    StragglerConfig,
    StragglerFlag,
)
from trainwarden.supervisor.detectors.stragglers.run import RunBuffer, Track
from trainwarden.supervisor.detectors.stragglers.stats import (
    PeerScores,
    group_levels,
    masked_median,
    peer_scores,
)

__all__ = [
    "GpuSignal",
    "HangCulprits",
    "JobSlowdown",
    "RankLast",
    "StageImbalance",
    "StragglerClear",
    "StragglerConfig",
    "StragglerDetector",
    "StragglerFlag",
    "hang_culprits",
]

Finding = StragglerFlag | StragglerClear


def _is_time(value: object, limit: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0.0 <= value <= limit
    )


class StragglerDetector:
    """Streaming detector over any number of runs; see the module docstring."""

    def __init__(self, config: StragglerConfig | None = None) -> None:
        self.config = config or StragglerConfig()
        self._runs: dict[str, RunBuffer] = {}
        self._gpu: dict[str, GpuSignal] = {}
        self._slowdowns: dict[str, JobSlowdown] = {}

    # -- input ------------------------------------------------------------------------
    def _buffer(self, run: str, attempt: int) -> RunBuffer | None:
        buf = self._runs.get(run)
        if buf is None or attempt > buf.attempt:
            roster = None if buf is None else buf.roster
            buf = self._runs[run] = RunBuffer(self.config, attempt=attempt, roster=roster)
            self._slowdowns.pop(run, None)
        elif attempt < buf.attempt:
            buf.rejected["stale-attempt"] += 1
            return None
        return buf

    def observe(
        self,
        run: str,
        rank: int,
        node: str,
        group: str | None,
        step: int,
        compute_s: float | None,
        step_s: float,
        ts: float,
        *,
        attempt: int = 0,
    ) -> bool:
        """Record one rank's step; False (and counted in :meth:`rejected`) if refused."""
        buf = self._buffer(run, attempt)
        if buf is None:
            return False
        limit = self.config.max_seconds
        value = compute_s if compute_s is not None else step_s
        if not (_is_time(value, limit) and _is_time(step_s, limit) and value > 0):
            buf.rejected["bad-value"] += 1
            return False
        if not (isinstance(step, int) and step >= 0 and isinstance(rank, int) and rank >= 0):
            buf.rejected["bad-step-or-rank"] += 1
            return False
        if not node or not isinstance(node, str) or not _is_time(ts, math.inf):
            buf.rejected["bad-node-or-ts"] += 1
            return False
        if buf.roster is not None and rank not in buf.roster:
            buf.rejected["unknown-rank"] += 1
            return False
        col = buf.column(rank, node, group)
        return buf.put(col, step, float(value), float(step_s), float(ts))

    def observe_report(self, report: StepReport) -> int:
        """Record every sample of a validated :class:`StepReport`; returns how many were kept."""
        return sum(
            self.observe(
                report.run,
                report.rank,
                report.node,
                report.group,
                s.step,
                s.compute_s,
                s.step_s,
                s.ts,
                attempt=report.attempt,
            )
            for s in report.samples
        )

    def set_roster(
        self, run: str, members: Mapping[int, tuple[str, str | None]], *, attempt: int = 0
    ) -> None:
        """Declare a run's ranks (rank -> (node, group)); samples of other ranks are refused."""
        buf = self._buffer(run, attempt)
        if buf is None:
            return
        buf.roster = frozenset(members)
        for rank in sorted(members):
            node, group = members[rank]
            buf.column(rank, node, group)

    def observe_step(
        self,
        run: str,
        step: int,
        ranks: npt.NDArray[np.int64],
        compute_s: npt.NDArray[np.float64],
        step_s: npt.NDArray[np.float64],
        ts: float,
        *,
        attempt: int = 0,
    ) -> int:
        """Record one step of many rostered ranks at once (vectorised); returns samples kept."""
        buf = self._buffer(run, attempt)
        if buf is None or step < 0:
            return 0
        known = buf.rank_array()
        if len(ranks) == len(known) and np.array_equal(ranks, known):
            cols = np.arange(len(known), dtype=np.intp)
        else:
            cols = np.array([buf.cols.get(int(r), -1) for r in ranks], dtype=np.intp)
        lim = self.config.max_seconds
        with np.errstate(invalid="ignore"):
            ok = (
                (cols >= 0)
                & np.isfinite(compute_s)
                & (compute_s > 0)
                & (compute_s <= lim)
                & np.isfinite(step_s)
                & (step_s >= 0)
                & (step_s <= lim)
            )
        buf.rejected["bad-value-or-rank"] += int((~ok).sum())
        if not ok.any() or not math.isfinite(ts):
            return 0
        row = buf.row(step)
        if row is None:
            buf.rejected["too-old"] += int(ok.sum())
            return 0
        c = cols[ok]
        buf.x[row, c] = compute_s[ok]
        buf.y[row, c] = step_s[ok]
        buf.last_step[c] = np.maximum(buf.last_step[c], step)
        buf.last_ts[c] = np.fmax(buf.last_ts[c], ts)
        buf.highest = max(buf.highest, step)
        return int(ok.sum())

    def observe_gpu(self, node: str, signal: GpuSignal) -> None:
        """Keep a node's latest GPU evidence (clocks, throttle reasons, power)."""
        old = self._gpu.get(node)
        if old is None or signal.ts >= old.ts:
            self._gpu[node] = signal

    def forget_run(self, run: str) -> None:
        self._runs.pop(run, None)
        self._slowdowns.pop(run, None)

    # -- output -----------------------------------------------------------------------
    def evaluate(self, now: float) -> list[Finding]:
        """Score every run whose step frontier advanced; return new flags and clears."""
        out: list[Finding] = []
        for name, buf in self._runs.items():
            out.extend(self._evaluate_run(name, buf, now))
        return out

    def flagged(self, run: str | None = None) -> list[tuple[str, str, int | None, Track]]:
        """Currently flagged (run, node, rank or None, track)."""
        res: list[tuple[str, str, int | None, Track]] = []
        for name, buf in self._runs.items():
            if run is not None and name != run:
                continue
            for (kind, ix), tr in buf.tracks.items():
                if not tr.flagged:
                    continue
                if kind == "rank":
                    res.append((name, buf.nodes[buf.node_of[ix]], buf.ranks[ix], tr))
                else:
                    res.append((name, buf.nodes[ix], None, tr))
        return res

    def rejected(self, run: str) -> dict[str, int]:
        buf = self._runs.get(run)
        return {} if buf is None else dict(buf.rejected)

    def job_slowdowns(self) -> list[JobSlowdown]:
        return list(self._slowdowns.values())

    def stage_imbalance(self, run: str | None = None) -> list[StageImbalance]:
        """Groups whose typical time differs by more than ``stage_imbalance`` (never flags)."""
        cfg = self.config
        found = []
        for name, buf in self._runs.items():
            if (run is not None and name != run) or len(buf.groups) < 2 or buf.frontier < 0:
                continue
            rows = buf.window_rows(buf.frontier, cfg.long_window)
            members = buf.members()
            levels = group_levels(
                buf.x[rows, : len(buf.ranks)], members, min_count=min(len(rows), cfg.short_window)
            )
            known = [(g, float(v)) for g, v in enumerate(levels) if not math.isnan(v)]
            if len(known) < 2:
                continue
            known.sort(key=lambda gv: -gv[1])
            ratio = known[0][1] / known[-1][1]
            if ratio < 1.0 + cfg.stage_imbalance:
                continue
            slow = tuple(sorted(buf.ranks[c] for c in members[known[0][0]]))
            named = tuple((str(buf.groups[g]), v) for g, v in known)
            found.append(
                StageImbalance(
                    run=name, step=buf.frontier, levels=named, ratio=ratio, slow_ranks=slow
                )
            )
        return found

    def hang_culprits(self, run: str, *, margin_s: float = 5.0) -> HangCulprits:
        """The ranks of ``run`` that stopped reporting first (see :func:`hang_culprits`)."""
        buf = self._runs.get(run)
        last: dict[int, RankLast] = {}
        if buf is not None:
            for col, rank in enumerate(buf.ranks):
                if buf.last_step[col] >= 0:
                    last[rank] = RankLast(
                        buf.nodes[buf.node_of[col]],
                        int(buf.last_step[col]),
                        float(buf.last_ts[col]),
                    )
        return hang_culprits(last, margin_s=margin_s)

    # -- scoring ----------------------------------------------------------------------
    def _update_job(self, name: str, buf: RunBuffer, steps: Sequence[int]) -> None:
        """The run's step time (median over ranks) against its own earlier baseline."""
        cfg = self.config
        n = len(buf.ranks)
        for s in steps:
            row = buf.row_of[s]
            t = masked_median(buf.y[row : row + 1, :n], axis=1)[0]
            if not t > 0:
                t = masked_median(buf.x[row : row + 1, :n], axis=1)[0]
            if t > 0:
                buf.job_series.append((s, float(t)))
        while len(buf.job_series) > cfg.job_baseline_steps + cfg.short_window:
            buf.job_series.popleft()
        if len(buf.job_series) < 4 * cfg.short_window:
            return
        times = np.array([t for _, t in buf.job_series])
        recent = float(np.median(times[-cfg.short_window :]))
        base = float(np.median(times[: -cfg.short_window]))
        ratio = recent / base
        limit = cfg.job_slowdown * (0.5 if buf.job_active else 1.0)
        buf.job_active = ratio >= 1.0 + limit
        self._slowdowns[name] = JobSlowdown(
            run=name,
            step=buf.job_series[-1][0],
            baseline_s=base,
            recent_s=recent,
            active=buf.job_active,
            history=len(times) - cfg.short_window,
        )

    def _evaluate_run(self, name: str, buf: RunBuffer, now: float) -> list[Finding]:
        cfg = self.config
        frontier = buf.compute_frontier()
        if frontier <= buf.frontier:
            return []
        new_steps = buf.new_steps(frontier)
        buf.seq += max(len(new_steps), 1)
        self._update_job(name, buf, new_steps)
        buf.frontier = frontier
        n = len(buf.ranks)
        rows = buf.window_rows(frontier, cfg.long_window)
        members = buf.members()
        med = buf.group_medians(rows, cfg.min_peers)
        node_of, group_of = buf.index_arrays()
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = (buf.x[rows, :n] / med[:, group_of]).T.copy()  # ranks x steps
        frac, mp, sf = cfg.min_window_fraction, cfg.min_peers, cfg.sigma_floor
        windows = cfg.windows()
        scores = [
            peer_scores(
                ratios[:, -w:],
                members,
                min_count=math.ceil(w * frac),
                min_peers=mp,
                sigma_floor=sf,
                quantile=q,
            )
            for _, w, q, _ in windows
        ]
        job = self._slowdowns.get(name)
        job_active = job is not None and job.active
        nn = len(buf.nodes)
        alert_nodes = (
            np.array([self._gpu_degraded(nd, now) for nd in buf.nodes], dtype=bool)
            if self._gpu
            else np.zeros(nn, dtype=bool)
        )
        alert = alert_nodes[node_of] | job_active
        zt = np.where(alert, cfg.z_threshold_alert, cfg.z_threshold)
        v = _combine_windows(windows, scores, zt, cfg.clear_fraction, n)
        ctx = _Ctx(buf=buf, name=name, now=now, frontier=frontier, job=job)
        out = self._rank_findings(ctx, v, alert, windows)
        out += self._node_findings(ctx, v, node_of, alert_nodes, job_active, windows)
        return out

    def _rank_findings(
        self,
        ctx: _Ctx,
        v: _Verdicts,
        alert: npt.NDArray[np.bool_],
        windows: Sequence[tuple[str, int, float, float]],
    ) -> list[Finding]:
        """Advance each rank's track (bad now, or already tracked); its flags and clears."""
        buf = ctx.buf
        out: list[Finding] = []
        rank_cand = set(np.flatnonzero(v.bad).tolist()) | {i for k, i in buf.tracks if k == "rank"}
        for col in sorted(rank_cand):
            node_i = buf.node_of[col]
            need = self._persistence(bool(alert[col]))
            change = self._advance(
                buf, ("rank", col), bool(v.bad[col]), bool(v.good[col]), need, float(v.effect[col])
            )
            if change == "flag":
                win = windows[v.which[col]][0]
                out.append(
                    ctx.flag(
                        node_i,
                        col,
                        (buf.ranks[col],),
                        float(v.z[col]),
                        win,
                        buf.tracks[("rank", col)],
                        self._gpu,
                    )
                )
            elif change == "clear":
                out.append(ctx.clear(node_i, buf.ranks[col], float(v.effect[col])))
        return out

    def _node_findings(
        self,
        ctx: _Ctx,
        v: _Verdicts,
        node_of: npt.NDArray[np.intp],
        alert_nodes: npt.NDArray[np.bool_],
        job_active: bool,
        windows: Sequence[tuple[str, int, float, float]],
    ) -> list[Finding]:
        """The same per node: bad if any of its ranks is, good once all its known ranks are."""
        buf = ctx.buf
        nn = len(buf.nodes)
        node_bad = np.bincount(node_of, weights=v.bad, minlength=nn) > 0
        node_known = np.bincount(node_of, weights=v.known, minlength=nn) > 0
        node_good = node_known & (
            np.bincount(node_of, weights=v.known & ~v.good, minlength=nn) == 0
        )
        out: list[Finding] = []
        node_cand = set(np.flatnonzero(node_bad).tolist()) | {
            i for k, i in buf.tracks if k == "node"
        }
        for node_i in sorted(node_cand):
            on_node = np.flatnonzero(node_of == node_i)
            eff = float(np.nanmax(v.effect[on_node])) if v.known[on_node].any() else math.nan
            need = self._persistence(bool(alert_nodes[node_i]) or job_active)
            change = self._advance(
                buf, ("node", node_i), bool(node_bad[node_i]), bool(node_good[node_i]), need, eff
            )
            if change == "flag":
                bad_cols = [int(c) for c in on_node if v.bad[c]]
                worst = max(bad_cols, key=lambda c: float(v.effect[c]))
                win = windows[v.which[worst]][0]
                out.append(
                    ctx.flag(
                        node_i,
                        None,
                        tuple(buf.ranks[c] for c in bad_cols),
                        float(v.z[worst]),
                        win,
                        buf.tracks[("node", node_i)],
                        self._gpu,
                    )
                )
            elif change == "clear":
                out.append(ctx.clear(node_i, None, eff))
        return out

    def _gpu_degraded(self, node: str, now: float) -> bool:
        sig = self._gpu.get(node)
        return sig is not None and now - sig.ts <= self.config.gpu_max_age_s and sig.degraded

    def _persistence(self, alert: bool) -> int:
        return self.config.persist_steps_alert if alert else self.config.persist_steps

    def _advance(
        self, buf: RunBuffer, key: tuple[str, int], bad: bool, good: bool, need: int, effect: float
    ) -> str | None:
        """One step of a track's state machine: idle -> bad streak -> flagged -> cleared."""
        tr = buf.tracks.get(key)
        if tr is None:
            if not bad:
                return None
            tr = buf.tracks[key] = Track()
        if bad:
            tr.good_since = None
            if tr.bad_since is None:
                tr.bad_since, tr.from_step = buf.seq, buf.frontier
            if not math.isnan(effect):
                tr.score = 1.0 + effect
            if not tr.flagged and buf.seq - tr.bad_since + 1 >= need:
                tr.flagged = True
                return "flag"
            return None
        if not tr.flagged:
            if good or not math.isnan(effect):
                del buf.tracks[key]  # the bad streak is broken before it counted
            return None
        if not good:
            tr.good_since = None
            return None
        if tr.good_since is None:
            tr.good_since = buf.seq
        if buf.seq - tr.good_since + 1 >= self.config.clear_steps:
            del buf.tracks[key]
            return "clear"
        return None


@dataclass(frozen=True)
class _Verdicts:
    """Per rank, over all scoring windows (see :func:`_combine_windows`)."""

    bad: npt.NDArray[np.bool_]  # over the threshold in some window
    good: npt.NDArray[np.bool_]  # scored, and not even near the threshold in any window
    known: npt.NDArray[np.bool_]  # scored in some window
    which: npt.NDArray[np.intp]  # the first (fastest) window that found it bad; -1 if none
    effect: npt.NDArray[np.float64]  # the largest slowdown against its peers (NaN: unknown)
    z: npt.NDArray[np.float64]  # the largest z (NaN: unknown)


def _combine_windows(
    windows: Sequence[tuple[str, int, float, float]],
    scores: Sequence[PeerScores],
    zt: npt.NDArray[np.float64],
    clear_fraction: float,
    n: int,
) -> _Verdicts:
    """A rank is bad if any window puts it over its z threshold ``zt`` and that window's
    minimum slowdown; "warm" within ``clear_fraction`` of both (hysteresis for clearing)."""
    bad = np.zeros(n, dtype=bool)
    warm = np.zeros(n, dtype=bool)
    known = np.zeros(n, dtype=bool)
    which = np.full(n, -1, dtype=np.intp)
    effect = np.full(n, np.nan)
    z = np.full(n, np.nan)
    cf = clear_fraction
    with np.errstate(invalid="ignore"):
        for i, ((_, _, _, least), sc) in enumerate(zip(windows, scores, strict=True)):
            b = (sc.z >= zt) & (sc.effect >= least)
            which = np.where(b & (which < 0), i, which)
            bad |= b
            warm |= (sc.z >= zt * cf) & (sc.effect >= least * cf)
            known |= ~np.isnan(sc.z)
            effect = np.fmax(effect, sc.effect)
            z = np.fmax(z, sc.z)
    return _Verdicts(bad=bad, good=known & ~warm, known=known, which=which, effect=effect, z=z)


class _Ctx:
    """Builds findings for one run evaluation."""

    def __init__(
        self, *, buf: RunBuffer, name: str, now: float, frontier: int, job: JobSlowdown | None
    ) -> None:
        self.buf, self.name, self.now, self.frontier, self.job = buf, name, now, frontier, job

    def flag(
        self,
        node_i: int,
        col: int | None,
        ranks: Iterable[int],
        z: float,
        window: str,
        tr: Track,
        gpu: Mapping[str, GpuSignal],
    ) -> StragglerFlag:
        buf = self.buf
        node = buf.nodes[node_i]
        sig = gpu.get(node)
        group = buf.groups[buf.group_of[col]] if col is not None else None
        return StragglerFlag(
            run=self.name,
            node=node,
            rank=None if col is None else buf.ranks[col],
            group=group,
            from_step=tr.from_step,
            step=self.frontier,
            ts=self.now,
            score=tr.score,
            z=z,
            window=window,
            ranks=tuple(ranks),
            gpu=sig,
            corroborated=sig is not None and sig.degraded,
            job_slowdown=None if self.job is None else round(self.job.ratio, 4),
        )

    def clear(self, node_i: int, rank: int | None, effect: float) -> StragglerClear:
        return StragglerClear(
            run=self.name,
            node=self.buf.nodes[node_i],
            rank=rank,
            step=self.frontier,
            ts=self.now,
            score=1.0 + effect,
        )
