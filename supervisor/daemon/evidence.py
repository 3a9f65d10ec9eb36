"""Whether a report may count: who may speak for which node, run and rank.

The broker authenticates nodes and its ACL binds each node to its own topics, so a
message on ``node/<name>/...`` speaks for that node. Nothing more is taken on trust:

- a name the scheduler does not list is no node (it is counted, never made state);
- a rank's report counts only for the run's current attempt, from a node of that
  attempt's allocation, for a rank inside its world size (nodes x ranks per node);
- a checkpoint counts (releases a decision waiting for it, becomes the run's newest)
  only once it is found complete on disk, under the run's checkpoint directory.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict

from trainwarden.supervisor.daemon import checkpoints
from trainwarden.supervisor.daemon.checkpoints import Validation
from trainwarden.supervisor.model.cluster import RunInfo

MAX_VETTED = 4096  # checkpoints whose verdict is remembered (every rank reports the same one)


def world_size(run: RunInfo) -> int:
    """The ranks the current attempt has: its nodes times the run's ranks per node."""
    return len(run.nodes) * run.spec.ranks_per_node


def roster_problem(run: RunInfo, rank: int, node: str, what: str) -> str | None:
    """Why a report of ``rank`` on ``node`` for ``run``'s current attempt cannot count, or
    None when it can. ``what`` names the report ("steps", "checkpoint")."""
    where = f"{what} report for run {run.name} attempt {run.attempt}"
    if not run.nodes:
        return f"{where} from node {node}: the attempt's allocation is not known yet"
    if node not in run.nodes:
        return f"{where} from node {node}, which is not in the attempt's allocation"
    size = world_size(run)
    if rank >= size:
        return (
            f"{where}: rank {rank} is outside its world size {size} "
            f"({len(run.nodes)} nodes x {run.spec.ranks_per_node} ranks)"
        )
    return None


def inside(path: str, root: str) -> bool:
    """Whether ``path`` lies under ``root`` once symbolic links and '..' are resolved."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _check(run: RunInfo, step: int, path: str) -> Validation:
    if not inside(path, run.spec.checkpoint_dir):
        return Validation(
            False, f"{path} is not under the run's checkpoint directory {run.spec.checkpoint_dir}"
        )
    fmt = run.spec.checkpoint_format
    named = checkpoints.step_in_name(path, fmt)
    if named is not None and named != step:
        return Validation(False, f"{path} holds step {named}, not step {step}")
    return checkpoints.validate(path, fmt=fmt)


class CheckpointVetter:
    """Validates reported checkpoints on disk, once per (run, path, step): a thousand ranks
    reporting the same save cost one look at the file system. Only a valid verdict is
    kept; a rank may report before the save is complete, so the next report looks again."""

    def __init__(self) -> None:
        self._verdicts: OrderedDict[tuple[str, str, int], asyncio.Future[Validation]] = (
            OrderedDict()
        )

    async def vet(self, run: RunInfo, step: int, path: str) -> tuple[Validation, bool]:
        """The checkpoint's validation, and whether this call was the first to ask."""
        key = (run.name, path, step)
        known = self._verdicts.get(key)
        if known is not None:
            return await asyncio.shield(known), False
        fut: asyncio.Future[Validation] = asyncio.get_running_loop().create_future()
        self._verdicts[key] = fut
        while len(self._verdicts) > MAX_VETTED:
            self._verdicts.popitem(last=False)
        try:
            verdict = await asyncio.to_thread(_check, run, step, path)
        except Exception as exc:  # a strange file system is a verdict, not a crash
            verdict = Validation(False, f"cannot read {path}: {exc}")
        fut.set_result(verdict)
        if not verdict.valid:  # a rank may report before the save is complete: look again
            self._verdicts.pop(key, None)
        return verdict, True
