"""Robust statistics for straggler scoring, vectorised over ranks (numpy, no time, no state).

Missing samples are NaN. A median ignores them; a median of too few values is NaN, so an
unknown rank is never scored as good or bad. Peers are the ranks of one *group* (ranks doing
the same work, e.g. one pipeline stage): every comparison here is within a group only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

MAD_TO_SIGMA = 1.4826  # scales a median absolute deviation to a normal standard deviation


def masked_quantile(a: FloatArray, axis: int, q: float, min_count: int = 1) -> FloatArray:
    """Quantile ``q`` along ``axis`` ignoring NaN (linear interpolation between order
    statistics); NaN where fewer than ``min_count`` values exist.

    Sorting puts NaN last, so the valid values of each slice are its first ``n``; this is
    several times faster than ``np.nanquantile`` on wide arrays.
    """
    nan = np.isnan(a)
    if not nan.any() and a.shape[axis] >= max(min_count, 1):
        pos_all = (a.shape[axis] - 1) * q
        k_lo = int(np.floor(pos_all))
        k_hi = min(k_lo + 1, a.shape[axis] - 1)
        part = np.partition(a, sorted({k_lo, k_hi}), axis=axis)
        lo_all = np.take(part, k_lo, axis=axis)
        hi_all = np.take(part, k_hi, axis=axis)
        fast: FloatArray = lo_all + (hi_all - lo_all) * (pos_all - k_lo)
        return fast
    s = np.sort(a, axis=axis)
    n = np.sum(~nan, axis=axis)
    pos = np.clip(n - 1, 0, None) * q
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.clip(n - 1, 0, None))
    frac = pos - lo
    lo_v = np.take_along_axis(s, np.expand_dims(lo, axis), axis=axis).squeeze(axis)
    hi_v = np.take_along_axis(s, np.expand_dims(hi, axis), axis=axis).squeeze(axis)
    with np.errstate(invalid="ignore"):
        out: FloatArray = lo_v + (hi_v - lo_v) * frac
    return np.where(n >= max(min_count, 1), out, np.nan)


def masked_median(a: FloatArray, axis: int, min_count: int = 1) -> FloatArray:
    """Median along ``axis`` ignoring NaN (see :func:`masked_quantile`)."""
    return masked_quantile(a, axis, 0.5, min_count)


def group_members(group_idx: IntArray, n_groups: int) -> list[IntArray]:
    """The column indices of each group, in group order."""
    order = np.argsort(group_idx, kind="stable")
    bounds = np.searchsorted(group_idx[order], np.arange(n_groups + 1))
    return [order[bounds[g] : bounds[g + 1]] for g in range(n_groups)]


@dataclass(frozen=True)
class PeerScores:
    """Per-rank window statistics against the rank's group (NaN where unknown)."""

    ratio: FloatArray  # the rank's window median of (its time / its peers' median)
    effect: FloatArray  # ratio / group centre - 1: how much slower than a typical peer
    z: FloatArray  # (ratio - centre) / robust spread of the group's ratios


def peer_scores(
    ratios: FloatArray,
    members: list[IntArray],
    *,
    min_count: int,
    min_peers: int,
    sigma_floor: float,
    quantile: float = 0.5,
) -> PeerScores:
    """Summarise each rank's ratios (ranks x steps) over the window, then score it in its group.

    The summary is a quantile of the window (the median, or a lower quantile): a slowed
    rank is slow at *every* step, while noise spikes only ever push single steps up, so a
    low quantile ignores them; the group's median and MAD of those medians
    give a centre and a spread that already include every rank's persistent offset, so the
    threshold adapts to how noisy this job is. ``sigma_floor`` keeps a very quiet group
    from turning a 0.1 % difference into a large z.
    """
    ratio = masked_quantile(ratios, axis=1, q=quantile, min_count=min_count)
    effect = np.full_like(ratio, np.nan)
    z = np.full_like(ratio, np.nan)
    for cols in members:
        vals = ratio[cols]
        valid = vals[~np.isnan(vals)]
        if len(valid) < min_peers:
            continue
        centre = float(np.median(valid))
        spread = MAD_TO_SIGMA * float(np.median(np.abs(valid - centre)))
        spread = max(spread, sigma_floor * centre)
        effect[cols] = vals / centre - 1.0
        z[cols] = (vals - centre) / spread
    return PeerScores(ratio=ratio, effect=effect, z=z)


def group_levels(x: FloatArray, members: list[IntArray], min_count: int) -> FloatArray:
    """Each group's typical time over the window: median over steps of the group's step median."""
    out = np.full(len(members), np.nan)
    for g, cols in enumerate(members):
        if len(cols) == 0:
            continue
        per_step = masked_median(x[:, cols], axis=1)
        valid = per_step[~np.isnan(per_step)]
        if len(valid) >= min_count:
            out[g] = float(np.median(valid))
    return out
