"""The robust statistics: NaN-aware quantiles, peer ratios and scores within groups."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trainwarden.supervisor.detectors.stragglers.stats import (
    group_levels,
    group_members,
    masked_median,
    masked_quantile,
    peer_scores,
)

cells = st.one_of(st.just(np.nan), st.floats(0.01, 100.0))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 9)), elements=cells),
    st.sampled_from([0.25, 0.5]),
    st.integers(0, 1),
)
def test_masked_quantile_matches_numpy(a: np.ndarray, q: float, axis: int) -> None:
    got = masked_quantile(a, axis=axis, q=q)
    n = np.sum(~np.isnan(a), axis=axis)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = np.nanquantile(a, q, axis=axis)
    assert np.allclose(got[n > 0], want[n > 0])
    assert np.isnan(got[n == 0]).all()


def test_min_count_gives_nan_instead_of_a_guess() -> None:
    a = np.array([[1.0, np.nan, np.nan], [1.0, 2.0, 3.0]])
    assert np.isnan(masked_median(a, axis=1, min_count=2)[0])
    assert masked_median(a, axis=1, min_count=2)[1] == 2.0


def test_group_members_partition_the_columns() -> None:
    members = group_members(np.array([1, 0, 1, 2, 0]), 3)
    assert [m.tolist() for m in members] == [[1, 4], [0, 2], [3]]


def test_peer_scores_single_out_the_slow_rank() -> None:
    rng = np.random.default_rng(1)
    ratios = 1 + 0.01 * rng.standard_normal((32, 10))  # ranks x steps
    ratios[3] *= 1.2
    s = peer_scores(
        ratios,
        group_members(np.zeros(32, dtype=np.intp), 1),
        min_count=5,
        min_peers=3,
        sigma_floor=0.005,
    )
    assert int(np.nanargmax(s.z)) == 3
    assert 0.15 < s.effect[3] < 0.25
    others = np.delete(s.z, 3)
    assert np.nanmax(np.abs(others)) < 6


def test_low_quantile_ignores_spikes() -> None:
    ratios = np.ones((8, 5))
    ratios[2, [1, 3]] = 3.0  # two spikes in five steps
    s = peer_scores(
        ratios,
        group_members(np.zeros(8, dtype=np.intp), 1),
        min_count=3,
        min_peers=3,
        sigma_floor=0.005,
        quantile=0.25,
    )
    assert s.effect[2] == 0.0


def test_group_levels_are_typical_times() -> None:
    x = np.array([[1.0, 1.0, 1.6, 1.6], [1.1, 0.9, 1.6, 1.6]])
    levels = group_levels(x, group_members(np.array([0, 0, 1, 1]), 2), min_count=1)
    assert np.allclose(levels, [1.0, 1.6])
