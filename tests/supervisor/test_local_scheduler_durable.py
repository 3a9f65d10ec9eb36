"""The local back-end survives a restart of the daemon, as slurmctld does: a second
LocalScheduler on the same log dir (the first one dropped, or its process killed with -9)
keeps the drains, continues the job ids, adopts running jobs and learns how the others ended.
Real processes throughout; every process a test starts is killed when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.scheduler import local
from trainwarden.supervisor.scheduler.base import JobSpec, JobState, NodeState
from trainwarden.supervisor.scheduler.local import AWAY, ENV_STATE, STATE_FILE, LocalScheduler

pytestmark = pytest.mark.integration

PY = sys.executable
NODES = ["n1", "n2", "n3"]
SLEEP = [PY, "-c", "import time; time.sleep(60)"]
# A launcher with a grandchild in a session of its own, as torchrun's workers are.
TREE = [
    PY,
    "-c",
    "import subprocess, time; subprocess.Popen(['sleep', '60'], start_new_session=True); "
    "time.sleep(60)",
]


def spec(cmd: list[str], nodes: int = 1) -> JobSpec:
    return JobSpec(run="r1", attempt=1, nodes=nodes, command=tuple(cmd))


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def until(pred: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def read_state(logs: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((logs / STATE_FILE).read_text())
    return data


def edit_state(logs: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = read_state(logs)
    change(data)
    (logs / STATE_FILE).write_text(json.dumps(data))


def job_record(data: dict[str, Any], job_id: str) -> dict[str, Any]:
    rec: dict[str, Any] = next(j for j in data["jobs"] if j["job_id"] == job_id)
    return rec


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture(autouse=True)
async def reap(tmp_path: Path) -> AsyncIterator[list[int]]:
    """Kill whatever a test left running: every process a scheduler of this test started
    (their environment names the state file under tmp_path) and the pids a test adds.
    Async, so that a dropped scheduler's children are reaped while the loop still runs."""
    extra: list[int] = []
    yield extra
    mine = str(tmp_path) + os.sep
    victims: list[psutil.Process] = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get(ENV_STATE, "").startswith(mine) or p.pid in extra:
                victims.append(p)
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.kill()
    deadline = time.monotonic() + 10
    while not all(gone(p.pid) for p in victims):
        assert time.monotonic() < deadline, "processes left behind"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)  # let the child watchers close the transports


# The first daemon in a process of its own, killed with -9 once it has submitted its jobs.
DAEMON = """
import asyncio, json, os, signal, sys
from trainwarden.supervisor.scheduler.base import JobSpec
from trainwarden.supervisor.scheduler.local import LocalScheduler

async def main() -> None:
    s = LocalScheduler(sys.argv[2].split(","), sys.argv[1])
    ids = [await s.submit(JobSpec("r1", 1, 1, tuple(c))) for c in json.loads(sys.argv[3])]
    print(json.dumps({i: s.pids(i) for i in ids}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def _die_by_sigkill(script: str, logs: Path, arg: object, *more: str) -> Any:
    """Run a daemon ``script`` that dies by SIGKILL; what it printed before, parsed."""
    r = subprocess.run(
        [PY, "-c", script, str(logs), ",".join(NODES), json.dumps(arg), *more],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    return json.loads(r.stdout)


def killed_daemon(logs: Path, commands: list[list[str]]) -> dict[str, dict[str, int]]:
    """Run a daemon that submits ``commands`` (one node each) and dies by SIGKILL; returns
    the pids of its jobs' launchers by job id."""
    pids: dict[str, dict[str, int]] = _die_by_sigkill(DAEMON, logs, commands)
    return pids


