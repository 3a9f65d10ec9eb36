"""From a fired rule to action requests: which node, which run, which nodes to keep out.

Pure functions of the rule, the subject and the cluster view; the engine then puts each
request through the guards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from trainwarden.policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    ClusterView,
    ConditionType,
    Event,
)
from trainwarden.policies.rules import Rule

FATAL = frozenset({ConditionType.NODE_DEAD, ConditionType.GPU_FATAL, ConditionType.NODE_UNHEALTHY})
NODE_ACTIONS = (ActionKind.DRAIN, ActionKind.VET, ActionKind.UNDRAIN)


def culprits(view: ClusterView, run: str) -> list[str]:
    """Nodes of the run with a fatal condition of their own (no shared cause): restart without."""
    rv = view.runs.get(run)
    out = []
    for name in rv.nodes if rv is not None else ():
        nv = view.nodes.get(name)
        if nv is not None and nv.conditions & FATAL and not nv.causes:
            out.append(name)
    return out


def subject_run(subject: str, view: ClusterView, event: Event | None = None) -> str | None:
    node = view.nodes.get(subject)
    run = node.run if node is not None else (subject if subject in view.runs else None)
    if run is None and event is not None and event.run:
        run = event.run
    return run


def build_requests(
    rule: Rule,
    subject: str,
    reason: str,
    evidence: tuple[int, ...],
    view: ClusterView,
    event: Event | None = None,
) -> list[ActionRequest]:
    """The rule's actions for ``subject`` (a node or a run), skipping those that make no sense.

    A drain of an already drained node, a vet/undrain of a node that is not drained or still
    has conditions, and run actions when there is no run are left out.
    """
    node = view.nodes.get(subject)
    run = subject_run(subject, view, event)
    reqs: list[ActionRequest] = []
    for kind in rule.then:
        base = ActionRequest(kind, Actor.RULE, reason, rule=rule.name, evidence=evidence)
        if kind in NODE_ACTIONS:
            if node is None:
                continue
            if kind is ActionKind.DRAIN and node.drained:
                continue  # already out of service
            if kind is not ActionKind.DRAIN and (not node.drained or node.conditions):
                continue  # only fully recovered, drained nodes go back
            reqs.append(replace(base, node=subject, run=run))
        elif kind in (ActionKind.RESTART_RUN, ActionKind.CHECKPOINT_NOW):
            if run is None or run not in view.runs:
                continue
            excl: tuple[str, ...] = ()
            if kind is ActionKind.RESTART_RUN:
                excl = (subject,) if node is not None else ()
                excl = (*excl, *(n for n in culprits(view, run) if n not in excl))
            reqs.append(replace(base, run=run, node=subject if node else None, exclude=excl))
        else:
            reqs.append(replace(base, node=subject if node else None, run=run))
    return reqs


def matches(event: Event, match: Mapping[str, Any]) -> bool:
    """An event matches when each ``match`` key equals its data value (case-insensitive)."""
    return all(str(event.data.get(k)).lower() == str(v).lower() for k, v in match.items())


def merge(a: ActionRequest, b: ActionRequest) -> ActionRequest:
    """Two restarts of one run waiting together become one, excluding both sets of nodes."""
    return replace(
        a,
        exclude=tuple(dict.fromkeys((*a.exclude, *b.exclude))),
        evidence=tuple(dict.fromkeys((*a.evidence, *b.evidence))),
    )
