"""Policy files: rules and guard settings as data (YAML), loaded and validated with precise errors.

A policy says which conditions and event histories lead to which actions, and sets the
guards every automatic action passes. The shipped default is package data
(``policies/data/default.yaml``); an operator's file replaces it. Every mistake is reported
with file, line, column and key path (``rules[2].when.condition``), all at once, so
``trainwarden policy check`` is useful and the daemon can refuse a bad file and keep the
last good one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from trainwarden.health.errors import HealthError
from trainwarden.health.faults import XidCatalog
from trainwarden.policies.errors import PolicyError
from trainwarden.policies.model import ActionKind, ConditionType, EventKind
from trainwarden.policies.yamlread import Reader

POLICY_VERSION = 1
_NODE_CONDITIONS = frozenset(
    {
        ConditionType.NODE_DEAD,
        ConditionType.GPU_FATAL,
        ConditionType.NODE_UNHEALTHY,
        ConditionType.NODE_DEGRADED,
        ConditionType.STRAGGLER,
    }
)
_NODE_ACTIONS = frozenset({ActionKind.DRAIN, ActionKind.VET, ActionKind.UNDRAIN})


@dataclass(frozen=True)
class Trigger:
    """When a rule fires: a condition transition, or an event (optionally N of them in a window)."""

    condition: ConditionType | None = None
    status: bool = True
    event: EventKind | None = None
    match: Mapping[str, Any] = field(default_factory=dict)
    count: int = 1
    within_s: float = 0.0
    drained_by_trainwarden: bool | None = None  # only nodes we drained (return-to-service)


@dataclass(frozen=True)
class Rule:
    name: str
    when: Trigger
    then: tuple[ActionKind, ...]
    description: str = ""
    # checkpoint-now before the other actions: wait at most this long for checkpoint-saved
    checkpoint_timeout_s: float = 600.0


@dataclass(frozen=True)
class DrainLimits:
    max_per_window: int = 8
    window_s: float = 3600.0
    max_cluster_fraction: float = 0.05
    max_run_fraction: float = 0.25


@dataclass(frozen=True)
class RestartLimits:
    budget: int = 24
    window_s: float = 86400.0
    backoff_base_s: float = 60.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 1800.0
    backoff_reset_s: float = 7200.0


@dataclass(frozen=True)
class CrashLoop:
    same_step_failures: int = 3
    quick_failures: int = 3
    min_uptime_s: float = 600.0


@dataclass(frozen=True)
class Correlation:
    min_nodes: int = 3
    window_s: float = 300.0
    settle_s: float = 60.0
    clear_after_s: float = 300.0


@dataclass(frozen=True)
class Guards:
    drains: DrainLimits = DrainLimits()
    cooldown_s: float = 600.0
    restarts: RestartLimits = RestartLimits()
    crash_loop: CrashLoop = CrashLoop()
    correlation: Correlation = Correlation()
    lemon_window_s: float = 86400.0


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    guards: Guards = Guards()
    xid_overrides: Mapping[str, str] = field(default_factory=dict)
    source: str = "<built-in>"

    def xid_catalog(self) -> XidCatalog:
        """The XID catalogue with this policy's per-code overrides applied."""
        overrides: dict[int | str, str] = {k: v for k, v in self.xid_overrides.items()}
        return XidCatalog(overrides)

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def default_policy_text() -> str:
    return resources.files("trainwarden.policies").joinpath("data/default.yaml").read_text()


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file; ``None`` loads the shipped default.

    Raises :class:`PolicyError` naming file, line/column, key path and what is wrong.
    """
    if path is None:
        return parse_policy(default_policy_text(), "policies/data/default.yaml (shipped)")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{p}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{p}: cannot read policy file: {exc}") from None
    return parse_policy(text, str(p))


def parse_policy(
    text: str, source: str = "<string>", line_offset: int = 0, col_offset: int = 0
) -> Policy:
    """Validate a policy document; offsets place an embedded one (a scenario's) in its file."""
    r = Reader(text, source, line_offset, col_offset)
    root = r.root()
    policy = _build(r, root) if root is not None else None
    r.raise_if_errors("policy")
    assert policy is not None
    return policy


def _build(r: Reader, root: Any) -> Policy | None:
    top = r.mapping(
        root, "", required={"version", "rules"}, allowed={"version", "guards", "xid", "rules"}
    )
    if top is None:
        return None
    version = r.integer(top.get("version"), "version", lo=1)
    if version is not None and version != POLICY_VERSION:
        r.error(
            "version",
            f"unsupported policy version {version}; this trainwarden reads {POLICY_VERSION}",
        )
    guards = _guards(r, top.get("guards"))
    xid = _xid(r, top.get("xid"))
    rules: list[Rule] = []
    seq = r.sequence(top.get("rules"), "rules")
    names: set[str] = set()
    for i, node in enumerate(seq or []):
        rule = _rule(r, node, f"rules[{i}]")
        if rule is None:
            continue
        if rule.name in names:
            r.error(f"rules[{i}].name", f"duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    return Policy(tuple(rules), guards, xid, r.source)


def _guards(r: Reader, node: Any) -> Guards:
    if node is None:
        return Guards()
    keys = {"drains", "cooldown", "restarts", "crash_loop", "correlation", "lemon"}
    g = r.mapping(node, "guards", allowed=keys)
    if g is None:
        return Guards()
    d0, r0, c0, k0 = DrainLimits(), RestartLimits(), CrashLoop(), Correlation()
    drains = (
        r.mapping(
            g.get("drains"),
            "guards.drains",
            allowed={"max_per_window", "window", "max_cluster_fraction", "max_run_fraction"},
        )
        or {}
    )
    restarts = (
        r.mapping(
            g.get("restarts"),
            "guards.restarts",
            allowed={
                "budget",
                "window",
                "backoff_base",
                "backoff_factor",
                "backoff_max",
                "backoff_reset",
            },
        )
        or {}
    )
    loop = (
        r.mapping(
            g.get("crash_loop"),
            "guards.crash_loop",
            allowed={"same_step_failures", "quick_failures", "min_uptime"},
        )
        or {}
    )
    corr = (
        r.mapping(
            g.get("correlation"),
            "guards.correlation",
            allowed={"min_nodes", "window", "settle", "clear_after"},
        )
        or {}
    )
    lemon = r.mapping(g.get("lemon"), "guards.lemon", allowed={"window"}) or {}

    def num(v: float | None, default: float) -> float:
        return default if v is None else v

    def cnt(v: int | None, default: int) -> int:
        return default if v is None else v

    p = "guards.drains."
    dl = DrainLimits(
        cnt(r.integer(drains.get("max_per_window"), p + "max_per_window", lo=0), d0.max_per_window),
        num(r.duration(drains.get("window"), p + "window"), d0.window_s),
        num(
            r.fraction(drains.get("max_cluster_fraction"), p + "max_cluster_fraction"),
            d0.max_cluster_fraction,
        ),
        num(
            r.fraction(drains.get("max_run_fraction"), p + "max_run_fraction"), d0.max_run_fraction
        ),
    )
    p = "guards.restarts."
    factor = r.number(restarts.get("backoff_factor"), p + "backoff_factor", lo=1.0)
    rl = RestartLimits(
        cnt(r.integer(restarts.get("budget"), p + "budget", lo=0), r0.budget),
        num(r.duration(restarts.get("window"), p + "window"), r0.window_s),
        num(r.duration(restarts.get("backoff_base"), p + "backoff_base"), r0.backoff_base_s),
        num(factor, r0.backoff_factor),
        num(r.duration(restarts.get("backoff_max"), p + "backoff_max"), r0.backoff_max_s),
        num(r.duration(restarts.get("backoff_reset"), p + "backoff_reset"), r0.backoff_reset_s),
    )
    p = "guards.crash_loop."
    cl = CrashLoop(
        cnt(
            r.integer(loop.get("same_step_failures"), p + "same_step_failures", lo=2),
            c0.same_step_failures,
        ),
        cnt(r.integer(loop.get("quick_failures"), p + "quick_failures", lo=2), c0.quick_failures),
        num(r.duration(loop.get("min_uptime"), p + "min_uptime"), c0.min_uptime_s),
    )
    p = "guards.correlation."
    co = Correlation(
        cnt(r.integer(corr.get("min_nodes"), p + "min_nodes", lo=2), k0.min_nodes),
        num(r.duration(corr.get("window"), p + "window"), k0.window_s),
        num(r.duration(corr.get("settle"), p + "settle"), k0.settle_s),
        num(r.duration(corr.get("clear_after"), p + "clear_after"), k0.clear_after_s),
    )
    cooldown = r.duration(g.get("cooldown"), "guards.cooldown")
    lemon_w = r.duration(lemon.get("window"), "guards.lemon.window")
    return Guards(dl, num(cooldown, 600.0), rl, cl, co, num(lemon_w, 86400.0))


def _xid(r: Reader, node: Any) -> dict[str, str]:
    if node is None:
        return {}
    x = r.mapping(node, "xid", allowed={"overrides"})
    if x is None:
        return {}
    ov = r.mapping(x.get("overrides"), "xid.overrides") or {}
    out: dict[str, str] = {}
    for key, val in ov.items():
        path = f"xid.overrides.{key}"
        spec = r.string(val, path)
        if spec is None:
            continue
        try:
            one: dict[int | str, str] = {key: spec}
            XidCatalog(one)
        except HealthError as exc:
            r.error(path, str(exc))
            continue
        out[str(key)] = spec
    return out


def _rule(r: Reader, node: Any, path: str) -> Rule | None:
    m = r.mapping(
        node,
        path,
        required={"name", "when", "then"},
        allowed={"name", "description", "when", "then", "checkpoint_timeout"},
    )
    if m is None:
        return None
    name = r.string(m.get("name"), path + ".name")
    desc = r.string(m.get("description"), path + ".description") or ""
    when = _trigger(r, m.get("when"), path + ".when")
    then: list[ActionKind] = []
    seq = r.sequence(m.get("then"), path + ".then", nonempty=True) or []
    for i, a in enumerate(seq):
        kind = r.enum(a, f"{path}.then[{i}]", ActionKind)
        if kind is not None:
            if kind in then:
                r.error(f"{path}.then[{i}]", f"action {kind.value!r} listed twice")
            then.append(kind)
    timeout = r.duration(m.get("checkpoint_timeout"), path + ".checkpoint_timeout")
    if when is not None and when.condition is ConditionType.RUN_HUNG:
        for i, act in enumerate(then):
            if act in _NODE_ACTIONS:
                r.error(
                    f"{path}.then[{i}]", f"{act.value!r} needs a node, but RunHung is about a run"
                )
    if ActionKind.CHECKPOINT_NOW in then and then[0] is not ActionKind.CHECKPOINT_NOW:
        r.error(path + ".then", "checkpoint-now must come first (the other actions wait for it)")
    if timeout is not None and ActionKind.CHECKPOINT_NOW not in then:
        r.error(path + ".checkpoint_timeout", "only meaningful with a checkpoint-now action")
    if name is None or when is None or not then:
        return None
    return Rule(name, when, tuple(then), desc, 600.0 if timeout is None else timeout)


def _trigger(r: Reader, node: Any, path: str) -> Trigger | None:
    keys = {"condition", "status", "event", "match", "count", "within", "drained_by_trainwarden"}
    m = r.mapping(node, path, allowed=keys)
    if m is None:
        return None
    has_c, has_e = "condition" in m, "event" in m
    if has_c == has_e:
        r.error(path, "give exactly one of 'condition' or 'event'")
        return None
    cond = r.enum(m.get("condition"), path + ".condition", ConditionType) if has_c else None
    event = r.enum(m.get("event"), path + ".event", EventKind) if has_e else None
    status = r.boolean(m.get("status"), path + ".status")
    drained = r.boolean(m.get("drained_by_trainwarden"), path + ".drained_by_trainwarden")
    count = r.integer(m.get("count"), path + ".count", lo=1)
    within = r.duration(m.get("within"), path + ".within")
    match = {
        k: r.scalar(v, f"{path}.match.{k}")
        for k, v in (r.mapping(m.get("match"), path + ".match") or {}).items()
    }
    if has_c and ("count" in m or "within" in m or "match" in m):
        r.error(path, "'count', 'within' and 'match' apply to event triggers only")
    if has_e and "status" in m:
        r.error(path + ".status", "'status' applies to condition triggers only")
    if count is not None and count > 1 and within is None:
        r.error(path + ".within", f"count {count} needs a window: add 'within' (e.g. 1h)")
    if (has_c and cond is None) or (has_e and event is None):
        return None
    if cond is not None and cond not in _NODE_CONDITIONS and drained is not None:
        r.error(path + ".drained_by_trainwarden", "applies to node conditions only")
    return Trigger(
        cond,
        True if status is None else status,
        event,
        dict(match),
        count or 1,
        within or 0.0,
        drained,
    )


def describe_duration(seconds: float) -> str:
    """``5400`` -> ``'1h30m'``: how durations are shown back to people."""
    if seconds == 0 or not math.isfinite(seconds):
        return f"{seconds:g}s"
    out, rest = [], round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or f"{seconds:g}s"


__all__ = [
    "Correlation",
    "CrashLoop",
    "DrainLimits",
    "Guards",
    "Policy",
    "PolicyError",
    "RestartLimits",
    "Rule",
    "Trigger",
    "default_policy_text",
    "describe_duration",
    "load_policy",
    "parse_policy",
]
