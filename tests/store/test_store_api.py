"""The store's API, run unchanged on SQLite and PostgreSQL (see conftest.store_url)."""

from __future__ import annotations

import threading
import time

import pytest

from trainwarden.policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    Condition,
    ConditionType,
    Decision,
    Event,
    EventKind,
    GuardVerdict,
    Verdict,
)
from trainwarden.supervisor.errors import NotFoundError, StoreError
from trainwarden.supervisor.store.records import (
    ActionStatus,
    AttemptRecord,
    CheckpointRecord,
    NodeRecord,
    RunRecord,
    StoreBatch,
)
from trainwarden.supervisor.store.store import Store, open_store


def ev(ts: float, kind: EventKind = EventKind.FAULT, **kw: object) -> Event:
    return Event(ts=ts, kind=kind, **kw)  # type: ignore[arg-type]


def a_run(name: str = "llm70b", **kw: object) -> RunRecord:
    spec = {"command": ["python", "train.py"], "nodes": 4, "checkpoint_dir": "/ckpt"}
    return RunRecord(name=name, scheduler="slurm", spec=spec, created_at=100.0, **kw)  # type: ignore[arg-type]


# -- events ---------------------------------------------------------------------------------
def test_events_get_increasing_ids_in_order_and_round_trip(store: Store) -> None:
    ids = store.append_events(
        [
            ev(1.5, node="n1", message="xid 79", data={"xid": 79, "gpu": 2, "tags": ["a"]}),
            ev(2.0, EventKind.NODE_OFFLINE, node="n2"),
            ev(3.0, EventKind.RUN_STARTED, run="r1"),
        ]
    )
    assert len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3
    first = store.event(ids[0])
    assert first == Event(
        ts=1.5,
        kind=EventKind.FAULT,
        node="n1",
        message="xid 79",
        data={"xid": 79, "gpu": 2, "tags": ["a"]},
        id=ids[0],
    )
    assert store.event(ids[-1] + 1000) is None
    assert [e.id for e in store.events()] == ids[::-1]
    assert [e.id for e in store.events(newest_first=False, limit=2)] == ids[:2]


def test_event_filters(store: Store) -> None:
    ids = store.append_events(
        [
            ev(1, node="n1"),
            ev(2, EventKind.NODE_OFFLINE, node="n1"),
            ev(3, node="n2", run="r"),
            ev(4, EventKind.CHECKPOINT_SAVED, run="r"),
        ]
    )
    assert [e.id for e in store.events(node="n1")] == [ids[1], ids[0]]
    assert [e.id for e in store.events(run="r", newest_first=False)] == [ids[2], ids[3]]
    assert [e.id for e in store.events(kinds=[EventKind.FAULT])] == [ids[2], ids[0]]
    assert [e.id for e in store.events(since_id=ids[1], newest_first=False)] == ids[2:]
    assert [e.id for e in store.events(node="n2", kinds=["fault"], since_id=ids[0])] == [ids[2]]


def test_events_are_append_only_and_data_must_be_json(store: Store) -> None:
    with pytest.raises(StoreError, match="append-only"):
        store.append_events([ev(1, id=5)])
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        store.append_events([ev(1), ev(2, data={"when": object()})])
    assert store.events() == []
    assert store.append_events([]) == []


# -- conditions -----------------------------------------------------------------------------
def test_conditions_upsert_by_subject_and_type(store: Store) -> None:
    gpu = Condition("n1", ConditionType.GPU_FATAL, True, "xid 79", since=10.0, evidence=(1, 2))
    dead = Condition("n1", ConditionType.NODE_DEAD, False, "heartbeats ok", since=5.0)
    other = Condition("n2", ConditionType.STRAGGLER, True, "slow", since=7.0)
    store.save_conditions([gpu, dead, other], now=11.0)
    assert store.conditions("n1") == [gpu, dead]
    cleared = Condition("n1", ConditionType.GPU_FATAL, False, "vetted", since=20.0)
    store.save_conditions([cleared])
    assert store.conditions("n1") == [cleared, dead]
    assert store.conditions(active_only=True) == [other]
    assert len(store.conditions()) == 3


def test_duplicate_conditions_in_one_call_keep_the_last(store: Store) -> None:
    a = Condition("n1", ConditionType.STRAGGLER, True, "slow", since=1.0)
    b = Condition("n1", ConditionType.STRAGGLER, False, "recovered", since=2.0)
    store.save_conditions([a, b])
    assert store.conditions() == [b]


