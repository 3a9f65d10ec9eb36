"""Chaos on real parts, bounded in time: the daemon, four agents and the CLI as separate
processes on a private Mosquitto (its own loopback port; the machine's broker is never
touched) and SQLite. Poison messages, then the broker killed with SIGKILL for 10 s: no
node is declared dead, nothing is drained, ingestion goes on, the daemon is back within
3 s of the broker. Each case prints its measured figures (``-s`` shows them)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_harness import BIN, Broker, Stack, report, wait_for

from trainwarden.health.report import INT32_MAX
from trainwarden.supervisor.daemon.process import LOST_LEASE_EXIT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    broker = Broker(tmp_path)
    broker.start()
    s = Stack(tmp_path, broker)
    try:
        s.start()
        yield s
    except BaseException:
        print(s.logs(), file=sys.stderr)
        raise
    finally:
        s.stop()
        if broker.proc is not None and broker.proc.poll() is None:
            broker.kill()


def test_poison_messages_are_rejected_and_ingestion_goes_on(stack: Stack) -> None:
    n1 = stack.nodes[0]
    poison = [
        ("trainwarden/v1/run/r1/steps/0", {"kind": "steps", "run": "r1", "attempt": 1,
         "rank": 0, "node": n1, "samples": [{"step": 2**63, "step_s": 1.0, "ts": 1.0}]}),
        ("trainwarden/v1/run/r1/checkpoint", {"kind": "checkpoint", "run": "r1", "attempt": 1,
         "rank": 0, "node": n1, "step": INT32_MAX + 1, "path": "/ck", "ts": 1.0}),
        ("trainwarden/v1/run/r1/checkpoint", {"kind": "checkpoint", "run": "r1", "attempt": 1,
         "rank": 0, "node": n1, "step": 5, "path": "/ck/\u0000x", "ts": 1.0}),
        (f"trainwarden/v1/node/{n1}/status", {"kind": "status", "node": n1,
         "state": "offline", "reason": "x\u0000", "ts": 1.0}),
        (f"trainwarden/v1/node/{n1}/heartbeat", {"kind": "heartbeat", "node": n1, "ts": 1.0,
         "seq": 5, "interval_s": 1e-6}),
    ]  # fmt: skip
    before = stack.counter("trainwarden_messages_total")
    for topic, body in poison:
        stack.broker.publish(topic, json.dumps({"v": 1, **body}).encode())
    wait_for(
        lambda: stack.counter("trainwarden_rejected_messages_total") >= 4, 20, "the rejections"
    )
    time.sleep(8.0)  # longer than a node's heartbeat window
    after = stack.counter("trainwarden_messages_total")
    health = stack.get("/healthz")
    report(
        "poison",
        rejected=stack.counter("trainwarden_rejected_messages_total"),
        messages_during=after - before,
        node_dead=len(stack.dead_events()),
        drains=len(stack.drains()),
        handler_errors=stack.counter("trainwarden_handler_errors_total"),
    )
    assert after - before >= 4 * 8  # the agents' heartbeats kept being processed
    assert stack.dead_events() == [] and stack.drains() == []
    assert sorted(stack.healthy()) == sorted(stack.nodes)
    assert stack.counter("trainwarden_handler_errors_total") == 0
    assert health is not None and health["ok"] is True and health["problems"] == []


def test_broker_killed_for_ten_seconds_kills_no_node(stack: Stack) -> None:
    stack.broker.kill()
    down_at = time.monotonic()
    time.sleep(10.0)
    stack.broker.start()
    up_at = time.monotonic()
    back_s = wait_for(lambda: (stack.get("/healthz") or {}).get("broker") is True, 10,
                      "the daemon back on the broker")  # fmt: skip
    wait_for(lambda: len(stack.healthy()) == len(stack.nodes), 30, "every agent back")
    time.sleep(12.0)  # past the reconnect grace and a heartbeat window
    suspended = [
        e for e in stack.get("/api/v1/events?limit=1000") or []
        if e["kind"] in ("verdicts-suspended", "verdicts-resumed")
    ]  # fmt: skip
    report(
        "broker-kill-10s",
        outage_s=round(up_at - down_at, 1),
        reconnected_after_broker_s=round(back_s, 2),
        node_dead=len(stack.dead_events()),
        drains=len(stack.drains()),
        verdict_events=[e["kind"] for e in suspended],
    )
    assert back_s <= 3.0
    assert stack.dead_events() == [] and stack.drains() == []
    assert sorted(stack.healthy()) == sorted(stack.nodes)
    assert {e["kind"] for e in suspended} == {"verdicts-suspended", "verdicts-resumed"}


def test_a_stopped_leader_is_replaced_and_acts_no_more_after_it_resumes(tmp_path: Path) -> None:
    """Two daemons on one store; the leader is SIGSTOPped past its lease. The standby takes
    over within the TTL + 5 s; after SIGCONT the old leader stops, and the XID that follows
    is drained once, by the new leader."""
    ttl = 4.0
    broker = Broker(tmp_path)
    broker.start()
    s = Stack(tmp_path, broker)
    db = f"sqlite:///{tmp_path / 'tw.db'}"
    apis = [s.addresses() for _ in range(2)]
    try:
        subprocess.run([BIN, "db", "upgrade", "--url", db], check=True, capture_output=True)
        for i, (api, metrics) in enumerate(apis):
            s._spawn(f"daemon{i}", [
                BIN, "daemon", "--db", db, "--broker", f"127.0.0.1:{broker.port}",
                "--api", api, "--metrics", metrics.removeprefix("http://"), "--scheduler", "local",
                "--local-nodes", ",".join(s.nodes), "--local-log-dir", str(tmp_path / f"j{i}"),
                "--client-id", f"tw-chaos-{i}", "--lease-ttl", str(ttl),
            ])  # fmt: skip
            if i == 0:  # the first one leads
                s.api, s.metrics = api, metrics
                wait_for(lambda: (s.get("/healthz") or {}).get("leader") is True, 30,
                         "the leader's API")  # fmt: skip
        for n in s.nodes:
            s._spawn(n, [
                BIN, "agent", "--node", n, "--broker", f"127.0.0.1:{broker.port}",
                "--heartbeat", "1", "--interval", "2",
                "--simulated-hardware", str(tmp_path / "hw" / n),
            ])  # fmt: skip
        wait_for(lambda: len(s.healthy()) == len(s.nodes), 60, "every node healthy")
        leader, standby = s.procs["daemon0"], s.procs["daemon1"]
        s.api, s.metrics = apis[1]  # the standby answers /healthz and /metrics as a standby
        wait_for(lambda: (s.get("/healthz") or {}).get("standby") is True, 30,
                 "the standby's own /healthz")  # fmt: skip
        standby_metrics = s.get("/metrics") or ""
        assert "trainwarden_leader 0.0" in standby_metrics
        leader.send_signal(signal.SIGSTOP)
        took_s = wait_for(lambda: (s.get("/healthz") or {}).get("leader") is True, ttl + 5,
                          "the standby leading")  # fmt: skip
        time.sleep(2.0)
        leader.send_signal(signal.SIGCONT)
        leader.wait(30)  # it finds its lease taken and stops
        victim = s.nodes[2]
        subprocess.run(
            [BIN, "hw", "inject", "--state-dir", str(tmp_path / "hw" / victim), "xid:79"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        wait_for(s.drains, 30, "the drain")
        time.sleep(3.0)
        drains = s.drains()
        report(
            "leader-sigstop",
            lease_ttl_s=ttl,
            standby_leading_after_s=round(took_s, 2),
            old_leader_exit=leader.returncode,
            drains=[(d["node"], d["status"]) for d in drains],
        )
        # the old leader exits with a failure, so systemd's Restart=on-failure brings it back
        assert standby.poll() is None and leader.returncode == LOST_LEASE_EXIT
        assert [(d["node"], d["status"]) for d in drains] == [(victim, "succeeded")]
    except BaseException:
        print(s.logs(), file=sys.stderr)
        raise
    finally:
        for p in s.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
        s.stop()
        broker.kill()
