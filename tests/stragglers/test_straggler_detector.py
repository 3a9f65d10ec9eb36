"""The streaming detector: persistence, hysteresis, peer groups, evidence, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from straggler_sim import feed, synth

from trainwarden.health.report import StepReport, StepSample
from trainwarden.policies.model import ConditionType, EventKind
from trainwarden.supervisor.detectors.stragglers.detector import (
    GpuSignal,
    StragglerClear,
    StragglerConfig,
    StragglerDetector,
    StragglerFlag,
)
from trainwarden.supervisor.errors import ConfigError


def flags_of(found: list) -> list[StragglerFlag]:
    return [f for f in found if isinstance(f, StragglerFlag)]


def test_slow_rank_and_its_node_are_flagged_after_persistence(detector) -> None:
    x = synth(32, 40, slow={5: 1.3}, onset=10)
    found = []
    for i in range(40):
        found.extend(feed(detector, x[i : i + 1], start=i))
        if i < 10 + 3:  # 4 slowed steps fill the short window's low quantile, then 3 to persist
            assert not flags_of(found), f"flagged too early at step {i}"
    got = {(f.node, f.rank) for f in flags_of(found)}
    assert got == {("n1", 5), ("n1", None)}
    flag = next(f for f in flags_of(found) if f.rank is None)
    assert flag.from_step >= 10
    assert 1.25 < flag.score < 1.35
    assert flag.ranks == (5,)
    assert flag.window == "short"


def test_no_flag_without_a_slow_rank_even_with_spikes(detector) -> None:
    x = synth(64, 120, seed=3, jitter=0.02)
    rng = np.random.default_rng(9)
    spikes = rng.random(x.shape) < 0.02
    x[spikes] *= 2.5  # single-step spikes, 2 % of samples
    assert feed(detector, x) == []


def test_small_slowdown_is_found_by_the_long_window(detector) -> None:
    x = synth(64, 80, seed=4, jitter=0.005, slow={7: 1.05}, onset=10)
    flags = flags_of(feed(detector, x))
    assert {f.rank for f in flags} == {7, None}
    assert all(f.window in ("mid", "long") for f in flags)


def test_flag_clears_with_hysteresis(detector) -> None:
    x = synth(32, 60, slow={2: 1.3}, onset=5)
    x[30:, 2] /= 1.3  # recovered at step 30
    found = feed(detector, x)
    clears = [f for f in found if isinstance(f, StragglerClear)]
    assert {(c.node, c.rank) for c in clears} == {("n0", 2), ("n0", None)}
    assert all(c.step >= 30 + detector.config.clear_steps - 1 for c in clears)
    assert detector.flagged() == []


def test_intermittent_slowdown_does_not_flap(detector) -> None:
    x = synth(32, 80, slow={9: 1.4}, onset=5)
    for start in range(20, 80, 10):  # off 3 steps in every 10
        x[start : start + 3, 9] /= 1.4
    found = feed(detector, x)
    assert len(flags_of(found)) == 2
    assert not [f for f in found if isinstance(f, StragglerClear)]


def test_stage_imbalance_is_never_a_flag_but_a_finding(detector) -> None:
    # 4 pipeline stages, the last one 1.6x by design (like ByteDance ST).
    x = synth(32, 50, levels=[1.0, 1.0, 1.05, 1.6])
    assert feed(detector, x, groups=4) == []
    (imb,) = detector.stage_imbalance("r")
    assert imb.slowest == "g3"
    assert 1.5 < imb.ratio < 1.7
    assert imb.slow_ranks == tuple(range(24, 32))


def test_without_groups_the_heavy_stage_would_look_slow() -> None:
    det = StragglerDetector()
    x = synth(32, 50, levels=[1.0, 1.0, 1.0, 1.6])
    flagged = {f.rank for f in flags_of(feed(det, x, groups=1)) if f.rank is not None}
    assert flagged == set(range(24, 32))  # why the group column matters


def test_a_straggler_inside_a_heavy_stage_is_still_found(detector) -> None:
    x = synth(32, 40, levels=[1.0, 1.0, 1.0, 1.6], slow={26: 1.25}, onset=5)
    flags = flags_of(feed(detector, x, groups=4))
    assert {f.rank for f in flags} == {26, None}
    assert next(f for f in flags if f.rank == 26).group == "g3"


def test_too_few_peers_is_no_judgement(detector) -> None:
    # Two ranks per stage (like ByteDance ST's dp=2): no telling which one is odd.
    x = synth(8, 40, slow={1: 2.0}, onset=0)
    assert feed(detector, x, groups=4) == []


def test_gpu_evidence_and_events() -> None:
    det = StragglerDetector()
    det.observe_gpu(
        "n1",
        GpuSignal(
            ts=0.0, sm_clock_mhz=900, max_sm_clock_mhz=1980, throttle_reasons=("hw-thermal",)
        ),
    )
    x = synth(32, 30, slow={4: 1.3}, onset=5)
    found = []
    for i in range(30):
        found.extend(feed(det, x[i : i + 1], start=i))
        if flags_of(found):
            break
    node_flag = next(f for f in flags_of(found) if f.rank is None)
    assert node_flag.corroborated and node_flag.gpu is not None
    assert node_flag.step - 5 + 1 <= 4 + 2  # persistence shortened to persist_steps_alert
    ev = node_flag.event()
    assert ev.kind is EventKind.STRAGGLER_FLAGGED and ev.node == "n1" and ev.run == "r"
    assert ev.data["gpu"]["throttle_reasons"] == ("hw-thermal",)
    cond = node_flag.condition()
    assert cond.type is ConditionType.STRAGGLER and cond.status and cond.subject == "n1"


def test_healthy_gpu_signal_is_not_evidence() -> None:
    assert not GpuSignal(ts=0, sm_clock_mhz=1980, max_sm_clock_mhz=1980).degraded
    assert GpuSignal(ts=0, sm_clock_mhz=1200, max_sm_clock_mhz=1980).degraded
    assert GpuSignal(ts=0, throttle_reasons=("sw-power-cap",)).degraded


def test_job_slowdown_against_the_runs_own_baseline(detector) -> None:
    x = synth(16, 60)
    for i, row in enumerate(x):
        step_s = 1.0 if i < 40 else 1.1
        for r in range(16):
            detector.observe("r", r, f"n{r // 4}", None, i, float(row[r]), step_s, float(i))
        detector.evaluate(float(i))
    (slow,) = detector.job_slowdowns()
    assert slow.active and 1.08 < slow.ratio < 1.12


def test_observe_report_takes_the_wire_format(detector) -> None:
    rep = StepReport(
        run="r",
        attempt=0,
        rank=3,
        node="n0",
        group="stage0",
        samples=[StepSample(step=s, step_s=1.0, compute_s=0.8, ts=float(s)) for s in range(5)],
    )
    assert detector.observe_report(rep) == 5
    assert detector.hang_culprits("r").ranks == ()  # a lone rank stopped with itself


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"compute_s": math.nan}, "bad-value"),
        ({"compute_s": -1.0}, "bad-value"),
        ({"compute_s": 1e9}, "bad-value"),
        ({"compute_s": 0.0}, "bad-value"),
        ({"step_s": math.inf}, "bad-value"),
        ({"step": -1}, "bad-step-or-rank"),
        ({"rank": -2}, "bad-step-or-rank"),
        ({"node": ""}, "bad-node-or-ts"),
        ({"ts": math.nan}, "bad-node-or-ts"),
    ],
)
def test_bad_samples_are_refused_and_counted(detector, kwargs, reason) -> None:
    sample = {
        "run": "r",
        "rank": 0,
        "node": "n0",
        "group": None,
        "step": 1,
        "compute_s": 1.0,
        "step_s": 1.0,
        "ts": 1.0,
    } | kwargs
    assert detector.observe(**sample) is False
    assert detector.rejected("r") == {reason: 1}


def test_unknown_ranks_stale_attempts_and_bogus_steps_are_refused(detector) -> None:
    detector.set_roster("r", {r: (f"n{r // 4}", None) for r in range(8)})
    assert not detector.observe("r", 99, "n9", None, 1, 1.0, 1.0, 1.0)
    assert detector.observe("r", 1, "n0", None, 1, 1.0, 1.0, 1.0)
    assert not detector.observe("r", 1, "n0", None, 10**9, 1.0, 1.0, 1.0)
    assert detector.observe("r", 1, "n0", None, 2, 1.0, 1.0, 1.0, attempt=1)  # new attempt
    assert not detector.observe("r", 1, "n0", None, 3, 1.0, 1.0, 1.0, attempt=0)
    assert detector.rejected("r") == {"stale-attempt": 1}
    assert not detector.observe("r", 99, "n9", None, 1, 1.0, 1.0, 1.0, attempt=1)  # roster kept


def test_samples_older_than_the_buffer_are_dropped(detector) -> None:
    cap = detector.config.buffer_steps
    for s in range(cap + 10):
        detector.observe("r", 0, "n0", None, s + 100, 1.0, 1.0, float(s))
    assert not detector.observe("r", 0, "n0", None, 5, 1.0, 1.0, 0.0)
    assert detector.rejected("r") == {"too-old": 1}


def test_rank_moving_to_another_node_starts_afresh(detector) -> None:
    x = synth(16, 30, slow={1: 1.5}, onset=0)
    feed(detector, x)
    assert any(rank == 1 for _, _, rank, _ in detector.flagged())
    detector.observe("r", 1, "spare0", None, 30, 1.0, 1.2, 36.0)
    assert not any(rank == 1 for _, _, rank, _ in detector.flagged())


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="short_window"):
        StragglerConfig(short_window=50)
    with pytest.raises(ConfigError, match="mid_window"):
        StragglerConfig(mid_window=3)
    with pytest.raises(ConfigError, match="z_threshold_alert"):
        StragglerConfig(z_threshold_alert=9.0)


def test_observe_step_matches_per_sample_observe() -> None:
    x = synth(32, 30, slow={6: 1.3}, onset=3)
    a, b = StragglerDetector(), StragglerDetector()
    roster = {r: (f"n{r // 4}", "g0") for r in range(32)}
    a.set_roster("r", roster)
    ranks = np.arange(32, dtype=np.int64)
    got_a, got_b = [], []
    for i, row in enumerate(x):
        a.observe_step("r", i, ranks, row, np.full(32, 1.2), i * 1.2)
        got_a.extend(a.evaluate(i * 1.2))
    got_b = feed(b, x, groups=1)
    assert [(f.node, f.rank, f.step) for f in got_a] == [(f.node, f.rank, f.step) for f in got_b]
