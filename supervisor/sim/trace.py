"""Replaying the InfiniteHBD fault trace onto a simulated cluster of any size.

The trace (package data ``data/infinitehbd/``, Apache-2.0) covers 400 servers for ~348 days.
A cluster of N nodes for D days is tiled from it: node i replays server ``i mod 400`` in
window ``(i div 400 + offset) mod W`` of D days (W = windows that fit in the trace), so the
real fault rate (0.0042 per node-day), the fault mix, repair times and the simultaneous
faults of the trace are preserved. Faults that began before a window are left out.
Each (class, description) maps to the fault a trainwarden agent would report.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from supervisor.sim.scenario import FaultSpec

TRACE_SERVERS = 400  # the trace's population; 231 of them had faults
TRACE_DAYS = 349.0  # last fault starts on day 348.6

# (class, description) -> (sim fault kind, run effect, slowdown); class-only keys are fallbacks.
_MAP: dict[tuple[str, str], tuple[str, str, float]] = {
    ("GPU", "GPU P2P Bandwidth Low"): ("straggler", "slow", 1.10),
    ("GPU", "GPU PCI link width low"): ("straggler", "slow", 1.10),
    ("GPU", "GPU Temperature High"): ("straggler", "slow", 1.10),
    ("GPU", "GPU SBE(Single Bit ECC) > Threshold"): ("node-degraded", "none", 1.0),
    ("GPU", ""): ("gpu-fatal", "crash", 1.0),
    ("Fan", ""): ("node-degraded", "none", 1.0),
    ("Power Supply", "Redundancy Lost"): ("node-degraded", "none", 1.0),
    ("Power Supply", ""): ("node-dead", "crash", 1.0),
    ("CPU", "Configuration Error"): ("node-unhealthy", "none", 1.0),
    ("CPU", ""): ("node-dead", "crash", 1.0),
    ("Motherboard", ""): ("node-dead", "crash", 1.0),
    ("Riser Card", ""): ("node-dead", "crash", 1.0),
    ("Motherboard Battery", ""): ("node-degraded", "none", 1.0),
    ("RAID Card", ""): ("node-degraded", "none", 1.0),
    ("NIC", "NIC Link Speed low"): ("straggler", "slow", 1.10),
    ("NIC", "NIC PCI link Width low"): ("straggler", "slow", 1.10),
    ("NIC", ""): ("node-unhealthy", "crash", 1.0),
    ("Parameter Plane Cable", ""): ("node-unhealthy", "crash", 1.0),
    ("System Crash", ""): ("node-dead", "crash", 1.0),
    ("Operating System", ""): ("node-dead", "crash", 1.0),
    ("Stress Test Failure", ""): ("node-unhealthy", "none", 1.0),
    ("Test", ""): ("node-unhealthy", "none", 1.0),
    ("Software Tool", ""): ("node-unhealthy", "none", 1.0),
    ("Firmware", ""): ("node-unhealthy", "none", 1.0),
    ("Change", ""): ("node-unhealthy", "crash", 1.0),
    ("Training Task Troubleshooting", ""): ("node-unhealthy", "crash", 1.0),
    ("File System", ""): ("node-unhealthy", "crash", 1.0),
    ("Other Failures", ""): ("node-unhealthy", "crash", 1.0),
    ("Unknown Error", ""): ("node-unhealthy", "crash", 1.0),
}


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
        resources.files("supervisor.sim")
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


def classify(cls: str, desc: str) -> tuple[str, str, float]:
    return _MAP.get((cls, desc)) or _MAP.get((cls, "")) or ("node-unhealthy", "crash", 1.0)


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
            kind, effect, slow = classify(f.cls, f.desc)
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
                )
            )
    out.sort(key=lambda s: s.at_s)
    return out
