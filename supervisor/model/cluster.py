"""The daemon's in-memory picture of nodes and runs, and the view policies get of it.

The store is the durable copy; this is what every message is checked against, so that
per-message work stays in memory and the database is written in batches.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainwarden.policies.model import ActionRecordView, ClusterView, NodeView, RunView
from trainwarden.supervisor.checkpoints.base import FORMAT_CHOICES
from trainwarden.supervisor.detectors.conditions import ConditionBook
from trainwarden.supervisor.detectors.logprogress.parsers import check_progress
from trainwarden.supervisor.errors import ConfigError
from trainwarden.supervisor.model.lifecycle import (
    AttemptPhase,
    LifecycleError,
    NodePhase,
    RunPhase,
    attempt_move,
    node_move,
    run_move,
)

log = logging.getLogger(__name__)

DEFAULT_RANKS_PER_NODE = 8  # one rank a GPU on the largest common node (HGX: 8 GPUs)
MAX_RANKS_PER_NODE = 1024


@dataclass(frozen=True)
class RunSpec:
    """How to (re)submit a run. ``command`` is per-node (local) or the sbatch script (slurm)."""

    command: tuple[str, ...]
    nodes: int
    checkpoint_dir: str
    min_nodes: int | None = None  # accept a restart on fewer nodes, down to this many
    env: Mapping[str, str] = field(default_factory=dict)
    target_step: int | None = None
    workdir: str | None = None
    # ranks per node: an attempt's roster is its nodes x this many ranks (world size)
    ranks_per_node: int = DEFAULT_RANKS_PER_NODE
    set_by: str | None = None  # who set the command, workdir and environment
    # the checkpoint layout (trainwarden.supervisor.checkpoints.FORMAT_CHOICES): "auto" detects
    checkpoint_format: str = "auto"
    # where progress comes from: the ranks' reporter, or the job's log parsed as one
    # framework prints it (trainwarden.supervisor.detectors.logprogress.parsers.CHOICES)
    progress: str = "reporter"
    # Slurm: nodes held beyond ``nodes`` so a restart can swap one in inside the allocation
    spares: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": list(self.command),
            "nodes": self.nodes,
            "checkpoint_dir": self.checkpoint_dir,
            "min_nodes": self.min_nodes,
            "env": dict(self.env),
            "target_step": self.target_step,
            "workdir": self.workdir,
            "ranks_per_node": self.ranks_per_node,
            "set_by": self.set_by,
            "checkpoint_format": self.checkpoint_format,
            "progress": self.progress,
            **({"spares": self.spares} if self.spares else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        try:
            spec = cls(
                command=tuple(str(c) for c in d["command"]),
                nodes=int(d["nodes"]),
                checkpoint_dir=str(d["checkpoint_dir"]),
                min_nodes=None if d.get("min_nodes") is None else int(d["min_nodes"]),
                env={str(k): str(v) for k, v in dict(d.get("env") or {}).items()},
                target_step=None if d.get("target_step") is None else int(d["target_step"]),
                workdir=None if d.get("workdir") is None else str(d["workdir"]),
                ranks_per_node=int(d.get("ranks_per_node") or DEFAULT_RANKS_PER_NODE),
                set_by=None if d.get("set_by") is None else str(d["set_by"]),
                checkpoint_format=str(d.get("checkpoint_format") or "auto"),
                progress=str(d.get("progress") or "reporter"),
                spares=int(d.get("spares") or 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid run spec: {exc}") from None
        if not spec.command:
            raise ConfigError("invalid run spec: empty command")
        if spec.checkpoint_format not in FORMAT_CHOICES:
            raise ConfigError(
                f"invalid run spec: checkpoint_format {spec.checkpoint_format!r} is not one of "
                + ", ".join(FORMAT_CHOICES)
            )
        try:
            check_progress(spec.progress)
        except ValueError as exc:
            raise ConfigError(f"invalid run spec: {exc}") from None
        if not 1 <= spec.ranks_per_node <= MAX_RANKS_PER_NODE:
            raise ConfigError(
                f"invalid run spec: ranks_per_node={spec.ranks_per_node} "
                f"(1 to {MAX_RANKS_PER_NODE})"
            )
        if spec.spares < 0:
            raise ConfigError(f"invalid run spec: spares={spec.spares}")
        if spec.nodes < 1 or (spec.min_nodes is not None and not 1 <= spec.min_nodes <= spec.nodes):
            raise ConfigError(f"invalid run spec: nodes={spec.nodes}, min_nodes={spec.min_nodes}")
        return spec


@dataclass
class NodeInfo:
    name: str
    phase: NodePhase = NodePhase.UNKNOWN
    drained_by: str | None = None  # trainwarden | operator | external
    drain_reason: str | None = None
    scheduler_state: str | None = None
    last_heartbeat_at: float | None = None
    last_report_at: float | None = None
    returned_at: float | None = None
    run: str | None = None
    vet_started_at: float | None = None
    # the cluster's count of nodes per phase, kept as phases change (O(1) aggregates)
    counts: Counter[NodePhase] | None = field(default=None, repr=False, compare=False)

    def move(self, target: NodePhase) -> None:
        self._set(node_move(self.phase, target))

    def restore(self, phase: NodePhase) -> None:
        """The phase the store kept across a restart: the only write that is not a move."""
        self._set(phase)

    def _set(self, phase: NodePhase) -> None:
        if self.counts is not None and phase is not self.phase:
            self.counts[self.phase] -= 1
            self.counts[phase] += 1
        self.phase = phase

    @property
    def drained(self) -> bool:
        return self.phase in (NodePhase.DRAINING, NodePhase.DRAINED, NodePhase.VETTING)


@dataclass
class RunInfo:
    name: str
    scheduler: str
    spec: RunSpec
    created_at: float
    phase: RunPhase = RunPhase.PENDING
    attempt: int = 0
    attempt_phase: AttemptPhase | None = None
    job_id: str | None = None
    nodes: tuple[str, ...] = ()
    excluded: set[str] = field(default_factory=set)
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    failure_steps: list[int | None] = field(default_factory=list)
    last_step: int | None = None
    last_checkpoint_step: int | None = None
    last_checkpoint_path: str | None = None
    resumed_from_step: int | None = None
    attempt_first_step: int | None = None

    def move(self, target: RunPhase) -> None:
        """The run's phase, through its table; an illegal move is logged and ignored."""
        try:
            self.phase = run_move(self.phase, target)
        except LifecycleError as exc:
            log.warning("run %s: %s", self.name, exc)

    def begin_attempt(self, phase: AttemptPhase) -> None:
        """A new attempt (submitted or adopted) starts its own lifecycle."""
        self.attempt_phase = phase

    def move_attempt(self, target: AttemptPhase) -> None:
        """The current attempt's phase, through its table; an illegal move is logged."""
        try:
            self.attempt_phase = attempt_move(self.attempt_phase or AttemptPhase.SUBMITTED, target)
        except LifecycleError as exc:
            log.warning("run %s attempt %d: %s", self.name, self.attempt, exc)

    @property
    def active(self) -> bool:
        return self.phase in (
            RunPhase.RUNNING,
            RunPhase.RESTARTING,
            RunPhase.PENDING,
            RunPhase.HELD,
        )


