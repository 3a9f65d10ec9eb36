"""The wire format between agents, training ranks and the daemon: versioned JSON over MQTT.

Every message carries ``v`` (schema version) and ``kind``. :func:`parse_message` is the
single gate on the daemon side: it checks size, JSON, version, kind, fields and that the
sender's topic matches the node or run it claims, and raises :class:`ReportError` with
a sentence naming what is wrong.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from trainwarden.health.errors import ReportError
from trainwarden.health.probes.base import Action, CheckResult, Fault, Health, Severity

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024
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


Message = HealthReport | Heartbeat | FaultReport | NodeStatus | StepReport | CheckpointReport
_MODELS: dict[str, type[BaseModel]] = {
    "health": HealthReport,
    "heartbeat": Heartbeat,
    "fault": FaultReport,
    "status": NodeStatus,
    "steps": StepReport,
    "checkpoint": CheckpointReport,
    "control": ControlMessage,
}


# --- topics -------------------------------------------------------------------------


def node_topic(node: str, kind: str) -> str:
    """``trainwarden/v1/node/<node>/<kind>`` for health, heartbeat, fault and status."""
    return f"{TOPIC_PREFIX}/node/{check_name('node', node)}/{kind}"


def steps_topic(run: str, rank: int) -> str:
    return f"{TOPIC_PREFIX}/run/{check_name('run', run)}/steps/{rank}"


def checkpoint_topic(run: str) -> str:
    return f"{TOPIC_PREFIX}/run/{check_name('run', run)}/checkpoint"


def control_topic(run: str) -> str:
    return f"{TOPIC_PREFIX}/run/{check_name('run', run)}/control"


SUBSCRIPTIONS = (
    f"{TOPIC_PREFIX}/node/+/+",
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
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"payload on {topic} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ReportError(f"payload on {topic} is a JSON {type(raw).__name__}, not an object")
    version = raw.get("v")
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"payload on {topic} has schema version {version!r}; this daemon reads version "
            f"{SCHEMA_VERSION}"
        )
    kind = raw.get("kind")
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ReportError(f"payload on {topic} has unknown kind {kind!r}")
    try:
        msg = model.model_validate(raw)
    except ValidationError as exc:
        raise ReportError(f"invalid {kind} payload on {topic}: {_describe(exc)}") from None
    _check_topic(topic, parts, msg)
    return msg  # type: ignore[return-value]


def _check_topic(topic: str, parts: list[str], msg: BaseModel) -> None:
    scope, name, leaf = parts[2], parts[3], parts[4]
    if isinstance(msg, HealthReport | Heartbeat | FaultReport | NodeStatus):
        if scope != "node" or leaf != msg.kind:
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
