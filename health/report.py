"""The wire format between agents, training ranks and the daemon: versioned JSON over MQTT.

Every message carries ``v`` (schema version) and ``kind``. :func:`parse_message` is the
single gate on the daemon side: it checks size, JSON, version, kind, fields and that the
sender's topic matches the node or run it claims, and raises :class:`ReportError` with
a sentence naming what is wrong.

Training ranks' step reports reach the daemon one of two ways: each rank publishes its
own :class:`StepReport` on ``trainwarden/v1/run/<run>/steps/<rank>``, or (at scale) the
ranks hand them to the node's agent over a local datagram socket (the relay,
:mod:`trainwarden.health.agent`), which checks them with :func:`parse_relayed` -- the
same size, JSON, version and field checks, plus "this node's ranks only" -- and
publishes them batched as one :class:`NodeSteps` per node and flush on
``trainwarden/v1/node/<node>/steps`` (checkpoint reports one by one on
``trainwarden/v1/node/<node>/checkpoint``). The daemon handles each embedded report as if
it had come on its own; the node topic is the broker's authenticated identity, so with
the shipped ACL the relay is the only way ranks' reports reach the daemon.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from trainwarden.health.errors import ReportError
from trainwarden.health.probes.base import Action, CheckResult, Fault, Health, Severity

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024
# One datagram from a rank to its node's agent (the relay). Far below MAX_PAYLOAD_BYTES,
# so any number of relayed reports up to MAX_NODE_STEP_REPORTS packs into NodeSteps
# messages without one report ever being too big for one; a Unix datagram of this size
# fits the default socket buffers (net.core.wmem_default is ~208 KiB).
MAX_RELAY_DATAGRAM_BYTES = 64 * 1024
MAX_NODE_STEP_REPORTS = 1024  # StepReports in one NodeSteps message
# Where the node agent listens for its ranks' reports (the relay) unless told otherwise
# (``trainwarden agent --relay``, ``TRAINWARDEN_RELAY``). A system path, not
# $XDG_RUNTIME_DIR: the agent runs as its own service user, the ranks as the job's user,
# and both must agree on the path without sharing an environment.
DEFAULT_RELAY_PATH = "/run/trainwarden/agent.sock"
TOPIC_PREFIX = "trainwarden/v1"

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]

# Integers are bounded by the store's columns (32-bit on PostgreSQL) and by what is
# plausible, so no value on the wire can overflow a column or a detector's buffer.
INT32_MAX = 2**31 - 1
Step = Annotated[int, Field(ge=0, le=INT32_MAX)]
Attempt = Annotated[int, Field(ge=0, le=INT32_MAX)]
Rank = Annotated[int, Field(ge=0, le=2**24)]  # 16 M ranks
Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # C0, DEL, C1


def _printable(text: str) -> str:
    """Stored text holds no NUL or control characters (tab and newline are kept)."""
    bad = _CONTROL.search(text)
    if bad is not None:
        raise ValueError(f"control character {bad.group()!r} at position {bad.start()}")
    return text


Text = Annotated[str, AfterValidator(_printable)]
Key = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_printable)]
# a probe's measured value: finite numbers, printable text
WireValue = Annotated[float, Field(allow_inf_nan=False)] | int | Text | bool | None


def check_name(what: str, name: str) -> str:
    """Return ``name`` if it is a valid node or run name, else raise a clear error."""
    if not _NAME_RE.match(name):
        raise ReportError(
            f"invalid {what} name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return name


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: int = SCHEMA_VERSION


class FaultModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    kind: Text = Field(min_length=1, max_length=64)
    severity: Severity
    detail: Text = Field(default="", max_length=2000)
    gpu: int | None = Field(default=None, ge=0, le=4096)
    code: int | None = Field(default=None, ge=-INT32_MAX, le=INT32_MAX)
    cause: Text | None = Field(default=None, max_length=256)

    @classmethod
    def of(cls, fault: Fault) -> FaultModel:
        return cls(
            kind=fault.kind,
            severity=fault.severity,
            detail=fault.detail,
            gpu=fault.gpu,
            code=fault.code,
            cause=fault.cause,
        )

    def to_fault(self) -> Fault:
        return Fault(self.kind, self.severity, self.detail, self.gpu, self.code, self.cause)


class ProbeReport(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    probe: Text = Field(min_length=1, max_length=512)  # storage:<path> names can be long
    health: Health
    reason: Text = Field(default="", max_length=2000)
    action: Action = Action.NONE
    values: dict[Key, WireValue] = Field(default_factory=dict, max_length=4096)
    faults: list[FaultModel] = Field(default_factory=list)
    duration_s: NonNegative = 0.0

    @classmethod
    def of(cls, result: CheckResult) -> ProbeReport:
        return cls(
            probe=result.probe,
            health=result.health,
            reason=result.reason,
            action=result.action,
            values=dict(result.values),
            faults=[FaultModel.of(f) for f in result.faults],
            duration_s=result.duration_s,
        )


class HealthReport(_Msg):
    """All probe results of one node at one time."""

    kind: Literal["health"] = "health"
    node: Name
    ts: NonNegative
    seq: Seq
    overall: Health
    probes: list[ProbeReport]


class Heartbeat(_Msg):
    """The agent is alive; ``interval_s`` tells the daemon when to expect the next one."""

    kind: Literal["heartbeat"] = "heartbeat"
    node: Name
    ts: NonNegative
    seq: Seq
    interval_s: float = Field(gt=0, le=3600, allow_inf_nan=False)


class FaultReport(_Msg):
    """Faults that arrived as events (an XID), published at once."""

    kind: Literal["fault"] = "fault"
    node: Name
    ts: NonNegative
    faults: list[FaultModel] = Field(min_length=1)


class NodeStatus(_Msg):
    """Online at connect; ``offline`` is the agent's last will, published by the broker."""

    kind: Literal["status"] = "status"
    node: Name
    state: Literal["online", "offline"]
    ts: NonNegative = 0.0
    reason: Text = Field(default="", max_length=500)


