"""End-to-end harness: a real Slurm test cluster, a private Mosquitto, the trainwarden daemon
(``--scheduler slurm``) and one agent per Slurm node, all as separate processes.

Shared by the tests in this folder and by ``bench/failover.py``. The cluster is a private one
(its own state dir and ports, 4 nodes), started with H6's scripts in tests/infra/slurm/, so it
never disturbs the cluster other test sessions use; its job ids start at 10001, apart from the
unit suite's cluster (the example job's rendezvous port follows the job id).

Waits for something to start or finish get a margin that scales with the machine
(:func:`time_scale`); each still fails with a message naming what it waited for and what it
saw last. Timings the tests assert are never scaled.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from trainwarden.supervisor.api.client import OperatorClient
from trainwarden.supervisor.errors import SupervisorError

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "infra" / "slurm"
BIN = str(Path(sys.executable).parent / "trainwarden")
SBATCH = REPO / "examples" / "slurm" / "train.sbatch"
TRAIN = REPO / "examples" / "train.py"

# A private test cluster: own state dir, ports and name (override through the environment).
CLUSTER_ENV = {
    "TW_SLURM_DIR": os.environ.get("TW_E2E_SLURM_DIR", "/tmp/tw-slurm-e2e"),
    "TW_SLURM_NODES": os.environ.get("TW_E2E_SLURM_NODES", "4"),
    "TW_SLURM_PORT_BASE": os.environ.get("TW_E2E_SLURM_PORT_BASE", "17817"),
    "TW_SLURM_CLUSTER": "twe2e",
    "TW_SLURM_SLURMD_TIMEOUT": os.environ.get("TW_E2E_SLURMD_TIMEOUT", "30"),
    # job ids of their own: the unit suite's cluster (tests/slurm) counts from 1, and the
    # example job derives its rendezvous port from the job id (train.sbatch)
    "TW_SLURM_FIRST_JOB_ID": os.environ.get("TW_E2E_SLURM_FIRST_JOB_ID", "10001"),
}

# The torch import every rank pays, as timed on the 2-core VM the waits here were sized on
# (3.4-3.6 s with other test sessions running). time_scale() compares this machine with it.
REFERENCE_TORCH_IMPORT_S = 3.0
MAX_TIME_SCALE = 4.0


class HarnessError(RuntimeError):
    """The harness could not reach a state it waits for (the message says which)."""


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``pred`` until it returns something truthy; that value. HarnessError on time out."""
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@cache
def time_scale() -> float:
    """How much longer than on the reference machine start-up waits may take here: the time a
    ``python -c 'import torch'`` takes now over REFERENCE_TORCH_IMPORT_S, between 1 and
    MAX_TIME_SCALE (TW_E2E_TIME_SCALE sets it). Measured once per session. Only waits for
    something to start or finish are scaled; what a test asserts about timings is not."""
    given = os.environ.get("TW_E2E_TIME_SCALE")
    if given:
        return max(1.0, float(given))
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, timeout=300, check=False
    )
    took = time.monotonic() - t0
    return min(MAX_TIME_SCALE, max(1.0, took / REFERENCE_TORCH_IMPORT_S))


def scaled(seconds: float) -> float:
    """``seconds`` of a start-up or completion wait, with this machine's margin."""
    return seconds * time_scale()


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the Slurm cluster ------------------------------------------------------------------------


