"""The ``local`` back-end: a run's processes on this machine, placed on simulated nodes.

Each job starts one process per node it is placed on (typically ``torchrun --nnodes N
--node-rank i``). Placeholders in the command are filled per node: ``{node}``,
``{node_rank}``, ``{nnodes}``, ``{master_addr}``, ``{master_port}``, ``{job_id}``. The same
values are in the environment (TRAINWARDEN_NODE, NODE_RANK, NNODES, MASTER_ADDR,
MASTER_PORT, TRAINWARDEN_JOB_ID). Drains, resumes and node deaths are state kept here, as a
scheduler would keep them; :meth:`kill_node` makes a node die for real (its processes are
SIGKILLed), for the demo and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.scheduler.base import JobInfo, JobSpec, JobState, NodeState, SchedNode


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, children first (so none is left to respawn)."""
    try:
        root = psutil.Process(pid)
        kids = root.children(recursive=True)
    except psutil.Error:
        return [pid]
    return [k.pid for k in reversed(kids)] + [pid]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _LocalNode:
    name: str
    drained: bool = False
    down: bool = False
    reason: str = ""
    job: str | None = None


@dataclass
class _LocalJob:
    job_id: str
    spec: JobSpec
    nodes: tuple[str, ...]
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    state: JobState = JobState.RUNNING
    cancelled: bool = False
    node_failed: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class LocalScheduler:
    """Runs jobs as local process groups on named, simulated nodes."""

    def __init__(
        self, nodes: Sequence[str], log_dir: str | Path, stop_grace_s: float = 10.0
    ) -> None:
        if not nodes:
            raise SchedulerError("the local scheduler needs at least one node")
        self._nodes = {n: _LocalNode(n) for n in nodes}
        self._jobs: dict[str, _LocalJob] = {}
        self._log_dir = Path(log_dir)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._next_id = 1
        self._grace = stop_grace_s
        self._throttles: dict[str, asyncio.Task[None]] = {}

    @property
    def name(self) -> str:
        return "local"

    def _node(self, node: str) -> _LocalNode:
        try:
            return self._nodes[node]
        except KeyError:
            raise SchedulerError(
                f"unknown node {node!r}; the local cluster has {sorted(self._nodes)}"
            ) from None

    async def nodes(self) -> list[SchedNode]:
        return [SchedNode(n.name, self._state(n), n.reason) for n in self._nodes.values()]

    def _state(self, n: _LocalNode) -> NodeState:
        if n.down:
            return NodeState.DOWN
        if n.drained:
            return NodeState.DRAINING if n.job else NodeState.DRAINED
        return NodeState.ALLOCATED if n.job else NodeState.IDLE

    async def drain(self, node: str, reason: str) -> None:
        n = self._node(node)
        n.drained = True
        n.reason = reason

    async def resume(self, node: str) -> None:
        n = self._node(node)
        n.drained = False
        n.down = False
        n.reason = ""

    async def submit(self, spec: JobSpec) -> str:
        for x in spec.exclude:
            self._node(x)
        free = [
            n.name
            for n in self._nodes.values()
            if not (n.drained or n.down or n.job) and n.name not in spec.exclude
        ]
        if len(free) < spec.nodes:
            raise SchedulerError(
                f"cannot place run {spec.run!r}: needs {spec.nodes} nodes, {len(free)} available "
                f"({', '.join(free) or 'none'})"
            )
        job_id = f"local-{self._next_id}"
        self._next_id += 1
        chosen = tuple(free[: spec.nodes])
        job = _LocalJob(job_id, spec, chosen)
        port = free_port()
        try:
            for rank, node in enumerate(chosen):
                values = {
                    "node": node,
                    "node_rank": str(rank),
                    "nnodes": str(len(chosen)),
                    "master_addr": "127.0.0.1",
                    "master_port": str(port),
                    "job_id": job_id,
                }
                argv = [a.format(**values) for a in spec.command]
                env = {
                    **os.environ,
                    **spec.job_env(),
                    "TRAINWARDEN_NODE": node,
                    "NODE_RANK": values["node_rank"],
                    "NNODES": values["nnodes"],
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": values["master_port"],
                    "TRAINWARDEN_JOB_ID": job_id,
                }
                log = (self._log_dir / f"{job_id}-{node}.log").open("ab")
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *argv,
                        env=env,
                        cwd=spec.workdir,
                        stdout=log,
                        stderr=log,
                        stdin=asyncio.subprocess.DEVNULL,
                        start_new_session=True,
                    )
                finally:
                    log.close()
                job.procs[node] = proc
                self._nodes[node].job = job_id
        except (OSError, KeyError, IndexError, ValueError) as exc:
            self._jobs[job_id] = job
            await self.cancel(job_id)
            raise SchedulerError(f"cannot start run {spec.run!r}: {exc}") from exc
        self._jobs[job_id] = job
        for node, proc in job.procs.items():
            asyncio.get_running_loop().create_task(self._watch(job, node, proc))
        return job_id

    async def _watch(self, job: _LocalJob, node: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        job.exit_codes[node] = code
        if len(job.exit_codes) == len(job.procs):
            self._finish(job)

    def _finish(self, job: _LocalJob) -> None:
        if job.done.is_set():
            return
        if job.node_failed is not None:
            job.state = JobState.NODE_FAIL
        elif job.cancelled:
            job.state = JobState.CANCELLED
        elif all(c == 0 for c in job.exit_codes.values()):
            job.state = JobState.COMPLETED
        else:
            job.state = JobState.FAILED
        for node in job.nodes:
            if self._nodes[node].job == job.job_id:
                self._nodes[node].job = None
        job.done.set()

    async def cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.done.is_set():
            return
        job.cancelled = True
        for node in job.nodes:
            self.unthrottle(node)
        self._signal(job, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self._signal(job, signal.SIGTERM)
        try:
            await asyncio.wait_for(job.done.wait(), self._grace)
        except TimeoutError:
            self._signal(job, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), 5.0)
        if not job.done.is_set():  # processes never started or already reaped
            self._finish(job)

    @staticmethod
    def _signal(job: _LocalJob, sig: signal.Signals, only: str | None = None) -> None:
        """Signal every process of the job on a node: the launcher and all its descendants
        (torchrun starts its workers in sessions of their own, out of a group's reach)."""
        for node, proc in job.procs.items():
            if (only is None or node == only) and proc.returncode is None:
                for pid in _tree(proc.pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)

    async def job(self, job_id: str) -> JobInfo | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        codes = [c for c in job.exit_codes.values() if c != 0]
        return JobInfo(
            job_id,
            job.state,
            job.nodes,
            codes[0] if codes else None,
            f"node {job.node_failed} failed" if job.node_failed else "",
        )

    async def jobs_tagged(self) -> list[tuple[str, str]]:
        return [(j.job_id, j.spec.run) for j in self._jobs.values()]

    async def wait(self, job_id: str, timeout_s: float) -> JobInfo | None:
        """Wait until a job has finished (for tests and the demo); returns its final info."""
        job = self._jobs.get(job_id)
        if job is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), timeout_s)
        return await self.job(job_id)

    def kill_node(self, node: str) -> None:
        """The node dies for real: its processes are killed and it is marked down."""
        n = self._node(node)
        n.down = True
        n.reason = "node died"
        if n.job and n.job in self._jobs:
            job = self._jobs[n.job]
            job.node_failed = node
            self._signal(job, signal.SIGKILL, only=node)

    def crash_processes(self, node: str) -> None:
        """The job's processes on ``node`` die (as a rank does on a CUDA error); the node
        itself stays up."""
        n = self._node(node)
        if n.job and n.job in self._jobs:
            self._signal(self._jobs[n.job], signal.SIGKILL, only=node)

    def throttle(self, node: str, slowdown: float, period_s: float = 0.1) -> None:
        """Slow the job's processes on ``node`` by ``slowdown`` (1.5 = 50 % slower) by
        stopping them part of every period, as a throttled GPU or a sick host would;
        ``float('inf')`` freezes them (a hang). ``unthrottle`` ends it."""
        self.unthrottle(node)
        n = self._node(node)
        if n.job is None or n.job not in self._jobs or slowdown <= 1.0:
            return
        job = self._jobs[n.job]
        stopped = 1.0 if slowdown == float("inf") else 1.0 - 1.0 / slowdown

        async def cycle() -> None:
            try:
                while not job.done.is_set():
                    self._signal(job, signal.SIGSTOP, only=node)
                    if stopped >= 1.0:
                        await job.done.wait()
                        return
                    await asyncio.sleep(period_s * stopped)
                    self._signal(job, signal.SIGCONT, only=node)
                    await asyncio.sleep(period_s * (1.0 - stopped))
            finally:
                self._signal(job, signal.SIGCONT, only=node)

        self._throttles[node] = asyncio.get_running_loop().create_task(cycle())

    def unthrottle(self, node: str) -> None:
        task = self._throttles.pop(node, None)
        if task is not None:
            task.cancel()

    def pids(self, job_id: str) -> dict[str, int]:
        job = self._jobs.get(job_id)
        return {} if job is None else {n: p.pid for n, p in job.procs.items()}
