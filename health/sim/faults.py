"""The faults a simulated node can suffer, by name, and what each does to its state.

Persistent faults stay until cleared (a link down, a full disk); event faults happen
once (an XID, an OOM kill, a link flap) and leave their trace in the kernel log, the
NVML event stream or the counters. GPU faults take an optional ``@<gpu>`` (default 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainwarden.health.errors import HealthError
from trainwarden.health.sim import state as st

XID_DETAILS = {
    79: "GPU has fallen off the bus.",
    48: "An uncorrectable double bit error (DBE) has been detected on GPU.",
    13: "Graphics Exception: ESR 0x404600=0x80000001",
    31: "MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f1e_2a000000.",
    94: "Contained: SM (0x1). RST: No, D-RST: No",
    95: "Uncontained: FBHUB. RST: Yes, D-RST: No",
}

# name -> (persistent, gpu-scoped, description)
FAULTS: dict[str, tuple[bool, bool, str]] = {
    "xid:<code>": (False, True, "an XID in the kernel log and as an NVML event"),
    "gpu-lost": (True, True, "a GPU falls off the bus (NVML: GPU is lost)"),
    "gpu-missing": (True, True, "a GPU is not enumerated (fewer GPUs than expected)"),
    "ecc-dbe": (True, True, "uncorrectable (double-bit) ECC errors"),
    "row-remap-failure": (True, True, "row remapping failed (needs RMA)"),
    "row-remap-pending": (True, True, "row remapping pending (needs a GPU reset)"),
    "nvlink-down": (True, True, "an NVLink link inactive"),
    "nvlink-errors": (False, True, "burst of NVLink replay/recovery errors (+10000)"),
    "pcie-degraded": (True, True, "PCIe link trained at x8 of x16"),
    "thermal-throttle": (True, True, "GPU above its slowdown temperature, HW thermal throttle"),
    "power-brake": (True, True, "hardware power brake engaged"),
    "gpu-mem-held": (True, True, "38 GiB of GPU memory held with no process"),
    "nvml-unavailable": (True, False, "NVML cannot be loaded (driver gone)"),
    "ib-link-down": (True, False, "InfiniBand port DOWN"),
    "ib-link-flap": (False, False, "InfiniBand port went down and up (link_downed += 2)"),
    "ib-errors": (False, False, "burst of InfiniBand symbol errors"),
    "cxi-link-down": (True, False, "Slingshot CXI link down (fabric='slingshot' nodes)"),
    "eth-link-down": (True, False, "eth0 administratively up without carrier"),
    "storage-hang": (True, False, "shared filesystem hangs (a real blocking call)"),
    "storage-slow": (True, False, "shared filesystem round trip slower than the limit"),
    "storage-full": (True, False, "shared filesystem 0.5 % free"),
    "host-oom": (False, False, "the OOM killer kills a process (kernel log)"),
    "host-mce": (False, False, "a machine check is logged (kernel log)"),
    "host-memory-low": (True, False, "1 % of host memory available"),
    "host-d-state": (True, False, "24 processes stuck in D state"),
}


def fault_names() -> list[str]:
    """Every injectable fault name (``xid:<code>`` stands for any XID code)."""
    return list(FAULTS)


@dataclass(frozen=True)
class FaultSpec:
    name: str  # as stored in state.active, e.g. "ecc-dbe@2"
    base: str  # "ecc-dbe", "xid"
    gpu: int | None
    code: int | None


def parse_fault(text: str) -> FaultSpec:
    """Validate a fault name; an unknown one is a HealthError naming the valid ones."""
    raw = text.strip()
    head, at, gpu_text = raw.partition("@")
    code = None
    key = head
    if head.startswith("xid:"):
        try:
            code = int(head[4:])
        except ValueError:
            raise HealthError(f"bad XID fault {text!r}: expected xid:<code>, e.g. xid:79") from None
        if not 0 < code < 1000:
            raise HealthError(f"bad XID fault {text!r}: the code must be 1..999")
        key = "xid:<code>"
    if key not in FAULTS:
        raise HealthError(f"unknown fault {text!r}; valid faults: {', '.join(FAULTS)}")
    gpu = None
    if at:
        if not FAULTS[key][1]:
            raise HealthError(f"fault {head!r} does not take a GPU (@{gpu_text})")
        if not gpu_text.isdigit():
            raise HealthError(f"bad GPU in fault {text!r}: expected {head}@<index>")
        gpu = int(gpu_text)
    base = "xid" if code is not None else head
    name = head if gpu is None else f"{head}@{gpu}"
    return FaultSpec(name, base, gpu, code)


def apply_fault(state_dir: Path, state: st.SimState, text: str) -> None:
    spec = parse_fault(text)
    if spec.gpu is not None and spec.gpu >= state.gpus:
        raise HealthError(f"fault {text!r}: this simulated node has GPUs 0..{state.gpus - 1}")
    if spec.base == "cxi-link-down" and state.fabric != "slingshot":
        raise HealthError("cxi-link-down needs a simulated node with fabric='slingshot'")
    if spec.base == "ib-link-down" and state.fabric != "ib":
        raise HealthError("ib-link-down needs a simulated node with fabric='ib'")
    c = state.counters
    if spec.base == "xid":
        assert spec.code is not None
        gpu = spec.gpu or 0
        pci = st.pci_of(gpu)
        detail = XID_DETAILS.get(spec.code, "simulated")
        st.append(
            state_dir / "kmsg",
            st.kmsg_line(
                state, f"NVRM: Xid (PCI:{pci}): {spec.code}, pid=4242, name=python, {detail}"
            ),
        )
        st.append(
            state_dir / "xid-events.jsonl", json.dumps({"code": spec.code, "gpu": gpu, "pci": pci})
        )
    elif spec.base == "ib-link-flap":
        c["link_downed"] = c.get("link_downed", 0) + 2
        c["link_error_recovery"] = c.get("link_error_recovery", 0) + 2
        st.append(
            state_dir / "kmsg",
            st.kmsg_line(
                state, "mlx5_core 0000:c1:00.0: mlx5_port_module_event: Link down, then up"
            ),
        )
    elif spec.base == "nvlink-errors":
        key = f"nvlink_errors@{spec.gpu or 0}"
        c[key] = c.get(key, 0) + 10_000
    elif spec.base == "ib-errors":
        c["symbol_error"] = c.get("symbol_error", 0) + 50_000
    elif spec.base == "host-oom":
        st.append(
            state_dir / "kmsg",
            st.kmsg_line(
                state,
                "Out of memory: Killed process 4242 (python) total-vm:812345678kB, "
                "anon-rss:501234567kB, file-rss:0kB, shmem-rss:0kB, UID:1000",
            ),
        )
    elif spec.base == "host-mce":
        st.append(
            state_dir / "kmsg",
            st.kmsg_line(state, "mce: [Hardware Error]: Machine check events logged"),
        )
    elif spec.name not in state.active:
        state.active.append(spec.name)


def clear_fault(state: st.SimState, text: str | None) -> None:
    """Remove a persistent fault (all of them with ``None``); events cannot be undone."""
    if text is None:
        state.active.clear()
        return
    spec = parse_fault(text)
    if spec.gpu is None and FAULTS.get(spec.base, (False, False, ""))[1]:
        state.active[:] = [a for a in state.active if a.partition("@")[0] != spec.base]
    else:
        state.active[:] = [a for a in state.active if a != spec.name]