@dataclass
class SlurmTestCluster:
    env: dict[str, str] = field(default_factory=lambda: dict(CLUSTER_ENV))
    start_s: float = 0.0

    @property
    def state_dir(self) -> Path:
        return Path(self.env["TW_SLURM_DIR"])

    @property
    def conf(self) -> str:
        return str(self.state_dir / "slurm.conf")

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(f"n{i}" for i in range(1, int(self.env["TW_SLURM_NODES"]) + 1))

    @property
    def slurmd_timeout_s(self) -> float:
        return float(self.env["TW_SLURM_SLURMD_TIMEOUT"])

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env, "SLURM_CONF": self.conf}

    def script(self, name: str, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run(
            [str(SCRIPTS / name), *args],
            env=self._env(),
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise HarnessError(
                f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def start(self) -> None:
        t0 = time.monotonic()
        self.script("start.sh")
        self.start_s = time.monotonic() - t0

    def stop(self) -> None:
        self.script("stop.sh", timeout=120)

    def slurm(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            list(args), env=self._env(), text=True, capture_output=True, timeout=30, check=False
        )
        if check and proc.returncode != 0:
            raise HarnessError(f"{' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def node_record(self, node: str) -> dict[str, str]:
        from trainwarden.supervisor.scheduler.slurm_parse import parse_record

        out = self.slurm("scontrol", "show", "node", "-o", node)
        return parse_record(out.splitlines()[0]) if out.strip() else {}

    def node_flags(self, node: str) -> set[str]:
        """Slurm's state words for ``node``: {'IDLE'}, {'ALLOCATED', 'DRAIN'},
        {'DOWN', 'DRAIN', 'NOT_RESPONDING'}..."""
        return set(self.node_record(node).get("State", "").split("+")) - {""}

    def drain_reasons(self) -> dict[str, str]:
        """``sinfo -R``: node -> reason, as an operator sees it."""
        out = self.slurm("sinfo", "-R", "-h", "-N", "-o", "%N|%E")
        rows = (ln.split("|", 1) for ln in out.splitlines() if "|" in ln)
        return {n.strip(): r.strip() for n, r in rows}

    def wait_drain_reason(self, node: str, timeout: float, prefix: str = "trainwarden:") -> str:
        """Slurm's own view: the reason ``sinfo -R`` gives for ``node`` once it lists the node
        with a reason starting with ``prefix``. HarnessError naming what sinfo -R and scontrol
        said last when it does not within ``timeout`` (scaled)."""
        said: dict[str, str] = {}  # what sinfo -R said last

        def listed() -> str | None:
            said.clear()
            said.update(self.drain_reasons())
            reason = said.get(node, "")
            return reason if reason.startswith(prefix) else None

        try:
            reason: str = wait_for(
                listed, scaled(timeout), f"sinfo -R listing {node} ({prefix}...)"
            )
        except HarnessError as exc:
            state = self.node_record(node).get("State", "?")
            raise HarnessError(
                f"{exc}; sinfo -R said {said or 'nothing'}, {node} {state}"
            ) from None
        return reason

    def kill_node(self, node: str) -> None:
        """SIGKILL the node's slurmd, its slurmstepds and the job processes under them."""
        self.script("kill-node.sh", node, timeout=60)

    def job_processes(self, node: str) -> list[int]:
        """Pids of the job processes on ``node`` (descendants of its slurmstepds)."""
        out = subprocess.run(
            [
                "bash",
                "-c",
                f'source "{SCRIPTS}/env.sh"; s=$(tw_stepd_pids {node}); [ -n "$s" ] && tw_tree $s',
            ],
            env=self._env(),
            text=True,
            capture_output=True,
            timeout=30,
            check=False,
        ).stdout
        pids = [int(p) for p in out.split()]
        return [p for p in pids if _comm(p) not in ("slurmstepd", "")]

    def clean_slate(self) -> None:
        """No jobs, every slurmd up, every node idle and in service."""
        for job in self.slurm("squeue", "-h", "-o", "%i").split():
            self.slurm("scancel", job, check=False)
        self.script("start.sh")  # restarts any killed slurmd
        for node in self.nodes:
            flags = self.node_flags(node)
            if "COMPLETING" in flags and flags & {"DRAIN", "DOWN", "NOT_RESPONDING"}:
                # a job still completing on a node killed earlier: Slurm would retry the
                # restarted slurmd for a while; taking the node down ends the job there
                self.slurm(
                    "scontrol",
                    "update",
                    f"NodeName={node}",
                    "State=DOWN",
                    "Reason=e2e cleanup",
                    check=False,
                )
                flags = self.node_flags(node)
            if flags & {"DRAIN", "DOWN", "FAIL"}:
                self.slurm("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)

        def idle() -> bool:
            for job in self.slurm("squeue", "-h", "-o", "%i").split():
                self.slurm("scancel", job, check=False)
            out = self.slurm("sinfo", "-h", "-N", "-o", "%N %t")
            states = [ln.split()[1] for ln in out.splitlines() if ln.strip()]
            return len(states) >= len(self.nodes) and all(s == "idle" for s in states)

        wait_for(idle, scaled(90), "every test-cluster node idle and in service", every=0.5)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --- trainwarden on top of it --------------------------------------------------------------


@dataclass
class Stack:
    """Mosquitto + SQLite + daemon + agents for one scenario."""

    cluster: SlurmTestCluster
    tmp: Path
    hang_floor_s: float = 10.0
    will_confirm_s: float = 1.0
    policy: Path | None = None  # a site policy file (default: the shipped policy)
    lease_ttl_s: float | None = None  # the leader lease (a restarted daemon waits it out)
    _daemon_argv: list[str] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    broker_port: int = 0
    api: str = ""

    @property
    def broker(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    def _spawn(
        self, name: str, args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )

    def start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        (self.tmp / "jobs").mkdir(exist_ok=True)
        self.broker_port = free_port()
        conf = self.tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self._spawn("mosquitto", [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)])
        wait_for(lambda: _port_open(self.broker_port), scaled(10), "the private Mosquitto")
        db = f"sqlite:///{self.tmp / 'tw.db'}"
        subprocess.run(
            [BIN, "db", "upgrade", "--url", db], check=True, capture_output=True, timeout=60
        )
        # the API's socket, in a directory short enough for one; metrics on a free port
        self.api = os.path.join(tempfile.mkdtemp(prefix="tw-", dir="/tmp"), "api.sock")
        self._daemon_argv = [
            BIN,
            "daemon",
            "--scheduler",
            "slurm",
            "--slurm-conf",
            self.cluster.conf,
            "--db",
            db,
            "--broker",
            self.broker,
            "--api",
            self.api,
            "--metrics",
            f"127.0.0.1:{free_port()}",
            "--client-id",
            f"tw-slurm-{self.tag}",
            "--will-confirm",
            str(self.will_confirm_s),
            "--hang-floor",
            str(self.hang_floor_s),
            *(["--policy", str(self.policy)] if self.policy else []),
            *(["--lease-ttl", str(self.lease_ttl_s)] if self.lease_ttl_s else []),
        ]
        self.start_daemon()
        for node in self.cluster.nodes:
            self.start_agent(node)
        wait_for(
            lambda: all(self.node(n).get("state") == "healthy" for n in self.cluster.nodes),
            scaled(60),
            "every node healthy in trainwarden",
        )

    def start_daemon(self, *, wait: bool = False) -> None:
        """The daemon, with the same arguments every time (a restart after a kill);
        ``wait``: until its API answers (a killed one's socket file is left behind)."""
        env = {**os.environ, "SLURM_CONF": self.cluster.conf}
        self._spawn("daemon", self._daemon_argv, cwd=self.tmp / "jobs", env=env)
        if wait:
            wait_for(self._answers, scaled(60), "the daemon's API")

    def _answers(self) -> bool:
        try:
            self.get("/runs")
        except (OSError, SupervisorError):
            return False
        return True

    def kill_daemon(self) -> float:
        """SIGKILL the daemon (nothing of it runs after this returns); the wall time."""
        p = self.procs["daemon"]
        p.send_signal(signal.SIGKILL)
        t = time.time()
        p.wait(10)
        with (self.tmp / "daemon.log").open("a") as f:
            f.write(f"===== harness: daemon pid {p.pid} killed with SIGKILL =====\n")
        return t

    def start_agent(self, node: str) -> None:
        self._spawn(
            f"agent-{node}",
            [
                BIN,
                "agent",
                "--node",
                node,
                "--broker",
                self.broker,
                "--heartbeat",
                "0.5",
                "--interval",
                "2",
                "--simulated-hardware",
                str(self.hw_dir(node)),
            ],
        )

    def hw_dir(self, node: str) -> Path:
        return self.tmp / "hw" / node

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "mosquitto"):  # broker last
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for f in sorted(self.tmp.glob("*.log")) + sorted((self.tmp / "jobs").glob("*.out")):
            parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    # -- the operator's view: HTTP API for polling, the CLI for what operators type --------

    def get(self, path: str) -> Any:
        """A GET over the API's socket (this process is root: an admin)."""
        return OperatorClient(self.api).request("GET", f"/api/v1{path}")

    def nodes(self) -> dict[str, dict[str, Any]]:
        try:
            return {r["name"]: r for r in self.get("/nodes")}
        except (OSError, SupervisorError):
            return {}

    def node(self, name: str) -> dict[str, Any]:
        return self.nodes().get(name, {})

    def run(self, name: str) -> dict[str, Any]:
        return next((r for r in self.get("/runs") if r["name"] == name), {})

    def events(self, **query: Any) -> list[dict[str, Any]]:
        q = "&".join(f"{k}={v}" for k, v in {"limit": 1000, **query}.items())
        rows: list[dict[str, Any]] = self.get(f"/events?{q}")
        return sorted(rows, key=lambda e: e["id"])

    def actions(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.get("/actions?limit=1000")
        return sorted(rows, key=lambda a: a["id"])

    def settled_actions(self, timeout: float = 30) -> list[dict[str, Any]]:
        """:meth:`actions` once trainwarden has written the outcome of every one: none pending
        or running, none failed with a retry still to come. An action that is never settled
        (held, or a retry that hangs) fails here, naming it."""
        rows: list[dict[str, Any]] = []

        def unsettled(a: dict[str, Any]) -> bool:
            return a["status"] in ("pending", "running") or (
                a["status"] == "failed" and "(retrying up to" in (a.get("result") or "")
            )

        def settled() -> bool:
            rows[:] = self.actions()
            return not any(unsettled(a) for a in rows)

        try:
            wait_for(settled, scaled(timeout), "every action's outcome recorded")
        except HarnessError as exc:
            left = [
                (a["id"], a["kind"], a["status"], a.get("result")) for a in rows if unsettled(a)
            ]
            raise HarnessError(f"{exc}; not settled: {left}") from None
        return rows

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        where = list(args)
        if "--" in where:  # --api before the job command
            i = where.index("--")
            where[i:i] = ["--api", self.api]
        else:
            where += ["--api", self.api]
        proc = subprocess.run(
            [BIN, *where],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "USER": "tester"},
        )
        if check and proc.returncode != 0:
            raise HarnessError(
                f"trainwarden {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def add_run(
        self,
        name: str,
        *,
        nodes: int = 2,
        steps: int = 40,
        ckpt_every: int = 5,
        step_time: float = 0.25,
        script: Path = SBATCH,
        spares: int = 0,
        timings: bool = False,
    ) -> Path:
        """``trainwarden runs add`` of the example job; its checkpoint directory."""
        ckpt = self.tmp / "ckpt" / name
        env = {
            "TW_PYTHON": sys.executable,
            "TW_TRAIN_SCRIPT": str(TRAIN),
            "TW_STEPS": str(steps),
            "TW_CKPT_EVERY": str(ckpt_every),
            "TW_CKPT_DIR": str(ckpt),
            "TW_STEP_TIME": str(step_time),
            "TRAINWARDEN_BROKER": self.broker,
        }
        if timings:  # ranks log when their process group formed (attempt_marks)
            env["TRAINWARDEN_LOG_TIMINGS"] = "1"
        args = [
            "runs",
            "add",
            name,
            "--scheduler",
            "slurm",
            "--nodes",
            str(nodes),
            "--checkpoint-dir",
            str(ckpt),
            "--target-step",
            str(steps),
        ]
        if spares:
            args += ["--spares", str(spares)]
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        self.cli(*args, "--", str(script))
        return ckpt

    def running_on(self, run: str, attempt: int, timeout: float = 60) -> list[str]:
        """Nodes of ``run``'s attempt once it runs and has reported a step."""

        row: dict[str, Any] = {}

        def ready() -> list[str] | None:
            row.clear()
            row.update(self.run(run))
            if row.get("attempt") == attempt and row.get("nodes") and row.get("last_step"):
                return list(row["nodes"])
            return None

        try:
            nodes: list[str] = wait_for(
                ready, scaled(timeout), f"attempt {attempt} of {run} stepping", every=0.5
            )
        except HarnessError as exc:
            raise HarnessError(f"{exc}; the run: {row}; {self.story(run)}") from None
        return nodes

    def story(self, run: str, last: int = 12) -> str:
        """The run's last events, for a failure message (what became of an attempt)."""
        try:
            lines = [f"{e['kind']}: {e['message']}" for e in self.events(run=run)[-last:]]
        except (OSError, SupervisorError) as exc:
            return f"events of {run} unreadable: {exc}"
        return f"events of {run}: " + " | ".join(lines)

    def wait_step(self, run: str, step: int, timeout: float = 120) -> None:
        wait_for(
            lambda: (self.run(run).get("last_step") or 0) >= step,
            scaled(timeout),
            f"run {run} at step {step}",
        )

    def wait_completed(self, run: str, timeout: float = 180) -> dict[str, Any]:
        def completed() -> dict[str, Any] | None:
            row = self.run(run)
            return row if row.get("state") == "completed" else None

        r: dict[str, Any] = wait_for(completed, scaled(timeout), f"run {run} completed")
        return r

    def kill_node(self, node: str) -> float:
        """Kill a node for real: its agent (SIGKILL: the broker publishes its last will),
        then its slurmd, slurmstepds and job processes. The wall time of the kill."""
        t = time.time()
        agent = self.procs.get(f"agent-{node}")
        if agent is not None and agent.poll() is None:
            agent.kill()
        self.cluster.kill_node(node)
        return t


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- the example job's progress logs -----------------------------------------------------------

_LINE = re.compile(r"attempt=(\d+) (step|resume step|ckpt step|done step)=(\d+)")


@dataclass(frozen=True)
class Progress:
    steps: dict[int, list[int]]  # attempt -> steps in order, as rank 0 logged them
    resumed: dict[int, int]  # attempt -> step it resumed from
    ckpts: dict[int, list[int]]  # attempt -> checkpoints written
    done: dict[int, int]  # attempt -> final step
    first_step_ts: dict[int, float]  # attempt -> wall time of its first logged step


def read_progress(ckpt_dir: Path, rank: int = 0) -> Progress:
    steps: dict[int, list[int]] = {}
    resumed: dict[int, int] = {}
    ckpts: dict[int, list[int]] = {}
    done: dict[int, int] = {}
    first: dict[int, float] = {}
    path = ckpt_dir / f"progress-rank{rank}.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        m = _LINE.match(line)
        if not m:
            continue
        attempt, what, step = int(m[1]), m[2], int(m[3])
        if what == "step":
            steps.setdefault(attempt, []).append(step)
            if attempt not in first:
                ts = re.search(r"ts=([0-9.]+)", line)
                first[attempt] = float(ts[1]) if ts else 0.0
        elif what == "resume step":
            resumed[attempt] = step
        elif what == "ckpt step":
            ckpts.setdefault(attempt, []).append(step)
        else:
            done[attempt] = step
    return Progress(steps, resumed, ckpts, done, first)


def attempt_marks(ckpt_dir: Path, attempt: int, rank: int = 0) -> dict[str, float]:
    """Wall times rank ``rank`` logged in ``attempt``: joined (process group formed, with
    TRAINWARDEN_LOG_TIMINGS), resumed (checkpoint loaded), first_step."""
    marks: dict[str, float] = {}
    path = ckpt_dir / f"progress-rank{rank}.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        m = re.match(rf"attempt={attempt} (joined|resume step|step)=?.* ts=([0-9.]+)$", line)
        if m:
            key = {"joined": "joined", "resume step": "resumed", "step": "first_step"}[m[1]]
            marks.setdefault(key, float(m[2]))
    return marks


def complete_before(ckpt_dir: Path, ts: float) -> list[int]:
    """Steps of the checkpoints in ``ckpt_dir`` complete (``.metadata`` written) before the
    wall time ``ts``: one whose save a cancel cut off after rank 0 wrote ``.metadata`` but
    before its ``ckpt step=`` line is complete all the same, and the daemon rightly resumes
    from it."""
    out = []
    for d in ckpt_dir.glob("step-*"):
        meta = d / ".metadata"
        with contextlib.suppress(OSError, ValueError):
            if meta.stat().st_mtime < ts:
                out.append(int(d.name.removeprefix("step-")))
    return out


def check_resumed_exactly(
    p: Progress, final_step: int, ckpt_dir: Path | None = None
) -> tuple[int, int]:
    """Every attempt's steps are consecutive; a resumed attempt starts right after the newest
    checkpoint written before it (nothing repeated beyond the checkpoint, nothing skipped);
    the last attempt reaches ``final_step``. Written: logged by rank 0, or (given
    ``ckpt_dir``) complete on disk before the attempt's first step. Returns
    (resumed_from_step, last checkpoint)."""
    attempts = sorted(p.steps)
    assert attempts, "no step logged at all"
    assert p.steps[attempts[0]][0] == 1, f"first attempt began at {p.steps[attempts[0]][0]}"
    written: list[int] = []
    resumed_from = last_ckpt = -1
    for a in attempts:
        s = p.steps[a]
        assert s == list(range(s[0], s[-1] + 1)), f"attempt {a} skipped or repeated: {s}"
        if a != attempts[0]:
            assert a in p.resumed, f"attempt {a} did not resume from a checkpoint"
            on_disk = complete_before(ckpt_dir, p.first_step_ts[a]) if ckpt_dir else []
            last_ckpt = max(written + on_disk)
            resumed_from = p.resumed[a]
            assert resumed_from == last_ckpt, (
                f"attempt {a} resumed from {resumed_from}, newest checkpoint {last_ckpt}"
            )
            assert s[0] == resumed_from + 1, f"attempt {a} began at {s[0]}, not {resumed_from + 1}"
        written += p.ckpts.get(a, [])
    assert p.steps[attempts[-1]][-1] == final_step
    assert p.done.get(attempts[-1]) == final_step
    return resumed_from, last_ckpt


# --- one failover, measured ----------------------------------------------------------------------


@dataclass
class Failover:
    run: str
    ckpt: Path
    victim: str
    nodes_before: list[str]
    t_fault: float  # wall time of the kill / injection
    detect_s: float | None = None  # fault -> the condition event the drain cites as evidence
    drain_s: float | None = None  # fault -> Slurm shows the node drained by trainwarden
    drain_flags: set[str] = field(default_factory=set)  # Slurm's state words at that moment
    resubmit_s: float | None = None  # fault -> next attempt submitted
    resume_s: float | None = None  # fault -> first step of the next attempt (its own log)
    slurm_not_responding_s: float | None = None
    slurm_down_s: float | None = None
    run_row: dict[str, Any] = field(default_factory=dict)
    first_job: str | None = None


def start_run(
    stack: Stack,
    name: str,
    *,
    steps: int = 30,
    ckpt_every: int = 5,
    at_step: int = 12,
    step_time: float = 0.25,
    nodes: int = 2,
    spares: int = 0,
    timings: bool = False,
) -> tuple[Path, list[str]]:
    """Register the example job (default: on 2 nodes); return once it is past ``at_step``."""
    ckpt = stack.add_run(
        name,
        nodes=nodes,
        steps=steps,
        ckpt_every=ckpt_every,
        step_time=step_time,
        spares=spares,
        timings=timings,
    )
    running = stack.running_on(name, 1, timeout=120)
    stack.wait_step(name, at_step, timeout=90)
    return ckpt, running


def job_of(stack: Stack, run: str, attempt: int) -> str | None:
    for e in stack.events(run=run, kind="run-started"):
        if e["data"].get("attempt") == attempt and e["data"].get("job_id"):
            return str(e["data"]["job_id"])
    return None


def follow_failover(
    stack: Stack,
    fo: Failover,
    *,
    timeout: float = 180,
    wait_slurm_down: bool = False,
    expect_drain: bool = True,
) -> Failover:
    """Watch trainwarden and Slurm after the fault until the run completed and (unless
    ``expect_drain`` is false) Slurm lists the node drained by trainwarden (and, when asked,
    Slurm itself marked the node DOWN); fill in the timings. ``timeout`` is scaled."""
    cluster = stack.cluster
    fo.first_job = job_of(stack, fo.run, 1)
    end = time.monotonic() + scaled(timeout)
    while True:
        now = time.time() - fo.t_fault
        flags = cluster.node_flags(fo.victim)
        if fo.drain_s is None and "DRAIN" in flags:
            reason = cluster.drain_reasons().get(fo.victim, "")
            if reason.startswith("trainwarden:"):
                fo.drain_s, fo.drain_flags = now, flags
        if fo.slurm_not_responding_s is None and "NOT_RESPONDING" in flags:
            fo.slurm_not_responding_s = now
        if fo.slurm_down_s is None and "DOWN" in flags:
            fo.slurm_down_s = now
        fo.run_row = stack.run(fo.run)
        done = fo.run_row.get("state") == "completed"
        # the run may complete elsewhere before Slurm lists the drain (trainwarden restarts
        # the run after its drain attempt, and retries a drain Slurm did not take at once):
        # follow until Slurm's own view has it too, or the deadline says it never came
        drained = fo.drain_s is not None or not expect_drain
        if done and drained and (fo.slurm_down_s is not None or not wait_slurm_down):
            break
        if time.monotonic() > end:
            raise HarnessError(
                f"after {scaled(timeout):.0f} s: run {fo.run} {fo.run_row}, "
                f"{fo.victim} {sorted(flags)}, drained by trainwarden in Slurm: "
                f"{'yes' if fo.drain_s is not None else 'no'} (sinfo -R: "
                f"{cluster.drain_reasons()}); actions: "
                f"{[(a['kind'], a['node'], a['status'], a['result']) for a in stack.actions()]}"
            )
        time.sleep(0.2)
    actions = stack.actions()
    drain = next((a for a in actions if a["kind"] == "drain" and a["node"] == fo.victim), None)
    if drain is not None and drain["evidence"]:
        by_id = {e["id"]: e for e in stack.events(node=fo.victim)}
        cause = by_id.get(drain["evidence"][0])
        if cause is not None:
            fo.detect_s = cause["ts"] - fo.t_fault
    for e in stack.events(run=fo.run, kind="run-started"):
        if e["data"].get("attempt") == 2 and e["data"].get("job_id") and fo.resubmit_s is None:
            fo.resubmit_s = e["ts"] - fo.t_fault
    first = read_progress(fo.ckpt).first_step_ts.get(2)
    if first is not None:
        fo.resume_s = first - fo.t_fault
    return fo
