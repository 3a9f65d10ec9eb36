"""The guards every automatic action passes: pure functions of settings, history and the view.

Each returns a :class:`GuardVerdict` (and, for guards that defer, the time it may go).
Whether a failed guard blocks or holds is decided here too (:data:`HOLDING`): holds are
retried by the engine's ``tick``; blocks are final and recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from trainwarden.policies.model import ActionKind, ActionRequest, ClusterView, GuardVerdict
from trainwarden.policies.rules import (
    CrashLoop,
    DrainLimits,
    Guards,
    RestartLimits,
    describe_duration,
)

MAX_DRAINS = "max-drains-per-window"
CLUSTER_FRACTION = "cluster-fraction"
RUN_FRACTION = "run-fraction"
COOLDOWN = "cooldown"
RESTART_BUDGET = "restart-budget"
RESTART_BACKOFF = "restart-backoff"
CRASH_LOOP = "crash-loop"
CORRELATED = "correlated-failure"
SETTLE = "correlation-settle"
LEMON = "lemon-node"
CHECKPOINT = "awaiting-checkpoint"
OPERATOR = "operator"

#: failed guards that defer an action instead of refusing it
HOLDING = frozenset({COOLDOWN, RESTART_BACKOFF, CORRELATED, SETTLE, CHECKPOINT})


@dataclass(frozen=True)
class Past:
    """One action already taken (or recorded in dry-run), as guards count it."""

    ts: float
    kind: ActionKind
    node: str | None
    run: str | None


@dataclass(frozen=True)
class Check:
    verdict: GuardVerdict
    until: float | None = None  # for holds: the earliest time worth trying again


def _ok(guard: str, detail: str) -> Check:
    return Check(GuardVerdict(guard, True, detail))


def _fail(guard: str, detail: str, until: float | None = None) -> Check:
    return Check(GuardVerdict(guard, False, detail), until)


def drains_in_window(cfg: DrainLimits, past: Iterable[Past], now: float) -> Check:
    n = sum(1 for p in past if p.kind is ActionKind.DRAIN and now - p.ts < cfg.window_s)
    span = describe_duration(cfg.window_s)
    if n + 1 > cfg.max_per_window:
        return _fail(
            MAX_DRAINS, f"{n} drains in the last {span} already (limit {cfg.max_per_window})"
        )
    return _ok(MAX_DRAINS, f"{n + 1}/{cfg.max_per_window} drains in the last {span}")


def cluster_fraction(cfg: DrainLimits, view: ClusterView) -> Check:
    total = len(view.nodes)
    drained = view.drained_count()
    limit = max(1, math.floor(cfg.max_cluster_fraction * total))
    if drained + 1 > limit:
        return _fail(
            CLUSTER_FRACTION,
            f"{drained}/{total} nodes drained already; limit "
            f"{cfg.max_cluster_fraction:.0%} = {limit}",
        )
    return _ok(CLUSTER_FRACTION, f"{drained + 1}/{total} drained after this (limit {limit})")


def run_fraction(
    cfg: DrainLimits, past: Iterable[Past], view: ClusterView, run: str | None, now: float
) -> Check:
    if run is None or run not in view.runs:
        return _ok(RUN_FRACTION, "node is in no run")
    size = max(len(view.runs[run].nodes), 1)
    n = sum(
        1 for p in past if p.kind is ActionKind.DRAIN and p.run == run and now - p.ts < cfg.window_s
    )
    limit = max(1, math.floor(cfg.max_run_fraction * size))
    span = describe_duration(cfg.window_s)
    if n + 1 > limit:
        return _fail(
            RUN_FRACTION,
            f"{n} of run {run}'s {size} nodes drained in the last {span} "
            f"(limit {cfg.max_run_fraction:.0%} = {limit})",
        )
    return _ok(RUN_FRACTION, f"{n + 1}/{limit} of run {run}'s nodes in the last {span}")


def cooldown(cooldown_s: float, past: Iterable[Past], node: str, now: float) -> Check:
    """A node is not returned to service within ``cooldown_s`` of its last drain."""
    last = max((p.ts for p in past if p.node == node and p.kind is ActionKind.DRAIN), default=None)
    if last is not None and now < last + cooldown_s:  # the same sum as the hold's until
        return _fail(
            COOLDOWN,
            f"drained {describe_duration(now - last)} ago; cooldown "
            f"{describe_duration(cooldown_s)}",
            last + cooldown_s,
        )
    return _ok(COOLDOWN, "no drain within the cooldown")


def restart_budget(cfg: RestartLimits, restarts: Sequence[float], now: float) -> Check:
    n = sum(1 for t in restarts if now - t < cfg.window_s)
    span = describe_duration(cfg.window_s)
    if n + 1 > cfg.budget:
        return _fail(RESTART_BUDGET, f"{n} restarts in the last {span} (budget {cfg.budget})")
    return _ok(RESTART_BUDGET, f"restart {n + 1}/{cfg.budget} in the last {span}")


def backoff_delay(cfg: RestartLimits, restarts: Sequence[float], now: float) -> float:
    """Wait before the next restart: base * factor^(k-1) for k restarts within backoff_reset."""
    recent = [t for t in restarts if now - t < cfg.backoff_reset_s]
    if not recent:
        return 0.0
    k = len(recent)
    return float(min(cfg.backoff_max_s, cfg.backoff_base_s * cfg.backoff_factor ** (k - 1)))


def restart_backoff(cfg: RestartLimits, restarts: Sequence[float], now: float) -> Check:
    delay = backoff_delay(cfg, restarts, now)
    if delay <= 0:
        return _ok(RESTART_BACKOFF, "no recent restart")
    last = max(restarts)
    if now < last + delay:
        return _fail(
            RESTART_BACKOFF,
            f"last restart {describe_duration(now - last)} ago; backoff {describe_duration(delay)}",
            last + delay,
        )
    return _ok(RESTART_BACKOFF, f"backoff {describe_duration(delay)} elapsed")


def crash_loop(
    cfg: CrashLoop, failures: Sequence[tuple[float, int | None]], started: Sequence[float]
) -> Check:
    """Failures are (time, last step); ``started`` are the times attempts began running.

    A loop: the last ``same_step_failures`` failures happened at one step, or each of the last
    ``quick_failures`` came within ``min_uptime_s`` of the attempt it ended starting.
    """
    n = cfg.same_step_failures
    steps = [s for _, s in failures[-n:]]
    if len(steps) == n and steps[0] is not None and all(s == steps[0] for s in steps):
        return _fail(CRASH_LOOP, f"the last {n} failures all happened at step {steps[0]}")
    q = cfg.quick_failures
    if len(failures) >= q and started:
        quick = 0
        for t, _ in failures[-q:]:
            begun = max((s for s in started if s <= t), default=None)
            if begun is not None and t - begun < cfg.min_uptime_s:
                quick += 1
        if quick == q:
            return _fail(
                CRASH_LOOP,
                f"the last {q} attempts each died within "
                f"{describe_duration(cfg.min_uptime_s)} of starting",
            )
    return _ok(CRASH_LOOP, f"{len(failures)} failure(s), no loop")


def correlated(node_causes: Iterable[str], open_causes: Iterable[str]) -> Check:
    hit = sorted(set(node_causes) & set(open_causes))
    if hit:
        return _fail(
            CORRELATED, f"cluster incident open for {', '.join(hit)}: not the node's fault"
        )
    return _ok(CORRELATED, "no cluster incident on its causes")


def settle(node_causes: Iterable[str], since: float, settle_s: float, now: float) -> Check:
    causes = sorted(node_causes)
    if causes and now < since + settle_s:
        return _fail(
            SETTLE,
            f"shared cause {', '.join(causes)}: waiting "
            f"{describe_duration(settle_s)} for other nodes to report it",
            since + settle_s,
        )
    if causes:
        return _ok(
            SETTLE,
            f"no other node reported {', '.join(causes)} within {describe_duration(settle_s)}",
        )
    return _ok(SETTLE, "no shared cause")


def lemon(window_s: float, returned_at: float | None, now: float, marked: bool) -> Check:
    """For drains: passes but notes a lemon; the engine then refuses to return the node."""
    if marked:
        return _fail(LEMON, "lemon node: stays drained until an operator looks at it")
    if returned_at is not None and now - returned_at < window_s:
        return _ok(
            LEMON,
            f"failed {describe_duration(now - returned_at)} after being returned "
            f"(< {describe_duration(window_s)}): marked lemon",
        )
    return _ok(LEMON, "not a recent return")


@dataclass(frozen=True)
class Context:
    """What the engine knows beyond the view, for one evaluation."""

    cfg: Guards
    past: list[Past]
    open_causes: set[str]
    since: float  # when the request was first made (settle counts from here)
    lemons: frozenset[str] = frozenset()
    failures: tuple[tuple[float, int | None], ...] = ()  # unexplained failures of the run
    stopped: GuardVerdict | None = None  # restarts stopped by an incident
    run_causes: set[str] = field(default_factory=set)  # open incidents touching the run


def evaluate(req: ActionRequest, view: ClusterView, ctx: Context) -> list[Check]:
    """Every guard that applies to ``req``, in the order they are shown."""
    cfg, now, past = ctx.cfg, view.now, ctx.past
    nv = view.nodes.get(req.node) if req.node else None
    causes = nv.causes if nv is not None else frozenset()
    if req.kind is ActionKind.DRAIN:
        return [
            correlated(causes, ctx.open_causes),
            settle(causes - ctx.open_causes, ctx.since, cfg.correlation.settle_s, now),
            drains_in_window(cfg.drains, past, now),
            cluster_fraction(cfg.drains, view),
            run_fraction(cfg.drains, past, view, req.run, now),
            lemon(cfg.lemon_window_s, nv.returned_at if nv else None, now, False),
        ]
    if req.kind in (ActionKind.VET, ActionKind.UNDRAIN) and req.node:
        return [
            lemon(cfg.lemon_window_s, None, now, req.node in ctx.lemons),
            cooldown(cfg.cooldown_s, past, req.node, now),
        ]
    if req.kind is ActionKind.RESTART_RUN:
        if req.run is None or req.run not in view.runs:
            return [_fail("run-known", f"no run {req.run!r} any more")]
        rv = view.runs[req.run]
        restarts = [p.ts for p in past if p.kind is ActionKind.RESTART_RUN and p.run == req.run]
        started = list(rv.restart_times) or restarts
        excl_causes: set[str] = set()
        for n in req.exclude:
            if n in view.nodes:
                excl_causes |= view.nodes[n].causes
        return [
            *([Check(ctx.stopped)] if ctx.stopped else []),
            crash_loop(cfg.crash_loop, ctx.failures, started),
            restart_budget(cfg.restarts, restarts, now),
            correlated(excl_causes | ctx.run_causes, ctx.open_causes),
            settle(excl_causes - ctx.open_causes, ctx.since, cfg.correlation.settle_s, now),
            restart_backoff(cfg.restarts, restarts, now),
        ]
    return []
