"""The engine end to end on hand-built views in virtual time: rules, guards, modes, incidents."""

from __future__ import annotations

from dataclasses import replace

from policy_views import nodes, view, with_node

from trainwarden.policies.engine import Mode, PolicyEngine
from trainwarden.policies.explain import explain
from trainwarden.policies.model import (
    ActionKind,
    Actor,
    Condition,
    ConditionType,
    Decision,
    Event,
    EventKind,
    IncidentKind,
    Verdict,
)
from trainwarden.policies.rules import load_policy, parse_policy

GPU = ConditionType.GPU_FATAL
T0 = 1_700_000_000.0


def cond(
    subject: str,
    ctype: ConditionType = GPU,
    status: bool = True,
    t: float = T0,
    ev: tuple[int, ...] = (7,),
) -> Condition:
    return Condition(subject, ctype, status, "xid 79", t, ev)


def kinds(ds: list[Decision]) -> list[tuple[str, str]]:
    return [(d.request.kind.value, d.verdict.value) for d in ds]


def test_gpu_fatal_drains_the_node_and_restarts_without_it() -> None:
    eng = PolicyEngine(load_policy())
    nv = with_node(nodes(40), "n003", conditions=[GPU])
    ds = eng.on_condition(cond("n003"), view(T0, nv), [])
    assert kinds(ds) == [("drain", "allow"), ("restart-run", "allow")]
    drain, restart = ds
    assert drain.request.node == "n003" and drain.request.rule == "gpu-fatal"
    assert restart.request.run == "llm" and restart.request.exclude == ("n003",)
    assert drain.request.evidence == (7,)
    assert {g.guard for g in drain.guards} >= {
        "max-drains-per-window",
        "cluster-fraction",
        "run-fraction",
        "correlated-failure",
    }
    # the job's own exit for the same attempt is not a second restart
    ended = Event(
        T0 + 60, EventKind.ATTEMPT_ENDED, run="llm", data={"failed": True, "attempt": 1}, id=9
    )
    assert eng.on_event(ended, view(T0 + 60, nv), []) == []


def test_run_hung_restarts_without_draining() -> None:
    eng = PolicyEngine(load_policy())
    ds = eng.on_condition(cond("llm", ConditionType.RUN_HUNG), view(T0, nodes(8)), [])
    assert kinds(ds) == [("restart-run", "allow")]
    assert ds[0].request.exclude == ()


def test_stale_attempt_end_is_ignored() -> None:
    eng = PolicyEngine(load_policy())
    ended = Event(T0, EventKind.ATTEMPT_ENDED, run="llm", data={"failed": True, "attempt": 1})
    assert eng.on_event(ended, view(T0, nodes(8), attempt=2), []) == []
    assert kinds(eng.on_event(ended, view(T0, nodes(8), attempt=1), [])) == [
        ("restart-run", "allow")
    ]


def test_drain_window_blocks_the_ninth_drain_in_an_hour() -> None:
    eng = PolicyEngine(load_policy())
    nv = nodes(400)
    verdicts = []
    for i in range(9):
        now = T0 + 60 * i
        nv = with_node(nv, f"n{i:03d}", conditions=[ConditionType.NODE_DEAD], run=None)
        ds = eng.on_condition(cond(f"n{i:03d}", ConditionType.NODE_DEAD, t=now), view(now, nv), [])
        verdicts.append(ds[0].verdict)
    assert verdicts == [Verdict.ALLOW] * 8 + [Verdict.BLOCK]
    # an hour after the first drains the window has room again
    nv = with_node(nv, "n100", conditions=[ConditionType.NODE_DEAD], run=None)
    later = T0 + 3600 + 60 * 8
    ds = eng.on_condition(cond("n100", ConditionType.NODE_DEAD, t=later), view(later, nv), [])
    assert ds[0].verdict is Verdict.ALLOW


