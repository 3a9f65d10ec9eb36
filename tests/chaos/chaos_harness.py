"""What the chaos cases share: a private Mosquitto, a private PostgreSQL, the stack (daemon and
agents as subprocesses through the ``trainwarden`` CLI), polling and the one-line JSON report.

Named ``chaos_harness`` rather than ``harness``: the test directories have no ``__init__.py``,
so pytest imports their helpers as top-level modules, and tests/slurm_e2e/harness.py already
takes that name in the same session.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from trainwarden.supervisor.api.client import OperatorClient
from trainwarden.supervisor.errors import SupervisorError
from trainwarden.supervisor.scheduler.local import free_port

BIN = str(Path(sys.executable).parent / "trainwarden")
PUB = shutil.which("mosquitto_pub") or "mosquitto_pub"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.py"


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout} s waiting for {what}"
        time.sleep(every)
    return time.monotonic() - t0


def poll(pred: Callable[[], Any], timeout: float, every: float = 0.2) -> float | None:
    """Like :func:`wait_for`, but the seconds it took or None on time-out (no assertion)."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            return None
        time.sleep(every)


def report(case: str, **figures: object) -> None:
    """One JSON line per case: ``{"case": ..., "test": <pytest node id>, **figures}``."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    print(json.dumps({"case": case, "test": test, **figures}, default=str), flush=True)


class Broker:
    """A private Mosquitto that a test may kill and start again on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        (tmp / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {tmp}/\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.tmp / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.tmp / "mosquitto.conf")], stdout=log, stderr=log
        )
        log.close()
        try:
            wait_for(self.answers, 10, "mosquitto to listen")
        except BaseException:
            self.kill()
            raise

    def answers(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def publish(self, topic: str, payload: bytes) -> None:
        subprocess.run(
            [PUB, "-h", "127.0.0.1", "-p", str(self.port), "-q", "1", "-t", topic, "-s"],
            input=payload,
            check=True,
            timeout=10,
        )


class PostgresError(RuntimeError):
    """The private PostgreSQL did not do what it was asked."""


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on its own loopback port and socket directory, run as
    the ``postgres`` OS user (the server refuses root); never the machine's own on 5432."""

    def __init__(self, db: str = "trainwarden") -> None:
        self.bin = Path(os.path.realpath(shutil.which("pg_ctl") or "pg_ctl")).parent
        self.dir = Path(tempfile.mkdtemp(prefix="tw-chaos-pg-"))  # /tmp: postgres can reach it
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self.db = db
        self.running = False
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.db}"

    def _run(self, argv: Sequence[str], timeout: float = 60) -> str:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        r = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=timeout, cwd=self.dir
        )
        if r.returncode != 0:
            raise PostgresError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr or r.stdout}")
        return r.stdout

    def init(self) -> None:
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                   "postgres", "-E", "UTF8", "--locale=C", "-N"])  # fmt: skip

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                   "-o", opts, "-w", "-t", "30", "start"])  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])
        self.running = False

    def createdb(self) -> None:
        self._run([str(self.bin / "createdb"), "-h", str(self.dir), "-p", str(self.port),
                   "-U", "postgres", self.db])  # fmt: skip

    def close(self) -> None:
        """Stop it whatever its state (immediate) and remove its files."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(PostgresError, subprocess.TimeoutExpired):
                self.stop("immediate")
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():  # pg_ctl could not stop it: kill the postmaster itself
            with contextlib.suppress(ValueError, OSError, IndexError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        try:
            return f"--- {self.log}\n{self.log.read_text(errors='replace')[-2000:]}"
        except OSError:
            return ""


def private_postgres() -> PrivatePostgres:
    """A started private PostgreSQL with its database created (closed on failure)."""
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        pg.createdb()
    except BaseException:
        print(pg.logs(), file=sys.stderr)
        pg.close()
        raise
    return pg


def postgres_missing() -> str | None:
    """Why a private PostgreSQL cannot be started here (None: it can)."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser is missing (PostgreSQL must not run as root)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "there is no postgres OS user to run PostgreSQL as"
    return None


