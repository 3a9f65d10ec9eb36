"""The interruption-rate prior: Llama 3's 54 days on 16,384 GPUs, per GPU-hour.

The advice needs a mean time between interruptions before a run has seen enough of its own;
the shipped Llama 3 table (package data ``data/llama3/``, see SOURCE.txt) is the best public
figure for a synchronous run of this size, and interruptions scale with the GPUs in the job.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

LLAMA3_DAYS = 54.0
LLAMA3_GPUS = 16_384
LLAMA3_SOURCE = (
    "Llama 3 405B: 419 unexpected interruptions in 54 days on 16,384 GPUs (arXiv:2407.21783, "
    "Table 5; supervisor/goodput/data/llama3/)"
)


@dataclass(frozen=True)
class Cause:
    component: str
    category: str
    count: int


@lru_cache(maxsize=1)
def llama3_causes() -> tuple[Cause, ...]:
    text = (
        resources.files("trainwarden.supervisor.goodput")
        .joinpath("data/llama3/llama3_405b_unexpected_interruptions.csv")
        .read_text()
    )
    return tuple(
        Cause(r["component"], r["category"], int(r["interruption_count"]))
        for r in csv.DictReader(text.splitlines())
    )


def llama3_interruptions() -> int:
    return sum(c.count for c in llama3_causes())


def per_gpu_hour() -> float:
    """Interruptions per GPU-hour of a synchronous job (the prior's rate)."""
    return llama3_interruptions() / (LLAMA3_DAYS * 24.0 * LLAMA3_GPUS)


def prior_mtbf_s(gpus: int) -> float:
    """Mean seconds between interruptions of a job on ``gpus`` GPUs, under the prior."""
    return 3600.0 / (per_gpu_hour() * max(1, gpus))