def test_storage_outage_is_one_incident_no_drains_and_held_restart() -> None:
    eng = PolicyEngine(load_policy())
    nv = nodes(40)
    cause = "storage:/capstor"
    out: list[Decision] = []
    for i in range(6):
        nv = with_node(nv, f"n{i:03d}", conditions=[ConditionType.NODE_UNHEALTHY], causes=[cause])
        out += eng.on_condition(
            cond(f"n{i:03d}", ConditionType.NODE_UNHEALTHY, t=T0), view(T0, nv), []
        )
    out += eng.on_condition(cond("llm", ConditionType.RUN_HUNG, t=T0 + 600), view(T0 + 600, nv), [])
    assert [i.kind for i in eng.incidents()] == [IncidentKind.CORRELATED]
    assert not [d for d in out if d.verdict is Verdict.ALLOW and d.request.kind is ActionKind.DRAIN]
    assert ("restart-run", "hold") in kinds(out)
    assert eng.incidents()[0].open
    # still failing: nothing moves
    assert not [d for d in eng.tick(view(T0 + 1200, nv)) if d.verdict is Verdict.ALLOW]
    # storage back: conditions and causes clear; after clear_after (5 min) the incident clears
    healthy = nodes(40)
    assert eng.tick(view(T0 + 1300, healthy)) == []
    ds = eng.tick(view(T0 + 1300 + 300, healthy))
    assert ("alert", "allow") in kinds(ds)
    assert ("restart-run", "allow") in kinds(ds)
    assert not [d for d in ds if d.request.kind is ActionKind.DRAIN and d.verdict is Verdict.ALLOW]
    assert not eng.incidents()[0].open
    assert not eng.pending()


def test_two_nodes_with_a_shared_cause_are_drained_after_settling() -> None:
    eng = PolicyEngine(load_policy())
    nv = nodes(40)
    for n in ("n001", "n002"):
        nv = with_node(nv, n, conditions=[ConditionType.NODE_UNHEALTHY], causes=["fabric:ib"])
        ds = eng.on_condition(cond(n, ConditionType.NODE_UNHEALTHY), view(T0, nv), [])
        assert kinds(ds) == [("drain", "hold")]
    assert eng.next_wakeup() == T0 + 60
    ds = eng.tick(view(T0 + 60, nv))
    assert kinds(ds) == [("drain", "allow"), ("drain", "allow")]
    assert eng.incidents() == []


def test_restart_backoff_holds_then_releases() -> None:
    eng = PolicyEngine(load_policy())
    ended = Event(T0, EventKind.ATTEMPT_ENDED, run="llm", data={"failed": True})
    assert kinds(eng.on_event(ended, view(T0, nodes(8), attempt=1, last_step=10), [])) == [
        ("restart-run", "allow")
    ]
    # attempt 2 dies 30 s later at another step: backoff 1 min from the first restart
    ds = eng.on_event(ended, view(T0 + 30, nodes(8), attempt=2, last_step=20), [])
    assert kinds(ds) == [("restart-run", "hold")]
    assert ds[0].guards[-1].guard == "restart-backoff"
    assert eng.tick(view(T0 + 45, nodes(8), attempt=2)) == []
    assert kinds(eng.tick(view(T0 + 60, nodes(8), attempt=2))) == [("restart-run", "allow")]


def test_crash_loop_stops_restarts_and_raises_an_incident() -> None:
    eng = PolicyEngine(load_policy())
    ended = Event(T0, EventKind.ATTEMPT_ENDED, run="llm", data={"failed": True})
    results = []
    for attempt in (1, 2, 3):
        now = T0 + 3600 * attempt
        results.append(
            eng.on_event(ended, view(now, nodes(8), attempt=attempt, last_step=1200), [])
        )
    assert kinds(results[0]) == kinds(results[1]) == [("restart-run", "allow")]
    assert kinds(results[2]) == [("restart-run", "block"), ("alert", "allow")]
    assert "step 1200" in results[2][0].guards[0].detail
    (inc,) = eng.incidents()
    assert inc.kind is IncidentKind.CRASH_LOOP and inc.subject == "llm"
    # later failures stay blocked until an operator closes the incident
    late = eng.on_event(ended, view(T0 + 5 * 3600, nodes(8), attempt=3, last_step=5), [])
    assert kinds(late) == [("restart-run", "block")]
    eng.resolve_incident(inc.id, T0 + 6 * 3600)
    again = eng.on_event(ended, view(T0 + 7 * 3600, nodes(8), attempt=3, last_step=5), [])
    assert kinds(again) == [("restart-run", "allow")]


