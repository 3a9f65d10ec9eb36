"""``trainwarden demo``: fault -> detection -> drain -> restart from checkpoint, live."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from trainwarden.supervisor.demo import DemoConfig, run_demo


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the end-to-end demo on an embedded broker and simulated nodes"
    )
    p.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    p.add_argument(
        "--scenario",
        choices=["gpu-fault", "straggler", "hang"],
        default="gpu-fault",
        help="gpu-fault: XID 79 kills a rank; straggler: one node runs slow and "
        "is evicted after a checkpoint; hang: one rank freezes",
    )
    p.add_argument(
        "--slowdown",
        type=float,
        default=2.0,
        help="straggler scenario: slowdown of the victim's rank",
    )
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--fault-at-step", type=int, default=35)
    p.add_argument("--fault", default="xid:79", help="simulated fault to inject (xid:79, ...)")
    p.add_argument("--step-time", type=float, default=0.25)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--workdir", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)
    cfg = DemoConfig(
        scenario=args.scenario,
        slowdown=args.slowdown,
        nodes=args.nodes,
        steps=args.steps,
        ckpt_every=args.ckpt_every,
        fault_at_step=args.fault_at_step,
        fault=args.fault,
        step_time_s=args.step_time,
        keep=args.keep,
        workdir=args.workdir,
    )
    out = sys.stderr if args.json else sys.stdout
    result = asyncio.run(run_demo(cfg, out))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    return 0 if result.recovered else 1