# -- nodes ----------------------------------------------------------------------------------
def test_nodes_upsert_touch_and_update(store: Store) -> None:
    n1 = NodeRecord(
        "n1", state="healthy", scheduler_state="idle", last_heartbeat_at=50.0, labels={"rack": "r1"}
    )
    store.upsert_nodes([n1, NodeRecord("n2")])
    assert store.node("n1") == n1
    store.touch_nodes({"n1": 60.0, "n3": 61.0})
    assert store.node("n1") == NodeRecord(
        "n1", state="healthy", scheduler_state="idle", last_heartbeat_at=60.0, labels={"rack": "r1"}
    )
    assert store.node("n3") == NodeRecord("n3", state="unknown", last_heartbeat_at=61.0)
    # A state update carrying a stale heartbeat time does not move the heartbeat back.
    store.upsert_nodes(
        [
            NodeRecord(
                "n1",
                state="draining",
                drained_by="trainwarden",
                drain_reason="xid 79",
                last_heartbeat_at=55.0,
                updated_at=62.0,
            )
        ]
    )
    got = store.node("n1")
    assert got is not None and got.state == "draining" and got.last_heartbeat_at == 60.0
    store.touch_nodes({"n1": 58.0})
    assert store.node("n1").last_heartbeat_at == 60.0  # type: ignore[union-attr]
    store.update_node("n1", state="drained", updated_at=70.0)
    assert store.node("n1").state == "drained"  # type: ignore[union-attr]
    assert [n.name for n in store.nodes()] == ["n1", "n2", "n3"]
    assert store.node("nope") is None
    with pytest.raises(NotFoundError, match="nope"):
        store.update_node("nope", state="failed")
    with pytest.raises(StoreError, match="unknown field"):
        store.update_node("n1", colour="red")


# -- runs, attempts, checkpoints ------------------------------------------------------------
def test_runs(store: Store) -> None:
    run = a_run()
    store.add_run(run)
    assert store.run("llm70b") == RunRecord(
        name="llm70b", scheduler="slurm", spec=run.spec, created_at=100.0, state="pending"
    )
    with pytest.raises(StoreError, match="already exists"):
        store.add_run(a_run(state="running"))
    assert store.run("llm70b").state == "pending"  # type: ignore[union-attr]
    store.update_run("llm70b", state="running", current_attempt=1, restarts=0)
    got = store.run("llm70b")
    assert got is not None and (got.state, got.current_attempt) == ("running", 1)
    with pytest.raises(NotFoundError):
        store.update_run("ghost", state="running")
    with pytest.raises(StoreError, match="unknown field"):
        store.update_run("llm70b", name="other")
    store.add_run(a_run("second"))
    assert [r.name for r in store.runs()] == ["llm70b", "second"]
    assert store.run("ghost") is None


def test_attempts(store: Store) -> None:
    store.add_run(a_run())
    first = AttemptRecord(
        run="llm70b", attempt=1, job_id="1234", nodes=("n1", "n2"), submitted_at=101.0
    )
    store.add_attempt(first)
    with pytest.raises(StoreError, match="already exists"):
        store.add_attempt(first)
    with pytest.raises(NotFoundError, match="ghost"):
        store.add_attempt(AttemptRecord(run="ghost", attempt=1))
    store.update_attempt(
        "llm70b", 1, state="failed", ended_at=200.0, end_reason="node-fail", last_step=1500
    )
    second = AttemptRecord(
        run="llm70b",
        attempt=2,
        nodes=("n1", "n3"),
        excluded=("n2",),
        resumed_from="/ckpt/step-1000",
        resumed_from_step=1000,
    )
    store.add_attempt(second)
    got = store.attempts("llm70b")
    assert got[1] == second
    assert (got[0].state, got[0].last_step, got[0].nodes) == ("failed", 1500, ("n1", "n2"))
    assert store.attempt("llm70b", 3) is None
    with pytest.raises(NotFoundError):
        store.update_attempt("llm70b", 3, state="running")


