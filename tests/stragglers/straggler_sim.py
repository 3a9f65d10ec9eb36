"""Helpers for the straggler tests: synthetic step data, deterministic, virtual time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainwarden.supervisor.detectors.stragglers.detector import StragglerDetector

DATA = Path(__file__).parent / "data"
SHARED = Path("/work/shared/data/stragglers")

Feed = Callable[..., list]


def synth(
    n_ranks: int,
    steps: int,
    *,
    seed: int = 0,
    jitter: float = 0.01,
    slow: dict[int, float] | None = None,
    onset: int = 0,
    levels: list[float] | None = None,
    ranks_per_node: int = 4,
) -> np.ndarray:
    """compute_s (steps x ranks): 1 s x group level x noise, ranks in ``slow`` slowed from onset."""
    rng = np.random.default_rng(seed)
    x = 1.0 + jitter * rng.standard_normal((steps, n_ranks))
    if levels is not None:
        per_group = n_ranks // len(levels)
        x *= np.repeat(np.asarray(levels), per_group)[None, :]
    for rank, factor in (slow or {}).items():
        x[onset:, rank] *= factor
    return x


def feed(
    det: StragglerDetector,
    x: np.ndarray,
    *,
    run: str = "r",
    groups: int = 1,
    ranks_per_node: int = 4,
    start: int = 0,
    step_s: float = 1.2,
) -> list:
    """Feed every sample through observe() and evaluate after each step; return all findings."""
    out: list = []
    n = x.shape[1]
    per_group = n // groups
    for i, row in enumerate(x):
        step = start + i
        for rank in range(n):
            det.observe(
                run,
                rank,
                f"n{rank // ranks_per_node}",
                f"g{rank // per_group}",
                step,
                float(row[rank]),
                step_s,
                float(step) * step_s,
            )
        out.extend(det.evaluate(float(step) * step_s))
    return out
