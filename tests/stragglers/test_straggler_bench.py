"""A small run of the evaluation harness: its simulator and scoring work end to end."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.stragglers import FALLBACK, Scenario, run_scenario, score_level  # noqa: E402


def test_bench_detects_an_injected_slowdown_and_the_baseline_misses_it() -> None:
    sc = Scenario(
        nodes=64,
        steps=120,
        step_s=4.0,
        jitter=0.0164,
        stages=4,
        level=0.10,
        slowed={5: (1, 0, 40), 20: (10, 5, 50)},
        seed=3,
    )
    res = run_scenario(sc, FALLBACK)
    det = score_level([(sc, res)], "detector")
    base = score_level([(sc, res)], "baseline")
    assert det["recall"] == 1.0 and det["false_flags"] == 0
    assert det["latency_s_median"] is not None and det["latency_s_median"] <= 60
    assert base["recall"] == 0.0  # 10 % is invisible to the 0.75 rule


def test_bench_fault_free_run_has_no_flags() -> None:
    sc = Scenario(nodes=64, steps=300, step_s=4.0, jitter=0.0372, stages=1, seed=4)
    res = run_scenario(sc, FALLBACK)
    assert res.flags == {}
