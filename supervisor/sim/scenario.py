"""Simulator scenarios: a cluster, one run, a timeline of faults, optional expectations (YAML).

Shipped scenarios live in ``supervisor/sim/scenarios/NAME.yaml`` and are addressed by
name; any other path is read as a file. Errors name file:line:col like policy files.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from trainwarden.health import faults as fk
from trainwarden.policies import hostlist
from trainwarden.policies.engine import Mode
from trainwarden.policies.errors import PolicyError
from trainwarden.policies.yamlread import Reader

FAULT_KINDS = (
    "gpu-fatal",
    "node-dead",
    "node-unhealthy",
    "node-degraded",
    "straggler",
    "crash",
    "hang",
)
RUN_EFFECTS = ("crash", "hang", "slow", "none")
DEFAULT_EFFECT = {
    "gpu-fatal": "crash",
    "node-dead": "crash",
    "node-unhealthy": "hang",
    "node-degraded": "none",
    "straggler": "slow",
    "crash": "crash",
    "hang": "hang",
}
EXPECT_KEYS = (
    "drains",
    "restarts",
    "incidents",
    "false_drains",
    "vets",
    "checkpoints_now",
    "returned_to_service",
    "alerts",
)

# Where the run's defaults come from (printed with every result).
CHECKPOINT_INTERVAL_S = 3 * 3600.0  # BLOOM-176B: SAVE_INTERVAL=100 iterations at ~105 s
RESTART_COST_S = 15 * 60.0  # assumption: requeue + checkpoint load + NCCL init
APPROVE_DELAY_S = 900.0  # approve mode: an operator answers within 15 min
ASSUMPTION_SOURCES = {
    "checkpoint_interval": "BLOOM-176B chronicles (2022-03-22): SAVE_INTERVAL=100 iterations "
    "at ~105 s/iteration, '<=3h loss' (shared/data/chronicles)",
    "restart_cost": "assumed 15 min (requeue, checkpoint load, NCCL init); the chronicles give "
    "no single figure (OPT-175B: checkpoint download alone could take hours)",
    "detect_delay": "20 s: a probe's finding reaches the daemon (agent report every 10 s, probe "
    "timeout 10 s: health/agent.py, health/probes/registry.py); XIDs are published at once (1 s)",
    "will_delay": "0 s: the broker publishes the last will when the agent's connection drops "
    "(trace deaths are silent: the will comes after 1.5 x keepalive = 15 s, heartbeats stop)",
    "job_exit_delay": "2 min: the job notices the failure (NCCL async error handling)",
    "hang_detect": "30 s: floor of the daemon's hang threshold max(k x median step, floor), "
    "k = 2 (supervisor/core.py CoreConfig)",
    "startup_timeout": "20 min: no first step this long after a (re)start is a hang; longer than "
    "the restart cost (the daemon's default of 5 min is shorter, see supervisor/sim/README.md)",
}
TRACE_SOURCES = ("infinitehbd", "llama3")
AGENT_FAULT_KINDS = frozenset(
    getattr(fk, name) for name in dir(fk) if name.isupper() and isinstance(getattr(fk, name), str)
)


@dataclass(frozen=True)
class FaultSpec:
    at_s: float
    kind: str
    nodes: tuple[str, ...] = ()
    cause: str | None = None
    duration_s: float | None = None  # None: not repaired within the scenario
    effect: str = "none"
    slowdown: float = 1.0
    step: int | None = None  # crash: the attempt dies when it reaches this step
    repeat: bool = False  # crash: every attempt dies there again
    label: str = ""
    agent_fault: str | None = None  # what the agent reports (health.faults kind); None: default
    xid: int | None = None  # gpu-fatal reported as an XID: its code (default 79)
    gpu: int | None = None  # the GPU index the agent names
    will_after_s: float | None = None  # node-dead: last will after this (None: the run's)


@dataclass(frozen=True)
class RunSpec:
    name: str = "llm"
    nodes: int = 64
    step_s: float = 10.0
    checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S
    restart_cost_s: float = RESTART_COST_S
    detect_delay_s: float = 20.0  # a probe's finding reaches the daemon
    job_exit_delay_s: float = 120.0
    hang_detect_s: float = 30.0  # floor of the progress tracker's hang threshold
    checkpoint_save_s: float = 60.0
    will_delay_s: float = 0.0  # node-dead: the broker publishes the last will after this
    startup_timeout_s: float = 1200.0  # no first step this long after a (re)start: hung
    checkpoint_stall_s: float = 0.0  # a periodic save stops training this long
    # how the restart cost splits, for the goodput buckets only (timing is restart_cost's):
    queue_wait_s: float = 0.0  # submitted -> the scheduler runs it
    checkpoint_load_s: float = 0.0  # the end of start-up spent loading the checkpoint
    # asynchronous saves: after the stall (the copy to host memory) the write goes on in the
    # background this long; the checkpoint is valid only then, and lost if the job dies first
    checkpoint_persist_s: float = 0.0


@dataclass(frozen=True)
class TraceSpec:
    nodes: int = 2048
    days: float = 30.0
    offset_days: float = 0.0
    source: str = "infinitehbd"  # or "llama3": Llama 3's mix (supervisor/sim/llama3.py)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    cluster_nodes: int
    rack_size: int
    run: RunSpec
    faults: tuple[FaultSpec, ...] = ()
    trace: TraceSpec | None = None
    policy_file: str | None = None
    policy_text: str | None = None  # inline policy document
    mode: Mode = Mode.ENFORCE
    expect: dict[str, int] = field(default_factory=dict)
    source: str = ""  # the scenario file, for errors in an inline policy
    policy_at: tuple[int, int] = (0, 0)  # line and column offset of the inline policy

    def node_names(self) -> list[str]:
        width = max(4, len(str(self.cluster_nodes - 1)))
        return [f"n{i:0{width}d}" for i in range(self.cluster_nodes)]


def shipped_names() -> list[str]:
    root = resources.files("trainwarden.supervisor.sim").joinpath("scenarios")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    if name_or_path in shipped_names():
        text = resources.files("trainwarden.supervisor.sim").joinpath(
            f"scenarios/{name_or_path}.yaml"
        )
        return parse_scenario(text.read_text(), f"scenarios/{name_or_path}.yaml")
    p = Path(name_or_path)
    if not p.exists():
        raise PolicyError(
            f"no scenario {name_or_path!r}: not a shipped one "
            f"({', '.join(shipped_names())}) and no such file"
        )
    try:
        return parse_scenario(p.read_text(encoding="utf-8"), str(p))
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{p}: cannot read scenario: {exc}") from None


def parse_scenario(text: str, source: str) -> Scenario:
    r = Reader(text, source)
    root = r.root()
    sc = _build(r, root) if root is not None else None
    r.raise_if_errors("scenario")
    assert sc is not None
    return sc


def _build(r: Reader, root: Any) -> Scenario | None:
    top = r.mapping(
        root,
        "",
        required={"name", "duration", "cluster", "run"},
        allowed={
            "name",
            "description",
            "duration",
            "cluster",
            "run",
            "faults",
            "trace",
            "policy",
            "policy_file",
            "mode",
            "expect",
        },
    )
    if top is None:
        return None
    name = r.string(top.get("name"), "name") or "?"
    desc = r.string(top.get("description"), "description") or ""
    duration = r.duration(top.get("duration"), "duration") or 0.0
    cl = (
        r.mapping(top.get("cluster"), "cluster", required={"nodes"}, allowed={"nodes", "rack_size"})
        or {}
    )
    cluster_nodes = r.integer(cl.get("nodes"), "cluster.nodes", lo=1, hi=100_000) or 1
    rack = r.integer(cl.get("rack_size"), "cluster.rack_size", lo=1) or 16
    run = _run(r, top.get("run"), cluster_nodes)
    mode = r.enum(top.get("mode"), "mode", Mode) or Mode.ENFORCE
    policy_text = None
    policy_at = (0, 0)
    if "policy" in top:
        pnode = top["policy"]
        policy_at = (pnode.start_mark.line, pnode.start_mark.column)
        r.mapping(pnode, "policy")
        policy_text = text_of(r.text, pnode)
    policy_file = r.string(top.get("policy_file"), "policy_file")
    trace = None
    if "trace" in top:
        t = r.mapping(top["trace"], "trace", allowed={"source", "nodes", "days", "offset_days"})
        if t is not None:
            src = r.string(t.get("source"), "trace.source")
            if src is not None and src not in TRACE_SOURCES:
                r.error(
                    "trace.source",
                    f"unknown trace {src!r}; available: {', '.join(TRACE_SOURCES)}",
                )
            trace = TraceSpec(
                r.integer(t.get("nodes"), "trace.nodes", lo=1) or run.nodes,
                (r.duration(t.get("days"), "trace.days") or 30 * 86400) / 86400,
                (r.duration(t.get("offset_days"), "trace.offset_days") or 0) / 86400,
                src or "infinitehbd",
            )
    names = [f"n{i:0{max(4, len(str(cluster_nodes - 1)))}d}" for i in range(cluster_nodes)]
    faults = []
    for i, fnode in enumerate(r.sequence(top.get("faults"), "faults") or []):
        f = _fault(r, fnode, f"faults[{i}]", names, run.nodes, rack)
        if f is not None:
            faults.append(f)
    expect: dict[str, int] = {}
    for k, v in (r.mapping(top.get("expect"), "expect", allowed=set(EXPECT_KEYS)) or {}).items():
        n = r.integer(v, f"expect.{k}", lo=0)
        if n is not None:
            expect[k] = n
    return Scenario(
        name,
        desc,
        duration,
        cluster_nodes,
        rack,
        run,
        tuple(faults),
        trace,
        policy_file,
        policy_text,
        mode,
        expect,
        r.source,
        policy_at,
    )


def text_of(text: str, node: Any) -> str:
    """The source text of one YAML node (an inline policy is parsed as its own document)."""
    chunk = text[node.start_mark.index : node.end_mark.index]
    first_col = node.start_mark.column
    return textwrap.dedent(" " * first_col + chunk)


def _run(r: Reader, node: Any, cluster_nodes: int) -> RunSpec:
    keys = {
        "name",
        "nodes",
        "step_time",
        "checkpoint_interval",
        "restart_cost",
        "detect_delay",
        "job_exit_delay",
        "hang_detect",
        "checkpoint_save",
        "will_delay",
        "startup_timeout",
        "checkpoint_stall",
        "queue_wait",
        "checkpoint_load",
        "checkpoint_persist",
    }
    m = r.mapping(node, "run", allowed=keys) or {}
    d = RunSpec()
    n = r.integer(m.get("nodes"), "run.nodes", lo=1) or d.nodes
    if n > cluster_nodes:
        r.error("run.nodes", f"the run needs {n} nodes but the cluster has {cluster_nodes}")

    def dur(key: str, default: float) -> float:
        v = r.duration(m.get(key), f"run.{key}")
        return default if v is None else v

    return RunSpec(
        r.string(m.get("name"), "run.name") or d.name,
        n,
        dur("step_time", d.step_s) or d.step_s,
        dur("checkpoint_interval", d.checkpoint_interval_s) or d.checkpoint_interval_s,
        dur("restart_cost", d.restart_cost_s),
        dur("detect_delay", d.detect_delay_s),
        dur("job_exit_delay", d.job_exit_delay_s),
        dur("hang_detect", d.hang_detect_s),
        dur("checkpoint_save", d.checkpoint_save_s),
        dur("will_delay", d.will_delay_s),
        dur("startup_timeout", d.startup_timeout_s) or d.startup_timeout_s,
        dur("checkpoint_stall", d.checkpoint_stall_s),
        dur("queue_wait", d.queue_wait_s),
        dur("checkpoint_load", d.checkpoint_load_s),
        dur("checkpoint_persist", d.checkpoint_persist_s),
    )


def _fault_targets(
    r: Reader, m: dict[str, Any], path: str, names: list[str], run_nodes: int, rack: int
) -> tuple[str, ...]:
    """The nodes a fault hits: ``node`` (one name or a Slurm hostlist, ``n[0003-0005]``),
    ``nodes`` (a fraction of the run's nodes, spread evenly) or ``rack`` (an index); where
    several are given, the last one wins."""
    targets: tuple[str, ...] = ()
    if "node" in m:
        nm = r.string(m["node"], path + ".node")
        try:
            named = hostlist.expand(nm) if nm is not None else ()
        except ValueError as exc:
            r.error(path + ".node", str(exc))
            named = (nm,) if nm else ()  # reported; not also "a node fault needs 'node'"
        else:
            known = set(names)
            missing = [n for n in named if n not in known]
            if missing:
                what = (
                    f"no node {missing[0]!r}"
                    if len(missing) == 1
                    else f"no nodes {hostlist.compress(missing)}"
                )
                r.error(path + ".node", f"{what} (nodes are {names[0]}..{names[-1]})")
        targets = named
    if "nodes" in m:
        frac = r.fraction(m["nodes"], path + ".nodes")
        if frac is not None:  # spread evenly over the run's nodes
            k = max(1, round(frac * run_nodes))
            targets = tuple(names[(i * run_nodes) // k] for i in range(k))
    if "rack" in m:
        idx = r.integer(m["rack"], path + ".rack", lo=0)
        if idx is not None:
            targets = tuple(names[idx * rack : (idx + 1) * rack])
            if not targets:
                r.error(path + ".rack", f"rack {idx} is beyond the cluster")
    return targets


def _fault(
    r: Reader, node: Any, path: str, names: list[str], run_nodes: int, rack: int
) -> FaultSpec | None:
    m = r.mapping(
        node,
        path,
        required={"at", "kind"},
        allowed={
            "at",
            "kind",
            "node",
            "nodes",
            "rack",
            "cause",
            "duration",
            "effect",
            "slowdown",
            "step",
            "repeat",
            "label",
            "fault",
            "xid",
            "gpu",
            "will_after",
        },
    )
    if m is None:
        return None
    at = r.duration(m.get("at"), path + ".at")
    kind = r.string(m.get("kind"), path + ".kind")
    if kind is not None and kind not in FAULT_KINDS:
        r.error(path + ".kind", f"{kind!r} is not one of {list(FAULT_KINDS)}")
        kind = None
    effect = r.string(m.get("effect"), path + ".effect")
    if effect is not None and effect not in RUN_EFFECTS:
        r.error(path + ".effect", f"{effect!r} is not one of {list(RUN_EFFECTS)}")
    targets = _fault_targets(r, m, path, names, run_nodes, rack)
    if kind is not None and kind not in ("crash", "hang") and not targets:
        r.error(path, "a node fault needs 'node', 'nodes' (fraction of the run) or 'rack'")
    agent_fault = r.string(m.get("fault"), path + ".fault")
    if agent_fault is not None and agent_fault not in AGENT_FAULT_KINDS:
        r.error(
            path + ".fault",
            f"{agent_fault!r} is not a fault kind of trainwarden.health.faults "
            f"({', '.join(sorted(AGENT_FAULT_KINDS))})",
        )
    if kind is None or at is None:
        return None
    return FaultSpec(
        at,
        kind,
        targets,
        r.string(m.get("cause"), path + ".cause"),
        r.duration(m.get("duration"), path + ".duration"),
        effect or DEFAULT_EFFECT[kind],
        r.number(m.get("slowdown"), path + ".slowdown", lo=1.0) or 1.0,
        r.integer(m.get("step"), path + ".step", lo=0),
        bool(r.boolean(m.get("repeat"), path + ".repeat")),
        r.string(m.get("label"), path + ".label") or "",
        agent_fault,
        r.integer(m.get("xid"), path + ".xid", lo=1, hi=1000),
        r.integer(m.get("gpu"), path + ".gpu", lo=0, hi=63),
        r.duration(m.get("will_after"), path + ".will_after"),
    )
