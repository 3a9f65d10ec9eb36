"""``trainwarden sim SCENARIO``: the daemon's detectors and policy engine on a simulated cluster.

Virtual time: hours to weeks of cluster life in seconds. SCENARIO is a shipped name
(``--list``) or a YAML file. Exit 0; 1 when the scenario's ``expect`` figures are not met.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainwarden.policies.engine import Mode
from trainwarden.policies.errors import PolicyError
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.sim import load_scenario, shipped_names, simulate


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sim", help="simulate failures: real detectors and policy")
    p.add_argument("scenario", nargs="?", help="shipped scenario name or a YAML file")
    p.add_argument("--json", action="store_true", help="print one JSON object of figures")
    p.add_argument("--explain", action="store_true", help="explain every decision taken")
    p.add_argument("--policy", help="run under this policy file instead of the scenario's")
    p.add_argument(
        "--mode", choices=["enforce", "dry-run", "approve"], help="override the scenario's mode"
    )
    p.add_argument("--list", action="store_true", help="list the shipped scenarios")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list or not args.scenario:
        if not args.list:
            raise PolicyError("name a scenario (or --list): " + ", ".join(shipped_names()))
        for name in shipped_names():
            sc = load_scenario(name)
            first = " ".join(sc.description.split()).split(". ")[0]
            print(f"{name:20} {first}")
        return 0
    sc = load_scenario(args.scenario)
    if args.mode:
        sc = replace(sc, mode=Mode(args.mode))
    if args.mode or args.policy:  # the scenario's expectations hold for its own policy and mode
        sc = replace(sc, expect={})
    policy = load_policy(args.policy) if args.policy else None
    base = Path(args.scenario).parent if Path(args.scenario).exists() else None
    t0 = time.perf_counter()
    result = simulate(sc, policy, base)
    figures = dict(result.figures)
    figures["sim_wall_s"] = round(time.perf_counter() - t0, 3)
    if args.json:
        if args.explain:
            figures["explain"] = result.explain_lines()
        print(json.dumps(figures, indent=2))
    else:
        _print_human(figures)
        if args.explain:
            print()
            for line in result.explain_lines():
                print(line)
    return 1 if result.mismatches else 0


def _print_human(f: dict[str, Any]) -> None:
    a = f["assumptions"]
    print(
        f"scenario {f['scenario']} ({f['mode']}): {f['run_nodes']}-node run on "
        f"{f['cluster_nodes']} nodes, {f['duration_h']:g} h virtual in {f['sim_wall_s']:g} s"
    )
    rows = [
        ("faults injected", f["faults"]),
        ("detections", f["detections"] or 0),
        ("drains", f["drains"]),
        ("false drains", f["false_drains"]),
        ("restarts", f["restarts"]),
        ("incidents", f"{f['incidents']} {f['incident_kinds'] or ''}".strip()),
        ("guard blocks", f["guard_blocks"] or 0),
        ("guard holds", f["guard_holds"] or 0),
        ("returned to service", f["returned_to_service"]),
        ("alerts", f["alerts"]),
        ("lost work (h)", f["lost_work_h"]),
        ("lost node-hours", f["lost_node_hours"]),
        ("ETTR", f"{f['ettr']:.4f}"),
        ("run at end", f["final_state"]),
    ]
    for k, v in rows:
        print(f"  {k:20} {v}")
    print(
        f"  assumptions: checkpoint every {a['checkpoint_interval_s'] / 3600:g} h, restart "
        f"costs {a['restart_cost_s'] / 60:g} min (see --json for sources)"
    )
    for r in f.get("ladder", ()):
        print(
            f"  {r['ettr']:.3f}  {r['variant']} (every {r['checkpoint_interval_s']:g} s, save "
            f"costs {r['checkpoint_cost_s']:g} s, restart {r['restart_cost_s']:g} s)"
        )
    target = f.get("target")
    if target and target.get("why"):
        print(f"  target ETTR {target['ettr']} not met: {target['why']}")
    exp = f["expectations"]
    if exp["checked"]:
        status = "all met" if not exp["failed"] else "NOT MET: " + "; ".join(exp["failed"])
        print(f"  expectations: {exp['checked']} checked, {status}")
