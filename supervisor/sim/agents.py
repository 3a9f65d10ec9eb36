"""What the trainwarden agents would publish about simulated node faults, fed to the tracker.

A scenario fault is turned into the agent's messages, in the wire format's own types where
there are some: a fatal GPU fault is a fault event (an XID, published at once), a probe
finding is a periodic :class:`~trainwarden.health.report.HealthReport` with an unhealthy or degraded
probe whose faults carry the shared ``cause`` (``storage:/capstor``), a dead node is a node
whose heartbeats stop and whose last will the broker publishes, and a repair is a reboot
(graceful stop, heartbeats again) followed by a healthy report.

Heartbeats are modelled lazily, so that a month of a 2,000-node cluster stays cheap: a node
becomes known to the tracker (one heartbeat) the first time it has something to say, and
before every detector tick each known node whose agent runs sends the heartbeat it would
have sent in the last interval. Reports are sent only when what they say changes; the
tracker ignores repeats, so the periodic copies in between change nothing.
"""

from __future__ import annotations

from trainwarden.health import faults as fk
from trainwarden.health.probes.base import Fault, Health, Severity, worst
from trainwarden.health.report import FaultModel, HealthReport, ProbeReport
from trainwarden.supervisor.detectors.node_faults import NodeHealthTracker, Observation
from trainwarden.supervisor.sim.scenario import FaultSpec

XID_REPORT_DELAY_S = 1.0  # the agent's XID watcher publishes a fault event at once
DEFAULT_XID = 79  # "GPU has fallen off the bus"
BASE_PROBES = ("gpu", "network", "host")

_GPU = {
    fk.XID,
    fk.GPU_LOST,
    fk.GPU_MISSING,
    fk.ECC_DBE,
    fk.ROW_REMAP_FAILURE,
    fk.ROW_REMAP_PENDING,
    fk.NVLINK_DOWN,
    fk.PCIE_DEGRADED,
    fk.THERMAL_THROTTLE,
    fk.POWER_THROTTLE,
    fk.GPU_MEM_HELD,
    fk.NVML_UNAVAILABLE,
}
_NET = {fk.IB_LINK_DOWN, fk.IB_LINK_FLAP, fk.IB_ERRORS, fk.CXI_LINK_DOWN, fk.ETH_LINK_DOWN}


def agent_kind(f: FaultSpec) -> str | None:
    """The ``health.faults`` kind the agent reports for a scenario fault (None: nothing)."""
    if f.agent_fault is not None:
        return f.agent_fault
    if f.kind == "gpu-fatal":
        return fk.XID
    if f.kind == "node-unhealthy":
        cause = f.cause or ""
        if cause.startswith("storage:"):
            return fk.STORAGE_HANG
        if cause.startswith("fabric:"):
            return fk.IB_LINK_DOWN
        return fk.HOST_MCE
    if f.kind == "node-degraded":
        return fk.THERMAL_THROTTLE
    return None  # node-dead says nothing; stragglers show in step times, not in probes


def probe_of(kind: str, cause: str | None) -> str:
    """The probe that finds a fault of this kind (names as the agent's probes use them)."""
    if kind in _GPU:
        return "gpu"
    if kind in _NET:
        return "network"
    if kind.startswith("storage-"):
        return cause if cause and cause.startswith("storage:") else "storage"
    return "host"


def agent_fault(f: FaultSpec) -> Fault | None:
    """The :class:`Fault` the agent would put in its report for a scenario fault."""
    kind = agent_kind(f)
    if kind is None:
        return None
    sev = Severity.DEGRADED if f.kind == "node-degraded" else Severity.FATAL
    if kind == fk.XID:  # the daemon names it from its XID catalogue (and may re-classify it)
        return Fault(kind, sev, "", f.gpu, f.xid or DEFAULT_XID, f.cause)
    detail = f.label[len(kind) + 1 :].strip() if f.label.startswith(kind + ":") else f.label
    return Fault(kind, sev, detail or kind, f.gpu, None, f.cause)


class Agents:
    """The agents of the simulated nodes, as far as the node health tracker can tell."""

    def __init__(self, tracker: NodeHealthTracker, heartbeat_interval_s: float) -> None:
        self.tracker = tracker
        self.interval_s = heartbeat_interval_s
        self.known: set[str] = set()  # nodes the tracker has heard from
        self.up: set[str] = set()  # known nodes whose agent runs (and heartbeats)
        self._seq = 0

    def hello(self, node: str, now: float) -> list[Observation]:
        """The first heartbeat of a node the tracker has not heard from yet."""
        if node in self.known:
            return []
        self.known.add(node)
        self.up.add(node)
        return self.tracker.on_heartbeat(node, now, self.interval_s)

    def heartbeats(self, now: float) -> list[Observation]:
        """Every running agent's latest heartbeat (sent within the last interval)."""
        out: list[Observation] = []
        for node in self.up:
            out += self.tracker.on_heartbeat(node, now, self.interval_s)
        return out

    def fault_event(self, node: str, fault: Fault, now: float) -> list[Observation]:
        """A FaultReport: faults that arrive as events (XIDs, GPU lost), published at once."""
        if node not in self.up:
            return []
        return self.tracker.on_faults(node, [fault], now)

    def report(self, node: str, faults: list[Fault], now: float) -> list[Observation]:
        """A periodic health report showing ``faults`` (the node's current ones)."""
        if node not in self.up:
            return []
        by_probe: dict[str, list[Fault]] = {p: [] for p in BASE_PROBES}
        for f in faults:
            by_probe.setdefault(probe_of(f.kind, f.cause), []).append(f)
        probes = []
        for name, found in by_probe.items():
            health = Health.HEALTHY
            if any(f.severity is Severity.FATAL for f in found):
                health = Health.UNHEALTHY
            elif found:
                health = Health.DEGRADED
            probes.append(
                ProbeReport(
                    probe=name,
                    health=health,
                    reason="; ".join(f.detail or f.kind for f in found) or "ok",
                    faults=[FaultModel.of(f) for f in found],
                )
            )
        self._seq += 1
        msg = HealthReport(
            node=node,
            ts=now,
            seq=self._seq,
            overall=worst([p.health for p in probes]),
            probes=probes,
        )
        return self.tracker.on_health(node, msg, now)

    def die(self, node: str, now: float) -> list[Observation]:
        """The node stops: its last heartbeat is now, then silence."""
        out = self.hello(node, now)
        if node in self.up:
            out += self.tracker.on_heartbeat(node, now, self.interval_s)
            self.up.discard(node)
        return out

    def will(self, node: str, now: float) -> list[Observation]:
        """The broker publishes the dead agent's last will (if it is still down)."""
        if node in self.up:
            return []
        return self.tracker.on_status(node, "offline", "connection lost", now)

    def stop(self, node: str, now: float) -> list[Observation]:
        """A graceful stop (a reboot for a repair): not a node failure."""
        out = self.hello(node, now)
        self.up.discard(node)
        return out + self.tracker.on_status(node, "offline", "agent stopped", now)

    def start(self, node: str, now: float) -> list[Observation]:
        """The agent runs again (after a reboot or a death): heartbeats resume."""
        if node not in self.known:
            return self.hello(node, now)
        self.up.add(node)
        return self.tracker.on_heartbeat(node, now, self.interval_s)
