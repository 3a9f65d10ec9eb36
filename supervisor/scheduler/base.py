"""The one interface every scheduler back-end implements.

Every operation is idempotent (draining a drained node is fine) and bounded in time;
a failure raises :class:`trainwarden.supervisor.errors.SchedulerError` carrying the scheduler's own
message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class NodeState(StrEnum):
    IDLE = "idle"
    ALLOCATED = "allocated"
    DRAINING = "draining"  # drain requested, jobs still on it
    DRAINED = "drained"
    DOWN = "down"
    UNKNOWN = "unknown"


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NODE_FAIL = "node-fail"
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self not in (
            JobState.PENDING,
            JobState.RUNNING,
            JobState.COMPLETING,
            JobState.UNKNOWN,
        )


@dataclass(frozen=True)
class SchedNode:
    name: str
    state: NodeState
    reason: str = ""  # drain reason as the scheduler holds it


@dataclass(frozen=True)
class JobSpec:
    """One attempt of a run to submit. ``env`` gets TRAINWARDEN_RUN/ATTEMPT/RESUME_FROM added."""

    run: str
    attempt: int
    nodes: int
    command: tuple[str, ...]  # local: the per-node launcher command; slurm: the sbatch script
    exclude: tuple[str, ...] = ()
    resume_from: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    # slurm: extra nodes the job holds (sbatch --no-kill) for in-allocation restarts
    spares: int = 0

    def job_env(self) -> dict[str, str]:
        env = dict(self.env)
        env["TRAINWARDEN_RUN"] = self.run
        env["TRAINWARDEN_ATTEMPT"] = str(self.attempt)
        if self.resume_from:
            env["TRAINWARDEN_RESUME_FROM"] = self.resume_from
        else:
            env.pop("TRAINWARDEN_RESUME_FROM", None)
        return env


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: JobState
    nodes: tuple[str, ...] = ()
    exit_code: int | None = None
    reason: str = ""


class Scheduler(Protocol):
    """What the supervisor needs from a scheduler."""

    @property
    def name(self) -> str: ...

    async def nodes(self) -> list[SchedNode]: ...

    async def drain(self, node: str, reason: str) -> None: ...

    async def resume(self, node: str) -> None: ...

    async def submit(self, spec: JobSpec) -> str: ...

    async def cancel(self, job_id: str) -> None: ...

    async def job(self, job_id: str) -> JobInfo | None: ...

    async def job_log(self, job_id: str) -> str | None:
        """The path of the file the job's output goes to (its first node's, where rank 0
        prints), readable from the daemon's host; None when the scheduler names none."""
        ...

    async def jobs_tagged(self) -> list[tuple[str, str]]:
        """(job id, run) of the jobs tagged ``trainwarden:<run>`` the scheduler knows."""
        ...
