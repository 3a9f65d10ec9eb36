"""The simulated cluster and training run: node faults, drains, allocation, progress, checkpoints.

Pure state in virtual time; no policy and no detection here (a node's conditions and
causes come from the daemon's decision core, ``supervisor.decide``). Training progress is
counted in seconds of nominal training: it advances at ``1 / slowdown`` while the run is
running, periodic checkpoints fall every ``checkpoint_interval`` of progress, and a failure
rolls progress back to the last checkpoint; a save may stop training for
``checkpoint_stall`` (0 unless a scenario says). An asynchronous save (``checkpoint_persist``
> 0) goes on writing in the background after its stall: the checkpoint counts only once
written, a failure before then loses it, and a save due while the previous one is still being
written waits for it (as torch DCP's ``async_save`` and Megatron's async save do), training
stopped. ETTR = kept progress / wall time, so lost work, restart time, hangs and time blocked
by guards all count against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from trainwarden.policies.model import ConditionType, NodeView, RunView
from trainwarden.supervisor.sim.scenario import FaultSpec, RunSpec

# What the detectors know about a node: its true conditions and the shared causes it reports.
Detected = Callable[[str], tuple[frozenset[ConditionType], frozenset[str]]]


class RunState(StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"  # resubmitted; paying the restart cost
    PENDING = "pending"  # not enough schedulable nodes
    HUNG = "hung"
    DOWN = "down"  # failed, waiting for a decision


@dataclass
class SimNode:
    name: str
    faults: list[FaultSpec] = field(default_factory=list)
    drained: bool = False
    by_trainwarden: bool = False
    returned_at: float | None = None
    run: str | None = None
    vetting_since: float | None = None

    @property
    def dead(self) -> bool:
        return any(f.kind == "node-dead" for f in self.faults)

    def local_fault(self) -> bool:
        """A fault of the node itself (shared-cause faults are not the node's fault)."""
        return any(f.cause is None for f in self.faults)

    def view(self, conditions: frozenset[ConditionType], causes: frozenset[str]) -> NodeView:
        return NodeView(
            self.name,
            self.run,
            self.drained,
            self.by_trainwarden,
            self.returned_at,
            conditions,
            causes,
        )


@dataclass
class SimRun:
    spec: RunSpec
    alloc: list[str] = field(default_factory=list)
    state: RunState = RunState.RUNNING
    progress: float = 0.0
    ckpt: float = 0.0
    updated: float = 0.0
    attempt: int = 1
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    failure_steps: list[int | None] = field(default_factory=list)
    slowdown: float = 1.0
    lost_work_s: float = 0.0
    checkpoints: int = 0
    ckpts_lost_in_flight: int = 0  # asynchronous saves whose write the failure cut short
    time_in: dict[str, float] = field(default_factory=dict)  # wall seconds per state
    reported_step: int | None = None  # highest step the ranks reported (the daemon's last_step)
    stall_start: float = 0.0  # a periodic save in progress: since, until, the progress it saves
    stall_until: float | None = None
    pending_ckpt: float = 0.0
    persisting: tuple[float, float] | None = None  # an async save being written: (done, progress)
    stall_log: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    ckpt_log: list[tuple[int, float]] = field(default_factory=list)  # (step, written at)

    def step(self) -> int:
        return int(self.progress // self.spec.step_s)

    def last_step(self, now: float) -> tuple[int, float]:
        """The last completed step and when it completed (while running)."""
        self.advance(now)
        k = self.step()
        at = self.stall_start if self.stall_until is not None else now
        return k, at - (self.progress - k * self.spec.step_s) * self.slowdown

    def set_state(self, now: float, state: RunState) -> None:
        self.advance(now)
        self.state = state

    def advance(self, now: float) -> None:
        if now > self.updated:
            self.time_in[self.state.value] = self.time_in.get(self.state.value, 0.0) + (
                now - self.updated
            )
        if self.state is RunState.RUNNING and now > self.updated:
            self._train(self.updated, now)
        self._persisted(now)
        self.updated = now

    def _persisted(self, now: float) -> None:
        """An asynchronous save whose background write has finished by ``now`` counts."""
        if self.persisting is not None and self.persisting[0] <= now:
            done, progress = self.persisting
            self.persisting = None
            self._saved(progress, done)

    def _train(self, t: float, now: float) -> None:
        """Progress from ``t`` to ``now``: steps, and at every interval a checkpoint, which
        stops training for ``checkpoint_stall_s`` and counts once written."""
        every = self.spec.checkpoint_interval_s
        stall = self.spec.checkpoint_stall_s
        while t < now:
            if self.stall_until is not None:
                if now < self.stall_until:
                    return
                t = self.stall_until
                self.stall_until = None
                self._staged(self.pending_ckpt, t)
                continue
            boundary = (math.floor(self.progress / every + 1e-9) + 1) * every
            dt = (boundary - self.progress) * self.slowdown
            if t + dt > now:
                self.progress += (now - t) / self.slowdown
                return
            self.progress = boundary
            t += dt
            self._persisted(t)
            # a save due while the previous one is still being written waits for it
            wait = self.persisting[0] - t if self.persisting is not None else 0.0
            if stall > 0 or wait > 0:
                self.stall_start, self.stall_until = t, t + wait + stall
                self.pending_ckpt = boundary
                self.stall_log.append((t, wait + stall))
            else:
                self._staged(boundary, t)

    def _staged(self, progress: float, at: float) -> None:
        """The save's stall is over: written now (synchronous), or after the background write."""
        self._persisted(at)
        if self.spec.checkpoint_persist_s > 0:
            self.persisting = (at + self.spec.checkpoint_persist_s, progress)
        else:
            self._saved(progress, at)

    def _saved(self, progress: float, at: float) -> None:
        self.ckpt = progress
        self.checkpoints += 1
        self.ckpt_log.append((int(progress // self.spec.step_s), at))

    def lose(self, now: float) -> None:
        """The attempt is gone: work since the last written checkpoint is lost (and a save in
        flight, stalled or still being written in the background)."""
        self.advance(now)
        if self.stall_until is not None:
            start, _ = self.stall_log[-1]
            self.stall_log[-1] = (start, now - start)
            self.stall_until = None
        if self.persisting is not None:  # its writer died with the job
            self.persisting = None
            self.ckpts_lost_in_flight += 1
        self.lost_work_s += self.progress - self.ckpt
        self.progress = self.ckpt

    def view(self) -> RunView:
        active = self.state is not RunState.DOWN
        return RunView(
            self.spec.name,
            tuple(self.alloc),
            active,
            self.attempt,
            self.restarts,
            tuple(self.restart_times),
            tuple(self.failure_steps),
            self.reported_step,
        )


class SimCluster:
    """Nodes plus one run; allocation is what a scheduler would do (drained/dead nodes skipped)."""

    def __init__(self, names: list[str], run: RunSpec, detected: Detected) -> None:
        self.nodes = {n: SimNode(n) for n in names}
        self.order = names
        self.run = SimRun(run)
        self.detected = detected
        self.views: dict[str, NodeView] = {}
        self.allocate(now=0.0, exclude=())
        for n in names:
            self.refresh(n)

    def refresh(self, name: str) -> None:
        self.views[name] = self.nodes[name].view(*self.detected(name))

    def schedulable(self, name: str, exclude: set[str]) -> bool:
        n = self.nodes[name]
        return not n.drained and name not in exclude and not (n.faults and n.dead)

    def allocate(self, now: float, exclude: tuple[str, ...]) -> bool:
        """Choose nodes for the run: keep good ones, fill from free nodes. False if short."""
        excl = set(exclude)
        old = list(self.run.alloc)
        keep = [n for n in old if self.schedulable(n, excl)]
        taken = set(keep)
        need = self.run.spec.nodes - len(keep)
        for name in self.order:
            if need <= 0:
                break
            if name not in taken and self.nodes[name].run is None and self.schedulable(name, excl):
                keep.append(name)
                taken.add(name)
                need -= 1
        ok = need <= 0
        new = keep if ok else []
        for name in old:
            if name not in taken or not ok:
                self.nodes[name].run = None
                self.refresh(name)
        for name in new:
            if self.nodes[name].run is None:
                self.nodes[name].run = self.run.spec.name
                self.refresh(name)
        self.run.alloc = new
        return ok

    def recompute_slowdown(self) -> None:
        slow = 1.0
        for name in self.run.alloc:
            for f in self.nodes[name].faults:
                if f.effect == "slow":
                    slow = max(slow, f.slowdown)
        self.run.slowdown = slow
