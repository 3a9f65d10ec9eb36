"""How one action request becomes a verdict, and the bookkeeping behind the guards.

:class:`DecisionMaker` holds the engine's memory (actions taken, holds, queued approvals,
per-run failure books, incidents, lemons) and turns an :class:`ActionRequest` into a
:class:`Decision` by running every guard; it also raises the incidents a decision implies
(crash loop, restart budget, lemon node). :class:`policies.engine.PolicyEngine` builds on it
with the public surface: rules, holds and their release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from trainwarden.policies import guards as g
from trainwarden.policies.incidents import IncidentBook
from trainwarden.policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    ClusterView,
    ConditionType,
    Decision,
    GuardVerdict,
    IncidentKind,
    Verdict,
)
from trainwarden.policies.rules import Policy


class Mode(StrEnum):
    ENFORCE = "enforce"
    DRY_RUN = "dry-run"
    APPROVE = "approve"


@dataclass
class Held:
    request: ActionRequest
    guard: str
    since: float
    until: float | None = None
    condition: ConditionType | None = None  # for drains: must still hold when released
    cause_since: float = 0.0
    attempt: int | None = None  # for restarts: the attempt it was asked for


@dataclass
class _Done:
    past: g.Past
    ok: bool | None = None  # None until record_result


@dataclass
class RunBook:
    restarted_attempt: int | None = None
    failures: list[tuple[float, int | None]] = field(default_factory=list)
    stopped_by: str | None = None  # incident id that stopped automatic restarts
    stopped_guard: str = g.CRASH_LOOP


class DecisionMaker:
    """Guards, verdicts and the memory they need; all time comes from the views given."""

    def __init__(self, policy: Policy, mode: Mode = Mode.ENFORCE) -> None:
        self.policy = policy
        self.mode = mode
        self._past: list[_Done] = []  # actions allowed (or dry-run), newest last
        self._held: list[Held] = []
        self._queued: list[Decision] = []
        self._runs: dict[str, RunBook] = {}
        self._book = IncidentBook(policy.guards.correlation)
        self._lemons: set[str] = set()
        self._fired: dict[tuple[str, str], float] = {}
        self._now = 0.0
        self._attempts: dict[str, int] = {}

    def _see(self, view: ClusterView) -> None:
        self._now = view.now
        self._attempts = {name: rv.attempt for name, rv in view.runs.items()}

    # -- guards -> verdict ---------------------------------------------------------------
    def _until(
        self, req: ActionRequest, view: ClusterView, held: Held | None = None
    ) -> float | None:
        d = self._evaluate(req, view, held.cause_since if held else view.now)
        return max(
            (c.until for c in d if c.until is not None and not c.verdict.passed), default=None
        )

    def _decide(
        self,
        req: ActionRequest,
        view: ClusterView,
        *,
        mode: Mode | None = None,
        since: float | None = None,
    ) -> Decision:
        checks = self._evaluate(req, view, view.now if since is None else since)
        verdicts = tuple(c.verdict for c in checks)
        failed = [v for v in verdicts if not v.passed]
        if any(v.guard not in g.HOLDING for v in failed):
            verdict = Verdict.BLOCK
        elif failed:
            verdict = Verdict.HOLD
        else:
            verdict = self._mode_verdict(mode)
        return self._record(Decision(req, verdict, verdicts))

    def _mode_verdict(self, mode: Mode | None = None) -> Verdict:
        m = mode or self.mode
        return {
            Mode.ENFORCE: Verdict.ALLOW,
            Mode.DRY_RUN: Verdict.DRY_RUN,
            Mode.APPROVE: Verdict.QUEUED,
        }[m]

    def _record(self, d: Decision) -> Decision:
        r = d.request
        if d.verdict in (Verdict.ALLOW, Verdict.DRY_RUN):
            self._past.append(_Done(g.Past(self._now, r.kind, r.node, r.run)))
            self._prune()
            if r.kind is ActionKind.RESTART_RUN and r.run in self._attempts:
                self._runs.setdefault(r.run, RunBook()).restarted_attempt = self._attempts[r.run]
        elif d.verdict is Verdict.QUEUED:
            self._queued.append(d)
        return d

    def _evaluate(self, req: ActionRequest, view: ClusterView, since: float) -> list[g.Check]:
        stopped: GuardVerdict | None = None
        failures: tuple[tuple[float, int | None], ...] = ()
        if req.kind is ActionKind.RESTART_RUN and req.run:
            book = self._runs.setdefault(req.run, RunBook())
            failures = tuple(book.failures)
            if book.stopped_by:
                stopped = GuardVerdict(
                    book.stopped_guard,
                    False,
                    f"automatic restarts stopped by incident {book.stopped_by}",
                )
        ctx = g.Context(
            self.policy.guards,
            self._history(view),
            self._book.open_causes(),
            since,
            frozenset(self._lemons),
            failures,
            stopped,
            self._run_causes(req.run, view) if req.run else set(),
        )
        return g.evaluate(req, view, ctx)

    def _after(self, d: Decision, view: ClusterView) -> list[Decision]:
        """Incidents raised by a decision: crash loop / budget stop restarts; lemons."""
        req = d.request
        out: list[Decision] = []
        if req.kind is ActionKind.RESTART_RUN and d.verdict is Verdict.BLOCK and req.run:
            book = self._runs.setdefault(req.run, RunBook())
            failing = next((v for v in d.guards if not v.passed), None)
            if (
                failing
                and not book.stopped_by
                and failing.guard in (g.CRASH_LOOP, g.RESTART_BUDGET)
            ):
                kind = (
                    IncidentKind.CRASH_LOOP
                    if failing.guard == g.CRASH_LOOP
                    else IncidentKind.RESTART_BUDGET
                )
                inc = self._book.raise_incident(
                    kind,
                    req.run,
                    view.now,
                    f"run {req.run}: {failing.detail}; automatic restarts stopped",
                    req.evidence,
                )
                book.stopped_by = inc.id
                book.stopped_guard = failing.guard
                out.append(self._alert(inc.detail, f"incident:{kind}", req.evidence, view, None))
        if (
            req.kind is ActionKind.DRAIN
            and d.verdict in (Verdict.ALLOW, Verdict.DRY_RUN)
            and req.node
        ):
            lem = next(
                (v for v in d.guards if v.guard == g.LEMON and "marked lemon" in v.detail), None
            )
            if lem is not None and req.node not in self._lemons:
                self._lemons.add(req.node)
                inc = self._book.raise_incident(
                    IncidentKind.LEMON_NODE,
                    req.node,
                    view.now,
                    f"node {req.node} {lem.detail}; it stays drained until an operator looks",
                    req.evidence,
                    nodes=(req.node,),
                )
                out.append(
                    self._alert(inc.detail, f"incident:{inc.kind}", req.evidence, view, req.node)
                )
        return out

    def _alert(
        self, reason: str, rule: str, evidence: tuple[int, ...], view: ClusterView, node: str | None
    ) -> Decision:
        return Decision(
            ActionRequest(
                ActionKind.ALERT, Actor.RULE, reason, node=node, rule=rule, evidence=evidence
            ),
            Verdict.ALLOW,
            (),
        )

    # -- history ---------------------------------------------------------------------------
    def _history(self, view: ClusterView) -> list[g.Past]:
        done = [e.past for e in self._past if e.ok is not False]
        mine = {(p.kind, p.node, p.run, round(p.ts)) for p in done}
        extra = [
            g.Past(a.ts, a.kind, a.node, a.run)
            for a in view.recent_actions
            if a.verdict is Verdict.ALLOW and (a.kind, a.node, a.run, round(a.ts)) not in mine
        ]
        return [*done, *extra]

    def _prune(self) -> None:
        """Forget actions older than every window a guard looks back over."""
        if len(self._past) < 4096:
            return
        cfg = self.policy.guards
        horizon = max(
            cfg.drains.window_s,
            cfg.cooldown_s,
            cfg.restarts.window_s,
            cfg.restarts.backoff_reset_s,
            cfg.lemon_window_s,
        )
        self._past = [e for e in self._past if self._now - e.past.ts <= horizon]

    def _run_causes(self, run: str, view: ClusterView) -> set[str]:
        out: set[str] = set()
        rv = view.runs.get(run)
        for inc in self._book.open_correlated():
            if rv is not None and set(inc.nodes) & set(rv.nodes):
                out.add(inc.subject)
        return out

    def _run_in_incident(self, run: str | None, view: ClusterView) -> bool:
        return bool(run) and bool(self._run_causes(run or "", view))


def attempt_of(req: ActionRequest, view: ClusterView) -> int | None:
    if req.kind is ActionKind.RESTART_RUN and req.run in view.runs:
        return view.runs[str(req.run)].attempt
    return None
