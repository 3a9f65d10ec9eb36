"""End-to-end ingest at scale, measured the way users run the product: a private Mosquitto,
the real ``trainwarden daemon`` as a subprocess (SQLite in a temporary directory, or
``--db URL``), and simulated nodes published from separate processes over a few MQTT
connections each, in the agents' wire format and at their default rates (a heartbeat
every 2 s with its own advancing seq, a 4-probe health report every 10 s, QoS 1).

Scenarios (``--scenario steady|backlog|silence|all``):

- steady: N nodes for DURATION with a fatal XID 79 fault on a different node every
  ``--fault-every`` s: messages published and processed, processed msg/s, false NodeDead
  detections and drains, fault -> drain latency, bus lag, daemon RSS/CPU, publishers' CPU.
- backlog: the daemon's persistent session fills while it is stopped (SIGTERM), then it is
  started again: time to drain the backlog; baseline: a bare aiomqtt subscriber (json.loads
  only) with its own persistent session drains the same backlog.
- silence: N nodes steady, then ``--silent`` K of them stop at once (no wills): NodeDead
  detections, drain decisions by verdict, incidents/alerts, and whether the others' heartbeats
  kept being processed (rate of the remaining nodes, bus lag).

Prints one JSON object (a dict per scenario and the machine).

    .venv/bin/python bench/ingest_e2e.py --json [--scenario all] [--nodes 2000]
        [--duration 30] [--publishers 2] [--connections 1] [--db URL] [--profile FILE]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from trainwarden.health.agent import AgentConfig
from trainwarden.health.probes.base import Health, Severity
from trainwarden.health.report import (
    SUBSCRIPTIONS,
    FaultModel,
    FaultReport,
    HealthReport,
    Heartbeat,
    NodeStatus,
    ProbeReport,
    encode,
    node_topic,
    parse_message,
)
from trainwarden.supervisor.api.client import OperatorClient
from trainwarden.supervisor.errors import SupervisorError

HERE = Path(__file__).resolve()
BIN = str(Path(sys.executable).parent / "trainwarden")
# what health.agent.AgentConfig sends by default (heartbeats at QoS 0, reports at QoS 1)
HEARTBEAT_S = AgentConfig(node="bench").heartbeat_interval_s
REPORT_S = AgentConfig(node="bench").report_interval_s
MSGS_PER_NODE_S = 1 / HEARTBEAT_S + 1 / REPORT_S
PUB_INFLIGHT = 1000  # paho's default is 20 QoS 1 messages in flight per connection
# sentinels replaced by printf placeholders in the pre-encoded payloads
_TS, _SEQ = 1111111111.25, 987654321987


# --- wire format: pre-encoded templates -----------------------------------------------------


def _template(payload: bytes) -> bytes:
    out = payload.replace(b"%", b"%%")
    assert out.count(str(_TS).encode()) == 1 and out.count(str(_SEQ).encode()) == 1
    return out.replace(str(_TS).encode(), b"%(ts).6f").replace(str(_SEQ).encode(), b"%(seq)d")


def heartbeat_template(node: str) -> bytes:
    return _template(
        encode(Heartbeat(node=node, ts=_TS, seq=_SEQ, interval_s=HEARTBEAT_S)),
    )


def health_template(node: str) -> bytes:
    """A report like a healthy agent's: gpu, network, storage and host probes with values."""
    probes = [
        ProbeReport(
            probe=name,
            health=Health.HEALTHY,
            reason="ok",
            values={f"v{i}": float(i) for i in range(12)},
            duration_s=0.01,
        )
        for name in ("gpu", "network", "storage:/capstor", "host")
    ]
    return _template(
        encode(HealthReport(node=node, ts=_TS, seq=_SEQ, overall=Health.HEALTHY, probes=probes))
    )


def fill(template: bytes, ts: float, seq: int) -> bytes:
    return template % {b"ts": ts, b"seq": seq}


def xid_fault(node: str, ts: float) -> bytes:
    fault = FaultModel(
        kind="xid",
        severity=Severity.FATAL,
        detail="NVRM: Xid (PCI:0000:03:00): 79, GPU has fallen off the bus.",
        gpu=0,
        code=79,
    )
    return encode(FaultReport(node=node, ts=ts, faults=[fault]))


def node_names(n: int) -> list[str]:
    return [f"nid{i:06d}" for i in range(n)]


# --- processes ----------------------------------------------------------------------------

_CHILDREN: list[subprocess.Popen[Any]] = []


def spawn(argv: Sequence[str], log: Path | None = None, **kw: Any) -> subprocess.Popen[Any]:
    if log is not None:
        with log.open("ab") as f:
            p: subprocess.Popen[Any] = subprocess.Popen(argv, stdout=f, stderr=f, **kw)
    else:
        p = subprocess.Popen(argv, **kw)
    _CHILDREN.append(p)
    return p


def stop(p: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    with contextlib.suppress(ValueError):
        _CHILDREN.remove(p)


def cleanup() -> None:
    """Every process this bench started (also on Ctrl-C, SIGTERM and exceptions)."""
    for p in list(_CHILDREN):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
    for p in list(_CHILDREN):
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
    _CHILDREN.clear()


atexit.register(cleanup)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(pred: Callable[[], Any], timeout: float, every: float = 0.1) -> float | None:
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            return None
        time.sleep(every)


def mosquitto_version() -> str | None:
    exe = shutil.which("mosquitto")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "-h"], check=False, capture_output=True, text=True, timeout=10
    ).stdout
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("mosquitto version ").strip() or None


