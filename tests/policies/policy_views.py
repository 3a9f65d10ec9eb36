"""Builders for cluster views in virtual time (plain data, no fakes needed)."""

from __future__ import annotations

from collections.abc import Iterable

from trainwarden.policies.model import ClusterView, ConditionType, NodeView, RunView


def nodes(n: int, run: str | None = "llm", run_nodes: int | None = None) -> dict[str, NodeView]:
    k = n if run_nodes is None else run_nodes
    return {f"n{i:03d}": NodeView(f"n{i:03d}", run if i < k else None) for i in range(n)}


def view(
    now: float,
    node_views: dict[str, NodeView],
    *,
    attempt: int = 1,
    last_step: int | None = 100,
    restart_times: Iterable[float] = (),
    active: bool = True,
) -> ClusterView:
    members = tuple(name for name, nv in node_views.items() if nv.run == "llm")
    run = RunView("llm", members, active, attempt, attempt - 1, tuple(restart_times), (), last_step)
    return ClusterView(now, dict(node_views), {"llm": run})


def with_node(
    node_views: dict[str, NodeView],
    name: str,
    *,
    conditions: Iterable[ConditionType] = (),
    causes: Iterable[str] = (),
    drained: bool | None = None,
    by_us: bool | None = None,
    returned_at: float | None = None,
    run: str | None = "keep",
) -> dict[str, NodeView]:
    old = node_views[name]
    out = dict(node_views)
    out[name] = NodeView(
        name,
        old.run if run == "keep" else run,
        old.drained if drained is None else drained,
        old.drained_by_trainwarden if by_us is None else by_us,
        returned_at if returned_at is not None else old.returned_at,
        frozenset(conditions),
        frozenset(causes),
    )
    return out
