"""``trainwarden drain`` / ``trainwarden undrain``: take a node out of service or put it back.

Recorded like an automatic action (who, why, result); the daemon drains in the scheduler.
"""

from __future__ import annotations

import argparse
from typing import Any

from trainwarden.supervisor.api.client import add_api_arguments, client_for, default_who
from trainwarden.supervisor.cli.render import report_action
from trainwarden.supervisor.errors import SupervisorError


def register(subparsers: Any) -> None:
    drain: argparse.ArgumentParser = subparsers.add_parser(
        "drain",
        help="drain a node (take it out of service)",
        description="Drain NODE in the scheduler, recorded as an operator action.",
    )
    drain.add_argument("node", metavar="NODE")
    drain.add_argument("--reason", required=True, help="why (recorded and shown in the scheduler)")
    drain.add_argument("--who", default=None, help="operator name (default: $SUDO_USER or $USER)")
    drain.add_argument("--json", action="store_true", help="print the recorded action as JSON")
    add_api_arguments(drain)
    drain.set_defaults(func=run_drain)

    undrain: argparse.ArgumentParser = subparsers.add_parser(
        "undrain",
        help="return a drained node to service",
        description="Resume NODE in the scheduler, recorded as an operator action.",
    )
    undrain.add_argument("node", metavar="NODE")
    undrain.add_argument("--reason", default=None, help="why it may return (recorded)")
    undrain.add_argument("--who", default=None, help="operator name (default: $SUDO_USER or $USER)")
    undrain.add_argument("--json", action="store_true", help="print the recorded action as JSON")
    add_api_arguments(undrain)
    undrain.set_defaults(func=run_undrain)


def run_drain(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise SupervisorError("--reason must not be empty: say why the node is drained")
    row = client_for(args).drain(args.node, args.reason, args.who or default_who())
    return report_action(row, as_json=args.json)


def run_undrain(args: argparse.Namespace) -> int:
    row = client_for(args).undrain(args.node, args.reason, args.who or default_who())
    return report_action(row, as_json=args.json)