class Mosquitto:
    """A private broker on a free loopback port.

    Compared with deploy/mosquitto/trainwarden.conf: anonymous (no ACL, the simulated nodes
    share connections, so a per-node username cannot apply); persistence off (the broker
    itself is never restarted here, and queued messages live in memory either way);
    max_queued_messages sized for the backlog (the shipped 300,000 is a minute of 20,000
    nodes; 0 would mean unbounded); max_inflight_messages 1000 as shipped (QoS 1 messages
    sent to the daemon before its PUBACKs come back); max_packet_size as shipped.
    """

    def __init__(self, tmp: Path, max_queued: int = 300_000) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"max_queued_messages {max(300_000, max_queued)}\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 1000\n"
            "max_packet_size 263168\n"
            "max_keepalive 120\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages false\n"
        )
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto")
        if exe is None:
            raise RuntimeError("mosquitto is not installed")
        self.proc = spawn([exe, "-c", str(self.conf)], self.tmp / "mosquitto.out")
        if wait_until(self.answers, 10) is None:
            raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def answers(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def local_nodes_arg(names: Sequence[str]) -> str:
    """``--local-nodes``: a hostlist range when the daemon's CLI takes one, else a list."""
    help_text = subprocess.run(
        [BIN, "daemon", "--help"], check=False, capture_output=True, text=True, timeout=60
    ).stdout
    joined = ",".join(names)
    ranged = "[" in help_text.split("--local-nodes", 2)[-1].split("--local-log-dir")[0]
    width = len(names[0]) - 3 if names else 6
    contiguous = names == [f"nid{i:0{width}d}" for i in range(len(names))]
    if ranged and contiguous and len(names) > 1:
        return f"nid[{0:0{width}d}-{len(names) - 1:0{width}d}]"
    if len(joined) > 120_000:  # one argv string may hold 128 KiB on Linux
        raise RuntimeError(
            f"--local-nodes for {len(names)} nodes is {len(joined)} bytes, too long for argv, "
            "and this daemon's --local-nodes takes no hostlist ranges yet"
        )
    return joined


class Daemon:
    """``trainwarden daemon`` as a subprocess with the local scheduler, and its API."""

    def __init__(self, tmp: Path, broker: Mosquitto, nodes: Sequence[str], db: str | None):
        self.tmp = tmp
        self.broker = broker
        self.db = db or f"sqlite:///{tmp / 'tw.db'}"
        # the API's socket (in a directory short enough for one) and the metrics listener
        self.api = os.path.join(tempfile.mkdtemp(prefix="tw-", dir="/tmp"), "api.sock")
        self.metrics_url = f"http://127.0.0.1:{free_port()}"
        self.nodes_arg = local_nodes_arg(nodes)
        self.proc: subprocess.Popen[Any] | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        return [
            BIN, "daemon", "--db", self.db, "--broker", f"127.0.0.1:{self.broker.port}",
            "--api", self.api, "--metrics", self.metrics_url.removeprefix("http://"),
            "--scheduler", "local",
            "--local-nodes", self.nodes_arg, "--local-log-dir", str(self.tmp / "jobs"),
            "--client-id", "tw-bench-daemon", "--log-level", "WARNING",
        ]  # fmt: skip

    def start(self, timeout: float = 60) -> float:
        """Start it; returns when it is connected to the broker (seconds it took)."""
        if self.starts == 0:
            subprocess.run(
                [BIN, "db", "upgrade", "--url", self.db], check=True, capture_output=True
            )
        self.starts += 1
        t0 = time.monotonic()
        self.proc = spawn(self.argv(), self.tmp / "daemon.log")
        took = wait_until(lambda: self.gauge("trainwarden_broker_connected") == 1, timeout, 0.05)
        if took is None:
            raise RuntimeError(f"daemon not connected after {timeout} s:\n{self.log_tail()}")
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM, 30)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str, timeout: float = 10) -> Any:
        """``/metrics`` from the metrics listener, ``/api/...`` from the API's socket."""
        if path.startswith("/api/"):
            try:
                return OperatorClient(self.api, timeout_s=timeout).request("GET", path)
            except SupervisorError:
                return None
        try:
            with urllib.request.urlopen(self.metrics_url + path, timeout=timeout) as r:
                body = r.read()
        except (OSError, urllib.error.URLError):
            return None
        return body.decode() if path == "/metrics" else json.loads(body)

    def metrics(self) -> dict[str, dict[str, float]] | None:
        text = self.get("/metrics")
        return None if text is None else parse_metrics(text)

    def gauge(self, name: str) -> float | None:
        m = self.metrics()
        return None if m is None else total(m, name)

    def actions(self, since: float = 0.0) -> list[dict[str, Any]]:
        rows = self.get("/api/v1/actions?limit=10000", timeout=30) or []
        return [a for a in rows if a["ts"] >= since]

    def events(self, since: float = 0.0, **query: str) -> list[dict[str, Any]]:
        q = "&".join(f"{k}={v}" for k, v in {"limit": "10000", **query}.items())
        rows = self.get(f"/api/v1/events?{q}", timeout=30) or []
        return [e for e in rows if e["ts"] >= since]

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.tmp / "daemon.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """``{name: {labels: value}}`` from Prometheus text (labels as written, '' for none)."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        with contextlib.suppress(ValueError):
            out.setdefault(name, {})[labels.rstrip("}")] = float(value)
    return out