def test_checkpoints_idempotent_and_marked(store: Store) -> None:
    store.add_run(a_run())
    c = CheckpointRecord(
        run="llm70b", step=1000, path="/ckpt/step-1000", reported_at=150.0, attempt=1
    )
    assert store.add_checkpoint(c) is True
    assert (
        store.add_checkpoint(
            CheckpointRecord(run="llm70b", step=1000, path="/other", reported_at=151.0)
        )
        is False
    )
    store.add_checkpoint(
        CheckpointRecord(run="llm70b", step=500, path="/ckpt/step-500", reported_at=120.0)
    )
    store.mark_checkpoint("llm70b", 1000, False, "shard 3 missing", at=160.0)
    got = store.checkpoints("llm70b")
    assert [x.step for x in got] == [500, 1000]
    assert got[1] == CheckpointRecord(
        run="llm70b",
        step=1000,
        path="/ckpt/step-1000",
        reported_at=150.0,
        attempt=1,
        valid=False,
        validated_at=160.0,
        reason="shard 3 missing",
    )
    with pytest.raises(NotFoundError):
        store.mark_checkpoint("llm70b", 7, True, at=1.0)
    with pytest.raises(NotFoundError):
        store.add_checkpoint(CheckpointRecord(run="ghost", step=1, path="/x", reported_at=1.0))


# -- actions, incidents, leases -------------------------------------------------------------
def test_actions_record_guards_and_results(store: Store) -> None:
    drain = Decision(
        ActionRequest(
            ActionKind.DRAIN, Actor.RULE, "xid 79", node="n1", rule="gpu-fatal", evidence=(3, 4)
        ),
        Verdict.ALLOW,
        (GuardVerdict("cooldown", True), GuardVerdict("max-drains-per-window", True, "1/5")),
    )
    blocked = Decision(
        ActionRequest(ActionKind.RESTART_RUN, Actor.RULE, "node lost", run="r", exclude=("n1",)),
        Verdict.BLOCK,
        (GuardVerdict("restart-budget", False, "5/5 used"),),
    )
    manual = Decision(
        ActionRequest(ActionKind.UNDRAIN, Actor.OPERATOR, "fixed", node="n1", who="alice"),
        Verdict.ALLOW,
    )
    a = store.record_action(drain, ts=10.0)
    b = store.record_action(blocked, ts=11.0)
    c = store.record_action(manual, ts=12.0, status=ActionStatus.RUNNING)
    got = store.action(a)
    assert got is not None
    assert got.request == drain.request and got.guards == drain.guards
    assert (got.verdict, got.status) == (Verdict.ALLOW, ActionStatus.PENDING)
    assert store.action(b).status == ActionStatus.SKIPPED  # type: ignore[union-attr]
    assert store.action(b).request.exclude == ("n1",)  # type: ignore[union-attr]
    store.update_action(a, status=ActionStatus.SUCCEEDED, result="drained", finished_at=10.5)
    done = store.action(a)
    assert done is not None
    assert (done.status, done.result, done.finished_at) == ("succeeded", "drained", 10.5)
    assert done.view().kind == ActionKind.DRAIN
    assert [x.id for x in store.actions()] == [c, b, a]
    assert [x.id for x in store.actions(node="n1")] == [c, a]
    assert [x.id for x in store.actions(run="r")] == [b]
    assert [x.id for x in store.actions(status=ActionStatus.RUNNING)] == [c]
    assert [x.id for x in store.actions(since=11.0, limit=1)] == [c]
    assert store.action(9999) is None
    with pytest.raises(NotFoundError):
        store.update_action(9999, status=ActionStatus.FAILED)


def test_incidents(store: Store) -> None:
    i = store.open_incident("storage", "lustre /capstor hang", 100.0, {"nodes": ["n1", "n2"]})
    j = store.open_incident("fabric", "switch s7", 110.0)
    assert [x.id for x in store.incidents(open_only=True)] == [j, i]
    assert store.close_incident(i, 150.0) is True
    assert store.close_incident(i, 160.0) is False
    assert [x.id for x in store.incidents(open_only=True)] == [j]
    closed = next(x for x in store.incidents() if x.id == i)
    assert (closed.closed_at, closed.open, closed.detail) == (150.0, False, {"nodes": ["n1", "n2"]})
    with pytest.raises(NotFoundError):
        store.close_incident(12345, 1.0)


def test_lease_acquire_renew_expire_release(store: Store) -> None:
    assert store.acquire_lease("leader", "a", ttl_s=10, now=0.0)
    assert not store.acquire_lease("leader", "b", ttl_s=10, now=5.0)
    assert store.acquire_lease("leader", "a", ttl_s=10, now=8.0)  # renew
    assert store.lease("leader").expires_at == 18.0  # type: ignore[union-attr]
    assert not store.acquire_lease("leader", "b", ttl_s=10, now=17.9)
    assert store.acquire_lease("leader", "b", ttl_s=10, now=18.0)  # a let it expire
    assert not store.release_lease("leader", "a")
    assert store.release_lease("leader", "b")
    assert store.lease("leader") is None
    with pytest.raises(StoreError, match="ttl"):
        store.acquire_lease("leader", "a", ttl_s=0, now=1.0)


