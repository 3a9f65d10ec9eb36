"""The policy engine: rules turn condition transitions and events into guarded decisions.

The daemon (and the simulator) call :meth:`PolicyEngine.on_condition` on every condition
transition, :meth:`on_event` for each event, :meth:`tick` periodically, and
:meth:`record_result` after carrying out an allowed action. The engine never does
anything itself: it returns :class:`Decision` objects, in the order they are to be
carried out, each with its rule, evidence and every guard's verdict. This module holds the
public surface, the rules and the holds; guards, verdicts and the memory behind them are in
:mod:`trainwarden.policies.decisions`.

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
from dataclasses import replace

from trainwarden.policies import guards as g
from trainwarden.policies.decisions import DecisionMaker, Held, Mode, RunBook, attempt_of
from trainwarden.policies.model import (
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
from trainwarden.policies.requests import build_requests, matches, merge, subject_run
from trainwarden.policies.rules import Policy, Rule, describe_duration

RUN_CONDITIONS = frozenset({ConditionType.RUN_HUNG})


class PolicyEngine(DecisionMaker):
    """Stateful decision maker over a :class:`Policy`; all time comes from the views given."""

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

    def restart_not_done(self, run: str) -> None:
        """A restart of ``run`` that stopped and submitted nothing (its job could not be
        stopped, or the next attempt placed): it no longer stands for the attempt, so a
        hang of it, or its end, restarts it again (the supervisor restarts an attempt at
        most once however many restarts of it are decided)."""
        book = self._runs.get(run)
        if book is not None and book.restarted_attempt == self._attempts.get(run):
            book.restarted_attempt = None

    def record_result(self, decision: Decision, ok: bool, ts: float) -> None:
        """Tell the engine whether an allowed action worked; a failed one stops counting.
        An operator's action was never decided here: it has no entry, and must not settle
        the automatic one of the same kind."""
        req = decision.request
        if req.actor is Actor.OPERATOR:
            return
        for entry in reversed(self._past):
            p = entry.past
            if p.kind is req.kind and p.node == req.node and p.run == req.run and entry.ok is None:
                entry.ok = ok
                break

    def restore_incidents(self, incidents: Sequence[Incident], now: float, seq: int) -> None:
        """Open incidents from the store after a daemon restart: a crash loop or a spent
        budget keeps stopping its run's restarts, a lemon stays a lemon, a correlated
        incident keeps holding drains until it clears."""
        self._book.restore(list(incidents), now, seq)
        for inc in incidents:
            if not inc.open:
                continue
            if inc.kind in (IncidentKind.CRASH_LOOP, IncidentKind.RESTART_BUDGET):
                book = self._runs.setdefault(inc.subject, RunBook())
                book.stopped_by = inc.id
                book.stopped_guard = (
                    g.CRASH_LOOP if inc.kind is IncidentKind.CRASH_LOOP else g.RESTART_BUDGET
                )
            elif inc.kind is IncidentKind.LEMON_NODE:
                self._lemons.add(inc.subject)

    def restore_failures(self, run: str, failures: Sequence[tuple[float, int | None]]) -> None:
        """The run's unexplained failures (time, step) from the store after a daemon
        restart, so the crash-loop guard does not start from zero."""
        self._runs.setdefault(run, RunBook()).failures[:0] = list(failures)

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
                Held(
                    req,
                    failing.guard,
                    view.now,
                    self._until(req, view),
                    attempt=attempt_of(req, view),
                )
            )
        self._after(d, view)  # incidents (crash loop, budget, lemon) are raised all the same
        return d

    def raise_incident(self, kind: IncidentKind, subject: str, now: float, detail: str) -> Incident:
        """An incident the daemon's detectors found (a mass silence), not a rule."""
        return self._book.raise_incident(kind, subject, now, detail)

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
            book = self._runs.setdefault(req.run, RunBook())
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
                Held(
                    req,
                    failing.guard,
                    view.now,
                    self._until(req, view),
                    cond,
                    view.now,
                    attempt_of(req, view),
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
        self._held.append(Held(req, guard, view.now, until, cond, view.now, attempt_of(req, view)))
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
                    Held(
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


__all__ = ["RUN_CONDITIONS", "Mode", "PolicyEngine"]