def total(m: dict[str, dict[str, float]], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for lab, v in m.get(name, {}).items() if all(w in lab for w in want))


def processed(m: dict[str, dict[str, float]] | None) -> float:
    """Messages the daemon took off the bus: accepted plus refused."""
    if m is None:
        return 0.0
    return total(m, "trainwarden_messages_total") + total(m, "trainwarden_rejected_messages_total")


# --- sampling ------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # wall time
    processed: float
    lag: float
    dead: float
    rss: float  # daemon, bytes


@dataclass
class Sampler:
    """Scrapes the daemon's /metrics and RSS once a second while a scenario runs."""

    daemon: Daemon
    every: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def take(self) -> Sample | None:
        m = self.daemon.metrics()
        if m is None:
            return None
        try:
            rss = float(psutil.Process(self.daemon.pid).memory_info().rss)
        except psutil.Error:
            rss = 0.0
        s = Sample(
            time.time(),
            processed(m),
            total(m, "trainwarden_bus_lag_seconds"),
            total(m, "trainwarden_detections_total", kind="NodeDead"),
            rss,
        )
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.take()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def between(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.t <= t1]


class CpuMeter:
    """CPU seconds of some processes between ``start`` and ``stop`` (children included)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.t0 = time.monotonic()
        self.c0 = [self._cpu(p) for p in self.procs]

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system + t.children_user + t.children_system)
        except psutil.Error:
            return 0.0

    def percent(self, last: Sequence[float] | None = None) -> float:
        """Percent of one core over the interval (sum over the processes)."""
        wall = time.monotonic() - self.t0
        now = last if last is not None else [self._cpu(p) for p in self.procs]
        used = sum(max(0.0, b - a) for a, b in zip(self.c0, now, strict=True))
        return round(100 * used / wall, 1) if wall > 0 else 0.0

    def snapshot(self) -> list[float]:
        return [self._cpu(p) for p in self.procs]


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# --- publishers (separate processes) -------------------------------------------------------


class Publishers:
    """P publisher processes, each simulating an interleaved share of the nodes."""

    def __init__(
        self, tmp: Path, cfg: dict[str, Any], names: Sequence[str], count: int, tag: str = "p"
    ) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        for k in range(count):
            mine = list(names[k::count])
            if not mine:
                continue
            own = set(mine)
            c = {
                **cfg,
                "nodes": mine,
                "faults": [f for f in cfg.get("faults", ()) if f["node"] in own],
                "silent": [n for n in cfg.get("silent", ()) if n in own],
                "client_prefix": f"tw-bench-{os.getpid()}-{tag}{k}",
            }
            path = tmp / f"publisher-{tag}{k}.json"
            path.write_text(json.dumps(c))
            self.procs.append(
                spawn(
                    [sys.executable, str(HERE), "--_publisher", str(path)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=(tmp / f"publisher-{tag}{k}.log").open("ab"),
                    text=True,
                )
            )
        for p in self.procs:  # each says "ready" once connected
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"publisher {p.pid} did not start: {line!r}")
        self.cpu = CpuMeter([p.pid for p in self.procs])

    def go(self, at: float) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(f"{at}\n")
            p.stdin.flush()
        self.cpu = CpuMeter([p.pid for p in self.procs])

    def results(self, timeout: float = 120) -> tuple[list[dict[str, Any]], float]:
        """Each publisher's JSON result, and their CPU % over the run (of one core)."""
        out = []
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            p.wait(timeout)
            _CHILDREN.remove(p)
            out.append(json.loads(line))
        used = sum(r["cpu_s"] for r in out)
        wall = max((r["wall_s"] for r in out), default=0.0)
        return out, round(100 * used / wall, 1) if wall else 0.0


