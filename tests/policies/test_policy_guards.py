"""Each guard as a table of cases in virtual time (pure functions, no engine)."""

from __future__ import annotations

import pytest
from policy_views import nodes, view, with_node

from trainwarden.policies import guards as g
from trainwarden.policies.model import ActionKind
from trainwarden.policies.rules import CrashLoop, DrainLimits, RestartLimits

H = 3600.0


def drains(*times: float, run: str | None = "llm", node: str = "x") -> list[g.Past]:
    return [g.Past(t, ActionKind.DRAIN, f"{node}{i}", run) for i, t in enumerate(times)]


@pytest.mark.parametrize(
    ("past", "now", "limit", "passed"),
    [
        ([], 0.0, 2, True),
        (drains(0.0), 10.0, 2, True),
        (drains(0.0, 5.0), 10.0, 2, False),  # third drain inside the hour
        (drains(0.0, 5.0), H + 1, 2, True),  # both aged out of the window
        (drains(0.0, H - 1), H + 1, 2, True),  # one left in the window
        ([], 0.0, 0, False),  # automatic drains disabled
    ],
)
def test_drains_per_window(past: list[g.Past], now: float, limit: int, passed: bool) -> None:
    check = g.drains_in_window(DrainLimits(max_per_window=limit, window_s=H), past, now)
    assert check.verdict.passed is passed
    assert check.verdict.guard == g.MAX_DRAINS


@pytest.mark.parametrize(
    ("drained", "total", "fraction", "passed"),
    [
        (0, 100, 0.05, True),
        (4, 100, 0.05, True),
        (5, 100, 0.05, False),
        (0, 10, 0.05, True),  # a tiny cluster may always drain one node
        (1, 10, 0.05, False),
    ],
)
def test_cluster_fraction(drained: int, total: int, fraction: float, passed: bool) -> None:
    nv = nodes(total)
    for i in range(drained):
        nv = with_node(nv, f"n{i:03d}", drained=True)
    check = g.cluster_fraction(DrainLimits(max_cluster_fraction=fraction), view(0.0, nv))
    assert check.verdict.passed is passed


@pytest.mark.parametrize(
    ("earlier", "run_size", "passed"),
    [
        (0, 8, True),
        (1, 8, True),
        (2, 8, False),  # 25% of 8 = 2
        (0, 2, True),
        (1, 2, False),  # at least one, never more than floor(25%) (min 1)
    ],
)
def test_run_fraction(earlier: int, run_size: int, passed: bool) -> None:
    v = view(100.0, nodes(run_size + 4, run_nodes=run_size))
    past = drains(*[10.0] * earlier)
    cfg = DrainLimits(max_run_fraction=0.25, window_s=H)
    assert g.run_fraction(cfg, past, v, "llm", 100.0).verdict.passed is passed
    assert g.run_fraction(cfg, past, v, None, 100.0).verdict.passed  # spare nodes: no limit


@pytest.mark.parametrize(
    ("drained_at", "now", "passed", "until"),
    [
        (None, 1000.0, True, None),
        (900.0, 1000.0, False, 1500.0),
        (400.0, 1000.0, True, None),
    ],
)
def test_cooldown(drained_at: float | None, now: float, passed: bool, until: float | None) -> None:
    past = [] if drained_at is None else [g.Past(drained_at, ActionKind.DRAIN, "n1", None)]
    check = g.cooldown(600.0, past, "n1", now)
    assert (check.verdict.passed, check.until) == (passed, until)


def test_cooldown_passes_at_the_time_its_hold_names() -> None:
    """At ``until`` the guard passes, whatever the rounding of ``now - drained_at``."""
    drained_at = 15962.55246938475  # (drained_at + 600.0) - drained_at < 600.0 in floats
    past = [g.Past(drained_at, ActionKind.DRAIN, "n1", None)]
    held = g.cooldown(600.0, past, "n1", drained_at + 1.0)
    assert held.until is not None and not held.verdict.passed
    assert g.cooldown(600.0, past, "n1", held.until).verdict.passed