def test_restart_budget_incident() -> None:
    policy = parse_policy("""\
version: 1
guards: {restarts: {budget: 2, backoff_base: 0}}
rules:
  - {name: hung, when: {condition: RunHung}, then: [restart-run]}
""")
    eng = PolicyEngine(policy)
    verdicts = []
    for attempt in (1, 2, 3):
        now = T0 + 3600 * attempt
        ds = eng.on_condition(
            cond("llm", ConditionType.RUN_HUNG, t=now),
            view(now, nodes(8), attempt=attempt, last_step=attempt * 100),
            [],
        )
        verdicts.append(kinds(ds))
    assert verdicts[2] == [("restart-run", "block"), ("alert", "allow")]
    assert eng.incidents()[0].kind is IncidentKind.RESTART_BUDGET


def test_lemon_node_stays_drained() -> None:
    eng = PolicyEngine(load_policy())
    nv = with_node(nodes(40), "n005", conditions=[GPU], returned_at=T0 - 3600)
    ds = eng.on_condition(cond("n005"), view(T0, nv), [])
    assert ("drain", "allow") in kinds(ds)
    assert [i.kind for i in eng.incidents()] == [IncidentKind.LEMON_NODE]
    repaired = with_node(nodes(40), "n005", drained=True, by_us=True, run=None)
    later = T0 + 7200
    vet = eng.on_condition(cond("n005", status=False, t=later), view(later, repaired), [])
    assert kinds(vet) == [("vet", "block")]
    assert vet[0].guards[0].guard == "lemon-node"


def test_vet_after_repair_respects_the_cooldown() -> None:
    eng = PolicyEngine(load_policy())
    nv = with_node(nodes(40), "n005", conditions=[GPU])
    eng.on_condition(cond("n005"), view(T0, nv), [])
    repaired = with_node(nodes(40), "n005", drained=True, by_us=True, run=None)
    ds = eng.on_condition(cond("n005", status=False, t=T0 + 60), view(T0 + 60, repaired), [])
    assert kinds(ds) == [("vet", "hold")]
    assert kinds(eng.tick(view(T0 + 600, repaired))) == [("vet", "allow")]


def test_checkpoint_before_eviction() -> None:
    policy = parse_policy("""\
version: 1
rules:
  - name: evict
    when: {condition: Straggler}
    then: [checkpoint-now, drain, restart-run]
    checkpoint_timeout: 10m
""")
    eng = PolicyEngine(policy)
    nv = with_node(nodes(40), "n002", conditions=[ConditionType.STRAGGLER])
    ds = eng.on_condition(cond("n002", ConditionType.STRAGGLER), view(T0, nv), [])
    assert kinds(ds) == [("checkpoint-now", "allow"), ("drain", "hold"), ("restart-run", "hold")]
    assert all(d.guards[0].guard == "awaiting-checkpoint" for d in ds[1:])
    saved = Event(T0 + 50, EventKind.CHECKPOINT_SAVED, run="llm", data={"step": 10}, id=3)
    ds = eng.on_event(saved, view(T0 + 50, nv), [])
    assert kinds(ds) == [("drain", "allow"), ("restart-run", "allow")]
    assert ds[1].request.exclude == ("n002",)
    # without a checkpoint-saved event the rest goes ahead after the timeout
    eng2 = PolicyEngine(policy)
    eng2.on_condition(cond("n002", ConditionType.STRAGGLER), view(T0, nv), [])
    assert eng2.tick(view(T0 + 300, nv)) == []
    ds = eng2.tick(view(T0 + 600, nv))
    assert kinds(ds) == [("drain", "allow"), ("restart-run", "allow")]
    assert "not confirmed" in ds[0].guards[0].detail


