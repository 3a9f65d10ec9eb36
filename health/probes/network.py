"""Interconnect probe: InfiniBand, Slingshot CXI and Ethernet from sysfs.

Where the values come from:
- InfiniBand: ``class/infiniband/<hca>/ports/<n>/{state,phys_state,rate}`` and the
  port counters in ``.../counters/`` (symbol_error, link_downed, link_error_recovery,
  port_rcv_errors, ...), as the ib_core driver exposes them.
- Slingshot: the HPE ``cxi`` driver registers ``class/cxi/<dev>``; we read
  ``<dev>/device/port/link`` (``up``/``down``) when present, and any integer files
  under ``<dev>/device/port/`` whose name ends in ``errors``/``_err`` as counters. The
  driver's attribute set varies between releases and has not been checked against a
  real Slingshot node here: absent files are simply not evaluated. The Slingshot
  Ethernet netdevs (``hsn*``) are covered by the Ethernet part.
- Ethernet: ``class/net/<if>/{flags,operstate,carrier,carrier_changes}`` and
  ``statistics/{rx_errors,tx_errors}`` for interfaces backed by a device (virtual ones
  such as ``lo`` or bridges have no ``device`` link and are skipped).

Counters are judged as rates between two samples; the probe keeps the previous one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from trainwarden.health import faults as fk
from trainwarden.health.clock import Clock, SystemClock
from trainwarden.health.probes.base import CheckResult, Fault, Severity, Value
from trainwarden.health.probes.util import fold, read_int, read_text

IB_ERROR_COUNTERS = (
    "symbol_error",
    "link_error_recovery",
    "port_rcv_errors",
    "port_rcv_remote_physical_errors",
    "local_link_integrity_errors",
    "excessive_buffer_overrun_errors",
    "port_xmit_discards",
)
IB_COUNTERS = ("link_downed", *IB_ERROR_COUNTERS)
ETH_LINK_FLAP = "eth-link-flap"
ETH_ERRORS = "eth-errors"
IFF_UP = 0x1


@dataclass(frozen=True)
class Link:
    """One port or interface: its kind, state and cumulative counters."""

    kind: str  # "ib", "cxi", "eth"
    name: str  # mlx5_0/1, cxi0, eth0
    up: bool
    state: str
    counters: dict[str, int] = field(default_factory=dict)
    rate: str = ""
    admin_up: bool = True


@dataclass(frozen=True)
class NetSample:
    at: float
    links: tuple[Link, ...]


@dataclass(frozen=True)
class NetThresholds:
    error_rate_per_s: float = 1.0  # summed error counters, per second
    # The shared fabric component this node's links hang off (its leaf switch, rack or
    # Slingshot group), from the site's topology. Link faults carry it as their cause, so
    # several nodes losing links behind one switch are seen as one incident; without it a
    # link fault is the node's own (three unrelated link-downs are not a fabric outage).
    fabric_domain: str | None = None

    @property
    def cause(self) -> str | None:
        return f"fabric:{self.fabric_domain}" if self.fabric_domain else None


def parse_ib_state(text: str | None) -> tuple[bool, str]:
    """``4: ACTIVE`` -> (True, "ACTIVE"); anything else is not up."""
    if not text:
        return False, "unreadable"
    m = re.match(r"\s*(\d+)\s*:\s*(\S+)", text)
    name = m.group(2) if m else text.strip()
    return name.upper() == "ACTIVE", name


def read_ib(sysfs: Path) -> list[Link]:
    links = []
    base = sysfs / "class" / "infiniband"
    for hca in sorted(base.glob("*")):
        for port in sorted((hca / "ports").glob("*")):
            up, state = parse_ib_state(read_text(port / "state"))
            phys = read_text(port / "phys_state") or ""
            counters = {}
            for c in IB_COUNTERS:
                v = read_int(port / "counters" / c)
                if v is not None:
                    counters[c] = v
            links.append(
                Link(
                    "ib",
                    f"{hca.name}/{port.name}",
                    up,
                    f"{state} ({phys})",
                    counters,
                    read_text(port / "rate") or "",
                )
            )
    return links


def read_cxi(sysfs: Path) -> list[Link]:
    links = []
    for dev in sorted((sysfs / "class" / "cxi").glob("*")):
        port = dev / "device" / "port"
        state = read_text(port / "link")
        counters = {}
        if port.is_dir():
            for f in sorted(port.iterdir()):
                if f.name.endswith(("errors", "_err")):
                    v = read_int(f)
                    if v is not None:
                        counters[f.name] = v
        up = state is None or state.lower() == "up"
        links.append(
            Link(
                "cxi",
                dev.name,
                up,
                state or "not exposed",
                counters,
                read_text(port / "speed") or "",
            )
        )
    return links


def read_eth(sysfs: Path) -> list[Link]:
    links = []
    for iface in sorted((sysfs / "class" / "net").glob("*")):
        if not (iface / "device").exists():
            continue
        flags = read_int(iface / "flags") or 0
        carrier = read_int(iface / "carrier")
        counters = {}
        for name, path in (
            ("carrier_changes", iface / "carrier_changes"),
            ("rx_errors", iface / "statistics" / "rx_errors"),
            ("tx_errors", iface / "statistics" / "tx_errors"),
        ):
            v = read_int(path)
            if v is not None:
                counters[name] = v
        links.append(
            Link(
                "eth",
                iface.name,
                carrier == 1,
                read_text(iface / "operstate") or "unknown",
                counters,
                admin_up=bool(flags & IFF_UP),
            )
        )
    return links


def _delta(prev: Link | None, cur: Link, names: tuple[str, ...] | None = None) -> int:
    if prev is None:
        return 0
    keys = names if names is not None else tuple(cur.counters)
    total = 0
    for k in keys:
        if k in cur.counters and k in prev.counters:
            total += max(0, cur.counters[k] - prev.counters[k])
    return total


def evaluate_links(prev: NetSample | None, cur: NetSample, t: NetThresholds) -> CheckResult:
    """Pure: link states now, and counter rates since ``prev`` when there is one."""
    faults: list[Fault] = []
    values: dict[str, Value] = {}
    before = {(link.kind, link.name): link for link in prev.links} if prev else {}
    dt = (cur.at - prev.at) if prev else 0.0
    for link in cur.links:
        key = f"{link.kind}_{link.name.replace('/', '_')}"
        values[key + "_up"] = link.up
        values[key + "_state"] = link.state
        for c, v in link.counters.items():
            values[f"{key}_{c}"] = v
        old = before.get((link.kind, link.name))
        if link.kind == "ib":
            if not link.up:
                faults.append(
                    Fault(
                        fk.IB_LINK_DOWN,
                        Severity.FATAL,
                        f"InfiniBand {link.name} is {link.state}",
                        cause=t.cause,
                    )
                )
            flaps = _delta(old, link, ("link_downed",))
            if flaps:
                faults.append(
                    Fault(
                        fk.IB_LINK_FLAP,
                        Severity.DEGRADED,
                        f"InfiniBand {link.name} went down {flaps} times in {dt:.3g} s",
                        cause=t.cause,
                    )
                )
            errors = _delta(old, link, IB_ERROR_COUNTERS)
        elif link.kind == "cxi":
            if not link.up:
                faults.append(
                    Fault(
                        fk.CXI_LINK_DOWN,
                        Severity.FATAL,
                        f"Slingshot {link.name} link is {link.state}",
                        cause=t.cause,
                    )
                )
            errors = _delta(old, link)
        else:
            if link.admin_up and not link.up:
                faults.append(
                    Fault(
                        fk.ETH_LINK_DOWN,
                        Severity.DEGRADED,
                        f"Ethernet {link.name} is up but has no carrier",
                    )
                )
            flaps = _delta(old, link, ("carrier_changes",))
            if flaps:
                faults.append(
                    Fault(
                        ETH_LINK_FLAP,
                        Severity.DEGRADED,
                        f"Ethernet {link.name} carrier changed {flaps} times",
                    )
                )
            errors = _delta(old, link, ("rx_errors", "tx_errors"))
        if dt > 0 and errors / dt > t.error_rate_per_s:
            kind = fk.IB_ERRORS if link.kind == "ib" else ETH_ERRORS
            faults.append(
                Fault(
                    kind,
                    Severity.DEGRADED,
                    f"{link.name}: {errors / dt:.1f} errors/s (limit {t.error_rate_per_s}/s)",
                )
            )
        if dt > 0:
            values[key + "_errors_per_s"] = round(errors / dt, 3)
    values["links"] = len(cur.links)
    names = ", ".join(f"{link.kind} {link.name}" for link in cur.links)
    ok = f"links up: {names}" if cur.links else "no fabric or Ethernet device found"
    return fold("network", faults, values, ok)


@dataclass(eq=False)
class NetworkProbe:
    sysfs_root: Path
    thresholds: NetThresholds = field(default_factory=NetThresholds)
    clock: Clock = field(default_factory=SystemClock)
    _prev: NetSample | None = None

    # Judges counters between two checks: vetting takes a baseline first.
    uses_rates = True

    @property
    def name(self) -> str:
        return "network"

    def sample(self) -> NetSample:
        links = read_ib(self.sysfs_root) + read_cxi(self.sysfs_root) + read_eth(self.sysfs_root)
        return NetSample(self.clock.monotonic(), tuple(links))

    def check(self) -> CheckResult:
        cur = self.sample()
        result = evaluate_links(self._prev, cur, self.thresholds)
        self._prev = cur
        return result
