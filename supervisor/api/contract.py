"""The operator service: what the HTTP API (and so the ``trainwarden`` CLI) may ask of the daemon.

The daemon implements :class:`OperatorService`; :mod:`supervisor.api.server` serves it over HTTP
and :mod:`supervisor.api.client` calls it. The row models are the JSON the API speaks: the
same pydantic classes validate what the server sends and what the client reads, so both
sides agree on the shape by construction.

Errors: an unknown node, run, event or action raises :class:`~supervisor.errors.NotFoundError`
(HTTP 404); a refused request raises another :class:`~trainwarden.health.errors.TrainwardenError`
(HTTP 400), with a sentence the operator can act on.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainwarden.health.report import NAME_PATTERN
from trainwarden.policies.model import ActionKind, Actor, Event, Verdict
from trainwarden.supervisor.detectors.logprogress.parsers import check_progress
from trainwarden.supervisor.model.cluster import DEFAULT_RANKS_PER_NODE, MAX_RANKS_PER_NODE
from trainwarden.supervisor.store.records import ActionRecord, ActionStatus

__all__ = [
    "DEFAULT_API",
    "DEFAULT_API_HOST",
    "DEFAULT_API_PORT",
    "NODE_STATES",
    "ActionRow",
    "ConditionRow",
    "EventRow",
    "Explanation",
    "GoodputRow",
    "NodeDetail",
    "NodeRow",
    "OperatorService",
    "RunRow",
    "RunSpecIn",
    "UnknownReporterRow",
]

# Where the daemon serves this API unless told otherwise; the server binds it, the client
# calls it. They live here, in the contract, so neither side imports the other.
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8470
DEFAULT_API = f"http://{DEFAULT_API_HOST}:{DEFAULT_API_PORT}"

NodeState = Literal["healthy", "suspect", "failed", "draining", "drained", "vetting", "unknown"]
NODE_STATES: tuple[NodeState, ...] = (
    "healthy",
    "suspect",
    "failed",
    "draining",
    "drained",
    "vetting",
    "unknown",
)
DrainedBy = Literal["trainwarden", "operator", "external"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class NodeRow(_Row):
    """One compute node as ``trainwarden nodes`` shows it."""

    name: str
    state: NodeState
    scheduler_state: str | None = None
    run: str | None = None
    drained_by: DrainedBy | None = None
    drain_reason: str | None = None
    # when the drain took effect: the drain action's finish, or when the scheduler was
    # first seen showing it (a drain made outside trainwarden); None when not drained
    drained_at: float | None = None
    last_heartbeat_at: float | None = None
    conditions: list[str] = Field(default_factory=list)  # ConditionType values now true


class ConditionRow(_Row):
    """One condition now true of a node, with since when and why."""

    type: str  # a ConditionType value
    since: float
    reason: str
    evidence: list[int] = Field(default_factory=list)  # event ids


class UnknownReporterRow(_Row):
    """A name that published as a node although the scheduler has no such node: counted
    and shown, never made node state (``trainwarden nodes --all``)."""

    name: str
    first_seen: float
    last_seen: float
    messages: int
    last_topic: str


class RunRow(_Row):
    """One supervised training run."""

    name: str
    scheduler: str
    state: str
    attempt: int
    restarts: int
    nodes: list[str] = Field(default_factory=list)
    last_step: int | None = None
    target_step: int | None = None
    last_checkpoint_step: int | None = None
    resumed_from_step: int | None = None
    ranks_per_node: int | None = None
    command_set_by: str | None = None  # who set the command, workdir and environment
    # where progress comes from (RunSpecIn.progress) and, for a log, what is read and how
    progress: str = "reporter"
    progress_detail: str | None = None


class EventRow(_Row):
    """One recorded event (an append-only fact)."""

    id: int
    ts: float
    kind: str  # an EventKind value
    node: str | None = None
    run: str | None = None
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, event: Event) -> EventRow:
        """The row of a stored event (``event.id`` must be set)."""
        if event.id is None:
            raise ValueError("an event without an id has not been stored yet")
        return cls(
            id=event.id,
            ts=event.ts,
            kind=str(event.kind),
            node=event.node,
            run=event.run,
            message=event.message,
            data=dict(event.data),
        )


class IncidentRow(_Row):
    """What automation stopped for: a crash loop, a spent budget, a lemon node, a correlated
    failure, a mass silence; open until it clears (or an operator closes it)."""

    id: str
    kind: str
    subject: str
    opened_at: float
    cleared_at: float | None = None
    open: bool
    detail: str
    nodes: str = ""  # as a hostlist
    node_count: int = 0


class ActionRow(_Row):
    """One recorded action, automatic or manual, with its guards and outcome."""

    id: int
    ts: float
    kind: ActionKind
    actor: Actor
    who: str | None = None
    rule: str | None = None
    node: str | None = None
    run: str | None = None
    reason: str
    evidence: list[int] = Field(default_factory=list)  # event ids
    guards: list[dict[str, Any]] = Field(default_factory=list)  # {guard, passed, detail}
    verdict: Verdict
    status: ActionStatus
    result: str | None = None

    @classmethod
    def of(cls, record: ActionRecord) -> ActionRow:
        """The row of a stored action."""
        return cls(
            id=record.id,
            ts=record.ts,
            kind=record.kind,
            actor=record.actor,
            who=record.who,
            rule=record.rule,
            node=record.node,
            run=record.run,
            reason=record.reason,
            evidence=list(record.evidence),
            guards=[
                {"guard": g.guard, "passed": g.passed, "detail": g.detail} for g in record.guards
            ],
            verdict=record.verdict,
            status=record.status,
            result=record.result,
        )


class NodeDetail(NodeRow):
    """One node in detail (``trainwarden nodes NODE``): its row, its conditions with since
    and reason, and the newest events and actions about it, each list oldest first."""

    last_report_at: float | None = None
    returned_at: float | None = None  # when it last came back into service
    condition_details: list[ConditionRow] = Field(default_factory=list)
    events: list[EventRow] = Field(default_factory=list)
    actions: list[ActionRow] = Field(default_factory=list)


class GoodputRow(_Row):
    """Where a run's wall time went (``trainwarden runs RUN --goodput``): ETTR = productive /
    wall time; the buckets (supervisor.goodput.BUCKETS) add up to ``wall_s``; ``advice`` is the
    checkpoint-interval advice (supervisor.goodput.Advice), None until it can be given."""

    run: str
    start: float
    end: float
    wall_s: float
    ettr: float
    buckets: dict[str, float] = Field(default_factory=dict)
    restart_overhead_s: float = 0.0
    interruptions: int = 0
    advice: dict[str, Any] | None = None


class Explanation(_Row):
    """Why something happened: readable lines, the action (if any) and its evidence; for an
    event, also what it led to (the actions that cite it as evidence, oldest first)."""

    subject: str  # "action 12" / "event 40"
    lines: list[str] = Field(default_factory=list)
    action: ActionRow | None = None
    events: list[EventRow] = Field(default_factory=list)
    followed: list[ActionRow] = Field(default_factory=list)


class RunSpecIn(BaseModel):
    """What an operator submits to put a run under supervision (``trainwarden runs add``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    scheduler: Literal["local", "slurm"]
    # local: the command each node runs; slurm: [sbatch script, script args...]
    command: list[str] = Field(min_length=1, max_length=1000)
    nodes: int = Field(ge=1, le=100_000)
    checkpoint_dir: str = Field(min_length=1, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    target_step: int | None = Field(default=None, ge=0)
    # accept a restart on fewer nodes than ``nodes`` (elastic), down to this many
    min_nodes: int | None = Field(default=None, ge=1)
    # an attempt's world size is its nodes x ranks_per_node: steps from other ranks are refused
    ranks_per_node: int = Field(default=DEFAULT_RANKS_PER_NODE, ge=1, le=MAX_RANKS_PER_NODE)
    # the checkpoint layout restarts look for (supervisor.checkpoints); "auto" detects it
    checkpoint_format: Literal["auto", "dcp", "megatron", "deepspeed", "hf", "lightning"] = "auto"
    # where step progress comes from: "reporter" (the ranks call trainwarden's reporter:
    # per-rank timing, stragglers), or the job's log parsed as megatron | torchtitan | hf |
    # lightning print it, "auto" (detected from its first step line), or "regex:PATTERN"
    # with a named group step (optionally step_s); from a log, hangs are detected, stragglers not
    progress: str = Field(default="reporter", max_length=1000)
    # Slurm: hold this many nodes beyond ``nodes`` (sbatch --no-kill); a restart then swaps a
    # spare in for the failed node inside the allocation instead of a new sbatch
    spares: int = Field(default=0, ge=0, le=1000)
    # do not submit: take over the job already running under the tag trainwarden:<name>
    adopt: bool = False

    @field_validator("command")
    @classmethod
    def _command_words(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the command's first word (the program) is empty")
        if any("\x00" in word for word in value):
            raise ValueError("the command contains a NUL character")
        return value

    @field_validator("progress")
    @classmethod
    def _progress(cls, value: str) -> str:
        return check_progress(value)

    @field_validator("checkpoint_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"checkpoint_dir {value!r} is not an absolute path")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return value


class OperatorService(Protocol):
    """What the daemon offers operators. Manual actions are recorded like automatic ones."""

    async def list_nodes(self) -> list[NodeRow]: ...

    async def node_detail(self, node: str) -> NodeDetail:
        """One node in detail; NotFoundError (with the known names) for an unknown node."""
        ...

    async def list_unknown_reporters(self) -> list[UnknownReporterRow]:
        """Names that published as nodes but are no node of the scheduler's."""
        ...

    async def drain(self, node: str, reason: str, who: str) -> ActionRow:
        """Drain ``node`` in the scheduler; NotFoundError for an unknown node."""
        ...

    async def undrain(self, node: str, reason: str, who: str) -> ActionRow: ...

    async def list_runs(self) -> list[RunRow]: ...

    async def add_run(self, spec: RunSpecIn, who: str) -> RunRow:
        """Put a new run under supervision; SupervisorError if the name is taken."""
        ...

    async def restart_run(self, run: str, reason: str, who: str) -> ActionRow: ...

    async def goodput(self, run: str) -> GoodputRow:
        """Where ``run``'s wall time went, and the checkpoint interval advised; NotFoundError
        for an unknown run."""
        ...

    async def list_events(
        self,
        *,
        limit: int,
        node: str | None,
        run: str | None,
        kind: str | None,
        since_id: int | None,
        oldest_first: bool = False,
    ) -> list[EventRow]:
        """The newest ``limit``, newest first; ``since_id`` keeps only ids greater than it.
        ``oldest_first``: the oldest ``limit`` after ``since_id``, oldest first, so a
        follower reads forward without gaps however many arrive between two polls."""
        ...

    async def list_actions(self, *, status: str | None, limit: int) -> list[ActionRow]:
        """Newest first, at most ``limit``."""
        ...

    async def list_incidents(self, *, open_only: bool) -> list[IncidentRow]:
        """Newest first."""
        ...

    async def close_incident(self, ident: str, reason: str, who: str) -> IncidentRow:
        """An operator closes an open incident: what it stopped (a run's restarts, a lemon
        node's return) may happen again."""
        ...

    async def explain(self, ident: int, what: Literal["event", "action"]) -> Explanation: ...

    async def approve(self, action_id: int, who: str) -> ActionRow: ...

    async def reject(self, action_id: int, reason: str, who: str) -> ActionRow: ...

    def status(self) -> dict[str, Any]:
        """For /healthz: e.g. ok, db, broker, leader, started_at, version.

        ``/healthz`` answers 503 when ``status()["ok"]`` is false, 200 otherwise.
        """
        ...
