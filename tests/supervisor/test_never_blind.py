"""The daemon never stops silently and never judges nodes it cannot hear (in-process, in
virtual time, on a real SQLite store): poison messages are rejected and counted and the next
message is handled; silence is not a verdict while disconnected or behind on the bus; the
heartbeat interval and sequence are checked on the daemon's terms."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from trainwarden.health.clock import VirtualClock
from trainwarden.health.errors import ReportError
from trainwarden.health.probes.base import Severity
from trainwarden.health.report import (
    FaultModel,
    FaultReport,
    Heartbeat,
    NodeStatus,
    StepSample,
    checkpoint_topic,
    encode,
    node_topic,
    parse_message,
    steps_topic,
)
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ActionKind, ConditionType, EventKind
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.process import Daemon, DaemonConfig
from trainwarden.supervisor.daemon.sdnotify import Notifier
from trainwarden.supervisor.daemon.supervisor import CoreConfig, Supervisor
from trainwarden.supervisor.errors import StoreError
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.scheduler.base import NodeState
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

NODES = ["n1", "n2", "n3", "n4"]
T0 = 1_700_000_000.0


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    s = Supervisor(
        CoreConfig(),
        VirtualClock(T0),
        AsyncStore(open_store(url)),
        LocalScheduler(NODES, tmp_path / "logs"),
        PolicyEngine(load_policy()),
        Metrics(),
    )
    await upkeep.sync_scheduler(s)  # the roster of nodes, as the daemon reads it at start
    yield s
    for t in list(s.tasks):
        t.cancel()
    s.store.close()


def clock(sup: Supervisor) -> VirtualClock:
    assert isinstance(sup.clock, VirtualClock)
    return sup.clock


async def beat(sup: Supervisor, node: str, seq: int, interval_s: float = 2.0) -> None:
    hb = Heartbeat(node=node, ts=sup.clock.now(), seq=seq, interval_s=interval_s)
    await sup.handle(node_topic(node, "heartbeat"), encode(hb))


async def run_for(sup: Supervisor, seconds: float, beating: list[str], seq0: int = 1) -> None:
    """Advance virtual time tick by tick; the ``beating`` nodes heartbeat every 2 s."""
    for i in range(int(seconds / 0.5)):
        if i % 4 == 0:
            for n in beating:
                await beat(sup, n, seq0 + i)
        await sup.tick()
        clock(sup).advance(0.5)
    await asyncio.gather(*list(sup.tasks))


def dead(sup: Supervisor) -> set[str]:
    return {n for n in NODES if sup.book.is_true(n, ConditionType.NODE_DEAD)}


def raw(**fields: object) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


POISON = [
    (
        "step >= 2**63",
        steps_topic("r1", 0),
        raw(
            kind="steps",
            run="r1",
            attempt=1,
            rank=0,
            node="n1",
            samples=[{"step": 2**63, "step_s": 1.0, "ts": T0}],
        ),
    ),
    (
        "checkpoint step >= 2**31",
        checkpoint_topic("r1"),
        raw(
            kind="checkpoint",
            run="r1",
            attempt=1,
            rank=0,
            node="n1",
            step=2**31,
            path="/ck/step-1",
            ts=T0,
        ),
    ),
    (
        "NUL in a checkpoint path",
        checkpoint_topic("r1"),
        raw(
            kind="checkpoint",
            run="r1",
            attempt=1,
            rank=0,
            node="n1",
            step=5,
            path="/ck/\x00step-5",
            ts=T0,
        ),
    ),
    (
        "NUL in a status reason",
        node_topic("n1", "status"),
        raw(kind="status", node="n1", state="offline", reason="bye\x00", ts=T0),
    ),
    (
        "control character in a fault detail",
        node_topic("n1", "fault"),
        raw(
            kind="fault",
            node="n1",
            ts=T0,
            faults=[{"kind": "xid", "severity": "fatal", "detail": "x\x1b[31m", "code": 79}],
        ),
    ),
    (
        "attempt >= 2**31",
        steps_topic("r1", 0),
        raw(
            kind="steps",
            run="r1",
            attempt=2**31,
            rank=0,
            node="n1",
            samples=[{"step": 1, "step_s": 1.0, "ts": T0}],
        ),
    ),
    (
        "seq >= 2**63",
        node_topic("n1", "heartbeat"),
        raw(kind="heartbeat", node="n1", ts=T0, seq=2**63, interval_s=2.0),
    ),
    (
        "XID code out of range",
        node_topic("n1", "fault"),
        raw(
            kind="fault",
            node="n1",
            ts=T0,
            faults=[{"kind": "xid", "severity": "fatal", "detail": "", "code": 2**40}],
        ),
    ),
]


@pytest.mark.parametrize(("why", "topic", "payload"), POISON, ids=[p[0] for p in POISON])
def test_poison_is_refused_at_the_wire_with_a_reason(why: str, topic: str, payload: bytes) -> None:
    with pytest.raises(ReportError, match="invalid"):
        parse_message(topic, payload)


def test_a_refusal_sentence_is_itself_storable() -> None:
    """A bad key shows in the error's location: escaped, so the rejection event can be
    stored (PostgreSQL refuses NUL); C1 controls are refused like C0."""
    body = {
        "kind": "health",
        "node": "n1",
        "ts": 1.0,
        "seq": 1,
        "overall": "healthy",
        "probes": [{"probe": "gpu", "health": "healthy", "values": {"k\x00ey": 1}}],
    }
    with pytest.raises(ReportError) as err:
        parse_message(node_topic("n1", "health"), raw(**body))
    assert "\x00" not in str(err.value) and "k\\x00ey" in str(err.value)
    with pytest.raises(ReportError, match="control character"):
        parse_message(
            node_topic("n1", "status"),
            raw(kind="status", node="n1", state="offline", reason="x\x9b[2J"),
        )


def test_nan_in_a_probe_value_is_refused() -> None:
    payload = (
        b'{"v": 1, "kind": "health", "node": "n1", "ts": 1.0, "seq": 1, "overall": "healthy",'
        b' "probes": [{"probe": "gpu", "health": "healthy", "values": {"gpu0_temp_c": NaN}}]}'
    )
    with pytest.raises(ReportError, match="gpu0_temp_c"):
        parse_message(node_topic("n1", "health"), payload)


async def test_poison_messages_are_counted_and_the_next_messages_are_handled(
    sup: Supervisor, tmp_path: Path
) -> None:
    spec = RunSpec(command=("true",), nodes=2, checkpoint_dir=str(tmp_path / "ck"))
    sup.state.runs["r1"] = RunInfo("r1", "local", spec, T0)
    for n in NODES:
        await beat(sup, n, 1)
    for _why, topic, payload in POISON:
        await sup.handle(topic, payload)
    assert sup.rejected == len(POISON)
    rejected = sup.metrics.rejected_messages_total.labels(reason="invalid")._value.get()
    assert rejected == len(POISON)
    await run_for(sup, 20.0, NODES, seq0=2)
    assert dead(sup) == set()
    assert sup.metrics.messages_total.labels(kind="heartbeat")._value.get() > len(NODES)
    assert not [a for a in sup.store.store.actions() if a.kind is ActionKind.DRAIN]


async def test_no_node_dies_of_silence_while_the_daemon_is_disconnected(
    sup: Supervisor,
) -> None:
    for n in NODES:
        await beat(sup, n, 1)
    sup.core.hearing.disconnected()
    await run_for(sup, 30.0, beating=[])  # the broker is gone: nobody is heard
    assert dead(sup) == set()
    kinds = [e.kind for e in sup.store.store.events(kinds=[EventKind.VERDICTS_SUSPENDED])]
    assert kinds == [EventKind.VERDICTS_SUSPENDED]
    # back: the agents reconnect within the grace (10 s), then every node has a full
    # window (3 x 2 s + 1 s); n4 never comes back
    sup.core.hearing.reconnected()
    await run_for(sup, 16.0, beating=["n1", "n2", "n3"], seq0=100)
    assert dead(sup) == set()  # 16 s < 10 s + 7 s since the reconnect
    await run_for(sup, 2.0, beating=["n1", "n2", "n3"], seq0=200)
    assert dead(sup) == {"n4"}
    resumed = sup.store.store.events(kinds=[EventKind.VERDICTS_RESUMED])
    assert len(resumed) == 1 and "disconnected" in resumed[0].message


async def test_a_last_will_is_confirmed_only_once_the_daemon_hears_again(
    sup: Supervisor,
) -> None:
    """A heartbeat that refutes the will may be stuck behind the outage too."""
    for n in NODES:
        await beat(sup, n, 1)
    will = NodeStatus(node="n2", state="offline", reason="connection lost", ts=T0)
    await sup.handle(node_topic("n2", "status"), encode(will))
    sup.core.hearing.disconnected()
    await run_for(sup, 5.0, beating=[])
    assert dead(sup) == set()
    sup.core.hearing.reconnected()
    await run_for(sup, 1.5, beating=["n1", "n3", "n4"], seq0=100)
    assert dead(sup) == set()  # the will is confirmed by 2 s of silence heard after it
    await run_for(sup, 1.5, beating=["n1", "n3", "n4"], seq0=200)
    assert dead(sup) == {"n2"}


async def test_a_brief_outage_between_two_ticks_still_gets_the_grace(sup: Supervisor) -> None:
    for n in NODES:
        await beat(sup, n, 1)
    await run_for(sup, 5.0, beating=NODES, seq0=2)
    sup.core.hearing.disconnected()  # the broker drops and returns before the next tick
    clock(sup).advance(0.2)
    sup.core.hearing.reconnected()
    await run_for(sup, 12.0, beating=["n1", "n2", "n3"], seq0=100)  # n4's agent is slow back
    assert dead(sup) == set()
    resumed = sup.store.store.events(kinds=[EventKind.VERDICTS_RESUMED])
    assert resumed and "briefly" in resumed[0].message


async def test_a_skewed_clock_hides_a_dead_node_for_a_minute_at_most(sup: Supervisor) -> None:
    """Every node's clock is 20 s behind this host's: that is an offset, not a queue."""
    skew = 20.0

    async def skewed(node: str, seq: int) -> None:
        hb = Heartbeat(node=node, ts=sup.clock.now() - skew, seq=seq, interval_s=2.0)
        await sup.handle(node_topic(node, "heartbeat"), encode(hb))

    for i in range(int(90 / 0.5)):
        if i % 4 == 0:
            for n in ("n1", "n2", "n3") if i > 20 else NODES:  # n4 dies at 10 s
                await skewed(n, 1 + i)
        await sup.tick()
        clock(sup).advance(0.5)
    assert dead(sup) == {"n4"}
    notes = [e.message for e in sup.store.store.events(kinds=[EventKind.VERDICTS_RESUMED])]
    assert any("clock offset" in m for m in notes)


async def test_no_run_is_hung_by_a_broker_outage(sup: Supervisor, tmp_path: Path) -> None:
    spec = RunSpec(command=("true",), nodes=2, checkpoint_dir=str(tmp_path / "ck"))
    sup.state.runs["r1"] = RunInfo("r1", "local", spec, T0)
    sup.progress.start_attempt("r1", 1, sup.clock.now())
    step = StepSample(step=1, step_s=1.0, ts=sup.clock.now())
    sup.progress.on_steps("r1", 1, 0, "n1", [step], sup.clock.now())
    sup.core.hearing.disconnected()
    await run_for(sup, 60.0, beating=[])  # longer than the 30 s hang floor
    assert not sup.book.is_true("r1", ConditionType.RUN_HUNG)
    sup.core.hearing.reconnected()
    await run_for(sup, 20.0, beating=NODES, seq0=100)
    assert not sup.book.is_true("r1", ConditionType.RUN_HUNG)  # a full window after the grace


async def test_silence_is_not_judged_while_the_daemon_is_behind_on_the_bus(
    sup: Supervisor,
) -> None:
    for n in NODES:
        await beat(sup, n, 1)
    # 20 s of draining a backlog: what it reads was sent 40 s ago, and the heartbeats of
    # n2..n4 are still further back in its queue, so those nodes only look silent
    for i in range(40):
        for j in range(5):
            hb = Heartbeat(node="n1", ts=sup.clock.now() - 40.0, seq=2 + 5 * i + j, interval_s=2.0)
            await sup.handle(node_topic("n1", "heartbeat"), encode(hb))
        await sup.tick()
        clock(sup).advance(0.5)
    assert dead(sup) == set()
    assert sup.core.hearing.suspended is not None
    assert sup.core.hearing.suspended.startswith("behind on the bus")
    # caught up: every node's fresh heartbeats arrive; then n4 stops for real
    await run_for(sup, 10.0, beating=NODES, seq0=1000)
    assert sup.core.hearing.suspended is None and dead(sup) == set()
    await run_for(sup, 10.0, beating=["n1", "n2", "n3"], seq0=2000)
    assert dead(sup) == {"n4"}


async def test_an_absurdly_short_interval_does_not_kill_a_node(sup: Supervisor) -> None:
    await beat(sup, "n1", 1, interval_s=1e-6)
    await run_for(sup, 1.5, beating=[])
    assert dead(sup) == set()  # judged at the minimum interval (1 s): dead after 4 s, not 1.4
    await run_for(sup, 3.5, beating=[])
    assert dead(sup) == {"n1"}


async def test_a_very_long_interval_is_capped(sup: Supervisor) -> None:
    await beat(sup, "n1", 1, interval_s=3600.0)
    await run_for(sup, 200.0, beating=[])
    assert dead(sup) == {"n1"}  # 3 x 60 s + 1 s at the longest


async def test_a_replayed_heartbeat_does_not_keep_a_dead_node_alive(sup: Supervisor) -> None:
    await beat(sup, "n1", 7)
    clock(sup).advance(1.0)
    await beat(sup, "n1", 7)  # the same seq again
    await beat(sup, "n1", 3)  # an older one
    assert sup.rejected == 2
    replayed = sup.metrics.rejected_messages_total.labels(reason="replayed")._value.get()
    assert replayed == 2
    last = sup.nodes.node("n1").last_heartbeat
    assert last == T0  # the replays were not counted
    # a new agent session (connect) starts its sequence again
    online = NodeStatus(node="n1", state="online", ts=sup.clock.now())
    await sup.handle(node_topic("n1", "status"), encode(online))
    await beat(sup, "n1", 1)
    assert sup.rejected == 2 and sup.nodes.node("n1").last_heartbeat == sup.clock.now()


class _Boom(RuntimeError):
    pass


async def test_an_internal_error_in_one_message_does_not_stop_the_next(
    sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(DaemonConfig(db_url="sqlite://"))
    real = sup.handle
    calls: list[str] = []

    async def flaky(topic: str, payload: bytes) -> None:
        calls.append(topic)
        if len(calls) == 1:
            raise _Boom("a bug")
        await real(topic, payload)

    monkeypatch.setattr(sup, "handle", flaky)
    for seq in (1, 2):
        hb = Heartbeat(node="n1", ts=sup.clock.now(), seq=seq, interval_s=2.0)
        msg = aiomqtt.Message(node_topic("n1", "heartbeat"), encode(hb), 1, False, seq, None)
        await daemon._handle(sup, msg)
    assert len(calls) == 2
    assert sup.metrics.handler_errors_total.labels(stage="message")._value.get() == 1
    assert sup.nodes.node("n1").last_seq == 2


async def test_a_stopped_loop_stops_the_watchdog_and_fails_healthz() -> None:
    daemon = Daemon(DaemonConfig(db_url="sqlite://"))

    async def crashes() -> None:
        raise _Boom("ingestion died")

    async def runs() -> None:
        await asyncio.sleep(3600)

    ingest = asyncio.get_running_loop().create_task(crashes())
    tick = asyncio.get_running_loop().create_task(runs())
    daemon._loops = {"ingest": ingest, "tick": tick}
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    problems = daemon.loop_problems()
    tick.cancel()
    assert problems == ["ingest loop stopped: _Boom('ingestion died')"]


async def test_a_leader_that_could_not_renew_its_lease_acts_no_more(sup: Supervisor) -> None:
    daemon = Daemon(DaemonConfig(db_url="sqlite://", lease_ttl_s=15.0))
    daemon.leader = True
    daemon._lease_until = daemon.clock.monotonic() + 15.0
    sup.fence = daemon.fence
    assert daemon.fence() is None
    daemon._lease_until = daemon.clock.monotonic() + 1.0  # renewals failed: 1 s left
    fault = FaultReport(
        node="n3",
        ts=sup.clock.now(),
        faults=[FaultModel(kind="xid", severity=Severity.FATAL, detail="XID 79", gpu=0, code=79)],
    )
    await beat(sup, "n3", 1)
    await sup.handle(node_topic("n3", "fault"), encode(fault))
    await asyncio.gather(*list(sup.tasks))
    [drain] = [a for a in sup.store.store.actions() if a.kind is ActionKind.DRAIN]
    assert drain.status == "failed" and "could not renew its leader lease" in (drain.result or "")
    nodes = {n.name: n.state for n in await sup.scheduler.nodes()}
    assert nodes["n3"] is not NodeState.DRAINED


async def test_a_standby_keeps_standing_by_through_a_store_outage(
    sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp")) / "api.sock"  # short enough
    daemon = Daemon(
        DaemonConfig(db_url="sqlite://", lease_ttl_s=0.3, api_socket=str(sock), metrics_port=0)
    )
    answers: list[bool | StoreError] = [StoreError("connection refused")] * 2 + [False, True]

    def acquire(*_args: object) -> bool:
        a = answers.pop(0)
        if isinstance(a, StoreError):
            raise a
        return a

    monkeypatch.setattr(sup.store.store, "acquire_lease", acquire)
    stop = asyncio.Event()
    try:
        led = await asyncio.wait_for(daemon._lead(sup.store, stop, Metrics(), Notifier({})), 10)
    finally:
        await daemon._stop_standby()
    assert led and answers == [] and daemon.leader and daemon.fence() is None
