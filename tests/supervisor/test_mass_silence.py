"""A mass silence is one incident, not thousands of decisions: when many nodes fall silent
together (a switch, the network, the broker's host) their verdicts are held; the nodes that
stay silent once most are back are judged one by one; a lone silent node is judged as before.

In-process, in virtual time, on a real SQLite store, through the daemon's message path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trainwarden.health.clock import VirtualClock
from trainwarden.health.report import Heartbeat, encode, node_topic
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ActionKind, ConditionType, EventKind, IncidentKind
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.supervisor import CoreConfig, Supervisor
from trainwarden.supervisor.detectors.node_faults import NodeHealthTracker
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

NODES = [f"nid{i:06d}" for i in range(2200)]
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


class Beats:
    """Every node heartbeats every 2 s, spread over the interval as real agents are."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.seq = dict.fromkeys(NODES, 0)
        self.heard: list[int] = []  # heartbeats handled per tick

    async def run(self, seconds: float, beating: set[str]) -> None:
        clock = self.sup.clock
        assert isinstance(clock, VirtualClock)
        for _ in range(int(seconds / 0.5)):
            slot = round((clock.now() - T0) / 0.5) % 4
            count = 0
            for i, node in enumerate(NODES):
                if i % 4 == slot and node in beating:
                    self.seq[node] += 1
                    hb = Heartbeat(node=node, ts=clock.now(), seq=self.seq[node], interval_s=2)
                    await self.sup.handle(node_topic(node, "heartbeat"), encode(hb))
                    count += 1
            self.heard.append(count)
            await self.sup.tick()
            clock.advance(0.5)


def dead(sup: Supervisor) -> set[str]:
    return {n for n in NODES if sup.book.is_true(n, ConditionType.NODE_DEAD)}


def mass_incidents(sup: Supervisor) -> list[bool]:
    return [i.open for i in sup.policy.incidents() if i.kind is IncidentKind.MASS_SILENCE]


async def test_two_thousand_nodes_silent_at_once_are_one_incident_not_two_thousand_deaths(
    sup: Supervisor,
) -> None:
    beats = Beats(sup)
    everyone = set(NODES)
    await beats.run(10, everyone)
    silent = set(NODES[:2000])  # a core switch dies: 2,000 of 2,200 nodes fall silent
    await beats.run(30, everyone - silent)
    assert dead(sup) == set()
    assert mass_incidents(sup) == [True]
    assert [a for a in sup.store.store.actions() if a.kind is ActionKind.DRAIN] == []
    # the 200 others kept being heard: every one of their heartbeats was handled, each tick
    assert set(beats.heard[-40:]) == {50}
    assert all(sup.nodes.node(n).last_heartbeat == pytest.approx(sup.clock.now() - 0.5, abs=2)
               for n in NODES[2000:])  # fmt: skip
    [row] = sup.store.store.incidents(open_only=True)
    assert row.kind == "mass-silence"
    [shown] = await DaemonService(sup).list_incidents(open_only=True)  # GET /api/v1/incidents
    assert (shown.kind, shown.open) == ("mass-silence", True)
    suspended = sup.store.store.events(kinds=[EventKind.VERDICTS_SUSPENDED])
    # one event, when the first quarter of them had fallen silent (the rest joined it)
    assert len(suspended) == 1 and "nodes went silent within 30 s" in suspended[0].message

    # the switch is replaced: all but three come back; those three are judged one by one
    await beats.run(10, everyone - set(NODES[:3]))
    assert mass_incidents(sup) == [False]
    assert dead(sup) == set(NODES[:3])
    resumed = sup.store.store.events(kinds=[EventKind.VERDICTS_RESUMED])
    assert any("mass silence is over" in e.message for e in resumed)
    assert sup.store.store.incidents(open_only=True) == []
    assert await DaemonService(sup).list_incidents(open_only=True) == []


async def test_a_lone_silent_node_is_judged_as_before(sup: Supervisor) -> None:
    beats = Beats(sup)
    everyone = set(NODES)
    await beats.run(10, everyone)
    await beats.run(10, everyone - {NODES[7]})
    assert dead(sup) == {NODES[7]} and mass_incidents(sup) == []


def test_the_threshold_follows_the_cluster_size() -> None:
    t = NodeHealthTracker(mass_nodes=10, mass_fraction=0.02)
    for i in range(20_000):
        t.node(f"n{i}")
    assert t.mass_threshold() == 400
    assert NodeHealthTracker(mass_nodes=10, mass_fraction=0.02).mass_threshold() == 10