def _connect(port: int, client_id: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.max_inflight_messages_set(PUB_INFLIGHT)
    c.max_queued_messages_set(0)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    if not connected.wait(10):
        raise RuntimeError("publisher could not connect")
    return c


Publish = Callable[[int, str, bytes, str], None]
Templates = list[tuple[str, bytes]]


def _burst(pub: Publish, hb: Templates, hr: Templates, left: int, seq0: int) -> None:
    """``left`` messages as fast as QoS 1 allows: heartbeats and health reports 5:1."""
    rnd = 0
    while left > 0:
        for i, (topic, tpl) in enumerate(hb):
            if left <= 0:
                break
            pub(i, topic, fill(tpl, time.time(), seq0 + rnd), "heartbeat")
            left -= 1
            if rnd % 5 == 4 and left > 0:
                rtopic, rtpl = hr[i]
                pub(i, rtopic, fill(rtpl, time.time(), seq0 + rnd), "health")
                left -= 1
        rnd += 1


@dataclass
class _Stream:
    """One kind of periodic message of every node: node i due at ``i/count`` of the interval
    after ``shift``, round after round."""

    interval: float
    shift: float
    msgs: Templates
    kind: str
    pos: int = 0
    round: int = 0

    def due(self) -> float:
        return self.round * self.interval + self.shift + self.pos * self.interval / len(self.msgs)

    def advance(self) -> None:
        self.pos += 1
        if self.pos == len(self.msgs):
            self.pos = 0
            self.round += 1


def _steady(
    pub: Publish, names: list[str], hb: Templates, hr: Templates, cfg: dict[str, Any], t0: float
) -> tuple[list[dict[str, Any]], list[float]]:
    """The agents' schedule until ``duration``; returns the faults sent and the lateness of
    every periodic message (seconds behind its due time)."""
    seq0 = int(cfg.get("seq_start", 1))
    now = time.time()
    for i, n in enumerate(names):  # what an agent publishes when it connects
        pub(
            i, node_topic(n, "status"), encode(NodeStatus(node=n, state="online", ts=now)), "status"
        )
    duration = float(cfg["duration"])
    silent = set(cfg.get("silent", ()))
    silence_at = float(cfg.get("silence_at", 1e18))
    faults = sorted((f["at"], f["node"]) for f in cfg.get("faults", ()))
    index = {n: i for i, n in enumerate(names)}
    # health reports shifted by half a heartbeat interval so the two do not coincide
    streams = [
        _Stream(HEARTBEAT_S, 0.0, hb, "heartbeat"),
        _Stream(REPORT_S, HEARTBEAT_S / 2, hr, "health"),
    ]
    sent: list[dict[str, Any]] = []
    late: list[float] = []
    while (t := time.time() - t0) < duration:
        while faults and faults[0][0] <= t:
            _, node = faults.pop(0)
            ts = time.time()
            pub(index[node], node_topic(node, "fault"), xid_fault(node, ts), "fault")
            sent.append({"node": node, "ts": ts})
        for s in streams:
            while (d := s.due()) <= t and d < duration:
                if not (names[s.pos] in silent and d >= silence_at):
                    topic, tpl = s.msgs[s.pos]
                    pub(s.pos, topic, fill(tpl, time.time(), seq0 + s.round), s.kind)
                    late.append(t - d)
                s.advance()
        nxt = min(*(s.due() for s in streams), faults[0][0] if faults else 1e18, duration)
        time.sleep(max(0.0, min(0.05, nxt - (time.time() - t0))))
    return sent, late


def publisher_main(config_path: str) -> int:
    """One publisher process: simulate ``nodes`` over ``connections`` MQTT connections (a
    node always on the same one, so its messages stay in order).

    mode ``steady``: every node a heartbeat (own seq) and a health report at the agent's
    default intervals, each from its own phase, until ``duration``; ``silence_at`` and
    ``silent`` stop some nodes (no will, no offline message); ``faults`` are published at
    their time. mode ``burst``: ``burst`` messages as fast as QoS 1 allows.
    """
    cfg = json.loads(Path(config_path).read_text())
    names: list[str] = cfg["nodes"]
    nconn = max(1, min(cfg.get("connections", 1), len(names)))
    clients = [_connect(cfg["port"], f"{cfg['client_prefix']}-c{i}") for i in range(nconn)]
    hb = [(node_topic(n, "heartbeat"), heartbeat_template(n)) for n in names]
    hr = [(node_topic(n, "health"), health_template(n)) for n in names]
    parse_message(hb[0][0], fill(hb[0][1], time.time(), 1))  # the templates are valid
    parse_message(hr[0][0], fill(hr[0][1], time.time(), 1))
    print("ready", flush=True)
    t_start = float(sys.stdin.readline())
    time.sleep(max(0.0, t_start - time.time()))
    cpu0 = os.times()
    w0 = time.time()
    counts: Counter[str] = Counter()
    last: list[Any] = [None] * nconn

    # as the agent does, except in a burst (the backlog scenario): QoS 0 messages are not
    # queued for a daemon that is away, so the backlog is the worst case, all at QoS 1
    hb_qos = 1 if cfg["mode"] == "burst" else 0

    def pub(i: int, topic: str, payload: bytes, kind: str) -> None:
        info = clients[i % nconn].publish(topic, payload, qos=hb_qos if kind == "heartbeat" else 1)
        if info.mid and (kind != "heartbeat" or hb_qos):
            last[i % nconn] = info
        counts[kind] += 1

    fault_times: list[dict[str, Any]] = []
    late: list[float] = []
    if cfg["mode"] == "burst":
        _burst(pub, hb, hr, int(cfg["burst"]), int(cfg.get("seq_start", 1)))
    else:
        fault_times, late = _steady(pub, names, hb, hr, cfg, t_start)
    publish_s = time.time() - w0
    for info in last:  # QoS 1: the broker has acknowledged everything
        if info is not None:
            info.wait_for_publish(60)
    acked_s = time.time() - w0
    cpu1 = os.times()
    for c in clients:
        c.disconnect()
        c.loop_stop()
    late.sort()
    result = {
        "published": dict(counts),
        "nodes": len(names),
        "publish_s": round(publish_s, 3),
        "wall_s": round(acked_s, 3),
        "cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 3),
        "late_p99_s": round(pct(late, 99) or 0.0, 3),
        "late_max_s": round(late[-1], 3) if late else 0.0,
        "faults": fault_times,
    }
    print(json.dumps(result), flush=True)
    return 0


# --- baseline subscriber (separate process) ------------------------------------------------


def baseline_main(port: int, client_id: str, phase: str, expect: int, timeout: float) -> int:
    """A bare aiomqtt subscriber with a persistent session, like the daemon's (json.loads
    only): ``subscribe`` creates the session; ``drain`` receives ``expect`` messages."""
    import asyncio

    import aiomqtt

    async def run() -> dict[str, Any]:
        cpu0 = os.times()
        t0 = time.perf_counter()
        got = 0
        first = None
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=client_id, clean_session=False, keepalive=15, timeout=10
        ) as client:
            for topic in SUBSCRIPTIONS:
                await client.subscribe(topic, qos=1)
            if phase == "subscribe":
                return {"subscribed": True}
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    payload = message.payload
                    assert isinstance(payload, bytes | bytearray)
                    json.loads(payload)
                    got += 1
                    if first is None:
                        first = time.perf_counter()
                    if got >= expect:
                        break
        took = time.perf_counter() - t0
        cpu1 = os.times()
        return {
            "received": got,
            "drain_s": round(took, 3),
            "msgs_per_s": round(got / took),
            "cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 3),
        }

    print(json.dumps(asyncio.run(run())), flush=True)
    return 0


