"""The ``local`` back-end: a run's processes on this machine, placed on simulated nodes.

Each job starts one process per node it is placed on (typically ``torchrun --nnodes N
--node-rank i``). Placeholders in the command are filled per node: ``{node}``,
``{node_rank}``, ``{nnodes}``, ``{master_addr}``, ``{master_port}``, ``{job_id}``. The same
values are in the environment (TRAINWARDEN_NODE, NODE_RANK, NNODES, MASTER_ADDR,
MASTER_PORT, TRAINWARDEN_JOB_ID, and TRAINWARDEN_SCHEDULER_STATE naming the state file).
Drains, resumes and node deaths are state kept here, as a scheduler would keep them;
:meth:`kill_node` makes a node die for real (its processes are SIGKILLed), for the demo and
tests.

Like slurmctld, the back-end outlives the daemon that drives it. Its state (nodes and their
drains, the job counter, every job with its pids, a bounded history of operations) is in
``<log_dir>/scheduler-state.json``, replaced atomically on every change. The job processes run
in sessions of their own, so a daemon killed with ``kill -9`` leaves them running; the next
daemon's scheduler loads the file and *adopts* the live ones (pid and create time must match,
so a recycled pid is never taken for ours), polls them until they end, and reads their exit
codes from ``<log_dir>/<job_id>-<node>.exit``, which each node's ``/bin/sh`` wrapper writes
when its command ends (an adopted process is not our child, so we cannot wait() for it).
Its log is ``<log_dir>/<job_id>-<node>.log``. A damaged state file is never replaced: it would
lose the drains it holds, so loading it raises :class:`SchedulerError` naming what to do.

Only one scheduler instance should use a log dir at a time. A newer instance takes the file
over by writing it when it loads; an older one that is still alive then notices that the file
is no longer the one it wrote and stops writing it (it logs an error and keeps working in
memory), so it can never overwrite the newer one's drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.scheduler.base import JobInfo, JobSpec, JobState, NodeState, SchedNode
from trainwarden.supervisor.scheduler.local_state import (
    LocalJob,
    LocalNode,
    ParsedState,
    Proc,
    alive,
    create_time,
    job_record,
    parse_state,
)

log = logging.getLogger(__name__)

STATE_FILE = "scheduler-state.json"
STATE_VERSION = 1
HISTORY_MAX = 1000  # operations kept in the state file
FINISHED_MAX = 500  # finished jobs kept (newest first); older ones are forgotten
POLL_S = 0.2  # how often an adopted process is checked
ENV_STATE = "TRAINWARDEN_SCHEDULER_STATE"  # marks a job process as this scheduler's
AWAY = "ended while the daemon was away, exit status unknown"
# Runs the node's command and leaves its exit status in a file ($1), for a later daemon.
_WRAPPER = 'f=$1; shift; "$@"; c=$?; echo "$c" > "$f"; exit "$c"'


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


def _read_exit(path: Path) -> int | None:
    """The exit code a node's wrapper left; None when it never wrote one (killed)."""
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _check_runnable(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> None:
    """Fail as exec would: the shell wrapper always starts, so a missing program would
    otherwise only show as exit code 127 later."""
    if not argv:
        raise ValueError("the command is empty")
    prog = argv[0]
    if os.sep in prog:
        path = Path(prog) if os.path.isabs(prog) or cwd is None else Path(cwd) / prog
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), prog)
        if not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), prog)
    elif shutil.which(prog, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT) + " on PATH", prog)


