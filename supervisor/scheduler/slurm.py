"""Slurm back-end: drives a real cluster through Slurm's own commands (sinfo, squeue, scontrol,
sbatch, scancel), each run as a bounded asyncio subprocess.

Every action is idempotent and safe to repeat after a daemon restart: draining a drained node,
resuming a node in service and cancelling a finished job all succeed. Failures raise
:class:`SchedulerError` with Slurm's own message; ``retryable`` is set when slurmctld could not be
reached or a command ran out of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.scheduler import slurm_parse as sp
from trainwarden.supervisor.scheduler.base import JobInfo, JobSpec, SchedNode

DEFAULT_CONF = "/etc/slurm/slurm.conf"

# Slurm's words for "the controller is not there (yet)": worth a retry.
_TRANSIENT = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|connect failure"
    r"|Zero Bytes were transmitted|Transport endpoint|temporarily unavailable|Resource temporarily"
    r"|Slurm backup controller in standby|communication connection failure",
    re.IGNORECASE,
)
_UNKNOWN_JOB = re.compile(r"Invalid job id specified", re.IGNORECASE)
_UNKNOWN_NODE = re.compile(r"Invalid node name specified|Node \S+ not found", re.IGNORECASE)
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SlurmScheduler:
    """Scheduler protocol over Slurm commands.

    ``slurm_conf``: path of slurm.conf (default: $SLURM_CONF, else /etc/slurm/slurm.conf).
    ``timeout_s``: limit for each command; the process is killed when it passes.
    ``bin_dir``: folder holding the Slurm commands (default: found on PATH).
    """

    def __init__(
        self, slurm_conf: str | None = None, timeout_s: float = 20.0, bin_dir: str | None = None
    ) -> None:
        if timeout_s <= 0:
            raise SchedulerError(f"Slurm command timeout must be positive, got {timeout_s}")
        self._conf = slurm_conf or os.environ.get("SLURM_CONF") or DEFAULT_CONF
        self._timeout_s = timeout_s
        self._bin_dir = bin_dir

    @property
    def name(self) -> str:
        return "slurm"

    @property
    def slurm_conf(self) -> str:
        return self._conf

    # --- state --------------------------------------------------------------------------

    async def nodes(self) -> list[SchedNode]:
        out = await self._run("sinfo", "--json")
        return sp.parse_sinfo_json(out)

    async def node(self, node: str) -> SchedNode:
        """One node's state and reason; SchedulerError when Slurm does not know it."""
        rec = await self._node_record(node)
        state_words = rec.get("State", "").split("+")
        return SchedNode(
            name=rec.get("NodeName", node),
            state=sp.node_state(state_words[0], state_words[1:]),
            reason=_strip_stamp(rec.get("Reason", "")),
        )

    async def job(self, job_id: str) -> JobInfo | None:
        """The job as slurmctld holds it; None once it is unknown (finished longer than
        MinJobAge ago, or never existed)."""
        rec = await self._job_record(job_id)
        if rec is None:
            return None
        try:
            nodes = sp.expand_hostlist(rec.get("NodeList", ""))
        except ValueError as exc:
            raise SchedulerError(f"scontrol show job {job_id}: {exc}") from exc
        reason = rec.get("Reason", "")
        return JobInfo(
            job_id=rec.get("JobId", job_id),
            state=sp.job_state(rec.get("JobState", "")),
            nodes=nodes,
            exit_code=sp.exit_code(rec.get("ExitCode", "")),
            reason="" if reason == "None" else reason,
        )

    async def job_log(self, job_id: str) -> str | None:
        """The batch script's output file (``StdOut`` of ``scontrol show job``): the first
        node's, where rank 0 usually prints. The login node reads it, so it must be on a
        shared file system (Slurm's default, the submission directory, usually is). None
        while Slurm does not know the job, or names no single file."""
        rec = await self._job_record(job_id)
        if rec is None:
            return None
        try:
            return sp.stdout_path(rec)
        except ValueError as exc:
            raise SchedulerError(f"scontrol show job {job_id}: {exc}") from exc

    async def _job_record(self, job_id: str) -> dict[str, str] | None:
        """``scontrol show job -o``'s fields for ``job_id``; None when Slurm does not know it."""
        _check_job_id(job_id)
        rc, out, err = await self._call("scontrol", "show", "job", "-o", job_id)
        if rc != 0:
            if _UNKNOWN_JOB.search(err):
                return None
            raise self._error("scontrol show job", rc, err)
        line = next((ln for ln in out.splitlines() if ln.startswith("JobId=")), "")
        return sp.parse_record(line) if line else None

    async def jobs_tagged(self) -> list[tuple[str, str]]:
        """(job_id, run) of every job slurmctld knows that trainwarden submitted (comment or
        name ``trainwarden:<run>``), finished ones included while Slurm keeps them."""
        out = await self._run("squeue", "--json")
        return sp.parse_squeue_tagged(out)

    # --- actions ------------------------------------------------------------------------

    async def drain(self, node: str, reason: str) -> None:
        """Drain ``node``; the reason Slurm shows is ``trainwarden: <reason>``. A node already
        drained (by anyone) keeps its reason: the first cause is the one operators need."""
        rec = await self._node_record(node)
        if "DRAIN" in rec.get("State", "").split("+"):
            return
        text = " ".join(reason.split()) or "drained"
        if not text.startswith(sp.TAG_PREFIX):
            text = f"{sp.TAG_PREFIX} {text}"
        name = rec.get("NodeName", node)
        await self._run("scontrol", "update", f"NodeName={name}", "State=DRAIN", f"Reason={text}")

    async def resume(self, node: str) -> None:
        """Return ``node`` to service; a node already in service is left as it is."""
        rec = await self._node_record(node)
        words = rec.get("State", "").split("+")
        if "DRAIN" not in words and words[0] in ("IDLE", "ALLOCATED", "MIXED", "COMPLETING"):
            return
        rc, _, err = await self._call(
            "scontrol", "update", f"NodeName={rec.get('NodeName', node)}", "State=RESUME"
        )
        if rc != 0 and not re.search(r"Invalid node state specified", err):
            raise self._error("scontrol update State=RESUME", rc, err)

    async def submit(self, spec: JobSpec) -> str:
        """sbatch the attempt; ``spec.command`` = (script, *args). Returns the job id."""
        if not spec.command:
            raise SchedulerError(f"run {spec.run}: no sbatch script given (empty JobSpec.command)")
        if spec.nodes < 1:
            raise SchedulerError(f"run {spec.run}: needs at least one node, got {spec.nodes}")
        script = Path(spec.command[0])
        if not script.is_file():
            raise SchedulerError(f"run {spec.run}: sbatch script {script} does not exist")
        for node in spec.exclude:
            _check_node_name(node)
        env = spec.job_env()
        for key, value in env.items():
            if "," in value or "\n" in value:
                raise SchedulerError(
                    f"run {spec.run}: environment value of {key} contains ',' "
                    "or a newline, which sbatch --export cannot carry"
                )
        tag = f"{sp.TAG_PREFIX}{spec.run}"
        exports = ",".join(["ALL", *(f"{k}={v}" for k, v in sorted(env.items()))])
        args = [
            "sbatch",
            "--parsable",
            f"--nodes={spec.nodes + max(spec.spares, 0)}",
            "--exclusive",
            "--no-requeue",
            f"--job-name={tag}",
            f"--comment={tag}",
            f"--export={exports}",
        ]
        if spec.spares > 0:  # a failed node must not end the allocation the spares are in
            args.append("--no-kill")
        if spec.exclude:
            args.append(f"--exclude={','.join(spec.exclude)}")
        if spec.workdir:
            args.append(f"--chdir={spec.workdir}")
        out = await self._run(*args, str(script), *spec.command[1:])
        job_id = out.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch printed no job id for run {spec.run}: {out.strip()!r}")
        return job_id

    async def cancel(self, job_id: str) -> None:
        """scancel; a job that has finished or is unknown is fine."""
        _check_job_id(job_id)
        rc, _, err = await self._call("scancel", job_id)
        if rc != 0 and not (
            _UNKNOWN_JOB.search(err) or "already completing" in err or "Job/step already" in err
        ):
            raise self._error("scancel", rc, err)

    # --- plumbing -----------------------------------------------------------------------

    async def _node_record(self, node: str) -> dict[str, str]:
        _check_node_name(node)
        rc, out, err = await self._call("scontrol", "show", "node", "-o", node)
        if rc != 0 or not out.startswith("NodeName="):
            if _UNKNOWN_NODE.search(err) or _UNKNOWN_NODE.search(out):
                said = err.strip() or out.strip()
                raise SchedulerError(f"Slurm does not know node {node!r}: {said}")
            raise self._error(f"scontrol show node {node}", rc, err or out)
        return sp.parse_record(out.splitlines()[0])

    async def _run(self, *args: str) -> str:
        rc, out, err = await self._call(*args)
        if rc != 0:
            raise self._error(" ".join(args[:2]), rc, err or out)
        return out

    def _error(self, what: str, rc: int, err: str) -> SchedulerError:
        msg = " ".join(err.split()) or f"exit status {rc}"
        return SchedulerError(f"{what} failed: {msg}", retryable=bool(_TRANSIENT.search(err)))

    async def _call(self, *args: str) -> tuple[int, str, str]:
        """Run one Slurm command with a bounded time; (exit status, stdout, stderr)."""
        conf = Path(self._conf)
        if not conf.is_file():
            # Slurm's commands would retry for a minute before saying so.
            raise SchedulerError(
                f"Slurm configuration {conf} does not exist "
                "(set SLURM_CONF or the scheduler's slurm_conf)"
            )
        exe = str(Path(self._bin_dir) / args[0]) if self._bin_dir else args[0]
        env = dict(os.environ, SLURM_CONF=str(conf))
        try:
            proc = await asyncio.create_subprocess_exec(
                exe,
                *args[1:],
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            where = f"in {self._bin_dir}" if self._bin_dir else "on PATH"
            raise SchedulerError(f"Slurm command {args[0]} not found {where}") from exc
        except OSError as exc:
            raise SchedulerError(f"cannot run Slurm command {args[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            what = " ".join(args[:2])
            raise SchedulerError(
                f"{what} did not finish within {self._timeout_s:g} s "
                "(slurmctld slow or unreachable)",
                retryable=True,
            ) from None
        err_text = err.decode(errors="replace")
        if "fatal:" in err_text and "configuration file" in err_text:
            raise SchedulerError(
                f"Slurm cannot read its configuration {conf}: {' '.join(err_text.split())}"
            )
        return proc.returncode or 0, out.decode(errors="replace"), err_text


def _check_node_name(node: str) -> None:
    if not _NODE_NAME.fullmatch(node):
        raise SchedulerError(f"not a valid Slurm node name: {node!r}")


def _check_job_id(job_id: str) -> None:
    if not re.fullmatch(r"\d+(_\d+)?", job_id):
        raise SchedulerError(f"not a valid Slurm job id: {job_id!r}")


def _strip_stamp(reason: str) -> str:
    """``trainwarden: x [root@2026-11-28T09:41:07]`` -> ``trainwarden: x``."""
    return re.sub(r"\s*\[[^\]]*@[^\]]*\]$", "", reason)
