"""What the simulator's executor (``actions.py``) and its figures (``figures.py``) see of a
running simulation. ``runner.Simulation`` is the one implementation; naming it here keeps
those modules free of an import of the runner that drives them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ClusterView, Decision, Event
from trainwarden.supervisor.decide.core import DecisionCore
from trainwarden.supervisor.decide.settings import DetectorSettings
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.sim.accounting import Spans
from trainwarden.supervisor.sim.agents import Agents
from trainwarden.supervisor.sim.cluster import SimCluster
from trainwarden.supervisor.sim.events import EventLog
from trainwarden.supervisor.sim.scenario import FaultSpec, Scenario


@dataclass
class Logged:
    """One decision of the engine, when it was made (for the figures and ``--explain``)."""

    ts: float
    decision: Decision


class SimHost(Protocol):
    sc: Scenario
    settings: DetectorSettings
    engine: PolicyEngine
    core: DecisionCore
    events: EventLog
    agents: Agents
    cluster: SimCluster
    faults: list[FaultSpec]
    now: float
    log: list[Logged]
    count: Counter[str]
    blocks: Counter[str]
    holds: Counter[str]
    transitions: Counter[str]
    spans: Spans

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None: ...
    def view(self) -> ClusterView: ...
    def record(self, ev: Event) -> Event: ...
    def observe(self, obs: Sequence[Observation]) -> None: ...
    def restart(self, exclude: tuple[str, ...]) -> None: ...
    def retry_pending(self) -> None: ...
    def tick_after(self, delay_s: float) -> None: ...