class LocalScheduler:
    """Runs jobs as local process groups on named, simulated nodes; its state is on disk."""

    def __init__(
        self, nodes: Sequence[str], log_dir: str | Path, stop_grace_s: float = 10.0
    ) -> None:
        if not nodes:
            raise SchedulerError("the local scheduler needs at least one node")
        self._nodes = {n: LocalNode(n) for n in nodes}
        self._jobs: dict[str, LocalJob] = {}
        self._log_dir = Path(log_dir)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._path = (self._log_dir / STATE_FILE).absolute()  # in the jobs' environment
        self._scanned: dict[tuple[str, str], tuple[int, float]] | None = None
        self._next_id = 1
        self._grace = stop_grace_s
        self._throttles: dict[str, asyncio.Task[None]] = {}
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_MAX)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unwatched: list[tuple[LocalJob, str, Proc]] = []  # adopted, no loop yet
        self._written: tuple[int, int, int] | None = None  # the file as we last left it
        self._superseded = False
        self._dirty = True
        self._load()
        self._persist()  # take the file over (and drop what the load normalised)
        self._watch_adopted()

    @property
    def name(self) -> str:
        return "local"

    @property
    def state_file(self) -> Path:
        return self._path

    def history(self) -> list[dict[str, Any]]:
        """The last operations (drain, resume, submit, cancel, kill-node), oldest first, each
        with ``ts``, ``op`` and the ``node``/``job``/``reason`` it concerned; kept across
        restarts. A drain is recorded only when it changed the node's state or reason."""
        return [dict(h) for h in self._history]

    def _node(self, node: str) -> LocalNode:
        try:
            return self._nodes[node]
        except KeyError:
            raise SchedulerError(
                f"unknown node {node!r}; the local cluster has {sorted(self._nodes)}"
            ) from None

    async def nodes(self) -> list[SchedNode]:
        self._watch_adopted()
        return [SchedNode(n.name, self._state(n), n.reason) for n in self._nodes.values()]

    def _state(self, n: LocalNode) -> NodeState:
        if n.down:
            return NodeState.DOWN
        if n.drained:
            return NodeState.DRAINING if n.job else NodeState.DRAINED
        return NodeState.ALLOCATED if n.job else NodeState.IDLE

    async def drain(self, node: str, reason: str) -> None:
        self._watch_adopted()
        n = self._node(node)
        if not n.drained or n.reason != reason:
            n.drained = True
            n.reason = reason
            self._record("drain", node=node, reason=reason)
        self._persist()

    async def resume(self, node: str) -> None:
        self._watch_adopted()
        n = self._node(node)
        if n.drained or n.down or n.reason:
            n.drained = False
            n.down = False
            n.reason = ""
            self._record("resume", node=node)
        self._persist()

    async def submit(self, spec: JobSpec) -> str:
        self._watch_adopted()
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
        job = LocalJob(job_id, spec, chosen)
        self._jobs[job_id] = job
        for node in chosen:
            self._nodes[node].job = job_id
        self._record(
            "submit",
            job=job_id,
            reason=f"run {spec.run} attempt {spec.attempt} on {','.join(chosen)}",
        )
        try:
            self._persist(strict=True)  # the id is on disk before any process exists
        except SchedulerError:
            del self._jobs[job_id]
            for node in chosen:
                self._nodes[node].job = None
            raise
        port = free_port()
        try:
            for rank, node in enumerate(chosen):
                await self._spawn(job, rank, node, port)
        except (OSError, KeyError, IndexError, ValueError) as exc:
            await self.cancel(job_id)
            raise SchedulerError(f"cannot start run {spec.run!r}: {exc}") from exc
        self._dirty = True
        self._persist()  # the pids
        return job_id

    async def _spawn(self, job: LocalJob, rank: int, node: str, port: int) -> None:
        spec = job.spec
        values = {
            "node": node,
            "node_rank": str(rank),
            "nnodes": str(len(job.nodes)),
            "master_addr": "127.0.0.1",
            "master_port": str(port),
            "job_id": job.job_id,
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
            "TRAINWARDEN_JOB_ID": job.job_id,
            ENV_STATE: str(self._path),
        }
        _check_runnable(argv, env, spec.workdir)
        exit_file = self._exit_file(job.job_id, node)
        exit_file.unlink(missing_ok=True)
        logf = self._log_file(job.job_id, node).open("ab")
        try:
            child = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                _WRAPPER,
                "tw-job",
                str(exit_file),
                *argv,
                env=env,
                cwd=spec.workdir,
                stdout=logf,
                stderr=logf,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            logf.close()
        proc = Proc(child.pid, create_time(child.pid), child)
        job.procs[node] = proc
        self._task(self._watch_child(job, node, child))

    def _exit_file(self, job_id: str, node: str) -> Path:
        return self._log_dir / f"{job_id}-{node}.exit"

    def _task(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_child(
        self, job: LocalJob, node: str, child: asyncio.subprocess.Process
    ) -> None:
        self._ended(job, node, await child.wait())

    async def _poll(self, job: LocalJob, node: str, proc: Proc) -> None:
        """Watch an adopted process until it ends (it is not our child: no wait())."""
        while proc.running():  # noqa: ASYNC110 -- nothing to wait on but the process table
            await asyncio.sleep(POLL_S)
        self._ended(job, node, _read_exit(self._exit_file(job.job_id, node)))

    def _watch_adopted(self) -> None:
        """Start polling adopted processes once there is a loop (the constructor may run
        outside one)."""
        if not self._unwatched:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        for job, node, proc in self._unwatched:
            self._task(self._poll(job, node, proc))
        self._unwatched.clear()

    def _ended(self, job: LocalJob, node: str, code: int | None) -> None:
        if node in job.exit_codes:
            return
        job.exit_codes[node] = code
        self._dirty = True
        if all(n in job.exit_codes for n in job.procs):
            self._finish(job)
        else:
            self._persist()

    def _finish(self, job: LocalJob) -> None:
        if job.done.is_set():
            return
        self._settle(job)
        self._prune()
        self._dirty = True
        self._persist()
        job.done.set()

    def _settle(self, job: LocalJob) -> None:
        """The job's final state from what is known of it; its nodes are free again."""
        if job.node_failed is not None:
            job.state = JobState.NODE_FAIL
        elif job.cancelled:
            job.state = JobState.CANCELLED
        elif job.exit_codes and all(c == 0 for c in job.exit_codes.values()):
            job.state = JobState.COMPLETED
        else:
            job.state = JobState.FAILED
        for node in job.nodes:
            n = self._nodes.get(node)
            if n is not None and n.job == job.job_id:
                n.job = None
        job.done.set()

    def _prune(self) -> None:
        done = sorted((j for j in self._jobs.values() if j.state.finished), key=lambda j: j.number)
        for j in done[: max(0, len(done) - FINISHED_MAX)]:
            del self._jobs[j.job_id]

    async def cancel(self, job_id: str) -> None:
        self._watch_adopted()
        job = self._jobs.get(job_id)
        if job is None or job.done.is_set():
            return
        if not job.cancelled:
            job.cancelled = True
            self._record("cancel", job=job_id)
            self._persist()
        if not job.procs:  # none was started: nothing to wait for
            self._finish(job)
            return
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
    def _signal(job: LocalJob, sig: signal.Signals, only: str | None = None) -> None:
        """Signal every process of the job on a node: the launcher and all its descendants
        (torchrun starts its workers in sessions of their own, out of a group's reach)."""
        for node, proc in job.procs.items():
            if (only is None or node == only) and proc.running():
                for pid in _tree(proc.pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)

    async def job(self, job_id: str) -> JobInfo | None:
        self._watch_adopted()
        job = self._jobs.get(job_id)
        if job is None:
            return None
        codes = [c for c in job.exit_codes.values() if c is not None and c != 0]
        unknown = [n for n, c in job.exit_codes.items() if c is None]
        if job.failure:
            reason = job.failure
        elif job.node_failed:
            reason = f"node {job.node_failed} failed"
        elif unknown and job.state is JobState.FAILED and not codes:
            reason = f"{', '.join(unknown)}: {AWAY}"
        else:
            reason = ""
        return JobInfo(job_id, job.state, job.nodes, codes[0] if codes else None, reason)

    async def job_log(self, job_id: str) -> str | None:
        """The output of the job's first node (node rank 0, where rank 0 prints):
        ``<log_dir>/<job_id>-<node>.log``; None for a job this scheduler does not know."""
        job = self._jobs.get(job_id)
        if job is None or not job.nodes:
            return None
        return str(self._log_file(job_id, job.nodes[0]))

    def _log_file(self, job_id: str, node: str) -> Path:
        return (self._log_dir / f"{job_id}-{node}.log").absolute()

    async def jobs_tagged(self) -> list[tuple[str, str]]:
        self._watch_adopted()
        return [(j.job_id, j.spec.run) for j in self._jobs.values()]

    async def wait(self, job_id: str, timeout_s: float) -> JobInfo | None:
        """Wait until a job has finished (for tests and the demo); returns its final info."""
        self._watch_adopted()
        job = self._jobs.get(job_id)
        if job is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), timeout_s)
        return await self.job(job_id)

    def kill_node(self, node: str) -> None:
        """The node dies for real: its processes are killed and it is marked down."""
        self._watch_adopted()
        n = self._node(node)
        n.down = True
        n.reason = "node died"
        self._record("kill-node", node=node, job=n.job, reason=n.reason)
        if n.job and n.job in self._jobs:
            job = self._jobs[n.job]
            job.node_failed = node
            self._signal(job, signal.SIGKILL, only=node)
        self._persist()

    def crash_processes(self, node: str) -> None:
        """The job's processes on ``node`` die (as a rank does on a CUDA error); the node
        itself stays up."""
        self._watch_adopted()
        n = self._node(node)
        if n.job and n.job in self._jobs:
            self._signal(self._jobs[n.job], signal.SIGKILL, only=node)

    def throttle(self, node: str, slowdown: float, period_s: float = 0.1) -> None:
        """Slow the job's processes on ``node`` by ``slowdown`` (1.5 = 50 % slower) by
        stopping them part of every period, as a throttled GPU or a sick host would;
        ``float('inf')`` freezes them (a hang). ``unthrottle`` ends it. A throttle is not
        kept in the state file: it is a fault injected by a live test."""
        self._watch_adopted()
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

    # -- the state file ------------------------------------------------------------------

    def _record(
        self, op: str, *, node: str | None = None, job: str | None = None, reason: str = ""
    ) -> None:
        entry: dict[str, Any] = {"ts": time.time(), "op": op}
        if node is not None:
            entry["node"] = node
        if job is not None:
            entry["job"] = job
        if reason:
            entry["reason"] = reason
        self._history.append(entry)
        self._dirty = True

    def _persist(self, *, strict: bool = False) -> None:
        """Write the state file if anything changed since the last write. A failed write
        leaves the change pending for the next call; ``strict`` raises it instead of only
        logging it (submit must not start processes under an id that is not on disk)."""
        if self._dirty and not self._superseded:
            try:
                self._write()
            except OSError as exc:
                msg = f"cannot write the local scheduler's state file {self._path}: {exc}"
                if strict:
                    raise SchedulerError(msg, retryable=True) from exc
                log.error("%s; will retry on the next change", msg)
                return
            self._dirty = self._superseded
        if strict and self._superseded:  # its job ids may be handed out by the newer one
            raise SchedulerError(
                f"another local scheduler took over {self._path}; this one no longer "
                "starts jobs (run one daemon per log dir)"
            )

    def _write(self) -> None:
        try:
            st = self._path.stat()
            now: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            now = None
        if now is not None and now != self._written:
            self._superseded = True
            log.error(
                "%s was written by another local scheduler since this one last wrote it; "
                "this instance stops writing it (run one daemon per log dir)",
                self._path,
            )
            return
        text = json.dumps(self._snapshot(), indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=self._log_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # the rename itself durable
            dfd = os.open(self._log_dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        st = self._path.stat()
        self._written = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "about": "state of trainwarden's local scheduler; move it aside to start fresh",
            "written_at": time.time(),
            "next_job": self._next_id,
            "nodes": {
                n.name: {"drained": n.drained, "down": n.down, "reason": n.reason}
                for n in self._nodes.values()
            },
            "jobs": [job_record(j) for j in self._jobs.values()],
            "history": list(self._history),
        }

    def _damaged(self, what: str) -> SchedulerError:
        return SchedulerError(
            f"the local scheduler's state file {self._path} is {what}. It holds the drains "
            "and jobs of earlier daemons, so it is left as it is: repair it, or move it aside "
            "to start with a fresh state (its drains and job ids are then forgotten)"
        )

    def _read(self) -> ParsedState | None:
        """The state file's content, checked; None when there is no file."""
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._damaged(f"unreadable ({exc})") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._damaged(f"not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise self._damaged("not a JSON object")
        version = data.get("version")
        if version != STATE_VERSION:
            raise self._damaged(
                f"of format version {version!r}, and this trainwarden reads version "
                f"{STATE_VERSION} only (written by a newer trainwarden?)"
            )
        try:
            return parse_state(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(f"damaged ({exc})") from exc

    def _load(self) -> None:
        """Restore nodes, counter, history and jobs from the state file, if there is one."""
        parsed = self._read()
        if parsed is None:
            return
        next_id, nodes, jobs, history = parsed
        st = self._path.stat()
        self._written = (st.st_ino, st.st_mtime_ns, st.st_size)
        for name, (drained, down, reason) in nodes.items():
            if name in self._nodes:
                self._nodes[name].drained = drained
                self._nodes[name].down = down
                self._nodes[name].reason = reason
            else:
                log.warning(
                    "%s lists node %r, which is no longer in the local cluster; dropped it",
                    self._path,
                    name,
                )
        self._history.extend(history)
        self._next_id = max([next_id, *(j.number + 1 for j, _ in jobs)])
        for job, recorded in jobs:
            self._jobs[job.job_id] = job
            if job.state.finished:  # its pids for the record; never signalled again
                job.procs = {n: Proc(*rec) for n, rec in recorded.items()}
                job.done.set()
            else:
                self._restore(job, recorded)
        self._prune()

    def _restore(self, job: LocalJob, recorded: dict[str, tuple[int, float | None]]) -> None:
        """An unfinished job from the file: adopt its live processes, and take the exit
        codes of those that ended while no daemon watched them. A launch the last daemon
        died in (a node with no pid on disk, no process and no exit file: never started;
        the pids of the ranks before it may have been written meanwhile) is failed: its
        started ranks wait for peers that will never come."""
        never: list[str] = []
        for node in job.nodes:
            if node not in self._nodes:
                log.warning("job %s runs on node %r, no longer in the cluster", job.job_id, node)
            elif self._nodes[node].job is None:
                self._nodes[node].job = job.job_id
            if node in job.exit_codes:
                continue
            rec = recorded.get(node)
            if rec is not None and alive(*rec) and self._ours(rec[0], job.job_id):
                self._adopt(job, node, Proc(*rec))
                continue
            if self._scanned is None:
                self._scanned = self._scan()
            found = self._scanned.get((job.job_id, node))
            if found is not None:  # its pid was never recorded (or its create time drifted)
                self._adopt(job, node, Proc(*found))
                continue
            job.exit_codes[node] = _read_exit(self._exit_file(job.job_id, node))
            if rec is None and not self._exit_file(job.job_id, node).exists():
                never.append(node)  # no pid on disk, no process, no exit: never started
        if never:
            self._cut_off(job, never)
        if all(n in job.exit_codes for n in job.nodes):
            self._settle(job)
            log.info("job %s ended while no daemon watched it: %s", job.job_id, job.state)

    def _cut_off(self, job: LocalJob, never: list[str]) -> None:
        """Fail a job whose launch a daemon crash cut short, as Slurm fails a job whose
        step cannot start on every node; the ranks that did start are killed (they hold
        nothing yet: they wait for the rendezvous)."""
        started = [n for n in job.nodes if n in job.procs]
        job.failure = (
            f"its launch was cut short by a daemon crash: started on "
            f"{', '.join(started) or 'no node'}, never on {', '.join(never)}"
        )
        for node in started:
            for pid in _tree(job.procs[node].pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            job.exit_codes[node] = None
        self._unwatched = [u for u in self._unwatched if u[0] is not job]
        self._record("launch-cut-off", job=job.job_id, reason=job.failure)
        self._dirty = True
        log.warning("job %s: %s; failed", job.job_id, job.failure)

    def _adopt(self, job: LocalJob, node: str, proc: Proc) -> None:
        job.procs[node] = proc
        self._unwatched.append((job, node, proc))
        log.info("adopted job %s on node %s (pid %d)", job.job_id, node, proc.pid)

    def _ours(self, pid: int, job_id: str) -> bool:
        """The process was started by this scheduler for ``job_id`` (its environment says)."""
        try:
            env = psutil.Process(pid).environ()
        except psutil.Error:
            return False
        return env.get(ENV_STATE) == str(self._path) and env.get("TRAINWARDEN_JOB_ID") == job_id

    def _scan(self) -> dict[tuple[str, str], tuple[int, float]]:
        """This scheduler's node launchers, found by their environment: for each (job, node)
        the earliest started of the processes whose parent is not one of them."""
        mine = str(self._path)
        groups: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
        uid = os.getuid()
        for p in psutil.process_iter():
            try:
                if p.uids().real != uid or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                env = p.environ()
                if env.get(ENV_STATE) != mine:
                    continue
                key = (env.get("TRAINWARDEN_JOB_ID", ""), env.get("TRAINWARDEN_NODE", ""))
                groups.setdefault(key, []).append((p.pid, p.ppid(), p.create_time()))
            except psutil.Error:
                continue
        found: dict[tuple[str, str], tuple[int, float]] = {}
        for key, procs in groups.items():
            pids = {pid for pid, _, _ in procs}
            roots = sorted((ct, pid) for pid, ppid, ct in procs if ppid not in pids)
            if roots:
                found[key] = (roots[0][1], roots[0][0])
        return found