class Stack:
    """The daemon and one agent per node, as subprocesses, on a private broker."""

    def __init__(
        self,
        tmp: Path,
        broker: Broker,
        *,
        db_url: str | None = None,
        daemon_args: Sequence[str] = (),
    ) -> None:
        self.tmp = tmp
        self.broker = broker
        self.db_url = db_url or f"sqlite:///{tmp / 'tw.db'}"
        self.daemon_args = list(daemon_args)
        tag = uuid.uuid4().hex[:6]
        self.nodes = [f"c{tag}-n{i}" for i in (1, 2, 3, 4)]
        self.api, self.metrics = self.addresses()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log_dir = tmp / "jobs"
        self.extra_logs: list[Callable[[], str]] = []

    @staticmethod
    def addresses() -> tuple[str, str]:
        """A daemon's API socket (in a directory short enough for one) and metrics URL."""
        sock_dir = tempfile.mkdtemp(prefix="tw-", dir="/tmp")
        return os.path.join(sock_dir, "api.sock"), f"http://127.0.0.1:{free_port()}"

    def daemon_argv(self) -> list[str]:
        return [
            BIN, "daemon", "--db", self.db_url, "--broker", f"127.0.0.1:{self.broker.port}",
            "--api", self.api, "--metrics", self.metrics.removeprefix("http://"),
            "--scheduler", "local",
            "--local-nodes", ",".join(self.nodes), "--local-log-dir", str(self.log_dir),
            *self.daemon_args,
        ]  # fmt: skip

    def start(self) -> None:
        subprocess.run(
            [BIN, "db", "upgrade", "--url", self.db_url], check=True, capture_output=True
        )
        self._spawn("daemon", self.daemon_argv())
        for n in self.nodes:
            self._spawn(n, [
                BIN, "agent", "--node", n, "--broker", f"127.0.0.1:{self.broker.port}",
                "--heartbeat", "1", "--interval", "2",
                "--simulated-hardware", str(self.tmp / "hw" / n),
            ])  # fmt: skip
        wait_for(lambda: len(self.healthy()) == len(self.nodes), 60, "every node healthy")

    def _spawn(self, name: str, args: list[str]) -> None:
        with (self.tmp / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(args, stdout=log, stderr=log)

    def note(self, name: str, text: str) -> None:
        """A marker line in a process's log (e.g. where a restarted daemon starts)."""
        with (self.tmp / f"{name}.log").open("a") as f:
            f.write(f"===== chaos harness {time.strftime('%H:%M:%S')}: {text} =====\n")

    def kill_daemon(self) -> None:
        p = self.procs["daemon"]
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        self.note("daemon", f"daemon pid {p.pid} killed with SIGKILL")

    def restart_daemon(self) -> None:
        """A new daemon process with the same arguments (the old one must be gone)."""
        assert self.procs["daemon"].poll() is not None
        self.note("daemon", "new daemon process, same arguments")
        self._spawn("daemon", self.daemon_argv())

    def inject(self, node: str, fault: str) -> None:
        subprocess.run(
            [BIN, "hw", "inject", "--state-dir", str(self.tmp / "hw" / node), fault],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def get(self, path: str, timeout: float = 5) -> Any:
        """``/metrics`` and ``/healthz`` from the metrics listener, the rest from the API's
        socket (as root: an admin); None when the daemon does not answer."""
        if path.startswith("/api/"):
            try:
                return OperatorClient(self.api, timeout_s=timeout).request("GET", path)
            except SupervisorError:
                return None
        try:
            with urllib.request.urlopen(self.metrics + path, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as exc:  # /healthz answers 503 with a body
            body = exc.read()
        except OSError:
            return None
        if path == "/metrics":
            return body.decode()
        try:
            return json.loads(body)
        except ValueError:
            return None

    def rows(self, path: str) -> list[dict[str, Any]]:
        """A list endpoint's rows; [] when the daemon does not answer or answers an error."""
        got = self.get(path)
        return got if isinstance(got, list) else []

    def nodes_now(self) -> list[dict[str, Any]]:
        return self.rows("/api/v1/nodes")

    def healthy(self) -> list[str]:
        return [n["name"] for n in self.nodes_now() if n["state"] == "healthy"]

    def node_state(self, node: str) -> str | None:
        return next((n["state"] for n in self.nodes_now() if n["name"] == node), None)

    def events(self, **query: str) -> list[dict[str, Any]]:
        q = "&".join(f"{k}={v}" for k, v in {"limit": "1000", **query}.items())
        return self.rows(f"/api/v1/events?{q}")

    def dead_events(self) -> list[dict[str, Any]]:
        events = self.events()
        return [e for e in events if "NodeDead set" in e["message"] or "node dead" in e["message"]]

    def xid_faults(self, node: str, code: int = 79) -> list[dict[str, Any]]:
        """Stored fault events of ``node`` for XID ``code`` (data: kind xid, code)."""
        return [
            e
            for e in self.events(kind="fault", node=node)
            if e.get("node") == node
            and str((e.get("data") or {}).get("kind", "")).lower() == "xid"
            and (e.get("data") or {}).get("code") == code
        ]

    def actions(self) -> list[dict[str, Any]]:
        return self.rows("/api/v1/actions?limit=1000")

    def drains(self) -> list[dict[str, Any]]:
        return [a for a in self.actions() if a["kind"] == "drain"]

    def run_row(self, run: str) -> dict[str, Any] | None:
        return next((r for r in self.rows("/api/v1/runs") if r["name"] == run), None)

    def counter(self, name: str) -> float:
        total = 0.0
        for line in (self.get("/metrics") or "").splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def log_lines(self, name: str, *needles: str) -> list[str]:
        """The lines of a process's log that contain any of ``needles``."""
        try:
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if any(n in line for n in needles)]

    def logs(self) -> str:
        parts = []
        for f in sorted(self.tmp.glob("*.log")):
            keep = 8000 if f.name == "daemon.log" else 2000
            parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-keep:]}")
        for f in sorted(self.log_dir.glob("*.log")) if self.log_dir.is_dir() else []:
            parts.append(f"--- jobs/{f.name}\n{f.read_text(errors='replace')[-1200:]}")
        parts += [extra() for extra in self.extra_logs]
        return "\n".join(parts)


