"""Pure parsers for what Slurm's commands print (22.05): hostlists, ``sinfo --json``,
``squeue --json`` and ``scontrol show … -o`` records.

Kept apart from the subprocess code so every mapping is unit-tested on captured text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from trainwarden.policies import hostlist
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.scheduler.base import JobState, NodeState, SchedNode

TAG_PREFIX = "trainwarden:"

_JOB_STATES: Mapping[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.COMPLETING,
    "COMPLETING": JobState.COMPLETING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "NODE_FAIL": JobState.NODE_FAIL,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
}

_BASE_NODE_STATES: Mapping[str, NodeState] = {
    "IDLE": NodeState.IDLE,
    "ALLOCATED": NodeState.ALLOCATED,
    "MIXED": NodeState.ALLOCATED,
    "COMPLETING": NodeState.ALLOCATED,
    "DOWN": NodeState.DOWN,
}


def expand_hostlist(text: str) -> tuple[str, ...]:
    """A hostlist as Slurm prints it (``NodeList``) -> its names, in Slurm's order.

    ``(null)`` and ``None`` (no nodes yet) are no names. The parser is
    :func:`trainwarden.policies.hostlist.expand` (repeats kept, as Slurm prints them); raises
    ValueError naming the part it cannot read.
    """
    text = text.strip()
    if text in ("(null)", "None"):
        return ()
    return hostlist.expand(text, unique=False)


def job_state(text: str) -> JobState:
    """Slurm job state (``NODE_FAIL``, ``CANCELLED by 0``, ``cancelled``) -> JobState."""
    word = text.strip().split(" ", 1)[0].upper()
    return _JOB_STATES.get(word, JobState.UNKNOWN)


def node_state(base: str, flags: list[str] | tuple[str, ...]) -> NodeState:
    """Slurm base state + flags -> NodeState.

    DOWN is Slurm's verdict (base state DOWN, reached SlurmdTimeout after the last answer).
    NOT_RESPONDING alone is not DOWN: Slurm sets it on every RESUME until the next ping
    answers, so it would show a freshly resumed node as dead. DRAIN on a node still running
    work is DRAINING, otherwise DRAINED.
    """
    base_u = base.strip().upper()
    flag_set = {f.strip().upper() for f in flags}
    if base_u == "DOWN":
        return NodeState.DOWN
    if "DRAIN" in flag_set:
        busy = base_u in ("ALLOCATED", "MIXED", "COMPLETING") or "COMPLETING" in flag_set
        return NodeState.DRAINING if busy else NodeState.DRAINED
    return _BASE_NODE_STATES.get(base_u, NodeState.UNKNOWN)


def load_json(text: str, command: str) -> dict[str, Any]:
    """Parse a ``--json`` dump; Slurm's own ``errors`` list becomes a retryable SchedulerError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(f"{command} printed output that is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SchedulerError(f"{command} printed JSON that is not an object")
    errors = data.get("errors") or []
    if errors:
        parts = []
        for err in errors:
            if isinstance(err, dict):
                keys = ("source", "description", "error")
                parts.append(" ".join(str(err[k]) for k in keys if err.get(k)))
            else:
                parts.append(str(err))
        raise SchedulerError(
            f"{command} failed: {'; '.join(parts)} (is slurmctld running? try `scontrol ping`)",
            retryable=True,
        )
    return data


def parse_sinfo_json(text: str) -> list[SchedNode]:
    """``sinfo --json`` -> one SchedNode per node, sorted by name."""
    data = load_json(text, "sinfo --json")
    out: dict[str, SchedNode] = {}
    for node in data.get("nodes", []):
        name = str(node.get("name", ""))
        if not name:
            continue
        flags = node.get("state_flags") or []
        state = node_state(str(node.get("state", "")), [str(f) for f in flags])
        out[name] = SchedNode(name=name, state=state, reason=str(node.get("reason") or ""))
    return [out[k] for k in sorted(out, key=_natural_key)]


def parse_squeue_tagged(text: str) -> list[tuple[str, str]]:
    """``squeue --json`` -> (job_id, run) for every job tagged ``trainwarden:<run>`` in its
    comment (preferred) or name."""
    data = load_json(text, "squeue --json")
    out = []
    for job in data.get("jobs", []):
        run = run_of_tag(str(job.get("comment") or "")) or run_of_tag(str(job.get("name") or ""))
        if run:
            out.append((str(job.get("job_id")), run))
    return out


def run_of_tag(text: str) -> str | None:
    if text.startswith(TAG_PREFIX) and len(text) > len(TAG_PREFIX):
        return text[len(TAG_PREFIX) :]
    return None


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/.]*)=")


def parse_record(line: str) -> dict[str, str]:
    """One ``scontrol show job|node -o`` line -> {key: value}. Values may hold spaces (a
    node's Reason does); a value runs up to the next ``Key=``."""
    matches = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end() : end].strip()
    return out


def exit_code(text: str) -> int | None:
    """``ExitCode=1:0`` -> 1; ``0:9`` (killed by a signal) -> 128 + 9."""
    m = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if m is None:
        return None
    code, sig = int(m.group(1)), int(m.group(2))
    return 128 + sig if sig and not code else code


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|\D+", name))


_FILENAME_PATTERN = re.compile(r"%(%|[0-9]*[A-Za-z])")


def stdout_path(rec: Mapping[str, str]) -> str | None:
    """Where a batch job's output goes, from its ``scontrol show job -o`` record: ``StdOut``,
    with the filename patterns Slurm may leave unexpanded filled in (``%j`` job id, ``%x``
    name, ``%u`` user, ``%N`` first node, ``%A``/``%a`` array job and task, ``%%``), and a
    relative path taken from ``WorkDir``. None when the record has none or a pattern cannot
    be filled (``%s`` step, ``%t`` task: per-task files, no single log)."""
    raw = rec.get("StdOut", "").strip()
    if not raw or raw in ("(null)", "None"):
        return None
    nodes = expand_hostlist(rec.get("NodeList", "")) if "%N" in raw else ()
    array_job = rec.get("ArrayJobId") or rec.get("JobId", "")
    values = {
        "%": "%",
        "j": rec.get("JobId", ""),
        "x": rec.get("JobName", ""),
        "u": rec.get("UserId", "").split("(", 1)[0],
        "N": nodes[0] if nodes else "",
        "A": array_job,
        "a": rec.get("ArrayTaskId", ""),
    }
    unknown = False

    def fill(m: re.Match[str]) -> str:
        nonlocal unknown
        code = m.group(1)
        key, width = code[-1], code[:-1]
        value = values.get(key, "")
        if not value:
            unknown = True
            return m.group(0)
        return value.zfill(int(width)) if width and value.isdigit() else value

    path = _FILENAME_PATTERN.sub(fill, raw)
    if unknown:
        return None
    if not path.startswith("/"):
        workdir = rec.get("WorkDir", "").strip()
        if not workdir.startswith("/"):
            return None
        path = f"{workdir.rstrip('/')}/{path}"
    return path