def test_dry_run_records_only() -> None:
    eng = PolicyEngine(load_policy(), Mode.DRY_RUN)
    nv = with_node(nodes(40), "n003", conditions=[GPU])
    assert kinds(eng.on_condition(cond("n003"), view(T0, nv), [])) == [
        ("drain", "dry-run"),
        ("restart-run", "dry-run"),
    ]


def test_approve_mode_queues_until_resolved() -> None:
    eng = PolicyEngine(load_policy(), Mode.APPROVE)
    nv = with_node(nodes(40), "n003", conditions=[GPU])
    drain, restart = eng.on_condition(cond("n003"), view(T0, nv), [])
    assert drain.verdict is restart.verdict is Verdict.QUEUED
    assert eng.queued() == [drain, restart]
    ok = eng.resolve(drain, True, view(T0 + 30, nv), who="alice")
    assert ok.verdict is Verdict.ALLOW and ok.request.who == "alice"
    assert ok.guards[-1].detail == "approved by alice"
    no = eng.resolve(restart, False, view(T0 + 30, nv), who="bob")
    assert no.verdict is Verdict.BLOCK and eng.queued() == []


def test_repeated_degraded_faults_rule_uses_history() -> None:
    eng = PolicyEngine(load_policy())
    nv = nodes(40)
    hist: list[Event] = []
    results = []
    for i in range(3):
        ev = Event(
            T0 + 600 * i,
            EventKind.FAULT,
            node="n004",
            data={"kind": "xid", "severity": "degraded", "code": 13},
            id=i + 1,
        )
        results.append(kinds(eng.on_event(ev, view(ev.ts, nv), hist)))
        hist.append(ev)
    assert results == [[], [], [("drain", "allow")]]


def test_explain_lists_rule_evidence_and_guards() -> None:
    eng = PolicyEngine(load_policy())
    nv = with_node(nodes(40), "n003", conditions=[GPU])
    drain = eng.on_condition(cond("n003", ev=(7,)), view(T0, nv), [])[0]
    events = {7: Event(T0 - 30, EventKind.FAULT, node="n003", message="XID 79 on gpu 2", id=7)}
    lines = explain(drain, events, ident="A1")
    assert lines[0] == "A1: drain (node n003; run llm) -> allow"
    assert "rule 'gpu-fatal'" in lines[1]
    assert any("#7" in ln and "XID 79 on gpu 2" in ln for ln in lines)
    assert any(ln.strip().startswith("pass max-drains-per-window") for ln in lines)
    record = {
        "kind": "drain",
        "verdict": "allow",
        "actor": "operator",
        "who": "carol",
        "reason": "manual",
        "node": "n9",
        "evidence": [],
        "guards": [],
    }
    assert explain(record)[1] == "  by: operator carol"


def test_a_failed_action_does_not_count_against_the_guards() -> None:
    policy = parse_policy("""\
version: 1
guards: {drains: {max_per_window: 1, max_run_fraction: 1.0, max_cluster_fraction: 1.0}}
rules:
  - {name: dead, when: {condition: NodeDead}, then: [drain]}
""")
    eng = PolicyEngine(policy)
    nv = nodes(10)
    first = eng.on_condition(cond("n001", ConditionType.NODE_DEAD), view(T0, nv), [])
    assert kinds(first) == [("drain", "allow")]
    blocked = eng.on_condition(cond("n002", ConditionType.NODE_DEAD), view(T0 + 1, nv), [])
    assert kinds(blocked) == [("drain", "block")]
    eng.record_result(first[0], False, T0 + 2)  # the scheduler refused the first drain
    again = eng.on_condition(cond("n003", ConditionType.NODE_DEAD), view(T0 + 3, nv), [])
    assert kinds(again) == [("drain", "allow")]