def test_lease_is_exclusive_under_contention(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(6)]
    wins: list[str] = []
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def contend(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            if stores[i].acquire_lease("leader", f"daemon-{i}", ttl_s=30, now=1000.0):
                wins.append(f"daemon-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for s in stores:
        s.close()
    assert errors == []
    assert len(wins) == 1
    with open_store(store_url) as s:
        assert s.lease("leader").holder == wins[0]  # type: ignore[union-attr]


# -- the flusher's batch --------------------------------------------------------------------
def test_write_batch_applies_everything_in_one_go(store: Store) -> None:
    batch = StoreBatch()
    batch.nodes.append(NodeRecord("n1", state="healthy"))
    batch.heartbeat("n1", 5.0)
    batch.heartbeat("n1", 4.0)  # older: ignored
    batch.heartbeat("n2", 6.0)
    batch.add_events([ev(5.0, node="n1"), ev(6.0, EventKind.NODE_ONLINE, node="n2")])
    batch.conditions.append(Condition("n1", ConditionType.GPU_FATAL, True, "xid", since=5.0))
    assert len(batch) == 6
    ids = store.write_batch(batch, now=6.0)
    assert [e.id for e in store.events(newest_first=False)] == ids
    assert store.node("n1") == NodeRecord("n1", state="healthy", last_heartbeat_at=5.0)
    assert store.node("n2").last_heartbeat_at == 6.0  # type: ignore[union-attr]
    assert store.conditions("n1")[0].reason == "xid"
    batch.clear()
    assert len(batch) == 0 and store.write_batch(batch) == []


def test_a_batch_with_one_invalid_row_stores_none_of_it(store: Store) -> None:
    store.append_events([ev(1.0)])
    before_events = store.events()
    batch = StoreBatch()
    batch.heartbeat("n1", 5.0)
    batch.add_events([ev(float(i), node="n1") for i in range(50)])
    batch.conditions.append(Condition("n1", ConditionType.NODE_DEAD, True, "will", since=5.0))
    # Rejected by the database itself (NOT NULL), after the other rows were sent.
    batch.conditions.append(Condition("n2", ConditionType.NODE_DEAD, True, None, since=5.0))  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="writing a batch"):
        store.write_batch(batch)
    assert store.events() == before_events
    assert store.nodes() == [] and store.conditions() == []
    # The store is still usable, and the same batch minus the bad row goes through.
    batch.conditions.pop()
    assert len(store.write_batch(batch)) == 50


def test_state_survives_reopening(store_url: str) -> None:
    with open_store(store_url) as s:
        s.add_run(a_run())
        ids = s.append_events([ev(1.0, run="llm70b")])
    with open_store(store_url) as s:
        assert s.run("llm70b") is not None
        assert s.event(ids[0]) is not None


def test_one_store_shared_by_threads(store: Store) -> None:
    """The daemon's writer thread and the API's reader threads share one Store."""
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(10):
                store.append_events([ev(float(i), node=f"t{t}") for _ in range(5)])
                store.events(node=f"t{t}", limit=5)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    ids = [e.id for e in store.events(limit=None)]
    assert len(ids) == 200 and len(set(ids)) == 200


def test_batch_ids_match_their_events(store: Store) -> None:
    store.append_events([ev(0.0, message="before")])
    batch = StoreBatch()
    batch.add_events([ev(float(i), message=f"m{i}", data={"i": i}) for i in range(300)])
    ids = store.write_batch(batch)
    assert ids == sorted(ids) and len(set(ids)) == 300
    for i in (0, 1, 150, 299):
        got = store.event(ids[i])
        assert got is not None and (got.message, got.data) == (f"m{i}", {"i": i})


def test_a_lease_without_a_time_runs_on_the_databases_clock(store: Store) -> None:
    """Daemons on hosts whose clocks differ agree on when the lease runs out: on
    PostgreSQL the database's clock decides, on SQLite (one host) this host's."""
    before = time.time()
    assert store.acquire_lease("leader", "a", ttl_s=10)
    lease = store.lease("leader")
    assert lease is not None and before + 10 - 2 <= lease.expires_at <= time.time() + 10 + 2
    # another daemon asking without a time of its own sees it valid by that same clock
    assert not store.acquire_lease("leader", "b", ttl_s=10)
    assert store.acquire_lease("leader", "a", ttl_s=10)  # and the holder renews it
