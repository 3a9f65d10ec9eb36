"""Replaying the InfiniteHBD fault trace onto a simulated cluster of any size.

The trace (package data ``data/infinitehbd/``, Apache-2.0) covers 400 servers for ~348 days.
A cluster of N nodes for D days is tiled from it: node i replays server ``i mod 400`` in
window ``(i div 400 + offset) mod W`` of D days (W = windows that fit in the trace), so the
real fault rate (0.0042 per node-day), the fault mix, repair times and the simultaneous
faults of the trace are preserved. Faults that began before a window are left out.
Each (class, description) maps to a simulated fault and what a trainwarden agent would
report about it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from trainwarden.health import faults as fk
from trainwarden.supervisor.sim.scenario import FaultSpec

TRACE_SERVERS = 400  # the trace's population; 231 of them had faults
TRACE_DAYS = 349.0  # last fault starts on day 348.6

# (class, description) -> (sim fault kind, run effect, slowdown, what the agent reports);
# class-only keys are fallbacks. The agent's fault kind (health.faults) is the closest one its
# probes have: fan and power-supply findings show as GPU throttling, BMC-only findings
# (battery, RAID) and faults the trace does not classify as host-mce (an assumption).
_MAP: dict[tuple[str, str], tuple[str, str, float, str | None]] = {
    ("GPU", "GPU P2P Bandwidth Low"): ("straggler", "slow", 1.10, None),
    ("GPU", "GPU PCI link width low"): ("straggler", "slow", 1.10, None),
    ("GPU", "GPU Temperature High"): ("straggler", "slow", 1.10, None),
    ("GPU", "GPU SBE(Single Bit ECC) > Threshold"): (
        "node-degraded",
        "none",
        1.0,
        fk.ROW_REMAP_PENDING,
    ),
    ("GPU", "GPU DBE(Double Bit ECC) > Threshold"): ("gpu-fatal", "crash", 1.0, fk.ECC_DBE),
    ("GPU", "GPU Lost"): ("gpu-fatal", "crash", 1.0, fk.GPU_LOST),
    ("GPU", "nvidia-smi Timeout"): ("gpu-fatal", "crash", 1.0, fk.GPU_LOST),
    ("GPU", "GPU device not found"): ("gpu-fatal", "crash", 1.0, fk.GPU_MISSING),
    ("GPU", ""): ("gpu-fatal", "crash", 1.0, fk.XID),
    ("Fan", ""): ("node-degraded", "none", 1.0, fk.THERMAL_THROTTLE),
    ("Power Supply", "Redundancy Lost"): ("node-degraded", "none", 1.0, fk.POWER_THROTTLE),
    ("Power Supply", ""): ("node-dead", "crash", 1.0, None),
    ("CPU", "Configuration Error"): ("node-unhealthy", "none", 1.0, fk.HOST_MCE),
    ("CPU", ""): ("node-dead", "crash", 1.0, None),
    ("Motherboard", ""): ("node-dead", "crash", 1.0, None),
    ("Riser Card", ""): ("node-dead", "crash", 1.0, None),
    ("Motherboard Battery", ""): ("node-degraded", "none", 1.0, fk.HOST_MCE),
    ("RAID Card", ""): ("node-degraded", "none", 1.0, fk.HOST_MCE),
    ("NIC", "NIC Link Speed low"): ("straggler", "slow", 1.10, None),
    ("NIC", "NIC PCI link Width low"): ("straggler", "slow", 1.10, None),
    ("NIC", ""): ("node-unhealthy", "crash", 1.0, fk.IB_LINK_DOWN),
    ("Parameter Plane Cable", ""): ("node-unhealthy", "crash", 1.0, fk.IB_LINK_DOWN),
    ("System Crash", ""): ("node-dead", "crash", 1.0, None),
    ("Operating System", ""): ("node-dead", "crash", 1.0, None),
    ("Stress Test Failure", ""): ("node-unhealthy", "none", 1.0, fk.HOST_MCE),
    ("Test", ""): ("node-unhealthy", "none", 1.0, fk.HOST_MCE),
    ("Software Tool", ""): ("node-unhealthy", "none", 1.0, fk.HOST_MCE),
    ("Firmware", ""): ("node-unhealthy", "none", 1.0, fk.HOST_MCE),
    ("Change", ""): ("node-unhealthy", "crash", 1.0, fk.IB_LINK_DOWN),
    ("Training Task Troubleshooting", ""): ("node-unhealthy", "crash", 1.0, fk.HOST_MCE),
    ("File System", ""): ("node-unhealthy", "crash", 1.0, fk.STORAGE_UNMOUNTED),
    ("Other Failures", ""): ("node-unhealthy", "crash", 1.0, fk.HOST_MCE),
    ("Unknown Error", ""): ("node-unhealthy", "crash", 1.0, fk.HOST_MCE),
}
# A node that dies outright (power, mainboard, kernel panic) closes no connection: its
# heartbeats stop, and the broker publishes the last will only after 1.5 x the agent's
# MQTT keepalive (10 s, health/agent.py), by when the tracker has missed its heartbeats.
SILENT_WILL_S = 15.0


@dataclass(frozen=True)
class TraceFault:
    server: str
    start_day: float
    end_day: float
    level: str
    cls: str
    desc: str


@lru_cache(maxsize=1)
def load_trace() -> tuple[TraceFault, ...]:
    text = (
        resources.files("trainwarden.supervisor.sim")
        .joinpath("data/infinitehbd/fault_intervals.csv")
        .read_text()
    )
    return tuple(
        TraceFault(
            r["node_id"],
            float(r["start_day"]),
            float(r["end_day"]),
            r["level"],
            r["class"],
            r["desc"],
        )
        for r in csv.DictReader(text.splitlines())
    )


def classify(cls: str, desc: str) -> tuple[str, str, float, str | None]:
    return (
        _MAP.get((cls, desc))
        or _MAP.get((cls, ""))
        or ("node-unhealthy", "crash", 1.0, fk.HOST_MCE)
    )


def replay(node_names: list[str], days: float, offset_days: float = 0.0) -> list[FaultSpec]:
    """Faults for ``node_names`` over ``days`` days, tiled from the trace (see module doc)."""
    trace = load_trace()
    servers = sorted({f.server for f in trace})
    servers += [f"quiet-{i}" for i in range(TRACE_SERVERS - len(servers))]
    by_server: dict[str, list[TraceFault]] = {}
    for f in trace:
        by_server.setdefault(f.server, []).append(f)
    windows = max(1, int(TRACE_DAYS // days))
    out: list[FaultSpec] = []
    for i, node in enumerate(node_names):
        server = servers[i % TRACE_SERVERS]
        w0 = ((i // TRACE_SERVERS) * days + offset_days) % (windows * days)
        for f in by_server.get(server, ()):
            if not w0 <= f.start_day < w0 + days:
                continue
            kind, effect, slow, agent = classify(f.cls, f.desc)
            out.append(
                FaultSpec(
                    (f.start_day - w0) * 86400.0,
                    kind,
                    (node,),
                    None,
                    (f.end_day - f.start_day) * 86400.0,
                    effect,
                    slow,
                    label=f"InfiniteHBD {f.level}/{f.cls}/{f.desc} (server {server[:8]})",
                    agent_fault=agent,
                    will_after_s=SILENT_WILL_S if kind == "node-dead" else None,
                )
            )
    out.sort(key=lambda s: s.at_s)
    return out