@pytest.mark.parametrize(
    ("restarts", "now", "budget", "passed"),
    [
        ([], 0.0, 3, True),
        ([1.0, 2.0], 10.0, 3, True),
        ([1.0, 2.0, 3.0], 10.0, 3, False),
        ([1.0, 2.0, 3.0], 86400 + 5.0, 3, True),  # the window slides
    ],
)
def test_restart_budget(restarts: list[float], now: float, budget: int, passed: bool) -> None:
    cfg = RestartLimits(budget=budget, window_s=86400.0)
    assert g.restart_budget(cfg, restarts, now).verdict.passed is passed


@pytest.mark.parametrize(
    ("restarts", "now", "passed", "until"),
    [
        ([], 100.0, True, None),
        ([100.0], 130.0, False, 160.0),  # 1 recent restart: wait base = 60 s
        ([100.0], 170.0, True, None),
        ([0.0, 100.0], 150.0, False, 220.0),  # 2 recent: 120 s
        ([0.0, 10.0, 20.0, 30.0, 40.0, 50.0], 60.0, False, 50.0 + 300.0),  # capped at max
        ([0.0], 8000.0, True, None),  # older than backoff_reset: no backoff
    ],
)
def test_restart_backoff(
    restarts: list[float], now: float, passed: bool, until: float | None
) -> None:
    cfg = RestartLimits(
        backoff_base_s=60.0, backoff_factor=2.0, backoff_max_s=300.0, backoff_reset_s=7200.0
    )
    check = g.restart_backoff(cfg, restarts, now)
    assert (check.verdict.passed, check.until) == (passed, until)


@pytest.mark.parametrize(
    ("failures", "started", "passed"),
    [
        ([(100.0, 50), (200.0, 50)], [150.0], True),  # 2 at one step: not yet
        ([(100.0, 50), (2000.0, 50), (4000.0, 50)], [1000.0, 3000.0], False),  # 3 at step 50
        ([(100.0, 50), (2000.0, 60), (4000.0, 50)], [1000.0, 3000.0], True),
        ([(100.0, None), (200.0, None), (300.0, None)], [], True),  # unknown steps never match
        ([(1000.0, 1), (2000.0, 2), (3000.0, 3)], [900.0, 1900.0, 2900.0], False),  # quick deaths
        ([(1000.0, 1), (2000.0, 2), (3000.0, 3)], [100.0, 1900.0, 2900.0], True),  # one lived long
    ],
)
def test_crash_loop(
    failures: list[tuple[float, int | None]], started: list[float], passed: bool
) -> None:
    cfg = CrashLoop(same_step_failures=3, quick_failures=3, min_uptime_s=600.0)
    assert g.crash_loop(cfg, failures, started).verdict.passed is passed


@pytest.mark.parametrize(
    ("node", "open_", "passed"),
    [
        ({"storage:/capstor"}, {"storage:/capstor"}, False),
        ({"storage:/capstor"}, {"fabric:ib"}, True),
        (set(), {"fabric:ib"}, True),
    ],
)
def test_correlated(node: set[str], open_: set[str], passed: bool) -> None:
    assert g.correlated(node, open_).verdict.passed is passed


@pytest.mark.parametrize(
    ("causes", "now", "passed"),
    [
        (set(), 0.0, True),
        ({"fabric:leaf-r1"}, 30.0, False),
        ({"fabric:leaf-r1"}, 60.0, True),
    ],
)
def test_settle(causes: set[str], now: float, passed: bool) -> None:
    assert g.settle(causes, 0.0, 60.0, now).verdict.passed is passed


@pytest.mark.parametrize(
    ("returned_at", "now", "marked", "passed", "lemon"),
    [
        (None, 100.0, False, True, False),
        (0.0, 3600.0, False, True, True),  # failed 1 h after return: drain, but mark lemon
        (0.0, 2 * 86400.0, False, True, False),
        (None, 100.0, True, False, False),  # a marked lemon is never returned automatically
    ],
)
def test_lemon(
    returned_at: float | None, now: float, marked: bool, passed: bool, lemon: bool
) -> None:
    check = g.lemon(86400.0, returned_at, now, marked)
    assert check.verdict.passed is passed
    assert ("marked lemon" in check.verdict.detail) is lemon