async def test_drains_reasons_and_history_survive_a_restart(
    logs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = LocalScheduler(NODES, logs)
    await a.drain("n1", "trainwarden: GpuFatal (action #1)")
    await a.drain("n1", "trainwarden: GpuFatal (action #1)")  # no change: not logged
    await a.drain("n2", "fan broken")
    await a.drain("n2", "fan broken (ops ticket 7)")  # the reason changed: logged
    await a.resume("n2")
    await a.resume("n2")  # nothing to resume: not logged
    a.kill_node("n3")
    ops = [(h["op"], h.get("node"), h.get("reason")) for h in a.history()]
    assert ops == [
        ("drain", "n1", "trainwarden: GpuFatal (action #1)"),
        ("drain", "n2", "fan broken"),
        ("drain", "n2", "fan broken (ops ticket 7)"),
        ("resume", "n2", None),
        ("kill-node", "n3", "node died"),
    ]
    assert all(isinstance(h["ts"], float) for h in a.history())
    del a  # the daemon is gone; its scheduler state is not

    b = LocalScheduler([*NODES, "n4"], logs)
    states = {n.name: (n.state, n.reason) for n in await b.nodes()}
    assert states == {
        "n1": (NodeState.DRAINED, "trainwarden: GpuFatal (action #1)"),
        "n2": (NodeState.IDLE, ""),
        "n3": (NodeState.DOWN, "node died"),
        "n4": (NodeState.IDLE, ""),  # new in the cluster: fresh
    }
    assert [h["op"] for h in b.history()] == ["drain", "drain", "drain", "resume", "kill-node"]
    with pytest.raises(SchedulerError, match="needs 3 nodes, 2 available"):
        await b.submit(spec(SLEEP, nodes=3))

    with caplog.at_level(logging.WARNING, logger=local.__name__):
        c = LocalScheduler(["n1", "n4"], logs)
    assert {n.name for n in await c.nodes()} == {"n1", "n4"}
    dropped = [r.getMessage() for r in caplog.records if "no longer in the local" in r.getMessage()]
    assert len(dropped) == 2 and "'n2'" in dropped[0] and "'n3'" in dropped[1]
    assert set(read_state(logs)["nodes"]) == {"n1", "n4"}


async def test_job_ids_continue_and_are_reserved_before_any_process(logs: Path) -> None:
    a = LocalScheduler(NODES, logs)
    first = await a.submit(spec([PY, "-c", "pass"]))
    info = await a.wait(first, 20)
    assert first == "local-1" and info is not None and info.state is JobState.COMPLETED
    with pytest.raises(SchedulerError, match="cannot start run"):
        await a.submit(spec(["/nonexistent/binary"]))  # its id was on disk before the spawn
    data = read_state(logs)
    assert data["version"] == 1 and data["next_job"] == 3
    assert job_record(data, "local-2")["state"] == "cancelled"
    del a

    b = LocalScheduler(NODES, logs)
    again = await b.submit(spec([PY, "-c", "pass"]))
    assert again == "local-3"
    old = await b.job("local-1")  # finished jobs are remembered
    assert old is not None and old.state is JobState.COMPLETED
    assert await b.wait(again, 20) is not None
    assert (logs / "local-3-n1.exit").read_text().strip() == "0"


async def test_a_running_job_is_adopted_and_cancel_kills_its_whole_tree(logs: Path) -> None:
    a = LocalScheduler(NODES, logs)
    job = await a.submit(spec(TREE, nodes=2))
    pids = a.pids(job)

    def trees() -> list[list[int]]:
        return [local._tree(p) for p in pids.values()]

    until(lambda: all(len(t) >= 3 for t in trees()))  # wrapper, launcher, grandchild
    everyone = [pid for t in trees() for pid in t]
    del a  # dropped, not cancelled: its processes go on

    b = LocalScheduler(NODES, logs, stop_grace_s=3.0)
    info = await b.job(job)
    assert info is not None and info.state is JobState.RUNNING and info.nodes == ("n1", "n2")
    assert b.pids(job) == pids
    assert [n.state for n in await b.nodes()] == [
        NodeState.ALLOCATED,
        NodeState.ALLOCATED,
        NodeState.IDLE,
    ]
    assert (job, "r1") in await b.jobs_tagged()
    await b.drain("n1", "trainwarden: test")
    assert (await b.nodes())[0].state is NodeState.DRAINING
    assert not any(gone(p) for p in everyone)

    t0 = time.monotonic()
    await b.cancel(job)
    assert time.monotonic() - t0 < 3.0  # SIGTERM was enough; no grace period spent
    info = await b.job(job)
    assert info is not None and info.state is JobState.CANCELLED
    until(lambda: all(gone(p) for p in everyone), 5)
    assert [n.state for n in await b.nodes()] == [
        NodeState.DRAINED,
        NodeState.IDLE,
        NodeState.IDLE,
    ]
    assert job_record(read_state(logs), job)["state"] == "cancelled"
    assert [h["op"] for h in b.history()][-1] == "cancel"


async def test_jobs_that_end_after_the_restart_get_their_exit_codes(logs: Path) -> None:
    a = LocalScheduler(NODES, logs)
    ok = await a.submit(spec([PY, "-c", "import time; time.sleep(1.5)"]))
    bad = await a.submit(spec([PY, "-c", "import sys, time; time.sleep(1.5); sys.exit(3)"]))
    crash = await a.submit(spec(SLEEP))
    del a

    b = LocalScheduler(NODES, logs)
    for job in (ok, bad, crash):
        info = await b.job(job)
        assert info is not None and info.state is JobState.RUNNING, job
    b.crash_processes("n3")  # works on adopted processes too
    i_ok, i_bad, i_crash = [await b.wait(j, 20) for j in (ok, bad, crash)]
    assert i_ok is not None and i_ok.state is JobState.COMPLETED and i_ok.exit_code is None
    assert i_bad is not None and i_bad.state is JobState.FAILED and i_bad.exit_code == 3
    assert i_crash is not None and i_crash.state is JobState.FAILED
    assert AWAY in i_crash.reason  # SIGKILLed with its wrapper: no exit file
    assert {n.state for n in await b.nodes()} == {NodeState.IDLE}
    assert (logs / f"{bad}-n2.exit").read_text().strip() == "3"
    states = {j["job_id"]: j["state"] for j in read_state(logs)["jobs"]}
    assert states == {ok: "completed", bad: "failed", crash: "failed"}


async def test_jobs_that_ended_while_no_daemon_was_alive_are_finished_on_load(
    logs: Path,
) -> None:
    pids = killed_daemon(
        logs,
        [
            [PY, "-c", "import time; time.sleep(1)"],
            [PY, "-c", "import sys, time; time.sleep(1); sys.exit(3)"],
            SLEEP,
        ],
    )
    assert list(pids) == ["local-1", "local-2", "local-3"]
    for pid in local._tree(pids["local-3"]["n3"]):  # this one dies without an exit file
        os.kill(pid, signal.SIGKILL)
    until(lambda: all(gone(pid) for p in pids.values() for pid in p.values()))
    assert read_state(logs)["jobs"][0]["state"] == "running"  # nobody saw them end

    b = LocalScheduler(NODES, logs)
    states = {j["job_id"]: j["state"] for j in read_state(logs)["jobs"]}  # before any await
    assert states == {"local-1": "completed", "local-2": "failed", "local-3": "failed"}
    i1, i2, i3 = [await b.job(j) for j in ("local-1", "local-2", "local-3")]
    assert i1 is not None and i1.state is JobState.COMPLETED
    assert i2 is not None and i2.state is JobState.FAILED and i2.exit_code == 3
    assert i3 is not None and i3.state is JobState.FAILED and i3.exit_code is None
    assert i3.reason == f"n3: {AWAY}"
    assert {n.state for n in await b.nodes()} == {NodeState.IDLE}
    assert await b.submit(spec([PY, "-c", "pass"])) == "local-4"


async def test_a_job_whose_pids_were_never_recorded_is_found_by_its_environment(
    logs: Path,
) -> None:
    a = LocalScheduler(NODES, logs)
    job = await a.submit(spec(SLEEP, nodes=2))
    pids = a.pids(job)
    del a

    def forget(data: dict[str, Any]) -> None:  # the daemon died between spawn and write
        job_record(data, job)["procs"] = {}

    edit_state(logs, forget)
    b = LocalScheduler(NODES, logs, stop_grace_s=3.0)
    info = await b.job(job)
    assert info is not None and info.state is JobState.RUNNING
    assert b.pids(job) == pids
    assert job_record(read_state(logs), job)["procs"]["n2"]["pid"] == pids["n2"]
    b.kill_node("n2")
    info = await b.wait(job, 0.5)
    assert info is not None and info.state is JobState.RUNNING  # n1 still runs
    await b.cancel(job)
    info = await b.job(job)
    assert info is not None and info.state is JobState.NODE_FAIL
    until(lambda: all(gone(p) for p in pids.values()), 5)


# A daemon killed with -9 in the middle of a launch: rank 0 started, rank 1 never.
DAEMON_CUT = """
import asyncio, json, os, signal, sys
from trainwarden.supervisor.scheduler.base import JobSpec
from trainwarden.supervisor.scheduler.local import LocalScheduler

spawn = LocalScheduler._spawn

async def spawn_then_die(self, job, rank, node, port):
    if rank == 1:
        if sys.argv[4] == "drain":  # a change written meanwhile: rank 0's pid is on disk
            await self.drain("n3", "someone else's drain")
        print(json.dumps(self.pids(job.job_id)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    await spawn(self, job, rank, node, port)

LocalScheduler._spawn = spawn_then_die

async def main() -> None:
    s = LocalScheduler(sys.argv[2].split(","), sys.argv[1])
    await s.submit(JobSpec("r1", 1, 2, tuple(json.loads(sys.argv[3]))))

asyncio.run(main())
"""


def cut_daemon(logs: Path, meanwhile: str) -> dict[str, int]:
    """Run a daemon that dies by SIGKILL between the two ranks of a launch (after a drain
    of n3 if ``meanwhile`` says so); the pids of the ranks it started, by node."""
    started: dict[str, int] = _die_by_sigkill(DAEMON_CUT, logs, TREE, meanwhile)
    return started


@pytest.mark.parametrize("meanwhile", ["nothing", "drain"])
async def test_a_launch_a_crash_cut_short_is_failed_and_its_started_rank_killed(
    logs: Path, meanwhile: str
) -> None:
    """Its rank 0 would wait for rank 1 forever; a daemon that adopted it as running would
    never restart the run (seen: a chaos test's run with no step for 60 s)."""
    started = cut_daemon(logs, meanwhile)
    assert list(started) == ["n1"]
    until(lambda: len(local._tree(started["n1"])) >= 3)  # wrapper, launcher, grandchild
    everyone = local._tree(started["n1"])
    on_disk = job_record(read_state(logs), "local-1")["procs"]
    assert list(on_disk) == ([] if meanwhile == "nothing" else ["n1"])  # never n2's

    b = LocalScheduler(NODES, logs)
    info = await b.job("local-1")
    assert info is not None and info.state is JobState.FAILED
    assert info.reason == ("its launch was cut short by a daemon crash: started on n1, never on n2")
    until(lambda: all(gone(p) for p in everyone), 5)
    assert {n.state for n in await b.nodes() if n.name != "n3"} == {NodeState.IDLE}
    assert [h["op"] for h in b.history()][-1] == "launch-cut-off"
    rec = job_record(read_state(logs), "local-1")
    assert rec["state"] == "failed" and rec["failure"] == info.reason
    c = LocalScheduler(NODES, logs)  # read back from the file by a third daemon
    again = await c.job("local-1")
    assert again is not None and again.state is JobState.FAILED and again.reason == info.reason
    assert await c.submit(spec(SLEEP, nodes=2)) == "local-2"


async def test_a_recycled_pid_is_never_taken_for_the_job(logs: Path, reap: list[int]) -> None:
    pids = killed_daemon(logs, [SLEEP])
    ours = pids["local-1"]["n1"]
    for pid in local._tree(ours):
        os.kill(pid, signal.SIGKILL)
    until(lambda: gone(ours))
    stranger = await asyncio.create_subprocess_exec("sleep", "60")
    reap.append(stranger.pid)
    # The pid now belongs to a stranger, started later than the job's process was.
    edit_state(logs, lambda d: job_record(d, "local-1")["procs"]["n1"].update(pid=stranger.pid))

    b = LocalScheduler(NODES, logs, stop_grace_s=1.0)
    info = await b.job("local-1")
    assert info is not None and info.state is JobState.FAILED and AWAY in info.reason
    assert stranger.pid not in b.pids("local-1").values()
    b.crash_processes("n1")
    b.kill_node("n1")
    await b.cancel("local-1")
    await asyncio.sleep(0.3)
    assert stranger.returncode is None and not gone(stranger.pid)


async def test_an_older_instance_stops_writing_once_a_newer_one_took_over(logs: Path) -> None:
    a = LocalScheduler(NODES, logs)
    b = LocalScheduler(NODES, logs)
    await b.drain("n1", "kept")
    await a.drain("n2", "lost")  # a must not overwrite b's file
    assert read_state(logs)["nodes"]["n1"]["reason"] == "kept"
    assert read_state(logs)["nodes"]["n2"]["reason"] == ""
    with pytest.raises(SchedulerError, match="took over"):
        await a.submit(spec(SLEEP))  # it would hand out b's job ids
    assert await b.submit(spec([PY, "-c", "pass"])) == "local-1"
    assert await b.wait("local-1", 20) is not None


async def test_history_and_finished_jobs_are_bounded(
    logs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "HISTORY_MAX", 4)
    monkeypatch.setattr(local, "FINISHED_MAX", 2)
    s = LocalScheduler(NODES, logs)
    for i in range(3):
        job = await s.submit(spec([PY, "-c", "pass"]))
        assert await s.wait(job, 20) is not None
        await s.drain("n3", f"reason {i}")
    assert [j["job_id"] for j in read_state(logs)["jobs"]] == ["local-2", "local-3"]
    assert await s.job("local-1") is None
    assert [(h["op"], h.get("job"), h.get("reason")) for h in s.history()] == [
        ("submit", "local-2", "run r1 attempt 1 on n1"),
        ("drain", None, "reason 1"),
        ("submit", "local-3", "run r1 attempt 1 on n1"),
        ("drain", None, "reason 2"),
    ]
    assert read_state(logs)["history"] == s.history()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"version": 99, "nodes": {}}), "format version 99"),
        (json.dumps({"version": 1, "nodes": {}}), "damaged"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_a_damaged_or_newer_state_file_is_refused_and_left_alone(
    logs: Path, content: str, needle: str
) -> None:
    logs.mkdir(parents=True)
    path = logs / STATE_FILE
    path.write_text(content)
    before = path.stat().st_mtime_ns
    with pytest.raises(SchedulerError) as err:
        LocalScheduler(NODES, logs)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "move it aside" in msg
    assert path.read_text() == content and path.stat().st_mtime_ns == before
    assert sorted(p.name for p in logs.iterdir()) == [STATE_FILE]