MAX_UNKNOWN_REPORTERS = 10_000


@dataclass
class UnknownReporter:
    """A name that published as a node although the scheduler has no such node."""

    name: str
    first_seen: float
    last_seen: float
    messages: int
    last_topic: str


DRAINED_PHASES = (NodePhase.DRAINING, NodePhase.DRAINED, NodePhase.VETTING)


class ClusterState:
    """Nodes and runs by name, and the count of nodes per phase (kept as they move, so no
    per-message or per-tick work scans every node)."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.runs: dict[str, RunInfo] = {}
        self.phase_counts: Counter[NodePhase] = Counter()
        # the scheduler's node names, once read: a message from any other name is not a node
        self.roster: frozenset[str] | None = None
        self.unknown: dict[str, UnknownReporter] = {}  # names that sent messages anyway
        self.unknown_messages = 0

    def knows(self, name: str) -> bool:
        """Whether ``name`` is one of the cluster's nodes: the scheduler lists it (before its
        list was first read: the store kept it). Only such names become node state."""
        return name in self.nodes if self.roster is None else name in self.roster

    def unknown_reporter(self, name: str, topic: str, now: float) -> bool:
        """Note a message from a name that is no node; True the first time (log it once).
        Bounded: past :data:`MAX_UNKNOWN_REPORTERS` names only the count grows."""
        self.unknown_messages += 1
        seen = self.unknown.get(name)
        if seen is not None:
            seen.last_seen, seen.messages, seen.last_topic = now, seen.messages + 1, topic
            return False
        if len(self.unknown) < MAX_UNKNOWN_REPORTERS:
            self.unknown[name] = UnknownReporter(name, now, now, 1, topic)
        return True

    def node(self, name: str) -> NodeInfo:
        n = self.nodes.get(name)
        if n is None:
            n = self.nodes[name] = NodeInfo(name, counts=self.phase_counts)
            self.phase_counts[n.phase] += 1
        return n

    @property
    def drained_count(self) -> int:
        return sum(self.phase_counts[p] for p in DRAINED_PHASES)

    def place(self, run: RunInfo, nodes: Iterable[str]) -> None:
        """Where ``run``'s attempt runs now: O(the run's nodes), not O(the cluster)."""
        for name in run.nodes:
            n = self.nodes.get(name)
            if n is not None and n.run == run.name:
                n.run = None
        run.nodes = tuple(nodes)
        for name in run.nodes:
            self.node(name).run = run.name

    def view(
        self,
        now: float,
        book: ConditionBook,
        recent_actions: Sequence[ActionRecordView] = (),
        causes: Callable[[str], frozenset[str]] | None = None,
    ) -> ClusterView:
        """The policy's view: nodes are built as the policy looks them up (a decision looks
        at a few), so a view costs O(runs), not O(nodes)."""
        nodes = NodeViews(self.nodes, book, causes or _no_causes)
        runs = {
            r.name: RunView(
                name=r.name,
                nodes=r.nodes,
                active=r.active,
                attempt=r.attempt,
                restarts=r.restarts,
                restart_times=tuple(r.restart_times),
                failure_steps=tuple(r.failure_steps),
                last_step=r.last_step,
            )
            for r in self.runs.values()
        }
        return ClusterView(
            now=now,
            nodes=nodes,
            runs=runs,
            recent_actions=recent_actions,
            drained_nodes=self.drained_count,
        )


def _no_causes(_: str) -> frozenset[str]:
    return frozenset()


class NodeViews(Mapping[str, NodeView]):
    """The nodes of a view, each built when looked up from the live state (read at once:
    a policy evaluates synchronously, nothing changes under it)."""

    def __init__(
        self,
        nodes: Mapping[str, NodeInfo],
        book: ConditionBook,
        causes: Callable[[str], frozenset[str]],
    ) -> None:
        self._nodes = nodes
        self._book = book
        self._causes = causes

    def __getitem__(self, name: str) -> NodeView:
        n = self._nodes[name]
        return NodeView(
            name=n.name,
            run=n.run,
            drained=n.drained,
            drained_by_trainwarden=n.drained and n.drained_by == "trainwarden",
            returned_at=n.returned_at,
            conditions=self._book.types_of(n.name),
            causes=self._causes(n.name),
        )

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)
