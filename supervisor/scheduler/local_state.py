"""The local back-end's records: its nodes, its jobs and their processes, and the state file
that keeps them across daemon restarts (as slurmctld keeps its state): how a job is written
and how a written one is read back, every field checked, so that a damaged file never
half-loads. The scheduler itself (processes, signals, the file's writes) is ``local``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import psutil

from trainwarden.supervisor.scheduler.base import JobSpec, JobState

_CT_SLACK_S = 0.05  # create times read by two processes may differ by rounding


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int, create_time: float | None) -> bool:
    """The process ``pid`` runs and is the one started at ``create_time`` (not a recycled
    pid); a zombie has ended (nobody may reap an orphan in a container)."""
    if create_time is None:
        return False
    try:
        p = psutil.Process(pid)
        return (
            abs(p.create_time() - create_time) < _CT_SLACK_S and p.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


@dataclass
class Proc:
    """One node's launcher (the shell wrapper): a child this instance started, which it
    waits for, or a process adopted from an earlier daemon, which it can only poll."""

    pid: int
    create_time: float | None
    child: asyncio.subprocess.Process | None = None

    def running(self) -> bool:
        if self.child is not None:
            return self.child.returncode is None
        return alive(self.pid, self.create_time)


@dataclass
class LocalNode:
    name: str
    drained: bool = False
    down: bool = False
    reason: str = ""
    job: str | None = None


@dataclass
class LocalJob:
    job_id: str
    spec: JobSpec
    nodes: tuple[str, ...]
    procs: dict[str, Proc] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)  # None: unknown
    state: JobState = JobState.RUNNING
    cancelled: bool = False
    node_failed: str | None = None
    failure: str | None = None  # why it failed, when no exit code tells (a cut-off launch)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def number(self) -> int:
        return job_number(self.job_id)


def job_number(job_id: str) -> int:
    prefix, _, num = job_id.rpartition("-")
    if prefix != "local" or not num.isdigit():
        raise ValueError(f"job id {job_id!r} is not of the form local-<number>")
    return int(num)


def job_record(job: LocalJob) -> dict[str, Any]:
    s = job.spec
    return {
        "job_id": job.job_id,
        "spec": {
            "run": s.run,
            "attempt": s.attempt,
            "nodes": s.nodes,
            "command": list(s.command),
            "exclude": list(s.exclude),
            "resume_from": s.resume_from,
            "env": dict(s.env),
            "workdir": s.workdir,
        },
        "placed": list(job.nodes),
        "procs": {n: {"pid": p.pid, "create_time": p.create_time} for n, p in job.procs.items()},
        "state": job.state.value,
        "exit_codes": dict(job.exit_codes),
        "cancelled": job.cancelled,
        "node_failed": job.node_failed,
        "failure": job.failure,
    }


# -- parsing the state file (every field checked: a damaged file must not half-load) -------


def _obj(x: object, where: str) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise ValueError(f"{where} is not an object")
    return x


def _str(x: object, where: str) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{where} is not a string")
    return x


def _opt_str(x: object, where: str) -> str | None:
    return None if x is None else _str(x, where)


def _int(x: object, where: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"{where} is not an integer")
    return x


def _bool(x: object, where: str) -> bool:
    if not isinstance(x, bool):
        raise ValueError(f"{where} is not true/false")
    return x


def _strs(x: object, where: str) -> tuple[str, ...]:
    if not isinstance(x, list):
        raise ValueError(f"{where} is not a list")
    return tuple(_str(v, where) for v in x)


ParsedState = tuple[
    int,
    dict[str, tuple[bool, bool, str]],
    list[tuple[LocalJob, dict[str, tuple[int, float | None]]]],
    list[dict[str, Any]],
]


def parse_state(data: dict[str, Any]) -> ParsedState:
    next_id = _int(data["next_job"], "next_job")
    nodes = {
        name: (
            _bool(_obj(n, f"node {name}")["drained"], f"node {name} drained"),
            _bool(n["down"], f"node {name} down"),
            _str(n["reason"], f"node {name} reason"),
        )
        for name, n in _obj(data["nodes"], "nodes").items()
    }
    if not isinstance(data["jobs"], list):
        raise ValueError("jobs is not a list")
    jobs = [parse_job(_obj(j, "a job")) for j in data["jobs"]]
    if not isinstance(data["history"], list):
        raise ValueError("history is not a list")
    history = [_obj(h, "a history entry") for h in data["history"]]
    return next_id, nodes, jobs, history


def parse_job(j: dict[str, Any]) -> tuple[LocalJob, dict[str, tuple[int, float | None]]]:
    job_id = _str(j["job_id"], "job_id")
    job_number(job_id)
    w = f"job {job_id}"
    s = _obj(j["spec"], f"{w} spec")
    env = _obj(s["env"], f"{w} env")
    spec = JobSpec(
        run=_str(s["run"], f"{w} run"),
        attempt=_int(s["attempt"], f"{w} attempt"),
        nodes=_int(s["nodes"], f"{w} nodes"),
        command=_strs(s["command"], f"{w} command"),
        exclude=_strs(s["exclude"], f"{w} exclude"),
        resume_from=_opt_str(s["resume_from"], f"{w} resume_from"),
        env={_str(k, f"{w} env"): _str(v, f"{w} env") for k, v in env.items()},
        workdir=_opt_str(s["workdir"], f"{w} workdir"),
    )
    recorded: dict[str, tuple[int, float | None]] = {}
    for node, p in _obj(j["procs"], f"{w} procs").items():
        ct = _obj(p, f"{w} procs")["create_time"]
        if ct is not None and (isinstance(ct, bool) or not isinstance(ct, int | float)):
            raise ValueError(f"{w} create_time is not a number")
        recorded[node] = (_int(p["pid"], f"{w} pid"), None if ct is None else float(ct))
    codes: dict[str, int | None] = {}
    for node, c in _obj(j["exit_codes"], f"{w} exit_codes").items():
        codes[node] = None if c is None else _int(c, f"{w} exit code")
    job = LocalJob(
        job_id,
        spec,
        _strs(j["placed"], f"{w} placed"),
        exit_codes=codes,
        state=JobState(_str(j["state"], f"{w} state")),
        cancelled=_bool(j["cancelled"], f"{w} cancelled"),
        node_failed=_opt_str(j["node_failed"], f"{w} node_failed"),
        failure=_opt_str(j.get("failure"), f"{w} failure"),  # absent in older files
    )
    return job, recorded