# --- training runs --------------------------------------------------------------------------


def run_processes(run: str) -> list[psutil.Process]:
    """Every live process whose environment says TRAINWARDEN_RUN=<run>."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get("TRAINWARDEN_RUN") == run:
                out.append(p)
        except psutil.Error:
            continue
    return out


def process_env(p: psutil.Process, key: str) -> str | None:
    try:
        return p.environ().get(key)
    except psutil.Error:
        return None


def kill_run_processes(run: str, timeout: float = 10.0) -> int:
    """SIGKILL every process of ``run`` (found by its environment) until none is left."""
    killed = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = run_processes(run)
        if not procs:
            break
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
                killed += 1
        time.sleep(0.2)
    return killed


def add_run(
    stack: Stack,
    run: str,
    ckpt: Path,
    *,
    nodes: int = 2,
    min_nodes: int = 2,
    steps: int = 100_000,
    ckpt_every: int = 5,
    step_time: float = 0.05,
) -> dict[str, Any]:
    """Register the example job (torchrun, one process per node) through ``trainwarden runs
    add`` against the daemon's API, as the demo's spec describes it."""
    ckpt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [
            BIN, "runs", "add", run, "--api", stack.api, "--scheduler", "local",
            "--nodes", str(nodes), "--min-nodes", str(min_nodes), "--checkpoint-dir", str(ckpt),
            "--target-step", str(steps),
            "--env", f"TRAINWARDEN_BROKER=127.0.0.1:{stack.broker.port}",
            "--env", "OMP_NUM_THREADS=1", "--json", "--",
            sys.executable, "-m", "torch.distributed.run", "--nnodes={nnodes}",
            "--node-rank={node_rank}", "--nproc-per-node=1", "--master-addr={master_addr}",
            "--master-port={master_port}", str(EXAMPLE), "--steps", str(steps),
            "--ckpt-every", str(ckpt_every), "--ckpt-dir", str(ckpt),
            "--step-time", str(step_time),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, f"runs add failed ({r.returncode}): {r.stderr or r.stdout}"
    row: dict[str, Any] = json.loads(r.stdout)
    return row


def progress(ckpt: Path) -> dict[int, list[int]]:
    """Steps each attempt logged, from the example job's progress-rank*.log files."""
    out: dict[int, list[int]] = {}
    for f in sorted(ckpt.glob("progress-rank*.log")):
        for line in f.read_text(errors="replace").splitlines():
            words = dict(w.split("=", 1) for w in line.split() if "=" in w)
            if "attempt" in words and line.split()[1:2] and line.split()[1].startswith("step="):
                with contextlib.suppress(ValueError):
                    out.setdefault(int(words["attempt"]), []).append(int(words["step"]))
    return out
