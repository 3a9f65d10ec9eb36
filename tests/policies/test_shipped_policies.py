"""The shipped policy files: both load, and the straggler-evicting one differs from the
default only in its straggler rule."""

from __future__ import annotations

from importlib import resources

from trainwarden.policies.rules import load_policy


def _path(name: str) -> str:
    return str(resources.files("trainwarden.policies").joinpath(f"data/{name}"))


def test_evict_stragglers_is_the_default_but_for_the_straggler_rule() -> None:
    default = load_policy(_path("default.yaml"))
    evict = load_policy(_path("evict-stragglers.yaml"))
    assert default.guards == evict.guards
    d = {r.name: r for r in default.rules}
    e = {r.name: r for r in evict.rules}
    assert set(d) - set(e) == {"straggler"} and set(e) - set(d) == {"straggler-evict"}
    for name in set(d) & set(e):
        assert d[name] == e[name], name
    assert [a.value if hasattr(a, "value") else a for a in e["straggler-evict"].then] == [
        "checkpoint-now",
        "drain",
        "restart-run",
    ]