class StepSample(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    step: Step
    step_s: float = Field(ge=0.0, le=86_400.0, allow_inf_nan=False)
    compute_s: float | None = Field(default=None, ge=0.0, le=86_400.0, allow_inf_nan=False)
    ts: NonNegative


class StepReport(_Msg):
    """One rank's progress: one or more finished steps, batched."""

    kind: Literal["steps"] = "steps"
    run: Name
    attempt: Attempt
    rank: Rank
    node: Name
    group: Text | None = Field(default=None, max_length=64)
    samples: list[StepSample] = Field(min_length=1, max_length=10_000)


class NodeSteps(_Msg):
    """The step reports of one node's ranks, relayed and batched by the node's agent.

    Published on the node's own topic (``trainwarden/v1/node/<node>/steps``); every
    embedded report must name this node, so an agent speaks only for its own ranks.
    """

    kind: Literal["node-steps"] = "node-steps"
    node: Name
    ts: NonNegative
    reports: list[StepReport] = Field(min_length=1, max_length=MAX_NODE_STEP_REPORTS)

    @model_validator(mode="after")
    def _own_ranks_only(self) -> NodeSteps:
        for i, r in enumerate(self.reports):
            if r.node != self.node:
                raise ValueError(
                    f"reports.{i} is from node {r.node!r}; a node relays only its own ranks"
                )
        return self


class CheckpointReport(_Msg):
    """A rank finished saving a checkpoint of ``step`` under ``path``."""

    kind: Literal["checkpoint"] = "checkpoint"
    run: Name
    attempt: Attempt
    rank: Rank
    node: Name
    step: Step
    path: Text = Field(min_length=1, max_length=4096)
    ts: NonNegative


class ControlMessage(_Msg):
    """Daemon to ranks: e.g. ask for a checkpoint now, before an eviction."""

    kind: Literal["control"] = "control"
    run: Name
    command: Literal["checkpoint-now"]
    request_id: Text = Field(min_length=1, max_length=64)
    ts: NonNegative


Message = (
    HealthReport | Heartbeat | FaultReport | NodeStatus | StepReport | NodeSteps | CheckpointReport
)
_MODELS: dict[str, type[BaseModel]] = {
    "health": HealthReport,
    "heartbeat": Heartbeat,
    "fault": FaultReport,
    "status": NodeStatus,
    "steps": StepReport,
    "node-steps": NodeSteps,
    "checkpoint": CheckpointReport,
    "control": ControlMessage,
}


# --- topics -------------------------------------------------------------------------


def node_topic(node: str, kind: str) -> str:
    """``trainwarden/v1/node/<node>/<kind>`` for health, heartbeat, fault and status."""
    return f"{TOPIC_PREFIX}/node/{check_name('node', node)}/{kind}"


def node_steps_topic(node: str) -> str:
    """``trainwarden/v1/node/<node>/steps``: the node's relayed step reports (NodeSteps)."""
    return node_topic(node, "steps")


def steps_topic(run: str, rank: int) -> str:
    return f"{TOPIC_PREFIX}/run/{check_name('run', run)}/steps/{rank}"


def checkpoint_topic(run: str) -> str:
    return f"{TOPIC_PREFIX}/run/{check_name('run', run)}/checkpoint"


def node_checkpoint_topic(node: str) -> str:
    """``trainwarden/v1/node/<node>/checkpoint``: a checkpoint report relayed by the node's
    agent, under the node's broker identity."""
    return node_topic(node, "checkpoint")


def control_topic(run: str) -> str:
    return f"{TOPIC_PREFIX}/run/{check_name('run', run)}/control"


SUBSCRIPTIONS = (
    f"{TOPIC_PREFIX}/node/+/+",  # covers node/<node>/steps (NodeSteps) too
    f"{TOPIC_PREFIX}/run/+/steps/+",
    f"{TOPIC_PREFIX}/run/+/checkpoint",
)


def encode(msg: BaseModel) -> bytes:
    return msg.model_dump_json().encode()


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        # a bad key is part of the location: escaped, so the sentence itself is storable
        loc = ".".join(_escaped(str(p)) for p in e["loc"]) or "(message)"
        parts.append(f"{loc}: {e['msg']}")
    more = err.error_count() - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_message(topic: str, payload: bytes) -> Message | ControlMessage:
    """Validate one MQTT message and return its model, or raise :class:`ReportError`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ReportError(
            f"payload on {topic} is {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:2]) != TOPIC_PREFIX:
        raise ReportError(f"unexpected topic {topic!r}")
    msg = _validate(f"on {topic}", payload, _MODELS)
    _check_topic(topic, parts, msg)
    return msg  # type: ignore[return-value]


_RELAYED: dict[str, type[BaseModel]] = {"steps": StepReport, "checkpoint": CheckpointReport}


def parse_relayed(payload: bytes, node: str) -> StepReport | CheckpointReport:
    """Validate one datagram a rank sent to ``node``'s agent, or raise :class:`ReportError`.

    The same checks as :func:`parse_message` (size, JSON, version, kind, fields) for the
    two kinds a rank may relay; the datagram has no topic, so instead the report must
    name this node: an agent relays its own node's ranks and nobody else's.
    """
    where = f"in a datagram to node {node}'s relay"
    if len(payload) > MAX_RELAY_DATAGRAM_BYTES:
        raise ReportError(
            f"payload {where} is {len(payload)} bytes, over the "
            f"{MAX_RELAY_DATAGRAM_BYTES}-byte limit"
        )
    msg = _validate(where, payload, _RELAYED)
    assert isinstance(msg, StepReport | CheckpointReport)
    if msg.node != node:
        raise ReportError(
            f"{msg.kind} report {where} claims node {msg.node!r}; the relay takes only its "
            "own node's ranks"
        )
    return msg


def _validate(where: str, payload: bytes, models: dict[str, type[BaseModel]]) -> BaseModel:
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"payload {where} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ReportError(f"payload {where} is a JSON {type(raw).__name__}, not an object")
    version = raw.get("v")
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"payload {where} has schema version {version!r}; this daemon reads version "
            f"{SCHEMA_VERSION}"
        )
    kind = raw.get("kind")
    model = models.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ReportError(f"payload {where} has unknown kind {kind!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ReportError(f"invalid {kind} payload {where}: {_describe(exc)}") from None


def _check_topic(topic: str, parts: list[str], msg: BaseModel) -> None:
    scope, name, leaf = parts[2], parts[3], parts[4]
    if isinstance(msg, CheckpointReport) and scope == "node":  # relayed by the node's agent
        if leaf != "checkpoint" or len(parts) != 5:
            raise ReportError(f"checkpoint report does not belong on topic {topic!r}")
        if name != msg.node:
            raise ReportError(
                f"checkpoint report on {topic} claims node {msg.node!r}; a node may only "
                "publish under its own topic"
            )
        return
    if isinstance(msg, HealthReport | Heartbeat | FaultReport | NodeStatus | NodeSteps):
        expected = "steps" if isinstance(msg, NodeSteps) else msg.kind
        if scope != "node" or leaf != expected:
            raise ReportError(f"a {msg.kind} message does not belong on topic {topic!r}")
        if name != msg.node:
            raise ReportError(
                f"report on {topic} claims node {msg.node!r}; a node may only publish under "
                "its own topic"
            )
        return
    run = getattr(msg, "run", None)
    if scope != "run" or name != run:
        raise ReportError(f"message on {topic} claims run {run!r}, which is not the topic's run")
    if isinstance(msg, StepReport) and (leaf != "steps" or parts[5:] != [str(msg.rank)]):
        raise ReportError(f"step report of rank {msg.rank} does not belong on topic {topic!r}")
    if isinstance(msg, CheckpointReport) and leaf != "checkpoint":
        raise ReportError(f"checkpoint report does not belong on topic {topic!r}")
