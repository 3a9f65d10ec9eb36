"""Writes the simulated node's sysfs and procfs trees from its state (active faults, counters).

The trees look like the real ones (same paths, same value formats), so the real
reading and parsing code of the probes runs against them unchanged.
"""

from __future__ import annotations

from pathlib import Path

from trainwarden.health.sim.state import SimState, atomic_write

GIB_KB = 1024 * 1024  # meminfo is in kB
IB_HCA = "mlx5_0"
CPUS = 64


def _put(root: Path, rel: str, value: object) -> None:
    atomic_write(root / rel, f"{value}\n")


def _has(state: SimState, name: str) -> bool:
    return any(a == name or a.startswith(name + "@") for a in state.active)


def storage_dir(state_dir: Path) -> Path:
    return state_dir / "mnt" / "lustre"


def write_sysfs(state_dir: Path, state: SimState) -> None:
    sys = state_dir / "sys"
    c = state.counters
    if state.fabric == "ib":
        port = f"class/infiniband/{IB_HCA}/ports/1"
        down = _has(state, "ib-link-down")
        _put(sys, f"{port}/state", "1: DOWN" if down else "4: ACTIVE")
        _put(sys, f"{port}/phys_state", "3: Disabled" if down else "5: LinkUp")
        _put(sys, f"{port}/rate", "400 Gb/sec (4X NDR)")
        for name in (
            "symbol_error",
            "link_error_recovery",
            "port_rcv_errors",
            "port_rcv_remote_physical_errors",
            "local_link_integrity_errors",
            "excessive_buffer_overrun_errors",
            "port_xmit_discards",
            "link_downed",
        ):
            _put(sys, f"{port}/counters/{name}", c.get(name, 0))
    else:
        cxi = "class/cxi/cxi0/device/port"
        _put(sys, f"{cxi}/link", "down" if _has(state, "cxi-link-down") else "up")
        _put(sys, f"{cxi}/speed", "BS_200G")
        _put(sys, f"{cxi}/pcs_errors", c.get("cxi_errors", 0))
    nics = ["eth0"] if state.fabric == "ib" else ["eth0", "hsn0"]
    for nic in nics:
        net = f"class/net/{nic}"
        (sys / net / "device").mkdir(parents=True, exist_ok=True)
        down = nic == "eth0" and _has(state, "eth-link-down")
        _put(sys, f"{net}/flags", "0x1003")
        _put(sys, f"{net}/carrier", 0 if down else 1)
        _put(sys, f"{net}/operstate", "down" if down else "up")
        _put(sys, f"{net}/carrier_changes", c.get(f"{nic}_carrier_changes", 2))
        _put(sys, f"{net}/statistics/rx_errors", 0)
        _put(sys, f"{net}/statistics/tx_errors", 0)
    # A virtual interface the probe must skip (no device link).
    _put(sys, "class/net/lo/carrier", 1)
    _put(sys, "class/net/lo/flags", "0x9")


def write_procfs(state_dir: Path, state: SimState) -> None:
    proc = state_dir / "proc"
    total = 512 * GIB_KB
    avail = total // 100 if _has(state, "host-memory-low") else 400 * GIB_KB
    atomic_write(
        proc / "meminfo",
        (
            f"MemTotal:       {total} kB\nMemFree:        {avail // 2} kB\n"
            f"MemAvailable:   {avail} kB\nSwapTotal:      0 kB\nSwapFree:       0 kB\n"
        ),
    )
    atomic_write(proc / "loadavg", "3.20 2.90 2.50 2/1234 5678\n")
    atomic_write(
        proc / "stat", "cpu  1 2 3 4\n" + "".join(f"cpu{i} 1 2 3 4\n" for i in range(CPUS))
    )
    d_state = 24 if _has(state, "host-d-state") else 0
    wanted = {1: "(systemd) S", 2: "(kthreadd) S", 4242: "(python train.py) R"}
    for i in range(d_state):
        wanted[5000 + i] = "(lustre_io) D"
    for pid_dir in proc.glob("[0-9]*"):
        if int(pid_dir.name) not in wanted:
            (pid_dir / "stat").unlink(missing_ok=True)
            pid_dir.rmdir()
    for pid, comm_state in wanted.items():
        atomic_write(proc / str(pid) / "stat", f"{pid} {comm_state} 0 {pid} {pid} 0 -1\n")
    lustre = storage_dir(state_dir)
    atomic_write(
        proc / "self" / "mountinfo",
        (
            "22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw\n"
            f"98 22 0:52 / {lustre} rw,relatime shared:40 - lustre 10.1.0.1@o2ib:/capstor "
            "rw,flock,lazystatfs\n"
        ),
    )


def render(state_dir: Path, state: SimState) -> None:
    write_sysfs(state_dir, state)
    write_procfs(state_dir, state)
    storage_dir(state_dir).mkdir(parents=True, exist_ok=True)
