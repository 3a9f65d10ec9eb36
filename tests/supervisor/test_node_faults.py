"""Node liveness and fault detection, in virtual time (no broker, no sleeps)."""

from __future__ import annotations

import pytest

from trainwarden.health import faults as fk
from trainwarden.health.faults import XidCatalog
from trainwarden.health.probes.base import Action, CheckResult, Fault, Health, Severity
from trainwarden.health.report import HealthReport, ProbeReport
from trainwarden.policies.model import ConditionType, EventKind
from trainwarden.supervisor.detectors.conditions import ConditionBook
from trainwarden.supervisor.detectors.node_faults import NodeHealthTracker, Observation

T0 = 1_000.0


def conds(obs: list[Observation]) -> list[tuple[str | None, ConditionType | None, bool]]:
    return [(o.subject, o.ctype, o.status) for o in obs if o.ctype is not None]


def test_last_will_makes_node_suspect_then_dead_without_heartbeat() -> None:
    t = NodeHealthTracker(will_confirm_s=2.0)
    t.on_heartbeat("n1", T0, 1.0)
    obs = t.on_status("n1", "offline", "connection lost", T0 + 0.1)
    assert [o.event.kind for o in obs] == [EventKind.NODE_OFFLINE]
    assert t.node("n1").suspect
    assert t.tick(T0 + 1.0) == []  # still within the confirmation window
    dead = t.tick(T0 + 2.2)
    assert conds(dead) == [("n1", ConditionType.NODE_DEAD, True)]
    assert "last will" in dead[0].reason


def test_reconnect_beats_the_will() -> None:
    t = NodeHealthTracker(will_confirm_s=2.0)
    t.on_heartbeat("n1", T0, 1.0)
    t.on_status("n1", "offline", "connection lost", T0 + 0.1)
    back = t.on_heartbeat("n1", T0 + 0.5, 1.0)
    assert conds(back) == [("n1", ConditionType.NODE_DEAD, False)]
    assert t.tick(T0 + 4.0) == []  # heartbeat at +0.5; 3 x 1 s + 1 s grace not yet passed
    assert not t.node("n1").dead


def test_missed_heartbeats_declare_death_and_a_heartbeat_revives() -> None:
    t = NodeHealthTracker(heartbeat_misses=3, heartbeat_grace_s=1.0)
    t.on_heartbeat("n1", T0, 2.0)
    assert t.tick(T0 + 6.9) == []
    obs = t.tick(T0 + 7.1)
    assert EventKind.HEARTBEAT_MISSED in [o.event.kind for o in obs]
    assert conds(obs) == [("n1", ConditionType.NODE_DEAD, True)]
    assert t.tick(T0 + 20) == []  # declared once
    assert conds(t.on_heartbeat("n1", T0 + 21, 2.0)) == [("n1", ConditionType.NODE_DEAD, False)]


def test_graceful_stop_is_not_a_failure() -> None:
    t = NodeHealthTracker(will_confirm_s=0.5)
    t.on_heartbeat("n1", T0, 1.0)
    obs = t.on_status("n1", "offline", "agent stopped", T0 + 1)
    assert conds(obs) == []
    assert t.tick(T0 + 100) == []


@pytest.mark.parametrize(
    ("code", "fatal"),
    [
        (79, True),
        (48, True),
        (95, True),
        (64, True),
        (119, True),
        (13, False),
        (31, False),
        (63, False),
    ],
)
def test_xid_classes_from_the_catalogue(code: int, fatal: bool) -> None:
    t = NodeHealthTracker()
    obs = t.on_faults("n2", [Fault(fk.XID, Severity.INFO, "", gpu=1, code=code)], T0)
    assert obs[0].event.kind is EventKind.FAULT
    assert (conds(obs) == [("n2", ConditionType.GPU_FATAL, True)]) is fatal


def test_operator_override_of_an_xid() -> None:
    t = NodeHealthTracker(XidCatalog({13: "fatal"}))
    obs = t.on_faults("n2", [Fault(fk.XID, Severity.INFO, "", gpu=0, code=13)], T0)
    assert conds(obs) == [("n2", ConditionType.GPU_FATAL, True)]


def test_repeated_fault_is_one_event() -> None:
    t = NodeHealthTracker()
    f = Fault(fk.XID, Severity.FATAL, "off the bus", gpu=2, code=79)
    assert len(t.on_faults("n3", [f], T0)) == 1
    assert t.on_faults("n3", [f], T0 + 5) == []


def _report(node: str, health: Health, faults: tuple[Fault, ...] = ()) -> HealthReport:
    res = CheckResult(
        "storage", health, "storage hung" if faults else "ok", Action.NONE, {}, faults
    )
    return HealthReport(node=node, ts=T0, seq=1, overall=health, probes=[ProbeReport.of(res)])


def test_unhealthy_report_sets_and_clears_node_unhealthy_with_cause() -> None:
    t = NodeHealthTracker()
    hang = Fault(fk.STORAGE_HANG, Severity.FATAL, "write timed out", cause="storage:/scratch")
    obs = t.on_health("n4", _report("n4", Health.UNHEALTHY, (hang,)), T0)
    assert ("n4", ConditionType.NODE_UNHEALTHY, True) in conds(obs)
    assert t.node("n4").causes == {"storage:/scratch"}
    obs = t.on_health("n4", _report("n4", Health.HEALTHY), T0 + 10)
    assert conds(obs) == [("n4", ConditionType.NODE_UNHEALTHY, False)]


def test_condition_book_changes_only_on_real_transitions() -> None:
    book = ConditionBook()
    assert book.apply("n1", ConditionType.NODE_DEAD, False, "x", T0) is None  # starts false
    c = book.apply("n1", ConditionType.NODE_DEAD, True, "will", T0, (7,))
    assert c is not None and c.since == T0 and c.evidence == (7,)
    assert book.apply("n1", ConditionType.NODE_DEAD, True, "heartbeats", T0 + 5, (8,)) is None
    kept = book.get("n1", ConditionType.NODE_DEAD)
    assert kept is not None and kept.since == T0 and kept.evidence == (7, 8)
    cleared = book.apply("n1", ConditionType.NODE_DEAD, False, "back", T0 + 9)
    assert cleared is not None and not cleared.status and cleared.since == T0 + 9


def test_gpu_fault_is_sticky_until_the_node_came_back_with_healthy_gpus() -> None:
    t = NodeHealthTracker(will_confirm_s=1.0)
    t.on_heartbeat("n5", T0, 1.0)
    xid = Fault(fk.XID, Severity.FATAL, "", gpu=3, code=79)
    t.on_faults("n5", [xid], T0 + 1)
    healthy = _report("n5", Health.HEALTHY)
    assert t.on_health("n5", healthy, T0 + 2) == []  # same boot: still fatal
    t.on_status("n5", "offline", "connection lost", T0 + 3)  # reboot for the repair
    t.tick(T0 + 5)
    t.on_heartbeat("n5", T0 + 300, 1.0)
    obs = t.on_health("n5", healthy, T0 + 301)
    assert conds(obs) == [("n5", ConditionType.GPU_FATAL, False)]
    # and the same XID again after the repair is a new fault
    assert conds(t.on_faults("n5", [xid], T0 + 400)) == [("n5", ConditionType.GPU_FATAL, True)]
