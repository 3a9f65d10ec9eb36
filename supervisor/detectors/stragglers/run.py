"""One run's step samples: a bounded (steps x ranks) buffer that bad input cannot corrupt.

A cell holds one rank's time for one step, so a duplicate overwrites the same value and
an out-of-order sample lands in its own row. Samples older than the buffer, absurdly far
ahead, from an older attempt or from ranks outside a declared roster are rejected and
counted. Scoring reads the buffer afresh at every evaluation, so late data only helps.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from trainwarden.supervisor.detectors.stragglers.model import StragglerConfig
from trainwarden.supervisor.detectors.stragglers.stats import (
    FloatArray,
    IntArray,
    group_members,
    masked_median,
)


@dataclass
class Track:
    """Persistence state of one rank or node: where its bad (or good) streak began."""

    bad_since: int | None = None  # sequence number of the first bad evaluation
    from_step: int = 0
    good_since: int | None = None
    flagged: bool = False
    score: float = math.nan


@dataclass
class RunBuffer:
    """Samples and membership of one run attempt."""

    config: StragglerConfig
    attempt: int = 0
    cols: dict[int, int] = field(default_factory=dict)  # rank -> column
    ranks: list[int] = field(default_factory=list)
    node_of: list[int] = field(default_factory=list)  # column -> node index
    group_of: list[int] = field(default_factory=list)  # column -> group index
    nodes: list[str] = field(default_factory=list)
    node_ix: dict[str, int] = field(default_factory=dict)
    groups: list[str | None] = field(default_factory=list)
    group_ix: dict[str | None, int] = field(default_factory=dict)
    roster: frozenset[int] | None = None
    rejected: Counter[str] = field(default_factory=Counter)
    tracks: dict[tuple[str, int], Track] = field(default_factory=dict)
    frontier: int = -1
    seq: int = 0  # distinct steps that have passed the frontier
    job_series: deque[tuple[int, float]] = field(default_factory=deque)
    job_active: bool = False

    def __post_init__(self) -> None:
        cap = self.config.buffer_steps
        self.x: FloatArray = np.full((cap, 16), np.nan)
        self.y: FloatArray = np.full((cap, 16), np.nan)
        self.row_step = np.full(cap, -1, dtype=np.int64)
        self.row_of: dict[int, int] = {}
        self.highest = -1
        self.last_step = np.full(16, -1, dtype=np.int64)
        self.last_ts = np.full(16, np.nan)
        self._members: list[IntArray] | None = None
        self.med = np.full((cap, 1), np.nan)  # per row: each group's median (a cache)
        self.med_ok = np.zeros(cap, dtype=bool)
        self._rank_array: npt.NDArray[np.int64] | None = None
        self._index_arrays: tuple[IntArray, IntArray] | None = None

    # -- membership -------------------------------------------------------------------
    def _index(self, table: dict[str, int], names: list[str], name: str) -> int:
        ix = table.get(name)
        if ix is None:
            ix = table[name] = len(names)
            names.append(name)
        return ix

    def _group_index(self, group: str | None) -> int:
        ix = self.group_ix.get(group)
        if ix is None:
            ix = self.group_ix[group] = len(self.groups)
            self.groups.append(group)
        return ix

    def column(self, rank: int, node: str, group: str | None) -> int:
        """The rank's column; a rank that moved to another node starts afresh."""
        node_i = self._index(self.node_ix, self.nodes, node)
        group_i = self._group_index(group)
        col = self.cols.get(rank)
        if col is None:
            col = self.cols[rank] = len(self.ranks)
            self.ranks.append(rank)
            self.node_of.append(node_i)
            self.group_of.append(group_i)
            if col >= self.x.shape[1]:
                self._grow()
            self.invalidate()
            return col
        if self.node_of[col] != node_i:
            self.x[:, col] = np.nan
            self.y[:, col] = np.nan
            self.last_step[col] = -1
            self.last_ts[col] = np.nan
            self.tracks.pop(("rank", rank), None)
            self.node_of[col] = node_i
            self._index_arrays = None
            self.med_ok[:] = False
        if self.group_of[col] != group_i:
            self.group_of[col] = group_i
            self.invalidate()
        return col

    def invalidate(self) -> None:
        self._members = None
        self._index_arrays = None
        self.med_ok[:] = False

    def _grow(self) -> None:
        width = self.x.shape[1] * 2
        pad = width - self.x.shape[1]
        self.x = np.hstack([self.x, np.full((self.x.shape[0], pad), np.nan)])
        self.y = np.hstack([self.y, np.full((self.y.shape[0], pad), np.nan)])
        self.last_step = np.concatenate([self.last_step, np.full(pad, -1, dtype=np.int64)])
        self.last_ts = np.concatenate([self.last_ts, np.full(pad, np.nan)])

    def index_arrays(self) -> tuple[IntArray, IntArray]:
        """(node index, group index) per column, cached until membership changes."""
        if self._index_arrays is None or len(self._index_arrays[0]) != len(self.ranks):
            self._index_arrays = (
                np.asarray(self.node_of, dtype=np.intp),
                np.asarray(self.group_of, dtype=np.intp),
            )
        return self._index_arrays

    def rank_array(self) -> npt.NDArray[np.int64]:
        if self._rank_array is None or len(self._rank_array) != len(self.ranks):
            self._rank_array = np.asarray(self.ranks, dtype=np.int64)
        return self._rank_array

    def group_medians(self, rows: list[int], min_peers: int) -> FloatArray:
        """Each group's median at each of ``rows`` (rows x groups), recomputed only when stale."""
        members = self.members()
        n = len(self.ranks)
        if self.med.shape[1] != len(members):
            self.med = np.full((self.config.buffer_steps, len(members)), np.nan)
            self.med_ok[:] = False
        stale = [r for r in rows if not self.med_ok[r]]
        if stale:
            x = self.x[stale, :n]
            for g, cols in enumerate(members):
                if len(cols) >= min_peers:
                    self.med[stale, g] = masked_median(x[:, cols], axis=1, min_count=min_peers)
                else:
                    self.med[stale, g] = np.nan
            self.med_ok[stale] = True
        return self.med[rows]

    def members(self) -> list[IntArray]:
        if self._members is None:
            gi = np.asarray(self.group_of, dtype=np.intp)
            self._members = group_members(gi, len(self.groups))
        return self._members

    # -- samples ----------------------------------------------------------------------
    def row(self, step: int) -> int | None:
        """The buffer row for ``step``; None when the step is older than everything kept."""
        row = self.row_of.get(step)
        if row is not None:
            return row
        cap = self.config.buffer_steps
        if len(self.row_of) < cap:
            row = len(self.row_of)
        else:
            oldest = min(self.row_of)
            if step < oldest:
                return None
            row = self.row_of.pop(oldest)
            self.x[row, :] = np.nan
            self.y[row, :] = np.nan
        self.med_ok[row] = False
        self.row_of[step] = row
        self.row_step[row] = step
        return row

    def put(self, col: int, step: int, value: float, step_s: float, ts: float) -> bool:
        if self.highest >= 0 and step > self.highest + self.config.max_step_jump:
            self.rejected["step-jump"] += 1
            return False
        row = self.row(step)
        if row is None:
            self.rejected["too-old"] += 1
            return False
        self.x[row, col] = value
        self.y[row, col] = step_s
        self.med_ok[row] = False
        self.last_step[col] = max(self.last_step[col], step)
        self.highest = max(self.highest, step)
        if not ts <= self.last_ts[col]:  # also true while last_ts is NaN
            self.last_ts[col] = ts
        return True

    # -- views for scoring --------------------------------------------------------------
    def compute_frontier(self) -> int:
        """Highest step that at least ``min_coverage`` of the ranks have finished."""
        n = len(self.ranks)
        last = self.last_step[:n]
        if n == 0 or last.max() < 0:
            return -1
        k = math.floor((1.0 - self.config.min_coverage) * n)
        return int(np.partition(last, k)[k])

    def window_rows(self, frontier: int, width: int) -> list[int]:
        """Rows of the last ``width`` distinct steps at or below ``frontier``, oldest first."""
        steps = sorted(s for s in self.row_of if s <= frontier)[-width:]
        return [self.row_of[s] for s in steps]

    def new_steps(self, frontier: int) -> list[int]:
        return sorted(s for s in self.row_of if self.frontier < s <= frontier)