def baseline(port: int, client_id: str, phase: str, expect: int = 0, timeout: float = 300) -> Any:
    argv = [sys.executable, str(HERE), "--_baseline", str(port), client_id, phase]
    p = spawn([*argv, str(expect), str(timeout)], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=timeout + 30)
    _CHILDREN.remove(p)
    return json.loads(out.strip().splitlines()[-1])


# --- scenarios -----------------------------------------------------------------------------


@dataclass
class Env:
    """A broker and a daemon in a temporary directory for one scenario."""

    nodes: int
    db: str | None = None
    max_queued: int = 300_000
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tw-e2e-")))
    keep: bool = False

    def __post_init__(self) -> None:
        self.names = node_names(self.nodes)
        self.broker = Mosquitto(self.tmp, self.max_queued)
        self.daemon = Daemon(self.tmp, self.broker, self.names, self.db)

    def __enter__(self) -> Env:
        self.broker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.broker.close()
        cleanup()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _publisher_cfg(env: Env, **kw: Any) -> dict[str, Any]:
    return {"port": env.broker.port, "connections": kw.pop("connections", 1), **kw}


def _sum_published(results: Sequence[dict[str, Any]]) -> Counter[str]:
    c: Counter[str] = Counter()
    for r in results:
        c.update(r["published"])
    return c


def _catch_up(daemon: Daemon, target: float, timeout: float) -> tuple[float | None, float]:
    """Wait until the daemon has taken ``target`` messages off the bus: (seconds, processed)."""
    seen = [0.0]

    def done() -> bool:
        seen[0] = processed(daemon.metrics())
        return seen[0] >= target

    return wait_until(done, timeout, 0.2), seen[0]


def _connected_to(pid: int, port: int) -> bool:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.raddr and c.raddr[1] == port and c.status == "ESTABLISHED" for c in conns)


def _lag_figures(samples: Sequence[Sample]) -> dict[str, float | None]:
    lags = [s.lag for s in samples]
    return {
        "bus_lag_max_s": round(max(lags), 3) if lags else None,
        "bus_lag_p99_s": round(pct(lags, 99) or 0.0, 3) if lags else None,
        "bus_lag_samples": len(lags),
    }


def _drain_verdicts(actions: Sequence[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(f"{a['verdict']}/{a['status']}" for a in actions if a["kind"] == "drain"))


IDLE_LEAVES = ("EpollSelector.select", "_worker (", "Condition.wait", "Thread.join")
# the frames under everything (the event loop, the CLI, thread start-up): not informative
BOILERPLATE = (
    "Runner.run (", "run (asyncio/", "run (trainwarden/supervisor/cli/", "main (trainwarden/",
    "BaseEventLoop.run_", "BaseEventLoop._run_once", "run_daemon (", "<module> (",
    "Thread.run (", "Thread._bootstrap", "Handle._run (",
)  # fmt: skip


def profile_raw(path: Path) -> dict[str, Any]:
    """Top 15 functions by own and by cumulative samples from py-spy's raw (collapsed)
    output, in percent of the busy samples (idle waits -- the event loop in epoll, pool
    threads waiting for work -- left out; frames that every busy sample has, such as
    ``run_forever``, too)."""
    own: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [
            _frame_name(f)
            for f in stack.split(";")
            if f and not f.startswith(("process ", "thread ("))
        ]
        if not frames:
            continue
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        busy += count
        own[frames[-1]] += count
        for f in set(frames):
            if not f.startswith(BOILERPLATE):
                cum[f] += count

    def top(c: Counter[str]) -> list[list[Any]]:
        rows = c.most_common(15)
        return [[name, round(100 * v / busy, 1)] for name, v in rows]

    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "own_pct_of_busy": top(own) if busy else [],
        "cumulative_pct_of_busy": top(cum) if busy else [],
    }


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)`` (line numbers merged)."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{name} ({file})"


