"""``trainwarden vet``: check this node once (every probe plus short active checks).

Exit codes: 0 ok, 1 warning, 2 critical, 3 unknown -- usable as Slurm
``HealthCheckProgram``, in a prolog, in a job, and by the supervisor before a node is
resumed. ``--simulate FAULT`` runs against simulated hardware with the fault injected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from trainwarden.health.cli.hw import run_list
from trainwarden.health.errors import HealthError
from trainwarden.health.hardware import Hardware
from trainwarden.health.probes.registry import ProbeConfig, real_hardware
from trainwarden.health.sim.faults import parse_fault
from trainwarden.health.sim.hardware import SimulatedHardware
from trainwarden.health.vet import vet


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "vet",
        help="check this node once; exit 0 ok / 1 warning / 2 critical / 3 unknown",
        description="Run every health probe once plus short active checks (GPU memory and "
        "matmul, storage round trip, fabric counters over a short window) and "
        "print one line per check. Exit 0 ok, 1 warning, 2 critical, 3 unknown.",
    )
    p.add_argument(
        "--expect-gpus", type=int, metavar="N", help="GPUs this node must have (fewer is critical)"
    )
    p.add_argument(
        "--storage",
        action="append",
        default=[],
        metavar="PATH",
        help="filesystem to check (repeatable; default: /tmp, or the simulated mount)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="time limit of each check (default: %(default)s)",
    )
    p.add_argument(
        "--window",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds over which fabric counters are watched (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--list-faults",
        action="store_true",
        help="list the fault names --simulate accepts, and exit",
    )
    p.add_argument(
        "--simulate",
        action="append",
        default=[],
        metavar="FAULT",
        help="run against simulated hardware with FAULT injected (repeatable; "
        "see `trainwarden hw list`)",
    )
    p.add_argument(
        "--sim-gpus",
        type=int,
        default=4,
        metavar="N",
        help="GPUs of the simulated node (default: %(default)s)",
    )
    p.add_argument(
        "--sim-fabric",
        choices=("ib", "slingshot"),
        default="ib",
        help="interconnect of the simulated node (default: %(default)s)",
    )
    p.add_argument("--sysfs-root", default="/sys", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--procfs-root", default="/proc", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument(
        "--kmsg", metavar="PATH", help="kernel log to read (default: /dev/kmsg when readable)"
    )
    p.add_argument(
        "--since-boot",
        action="store_true",
        help="count XIDs, OOM kills and machine checks logged since boot "
        "(default: only what the kernel logs during the check)",
    )
    p.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="PROBE",
        help="skip a probe: gpu, network, storage, host (repeatable)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_faults:
        return run_list(argparse.Namespace(state_dir=None, json=args.json))
    if args.timeout <= 0:
        raise HealthError(f"--timeout must be positive, not {args.timeout}")
    if args.window < 0:
        raise HealthError(f"--window must be 0 or more, not {args.window}")
    if args.expect_gpus is not None and args.expect_gpus < 0:
        raise HealthError(f"--expect-gpus must be 0 or more, not {args.expect_gpus}")
    for fault in args.simulate:
        parse_fault(fault)  # a clear error before anything is built
    enabled = ("*", *(f"-{name}" for name in args.disable))
    sim: SimulatedHardware | None = None
    expected = args.expect_gpus
    if args.simulate:
        sim = SimulatedHardware("sim-node", gpus=args.sim_gpus, fabric=args.sim_fabric)
        if expected is None:
            expected = args.sim_gpus
    config = ProbeConfig(
        expected_gpus=expected,
        storage_paths=tuple(args.storage),
        sysfs_root=args.sysfs_root,
        procfs_root=args.procfs_root,
        kmsg_path=args.kmsg,
        timeout_s=args.timeout,
        enabled=enabled,
        kmsg_from_start=args.since_boot,
    )
    config.is_enabled("gpu")  # validates --disable names
    hardware: Hardware = sim if sim is not None else real_hardware(config)

    def inject() -> None:
        if sim is not None:
            for fault in args.simulate:
                sim.inject(fault)

    try:
        report = asyncio.run(vet(config, hardware, window_s=args.window, after_baseline=inject))
    finally:
        if sim is not None:
            sim.close()
    if sim is not None:
        report = type(report)(report.node, report.results, report.duration_s, tuple(args.simulate))
    if args.json:
        print(json.dumps(report.as_json(), indent=2, default=str))
    else:
        print("\n".join(report.lines()))
    return report.exit_code
