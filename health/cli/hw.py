"""``trainwarden hw``: simulated hardware for humans and tests -- list, init, inject, clear.

A simulated node keeps its state in a directory; an agent started with
``--simulated-hardware DIR`` sees faults injected there at its next probe or poll.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trainwarden.health.sim import state
from trainwarden.health.sim.faults import FAULTS
from trainwarden.health.sim.hardware import SimulatedHardware, clear_in, inject_into


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "hw",
        help="simulated hardware: list, init, inject and clear faults",
        description="Manage simulated node hardware kept in a state directory.",
    )
    sub = p.add_subparsers(dest="hw_command", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser(
        "list", help="list the injectable faults (and the active ones with --state-dir)"
    )
    ls.add_argument("--state-dir", metavar="DIR", help="also show this node's active faults")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    init = sub.add_parser("init", help="create a simulated node in DIR")
    init.add_argument("--state-dir", required=True, metavar="DIR")
    init.add_argument("--node", default="sim-node")
    init.add_argument("--gpus", type=int, default=4)
    init.add_argument("--fabric", choices=("ib", "slingshot"), default="ib")
    init.set_defaults(func=run_init)
    inj = sub.add_parser("inject", help="inject FAULT into the simulated node in DIR")
    inj.add_argument("--state-dir", required=True, metavar="DIR")
    inj.add_argument("fault", metavar="FAULT")
    inj.set_defaults(func=run_inject)
    clr = sub.add_parser("clear", help="clear FAULT (default: every persistent fault)")
    clr.add_argument("--state-dir", required=True, metavar="DIR")
    clr.add_argument("fault", metavar="FAULT", nargs="?")
    clr.set_defaults(func=run_clear)


def run_list(args: argparse.Namespace) -> int:
    active = state.active(_existing(args.state_dir)) if args.state_dir else []
    if args.json:
        print(
            json.dumps(
                {
                    "faults": [
                        {"name": n, "persistent": p, "per_gpu": g, "description": d}
                        for n, (p, g, d) in FAULTS.items()
                    ],
                    "active": active,
                },
                indent=2,
            )
        )
        return 0
    for name, (persistent, per_gpu, desc) in FAULTS.items():
        kind = "persistent" if persistent else "event"
        gpu = "[@gpu]" if per_gpu else ""
        print(f"{name + gpu:<26} {kind:<10} {desc}")
    if args.state_dir:
        print(f"active in {args.state_dir}: {', '.join(active) or 'none'}")
    return 0


def _existing(path: str) -> Path:
    d = Path(path)
    state.load(d)  # a clear error when DIR is not a simulated node
    return d


def run_init(args: argparse.Namespace) -> int:
    hw = SimulatedHardware(args.node, gpus=args.gpus, state_dir=args.state_dir, fabric=args.fabric)
    print(f"simulated node {hw.node} with {hw.gpus} GPUs in {hw.state_dir}")
    return 0


def run_inject(args: argparse.Namespace) -> int:
    inject_into(_existing(args.state_dir), args.fault)
    print(f"injected {args.fault} into {args.state_dir}")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    clear_in(_existing(args.state_dir), args.fault)
    print(f"cleared {args.fault or 'all faults'} in {args.state_dir}")
    return 0