def _fault_schedule(names: Sequence[str], duration: float, every: float) -> list[dict[str, Any]]:
    """One fatal XID every ``every`` s from 5 s on, each on a different node."""
    out: list[dict[str, Any]] = []
    at, k = min(5.0, duration / 4), 0
    while every > 0 and at < duration - 3:
        out.append({"at": at, "node": names[(k * 7919 + len(names) // 3) % len(names)]})
        at += every
        k += 1
    return out


def _py_spy(pid: int, seconds: float, profile: Path, tmp: Path) -> subprocess.Popen[Any] | None:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        print("py-spy is not installed: no profile", file=sys.stderr)
        return None
    return spawn(
        [str(exe), "record", "-d", str(max(5, int(seconds))), "-p", str(pid),
         "-o", str(profile), "--format", "raw", "--nonblocking"],
        tmp / "py-spy.log",
    )  # fmt: skip


def _fault_figures(
    results: Sequence[dict[str, Any]],
    actions: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    t_end: float,
) -> dict[str, Any]:
    """Fault publish -> fault event and -> drain action recorded (the daemon's timestamps
    against the publisher's; one host, one clock), and drains of any other node."""
    faulty = {f["node"]: f["ts"] for r in results for f in r["faults"]}
    seen_at = {e["node"]: e["ts"] for e in events if e["node"] in faulty}
    drain_at: dict[str, float] = {}
    for a in sorted(actions, key=lambda a: a["ts"]):
        if a["kind"] == "drain" and a["node"] in faulty:
            drain_at.setdefault(a["node"], a["ts"])
    lat = sorted(drain_at[n] - faulty[n] for n in faulty if n in drain_at)
    seen = sorted(seen_at[n] - faulty[n] for n in faulty if n in seen_at)
    false_drains = [
        a for a in actions
        if a["kind"] == "drain" and a["node"] not in faulty and a["ts"] <= t_end + 0.5
    ]  # fmt: skip
    return {
        "false_drains": len(false_drains),
        "false_drain_nodes": sorted({a["node"] for a in false_drains})[:20],
        "faults_injected": len(faulty),
        "faults_drained": len(lat),
        "fault_event_latency_s": [round(x, 3) for x in seen],
        "fault_to_drain_p50_s": round(statistics.median(lat), 3) if lat else None,
        "fault_to_drain_p99_s": round(pct(lat, 99) or 0.0, 3) if lat else None,
        "fault_to_drain_max_s": round(lat[-1], 3) if lat else None,
    }


def steady(
    nodes: int,
    duration: float,
    *,
    publishers: int = 2,
    connections: int = 1,
    fault_every: float = 10.0,
    db: str | None = None,
    profile: Path | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """N nodes at the agents' default rates, faults spaced out on different nodes."""
    with Env(nodes, db, keep=keep) as env:
        d = env.daemon
        startup_s = d.start()
        faults = _fault_schedule(env.names, duration, fault_every)
        cfg = _publisher_cfg(env, connections=connections, mode="steady", duration=duration)
        pubs = Publishers(env.tmp, {**cfg, "faults": faults}, env.names, publishers)
        sampler = Sampler(d)
        first = sampler.take()
        base = first.processed if first else 0.0
        t0 = time.time() + 0.5
        daemon_cpu = CpuMeter([d.pid])
        broker_cpu = CpuMeter([env.broker.proc.pid]) if env.broker.proc else None
        pubs.go(t0)
        sampler.start()
        spy = _py_spy(d.pid, duration - 8, profile, env.tmp) if profile is not None else None
        results, pub_cpu = pubs.results(duration + 120)
        t_end = t0 + duration
        at_stop = sampler.take()
        cpu_at_stop = daemon_cpu.snapshot()
        broker_at_stop = broker_cpu.snapshot() if broker_cpu else None
        published = _sum_published(results)
        n_pub = sum(published.values())
        caught_s, done = _catch_up(d, base + n_pub, 30)
        sampler.stop()
        if spy is not None:
            spy.wait(60)
            _CHILDREN.remove(spy)
        window = sampler.between(t0, t_end + 0.5)
        fault_figures = _fault_figures(
            results, d.actions(since=t0 - 1), d.events(since=t0 - 1, kind="fault"), t_end
        )
        dead = (at_stop.dead if at_stop else 0.0) - (first.dead if first else 0.0)
        wall = (t_end - t0) + (caught_s or 0.0)
        target = nodes * MSGS_PER_NODE_S
        achieved = (published["heartbeat"] + published["health"]) / duration
        out: dict[str, Any] = {
            "nodes": nodes,
            "duration_s": duration,
            "publishers": len(results),
            "connections_per_publisher": connections,
            "daemon_startup_s": round(startup_s, 2),
            "published": dict(published),
            "processed": int(done - base),
            "processed_all": done - base >= n_pub,
            "caught_up_after_stop_s": None if caught_s is None else round(caught_s, 2),
            "processed_msgs_per_s": round((done - base) / wall) if wall else None,
            "target_msgs_per_s": round(target),
            "publishers_msgs_per_s": round(achieved),
            "publishers_kept_rate": all(r["late_max_s"] < 0.5 for r in results),
            "publishers_late_max_s": max(r["late_max_s"] for r in results),
            "node_dead_detections": int(dead),
            **fault_figures,
            **_lag_figures(window),
            "daemon_rss_max_mb": round(max((s.rss for s in window), default=0) / 2**20, 1),
            "daemon_cpu_pct": daemon_cpu.percent(cpu_at_stop),
            "broker_cpu_pct": broker_cpu.percent(broker_at_stop) if broker_cpu else None,
            "publishers_cpu_pct": pub_cpu,
        }
        if profile is not None and profile.exists():
            out["profile"] = profile_raw(profile)
        return out


def backlog(
    nodes: int,
    messages: int,
    *,
    publishers: int = 2,
    connections: int = 1,
    db: str | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """B messages queued in the daemon's persistent session while it is stopped."""
    with Env(nodes, db, max_queued=2 * messages, keep=keep) as env:
        d = env.daemon
        d.start()
        # the daemon knows every node first (one round of heartbeats), as before a restart
        cfg = _publisher_cfg(env, connections=connections, mode="steady", duration=HEARTBEAT_S)
        warm = Publishers(env.tmp, cfg, env.names, publishers)
        warm.go(time.time() + 0.2)
        warm_results, _ = warm.results()
        _catch_up(d, sum(_sum_published(warm_results).values()), 30)
        bl_id = f"tw-bench-baseline-{os.getpid()}"
        baseline(env.broker.port, bl_id, "subscribe")
        d.stop()
        cfg = _publisher_cfg(env, connections=connections, mode="burst", seq_start=1_000_000)
        per = [messages // publishers + (1 if k < messages % publishers else 0)
               for k in range(publishers)]  # fmt: skip
        pubs_results: list[dict[str, Any]] = []
        t_pub = time.time()
        procs = [
            Publishers(env.tmp, {**cfg, "burst": per[k]}, env.names[k::publishers], 1, f"b{k}-")
            for k in range(publishers)
            if per[k]
        ]
        for p in procs:
            p.go(time.time())
        pub_cpu = 0.0
        for p in procs:
            r, c = p.results(600)
            pubs_results += r
            pub_cpu += c
        publish_s = time.time() - t_pub
        published = _sum_published(pubs_results)
        n = sum(published.values())
        base = baseline(env.broker.port, bl_id, "drain", n, 600)
        # the daemon again: its session holds the same n messages
        sampler = Sampler(d, every=0.5)
        t_spawn = time.monotonic()
        d.proc = spawn(d.argv(), env.tmp / "daemon.log")
        daemon_cpu = CpuMeter([d.proc.pid])
        # the TCP connection to the broker, seen from outside: while the daemon drains, its
        # API may not answer (the message loop does not yield to it)
        connected = wait_until(lambda: _connected_to(d.pid, env.broker.port), 60, 0.005)
        t_conn = time.monotonic()
        sampler.start()
        took, done = _catch_up(d, n, 600)
        t_done = time.monotonic()
        cpu = daemon_cpu.percent()
        sampler.stop()
        m = d.metrics() or {}
        actions = d.actions(since=time.time() - (t_done - t_spawn) - 1)
        drain_s = t_done - t_conn
        rate = round(done / drain_s) if drain_s > 0 else None
        return {
            "nodes": nodes,
            "backlog_messages": n,
            "published": dict(published),
            "publish_s": round(publish_s, 2),
            "publish_msgs_per_s": round(n / publish_s),
            "publishers_cpu_pct": round(pub_cpu, 1),
            "daemon_restart_to_connected_s": (
                None if connected is None else round(t_conn - t_spawn, 2)
            ),
            "daemon_drain_s": round(drain_s, 2) if took is not None else None,
            "daemon_processed": int(done),
            "daemon_msgs_per_s": rate,
            "daemon_cpu_pct": cpu,
            "daemon_rss_max_mb": round(max((s.rss for s in sampler.samples), default=0) / 2**20, 1),
            "baseline_drain_s": base["drain_s"],
            "baseline_msgs_per_s": base["msgs_per_s"],
            "baseline_received": base["received"],
            "daemon_vs_baseline": round(rate / base["msgs_per_s"], 3) if rate else None,
            "node_dead_detections": int(total(m, "trainwarden_detections_total", kind="NodeDead")),
            "drains": len([a for a in actions if a["kind"] == "drain"]),
            "verdicts_suspended_events": len(
                d.events(since=time.time() - (t_done - t_spawn) - 1, kind="verdicts-suspended")
            ),
            **_lag_figures(sampler.samples),
        }


def silence(
    nodes: int,
    silent: int,
    warm: float,
    after: float,
    *,
    publishers: int = 2,
    connections: int = 1,
    db: str | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """N nodes steady; at ``warm`` s, ``silent`` contiguous nodes (a switch) stop at once."""
    with Env(nodes, db, keep=keep) as env:
        d = env.daemon
        d.start()
        first = nodes // 4 if silent <= nodes - nodes // 4 else 0
        quiet = env.names[first : first + silent]
        cfg = _publisher_cfg(
            env,
            connections=connections,
            mode="steady",
            duration=warm + after,
            silence_at=warm,
            silent=quiet,
        )
        pubs = Publishers(env.tmp, cfg, env.names, publishers)
        sampler = Sampler(d, every=0.5)
        t0 = time.time() + 0.5
        daemon_cpu = CpuMeter([d.pid])
        pubs.go(t0)
        sampler.start()
        results, pub_cpu = pubs.results(warm + after + 120)
        t_sil, t_end = t0 + warm, t0 + warm + after
        last = sampler.take()
        cpu = daemon_cpu.percent()
        sampler.stop()
        before = sampler.between(t0, t_sil)
        during = sampler.between(t_sil, t_end + 0.5)
        actions = d.actions(since=t0 - 1)
        after_actions = [a for a in actions if a["ts"] >= t_sil]
        dead_before = (before[-1].dead - before[0].dead) if before else 0.0
        dead_during = (last.dead if last else 0.0) - (before[-1].dead if before else 0.0)
        # the remaining nodes' messages processed per second during the event (from 2 s
        # after the silence, when the silent nodes' last messages are in)
        span = [s for s in during if s.t >= t_sil + 2]
        rate = (
            (span[-1].processed - span[0].processed) / (span[-1].t - span[0].t)
            if len(span) >= 2 and span[-1].t > span[0].t
            else None
        )
        remaining = (nodes - len(quiet)) * MSGS_PER_NODE_S
        alerts = [a for a in after_actions if a["kind"] == "alert"]
        incident_events = [
            e for e in d.events(since=t0 - 1) if "incident" in (e.get("message") or "").lower()
        ]
        lag = _lag_figures(during)
        quiet_set = set(quiet)
        verdict_events = [
            e
            for e in d.events(since=t_sil)
            if e["kind"] in ("verdicts-suspended", "verdicts-resumed")
        ]
        return {
            "nodes": nodes,
            "silent": len(quiet),
            "silent_range": [quiet[0], quiet[-1]] if quiet else None,
            "warm_s": warm,
            "after_s": after,
            "published": dict(_sum_published(results)),
            "node_dead_before_silence": int(dead_before),
            "node_dead_after_silence": int(dead_during),
            "dead_detected_of_silent": len(
                {
                    e["node"]
                    for e in d.events(since=t_sil, kind="condition-changed")
                    if e["node"] in quiet_set and "NodeDead" in (e.get("message") or "")
                }
            ),
            "drain_decisions": _drain_verdicts(after_actions),
            "drains_of_live_nodes": len(
                [a for a in actions if a["kind"] == "drain" and a["node"] not in quiet_set]
            ),
            "actions_by_kind": dict(Counter(a["kind"] for a in after_actions)),
            "alerts": [a["reason"][:160] for a in alerts][:5],
            "incident_opened": bool(incident_events)
            or any(str(a.get("rule") or "").startswith("incident:") for a in alerts),
            "mass_silence_events": [
                f"{e['kind']}: {e['message'][:140]}"
                for e in verdict_events
                if (e.get("data") or {}).get("mass_silence")
            ][:4],
            "verdict_events": len(verdict_events),
            "remaining_msgs_per_s": round(rate) if rate is not None else None,
            "remaining_target_msgs_per_s": round(remaining),
            **lag,
            "remaining_within_1s": lag["bus_lag_max_s"] is not None
            and lag["bus_lag_max_s"] <= 1.0
            and rate is not None
            and rate >= 0.9 * remaining,
            "daemon_cpu_pct": cpu,
            "publishers_cpu_pct": pub_cpu,
            "publishers_kept_rate": all(r["late_max_s"] < 0.5 for r in results),
        }


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
        "platform": platform.platform(),
    }


@contextlib.contextmanager
def cleaned_up() -> Iterator[None]:
    """SIGTERM ends the bench like Ctrl-C: every child process is stopped."""

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        cleanup()
        signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one line of JSON")
    p.add_argument("--scenario", choices=["steady", "backlog", "silence", "all"], default="all")
    p.add_argument("--nodes", type=int, default=2000)
    p.add_argument("--duration", type=float, default=30.0, help="steady: seconds of traffic")
    p.add_argument("--fault-every", type=float, default=10.0, help="steady: 0 for no faults")
    p.add_argument("--backlog", type=int, default=None,
                   help="backlog: messages (default: 30 s of the N nodes' traffic)")  # fmt: skip
    p.add_argument("--silent", type=int, default=None, help="silence: nodes (default N/10)")
    p.add_argument("--warm", type=float, default=12.0, help="silence: seconds before")
    p.add_argument("--after", type=float, default=18.0, help="silence: seconds after")
    p.add_argument("--publishers", type=int, default=2)
    p.add_argument("--connections", type=int, default=1, help="MQTT connections per publisher")
    p.add_argument("--db", default=None, help="database URL (default: a temporary SQLite)")
    p.add_argument("--profile", type=Path, default=None,
                   help="steady: py-spy raw profile of the daemon to this file")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    p.add_argument("--_publisher", help=argparse.SUPPRESS)
    p.add_argument("--_baseline", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._publisher:
        with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
            return publisher_main(args._publisher)
        return 1
    if args._baseline:
        port, cid, phase, expect, timeout = args._baseline
        return baseline_main(int(port), cid, phase, int(expect), float(timeout))
    if shutil.which("mosquitto") is None:
        print("mosquitto is not installed", file=sys.stderr)
        return 2
    n = args.nodes
    common = {"publishers": args.publishers, "connections": args.connections, "db": args.db,
              "keep": args.keep}  # fmt: skip
    out: dict[str, Any] = {"machine": machine()}
    todo = ["steady", "backlog", "silence"] if args.scenario == "all" else [args.scenario]
    with cleaned_up():
        for name in todo:
            t = time.monotonic()
            if name == "steady":
                r = steady(n, args.duration, fault_every=args.fault_every,
                           profile=args.profile, **common)  # fmt: skip
            elif name == "backlog":
                b = args.backlog or int(n * MSGS_PER_NODE_S * 30)
                r = backlog(n, b, **common)
            else:
                k = args.silent if args.silent is not None else max(1, n // 10)
                r = silence(n, min(k, n), args.warm, args.after, **common)
            r["scenario_wall_s"] = round(time.monotonic() - t, 1)
            out[name] = r
            print(f"{name} done in {r['scenario_wall_s']} s", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
