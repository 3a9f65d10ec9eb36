"""Observations -> conditions -> node phases -> the policy's decisions, in virtual time.

Both drivers follow the same order of work: every observation's event is recorded by the
driver (the store in the daemon, an in-memory log in the simulator) and gets an id; each
observation that names a condition goes through the condition book with that id as its
evidence; the policy then sees ``on_condition`` for every real transition followed by
``on_event`` for every event, all against one view of the cluster. Vetting and the return
of a node to service are decided here too, so neither driver keeps its own copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from trainwarden.health.faults import XidCatalog
from trainwarden.health.nvml.backend import THROTTLE_NAMES
from trainwarden.health.probes.base import Fault
from trainwarden.health.report import HealthReport
from trainwarden.policies.engine import PolicyEngine
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
    IncidentKind,
    Verdict,
)
from trainwarden.policies.rules import Policy
from trainwarden.supervisor.decide.hearing import Hearing
from trainwarden.supervisor.decide.settings import DetectorSettings
from trainwarden.supervisor.detectors.conditions import ConditionBook
from trainwarden.supervisor.detectors.node_faults import NodeHealthTracker, Observation
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.detectors.stragglers.detector import StragglerDetector
from trainwarden.supervisor.detectors.stragglers.model import GpuSignal
from trainwarden.supervisor.model.lifecycle import NodePhase

# A node being vetted fails on any of these; it passes after the vetting period without them.
VET_FAILS = frozenset(
    {ConditionType.NODE_DEAD, ConditionType.GPU_FATAL, ConditionType.NODE_UNHEALTHY}
)
# Fault conditions the node health tracker keeps until the node is repaired.
STICKY_FAULTS = frozenset({ConditionType.GPU_FATAL, ConditionType.NODE_UNHEALTHY})
# The conditions that make a node FAILED rather than SUSPECT or HEALTHY.
FAILED_BY = frozenset({ConditionType.NODE_DEAD, ConditionType.GPU_FATAL})


class VetOutcome(StrEnum):
    WAIT = "wait"
    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True)
class VetResult:
    outcome: VetOutcome
    failing: frozenset[ConditionType] = frozenset()

    def failure_event(self, now: float, node: str) -> Event:
        return Event(
            now,
            EventKind.CONDITION_CHANGED,
            node=node,
            message="vetting failed: " + ", ".join(sorted(self.failing)),
        )


class DecisionCore:
    """The detectors, the condition book and the policy engine, with no I/O of their own."""

    def __init__(
        self,
        settings: DetectorSettings,
        engine: PolicyEngine,
        xid_overrides: Mapping[int | str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.book = ConditionBook()
        # the policy file's xid.overrides, then the daemon's own (command line) on top
        self._xid_overrides = dict(xid_overrides or {})
        self.nodes = NodeHealthTracker(
            self._xids(engine.policy),
            heartbeat_misses=settings.heartbeat_misses,
            will_confirm_s=settings.will_confirm_s,
            min_interval_s=settings.heartbeat_min_interval_s,
            max_interval_s=settings.heartbeat_max_interval_s,
            settle_s=settings.silence_settle_s,
            mass_nodes=settings.mass_silence_nodes,
            mass_fraction=settings.mass_silence_fraction,
            mass_window_s=settings.mass_silence_window_s,
        )
        self.hearing = Hearing(settings, self.nodes)
        self.progress = ProgressTracker(
            k=settings.hang_k,
            floor_s=settings.hang_floor_s,
            startup_timeout_s=settings.startup_timeout_s,
        )
        self.stragglers = StragglerDetector()
        self._imbalance_seen: set[tuple[str, str]] = set()
        self._last_straggler_eval = float("-inf")

    def restore(
        self, conditions: Sequence[Condition], faults: Mapping[str, Sequence[Fault]]
    ) -> None:
        """What the store kept across a restart: the conditions, and for a node with a fault
        condition the faults that set it (the tracker's sticky memory)."""
        self.book = ConditionBook(conditions)
        for c in conditions:
            if c.status and c.type in STICKY_FAULTS:
                self.nodes.restore(c.subject, c.type, faults.get(c.subject, ()))

    # -- detection ------------------------------------------------------------------
    def conditions(self, obs: Sequence[Observation], ids: Sequence[int]) -> list[Condition]:
        """The conditions that really changed: each observation's, evidence its event id."""
        changed: list[Condition] = []
        for o, eid in zip(obs, ids, strict=True):
            if o.ctype is None or o.subject is None:
                continue
            cond = self.book.apply(o.subject, o.ctype, o.status, o.reason, o.event.ts, (eid,))
            if cond is not None:
                changed.append(cond)
        return changed

    def decide(
        self,
        changed: Sequence[Condition],
        events: Sequence[Event],
        view: ClusterView,
        history: Sequence[Event],
    ) -> list[Decision]:
        """The policy's decisions: conditions first, then every event (ids already set)."""
        out: list[Decision] = []
        for cond in changed:
            out += self.engine.on_condition(cond, view, history)
        for ev in events:
            out += self.engine.on_event(ev, view, history)
        return out

    def detect(self, now: float) -> list[Observation]:
        """The time-based detectors: confirmed deaths, missed heartbeats, hangs (the silence
        verdicts only while the daemon can hear, see ``hearing``)."""
        out = self.hearing.update(now) + self.nodes.tick(now)
        for o in out:
            if o.event.data.get("mass_silence"):
                self._mass_incident(o.event)
        if not self.nodes.deaf:  # a run's steps may be queued or lost like any message
            out += self.progress.tick(now, self.nodes.listening_since)
        return out

    def _mass_incident(self, ev: Event) -> None:
        """A mass silence is one incident (kept across a daemon restart: an open one is
        continued, not opened twice), closed when it ends."""
        open_ = [
            i for i in self.engine.incidents() if i.kind is IncidentKind.MASS_SILENCE and i.open
        ]
        if ev.kind is EventKind.VERDICTS_SUSPENDED:
            if not open_:
                self.engine.raise_incident(IncidentKind.MASS_SILENCE, "silence", ev.ts, ev.message)
        else:
            for inc in open_:
                self.engine.resolve_incident(inc.id, ev.ts)

    def straggler_findings(self, now: float) -> list[Observation]:
        """Straggler flags and clears (node-level ones move the Straggler condition);
        stage imbalance is recorded once per run and stage, as a finding, never a fault."""
        if now - self._last_straggler_eval < self.settings.straggler_eval_s:
            return []
        self._last_straggler_eval = now
        out: list[Observation] = []
        for f in self.stragglers.evaluate(now):
            cond = f.condition()
            if f.rank is None:
                out.append(
                    Observation(f.event(), cond.subject, cond.type, cond.status, cond.reason)
                )
            else:
                out.append(Observation(f.event()))
        for imb in self.stragglers.stage_imbalance():
            key = (imb.run, imb.slowest)
            if key in self._imbalance_seen:
                continue
            self._imbalance_seen.add(key)
            out.append(
                Observation(
                    Event(
                        now,
                        EventKind.STAGE_IMBALANCE,
                        run=imb.run,
                        message=f"stage {imb.slowest} is {imb.ratio:.2f}x the fastest stage: a "
                        "partitioning problem, not a bad node",
                        data={
                            "levels": [list(lv) for lv in imb.levels],
                            "ratio": imb.ratio,
                            "step": imb.step,
                        },
                    )
                )
            )
        return out

    # -- node phases -----------------------------------------------------------------
    def phase_of(self, name: str) -> NodePhase | None:
        """A node's phase from its conditions and liveness, or None when nothing is known
        yet (drains are actions': the caller skips drained nodes)."""
        if self.book.types_of(name) & FAILED_BY:
            return NodePhase.FAILED
        live = self.nodes.node(name)
        if live.suspect:
            return NodePhase.SUSPECT
        if live.last_heartbeat is not None:
            return NodePhase.HEALTHY
        return None

    def causes(self, name: str) -> frozenset[str]:
        return frozenset(self.nodes.node(name).causes)

    # -- vetting and return to service ------------------------------------------------
    def vet(self, name: str, started_at: float, reported_since: bool, now: float) -> VetResult:
        """A node being vetted: failed on a condition, passed once it has reported since
        vetting began and the period is over, else still waiting."""
        bad = self.book.types_of(name) & VET_FAILS
        if bad:
            return VetResult(VetOutcome.FAILED, frozenset(bad))
        if reported_since and now - started_at >= self.settings.vet_period_s:
            return VetResult(VetOutcome.PASSED)
        return VetResult(VetOutcome.WAIT)

    def vet_passed(self, name: str) -> Decision:
        """The undrain a passed vetting makes (allowed: the vetting itself was the guard)."""
        period = self.settings.vet_period_s
        return Decision(
            ActionRequest(
                ActionKind.UNDRAIN,
                Actor.RULE,
                f"vetting passed: healthy reports for {period:.0f} s",
                node=name,
                rule="vet",
            ),
            Verdict.ALLOW,
            (GuardVerdict("vetting", True, "no condition set"),),
        )

    def returned(self, name: str, now: float) -> list[Condition]:
        """A node back in service: the tracker forgets its sticky faults and the conditions
        they held are cleared. Returns the node's conditions as they now stand."""
        for o in self.nodes.reset(name):
            if o.subject and o.ctype:
                self.book.apply(o.subject, o.ctype, False, o.reason, now)
        return [c for c in self.book.all() if c.subject == name]

    def reload(self, policy: Policy) -> None:
        """A new policy (SIGHUP): the engine keeps its guard memory, holds and incidents;
        the XID catalogue follows the new file's overrides."""
        self.engine.reload(policy)
        self.nodes.xids = self._xids(policy)

    def _xids(self, policy: Policy) -> XidCatalog:
        merged: dict[int | str, str] = {k: v for k, v in policy.xid_overrides.items()}
        merged.update(self._xid_overrides)
        return XidCatalog(merged)


def gpu_signal(report: HealthReport, now: float) -> GpuSignal | None:
    """A node's GPU evidence for the straggler detector, from its GPU probe's values:
    the throttle reasons of all its GPUs, and its highest power draw against the limit."""
    gpu = next((p for p in report.probes if p.probe == "gpu"), None)
    if gpu is None or not gpu.values.get("nvml_available"):
        return None
    bits = 0
    power: float | None = None
    for key, value in gpu.values.items():
        if key.endswith("_throttle_reasons") and isinstance(value, int):
            bits |= value
        elif key.endswith("_power_w") and isinstance(value, int | float):
            power = max(power or 0.0, float(value))
    reasons = tuple(name for bit, name in THROTTLE_NAMES.items() if bits & bit)
    return GpuSignal(ts=now, throttle_reasons=reasons, power_w=power)