def test_reload_keeps_history() -> None:
    eng = PolicyEngine(load_policy())
    nv = with_node(nodes(40), "n003", conditions=[GPU])
    eng.on_condition(cond("n003"), view(T0, nv), [])
    eng.reload(
        parse_policy(
            "version: 1\nguards: {drains: {max_per_window: 1}}\nrules:\n"
            "  - {name: g, when: {condition: GpuFatal}, then: [drain]}\n"
        )
    )
    nv = with_node(nv, "n004", conditions=[GPU])
    ds = eng.on_condition(cond("n004", t=T0 + 60), view(T0 + 60, nv), [])
    assert kinds(ds) == [("drain", "block")]  # the drain before the reload still counts
    assert ds[0].request.rule == "g"


def test_unknown_subjects_and_vanished_runs_are_harmless() -> None:
    eng = PolicyEngine(load_policy(), Mode.APPROVE)
    assert eng.on_condition(cond("ghost"), view(T0, nodes(4)), []) == []
    _drain, restart = eng.on_condition(
        cond("n001"), view(T0, with_node(nodes(4), "n001", conditions=[GPU])), []
    )
    gone = view(T0 + 10, nodes(4, run=None))
    gone = type(gone)(gone.now, gone.nodes, {})
    final = eng.resolve(restart, True, gone, who="dave")
    assert final.verdict is Verdict.BLOCK and final.guards[0].guard == "run-known"


def test_a_held_restart_is_dropped_when_the_run_was_restarted_meanwhile() -> None:
    eng = PolicyEngine(load_policy())
    ended = Event(T0, EventKind.ATTEMPT_ENDED, run="llm", data={"failed": True})
    eng.on_event(ended, view(T0, nodes(8), attempt=1, last_step=10), [])
    held = eng.on_event(ended, view(T0 + 10, nodes(8), attempt=2, last_step=20), [])
    assert kinds(held) == [("restart-run", "hold")]
    # an operator restarted the run by hand before the backoff ran out
    ds = eng.tick(view(T0 + 60, nodes(8), attempt=3))
    assert kinds(ds) == [("restart-run", "block")]
    assert ds[0].guards[0].guard == "still-needed"
    assert not eng.pending()


def test_a_restart_that_did_nothing_no_longer_stands_for_its_attempt() -> None:
    """Its job could not be stopped (the supervisor says so: nothing stopped, nothing
    submitted): the attempt's end an hour later restarts it (while the restart stood, every
    later one of the attempt was taken for a duplicate and dropped). A restart that merely
    failed (its submission may have reached the scheduler) still stands."""
    eng = PolicyEngine(load_policy())
    hung = cond("llm", ConditionType.RUN_HUNG)
    [d] = eng.on_condition(hung, view(T0, nodes(8), attempt=1), [])
    failed = {"failed": True, "attempt": 1}
    ended = Event(T0 + 3600, EventKind.ATTEMPT_ENDED, run="llm", data=failed)
    assert eng.on_event(ended, view(T0 + 60, nodes(8), attempt=1), []) == []  # in progress
    eng.record_result(d, False, T0 + 600)
    assert eng.on_event(ended, view(T0 + 3000, nodes(8), attempt=1), []) == []
    eng.restart_not_done("llm")
    later = eng.on_event(ended, view(T0 + 3600, nodes(8), attempt=1), [])
    assert kinds(later) == [("restart-run", "allow")]


def test_an_operators_result_does_not_settle_the_automatic_action_of_the_same_kind() -> None:
    """An automatic drain still being retried, and an operator's drain of that node done
    meanwhile: the operator's outcome leaves the automatic entry open."""
    eng = PolicyEngine(load_policy())
    nv = with_node(nodes(8), "n001", conditions=[ConditionType.GPU_FATAL], run=None)
    [auto] = [d for d in eng.on_condition(cond("n001"), view(T0, nv), []) if d.request.node]
    assert auto.request.kind is ActionKind.DRAIN
    manual = replace(auto, request=replace(auto.request, actor=Actor.OPERATOR, who="alice"))
    eng.record_result(manual, True, T0 + 5)
    [entry] = [e for e in eng._past if e.past.node == "n001"]
    assert entry.ok is None  # the automatic drain's outcome is still to come
    eng.record_result(auto, False, T0 + 600)
    assert entry.ok is False
