"""The policy engine: rules turn condition transitions and events into guarded decisions.

The daemon (and the simulator) call :meth:`PolicyEngine.on_condition` on every condition
transition, :meth:`on_event` for each event, :meth:`tick` periodically, and
:meth:`record_result` after carrying out an allowed action. The engine never does
anything itself: it returns :class:`Decision` objects, in the order they are to be
carried out, each with its rule, evidence and every guard's verdict.

Contracts with the caller (see docs/policy.md):
- ``RunView.attempt`` grows when a restart is carried out; restart requests for an attempt
  already restarted are dropped as duplicates, and ``attempt-ended`` events whose
  ``data["attempt"]`` is older than the view's are stale.
- ``RunView.restart_times`` are the times attempts started running (crash-loop uptime).
- checkpoint before eviction: a rule ``then: [checkpoint-now, drain, restart-run]`` yields an
  allowed ``checkpoint-now`` and HOLDs the rest (guard ``awaiting-checkpoint``); they are
  released by a ``checkpoint-saved`` event for the run or by ``tick`` once
  ``checkpoint_timeout`` has passed, and then come back as ALLOW decisions in rule order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from policies import guards as g
from policies.incidents import IncidentBook
from policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    ClusterView,
    Condition,
    ConditionType,
    Decision,
    Event,
    EventKind,
    GuardVerdict,
    Incident,
    IncidentKind,
    Verdict,
)
from policies.requests import build_requests, matches, merge, subject_run
from policies.rules import Policy, Rule, describe_duration

RUN_CONDITIONS = frozenset({ConditionType.RUN_HUNG})


class Mode(StrEnum):
    ENFORCE = "enforce"
    DRY_RUN = "dry-run"
    APPROVE = "approve"


@dataclass
class _Held:
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
class _RunBook:
    restarted_attempt: int | None = None
    failures: list[tuple[float, int | None]] = field(default_factory=list)
    stopped_by: str | None = None  # incident id that stopped automatic restarts
    stopped_guard: str = g.CRASH_LOOP


class PolicyEngine:
    """Stateful decision maker over a :class:`Policy`; all time comes from the views given."""

    def __init__(self, policy: Policy, mode: Mode = Mode.ENFORCE) -> None:
        self.policy = policy
        self.mode = mode
        self._past: list[_Done] = []  # actions allowed (or dry-run), newest last
        self._held: list[_Held] = []
        self._queued: list[Decision] = []
        self._runs: dict[str, _RunBook] = {}
        self._book = IncidentBook(policy.guards.correlation)
        self._lemons: set[str] = set()
        self._fired: dict[tuple[str, str], float] = {}
        self._now = 0.0
        self._attempts: dict[str, int] = {}

    def _see(self, view: ClusterView) -> None:
        self._now = view.now
        self._attempts = {name: rv.attempt for name, rv in view.runs.items()}

    # -- public surface -------------------------------------------------------------------
    def on_condition(
        self, cond: Condition, view: ClusterView, history: Sequence[Event] = ()
    ) -> list[Decision]:
        self._see(view)
        out: list[Decision] = []
        node = view.nodes.get(cond.subject)
        if cond.status and node is not None and cond.type not in RUN_CONDITIONS:
            opened = self._book.onset(cond.subject, node.causes, view.now, cond.evidence)
            for inc in opened:
                out.append(
                    self._alert(inc.detail, f"incident:{inc.kind}", inc.evidence, view, node=None)
                )
        for rule in self.policy.rules:
            t = rule.when
            if t.condition is not cond.type or t.status != cond.status:
                continue
            if t.drained_by_trainwarden is not None and (
                node is None or node.drained_by_trainwarden != t.drained_by_trainwarden
            ):
                continue
            reason = (
                f"{cond.type.value} {'set' if cond.status else 'cleared'} on "
                f"{cond.subject}: {cond.reason}"
            )
            out += self._fire(rule, cond.subject, reason, cond.evidence, view, cond.type)
        return out

    def on_event(
        self, event: Event, view: ClusterView, history: Sequence[Event] = ()
    ) -> list[Decision]:
        self._see(view)
        out: list[Decision] = []
        if event.kind is EventKind.CHECKPOINT_SAVED and event.run:
            out += self._release(
                view,
                lambda h: h.guard == g.CHECKPOINT and h.request.run == event.run,
                "checkpoint saved",
            )
        if event.kind is EventKind.ATTEMPT_ENDED and event.run in view.runs:
            att = event.data.get("attempt")
            if isinstance(att, int) and att < view.runs[str(event.run)].attempt:
                return out  # stale: about an attempt already replaced
        for rule in self.policy.rules:
            t = rule.when
            if t.event is not event.kind or not matches(event, t.match):
                continue
            subject = event.node or event.run
            if subject is None:
                continue
            evidence: tuple[int, ...] = (event.id,) if event.id is not None else ()
            if t.count > 1:
                same = [
                    e
                    for e in history
                    if e.kind is event.kind
                    and (e.node or e.run) == subject
                    and matches(e, t.match)
                    and view.now - e.ts <= t.within_s
                    and e is not event
                    and (e.id is None or e.id != event.id)
                ]
                if len(same) + 1 < t.count:
                    continue
                last = self._fired.get((rule.name, subject))
                if last is not None and view.now - last < t.within_s:
                    continue
                self._fired[(rule.name, subject)] = view.now
                evidence = tuple(e.id for e in same if e.id is not None) + evidence
            reason = f"{event.kind.value} on {subject}" + (
                f": {event.message}" if event.message else ""
            )
            if t.count > 1:
                reason += f" ({t.count} within {t.within_s:g}s)"
            out += self._fire(rule, subject, reason, evidence, view, None, event)
        return out

    def tick(self, view: ClusterView) -> list[Decision]:
        self._see(view)
        out: list[Decision] = []
        for inc in self._book.sweep(view):
            out.append(
                self._alert(inc.detail, f"incident:{inc.kind}", inc.evidence, view, node=None)
            )
        open_causes = self._book.open_causes()
        out += self._release(
            view,
            lambda h: (
                (h.until is not None and h.until <= view.now)
                or (
                    h.guard == g.CORRELATED
                    and not (
                        view.nodes[h.request.node].causes & open_causes
                        if h.request.node in view.nodes
                        else False
                    )
                    and not self._run_in_incident(h.request.run, view)
                )
            ),
            "",
        )
        return out

    def record_result(self, decision: Decision, ok: bool, ts: float) -> None:
        """Tell the engine whether an allowed action worked; a failed one stops counting."""
        req = decision.request
        for entry in reversed(self._past):
            p = entry.past
            if p.kind is req.kind and p.node == req.node and p.run == req.run and entry.ok is None:
                entry.ok = ok
                break

    def reload(self, policy: Policy) -> None:
        """Swap in a new (already validated) policy on SIGHUP, keeping history and incidents."""
        self.policy = policy
        self._book.configure(policy.guards.correlation)

    def incidents(self) -> list[Incident]:
        return self._book.all()

    def queued(self) -> list[Decision]:
        return list(self._queued)

    def held(self) -> list[ActionRequest]:
        return [h.request for h in self._held]

    def pending(self) -> bool:
        """True while something waits on time (holds, open incidents): keep calling tick."""
        return bool(self._held) or bool(self._book.open_causes())

    def next_wakeup(self) -> float | None:
        times = [h.until for h in self._held if h.until is not None]
        return min(times) if times else None

    def resolve(
        self, decision: Decision, approved: bool, view: ClusterView, who: str | None = None
    ) -> Decision:
        """An operator approves or rejects a queued decision (approve mode)."""
        self._see(view)
        if decision in self._queued:
            self._queued.remove(decision)
        req = replace(decision.request, who=who or decision.request.who)
        if not approved:
            return Decision(
                req,
                Verdict.BLOCK,
                (
                    *decision.guards,
                    GuardVerdict(g.OPERATOR, False, f"rejected by {who or 'operator'}"),
                ),
            )
        d = self._decide(req, view, mode=Mode.ENFORCE)
        d = replace(
            d,
            guards=(*d.guards, GuardVerdict(g.OPERATOR, True, f"approved by {who or 'operator'}")),
        )
        if d.verdict is Verdict.HOLD:  # approved, but a guard defers it: tick releases it
            failing = next(v for v in d.guards if not v.passed)
            self._held.append(
                _Held(
                    req,
                    failing.guard,
                    view.now,
                    self._until(req, view),
                    attempt=_attempt_of(req, view),
                )
            )
        self._after(d, view)  # incidents (crash loop, budget, lemon) are raised all the same
        return d

    def resolve_incident(self, incident_id: str, ts: float) -> Incident | None:
        """An operator closes an incident: restarts of its run resume, a lemon may be returned."""
        inc = self._book.close(incident_id, ts)
        if inc is None:
            return None
        for book in self._runs.values():
            if book.stopped_by == incident_id:
                book.stopped_by = None
                book.failures.clear()
        if inc.kind is IncidentKind.LEMON_NODE:
            self._lemons.discard(inc.subject)
        return inc

    # -- rules -> requests ---------------------------------------------------------------
    def _fire(
        self,
        rule: Rule,
        subject: str,
        reason: str,
        evidence: tuple[int, ...],
        view: ClusterView,
        cond: ConditionType | None,
        event: Event | None = None,
    ) -> list[Decision]:
        reqs = build_requests(rule, subject, reason, evidence, view, event)
        run = subject_run(subject, view, event)
        out: list[Decision] = []
        if (
            reqs
            and reqs[0].kind is ActionKind.CHECKPOINT_NOW
            and run is not None
            and view.runs[run].active
        ):
            out.append(self._record(Decision(reqs[0], self._mode_verdict(), ())))
            for req in reqs[1:]:
                out += self._hold(
                    req,
                    view,
                    cond,
                    g.CHECKPOINT,
                    f"waiting for run {run} to save a checkpoint (at most "
                    f"{rule.checkpoint_timeout_s:g}s)",
                    view.now + rule.checkpoint_timeout_s,
                )
            return out
        for req in reqs:
            if req.kind is ActionKind.CHECKPOINT_NOW:
                continue  # run not active: nothing to checkpoint
            out += self._request(req, view, cond)
        return out

    def _request(
        self, req: ActionRequest, view: ClusterView, cond: ConditionType | None
    ) -> list[Decision]:
        if req.kind is ActionKind.RESTART_RUN:
            assert req.run is not None
            book = self._runs.setdefault(req.run, _RunBook())
            rv = view.runs[req.run]
            for h in self._held:
                if h.request.kind is ActionKind.RESTART_RUN and h.request.run == req.run:
                    h.request = merge(h.request, req)
                    return []
            if book.restarted_attempt == rv.attempt:
                return []  # this attempt is already being restarted
            if any(
                q.request.kind is ActionKind.RESTART_RUN and q.request.run == req.run
                for q in self._queued
            ):
                return []  # one restart of this run already awaits approval
            if not req.exclude:  # a failure no node explains: counts towards a crash loop
                book.failures.append((view.now, rv.last_step))
        d = self._decide(req, view)
        if d.verdict is Verdict.HOLD:
            failing = next(v for v in d.guards if not v.passed)
            self._held.append(
                _Held(
                    req,
                    failing.guard,
                    view.now,
                    self._until(req, view),
                    cond,
                    view.now,
                    _attempt_of(req, view),
                )
            )
        out = [d]
        out += self._after(d, view)
        return out

    def _hold(
        self,
        req: ActionRequest,
        view: ClusterView,
        cond: ConditionType | None,
        guard: str,
        detail: str,
        until: float | None,
    ) -> list[Decision]:
        self._held.append(
            _Held(req, guard, view.now, until, cond, view.now, _attempt_of(req, view))
        )
        return [Decision(req, Verdict.HOLD, (GuardVerdict(guard, False, detail),))]

    def _release(self, view: ClusterView, which: object, note: str) -> list[Decision]:
        assert callable(which)
        go = [h for h in self._held if which(h)]
        if not go:
            return []
        self._held = [h for h in self._held if h not in go]
        out: list[Decision] = []
        for h in go:
            req = h.request
            nv = view.nodes.get(req.node) if req.node else None
            if req.kind is ActionKind.DRAIN and (
                nv is None or nv.drained or (h.condition and h.condition not in nv.conditions)
            ):
                out.append(
                    Decision(
                        req,
                        Verdict.BLOCK,
                        (
                            GuardVerdict(
                                "still-needed",
                                False,
                                f"held by {h.guard}; when released the node no longer needed "
                                "draining (condition cleared or already drained)",
                            ),
                        ),
                    )
                )
                continue
            if req.kind is ActionKind.RESTART_RUN and req.run not in view.runs:
                continue
            if (
                req.kind is ActionKind.RESTART_RUN
                and h.attempt is not None
                and view.runs[str(req.run)].attempt > h.attempt
            ):
                out.append(
                    Decision(
                        req,
                        Verdict.BLOCK,
                        (
                            GuardVerdict(
                                "still-needed",
                                False,
                                f"held by {h.guard}; meanwhile the run was restarted "
                                f"(attempt {view.runs[str(req.run)].attempt})",
                            ),
                        ),
                    )
                )
                continue
            why = note
            if not why and h.guard == g.CHECKPOINT:
                why = "checkpoint not confirmed in time; going ahead"
            elif not why:
                why = f"released after {describe_duration(view.now - h.since)} on hold"
            d = self._decide(req, view, since=h.cause_since)
            d = replace(d, guards=(GuardVerdict(h.guard, True, why), *d.guards))
            if d.verdict is Verdict.HOLD:
                failing = next(v for v in d.guards if not v.passed)
                self._held.append(
                    _Held(
                        req,
                        failing.guard,
                        h.since,
                        self._until(req, view, h),
                        h.condition,
                        h.cause_since,
                        h.attempt,
                    )
                )
                if failing.guard == h.guard:
                    continue  # still held for the same reason: nothing new to say
            out.append(d)
            out += self._after(d, view)
        return out

    def _until(
        self, req: ActionRequest, view: ClusterView, held: _Held | None = None
    ) -> float | None:
        d = self._evaluate(req, view, held.cause_since if held else view.now)
        return max(
            (c.until for c in d if c.until is not None and not c.verdict.passed), default=None
        )

    # -- guards -> verdict ---------------------------------------------------------------
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
                self._runs.setdefault(r.run, _RunBook()).restarted_attempt = self._attempts[r.run]
        elif d.verdict is Verdict.QUEUED:
            self._queued.append(d)
        return d

    def _evaluate(self, req: ActionRequest, view: ClusterView, since: float) -> list[g.Check]:
        stopped: GuardVerdict | None = None
        failures: tuple[tuple[float, int | None], ...] = ()
        if req.kind is ActionKind.RESTART_RUN and req.run:
            book = self._runs.setdefault(req.run, _RunBook())
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
            book = self._runs.setdefault(req.run, _RunBook())
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


def _attempt_of(req: ActionRequest, view: ClusterView) -> int | None:
    if req.kind is ActionKind.RESTART_RUN and req.run in view.runs:
        return view.runs[str(req.run)].attempt
    return None
