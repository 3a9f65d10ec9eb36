"""``trainwarden drain`` / ``trainwarden undrain``: take nodes out of service or put them back.

NODES is one name or a Slurm hostlist (``nid[000010-000012],nid000020``). Each node is its own
request and its own recorded operator action (who, why, result), as an automatic one is; the
daemon drains in the scheduler, and records as who the caller it authenticated (your login
over the socket, your token's name over https). With several nodes each result is printed
as it comes, a node the daemon refuses does not stop the others, and a last line counts them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from trainwarden.policies import hostlist
from trainwarden.supervisor.api.client import ApiError, add_api_arguments, client_for
from trainwarden.supervisor.api.contract import ActionRow
from trainwarden.supervisor.cli.render import console, print_json, report_action
from trainwarden.supervisor.errors import SupervisorError

DEFAULT_MAX_NODES = 32
_NODES_HELP = "a node, or a Slurm hostlist of nodes (nid[000010-000012],nid000020)"


def register(subparsers: Any) -> None:
    drain: argparse.ArgumentParser = subparsers.add_parser(
        "drain",
        help="drain nodes (take them out of service)",
        description="Drain NODES in the scheduler, each recorded as its own operator action. "
        "NODES is a name or a Slurm hostlist; with several nodes, one request per node, "
        "each result printed, and the exit status is the worst of them.",
    )
    drain.add_argument("nodes", metavar="NODES", help=_NODES_HELP)
    drain.add_argument("--reason", required=True, help="why (recorded and shown in the scheduler)")
    _common(drain, "drain")
    drain.set_defaults(func=run_drain)

    undrain: argparse.ArgumentParser = subparsers.add_parser(
        "undrain",
        help="return drained nodes to service",
        description="Resume NODES in the scheduler, each recorded as its own operator action. "
        "NODES is a name or a Slurm hostlist (one request per node).",
    )
    undrain.add_argument("nodes", metavar="NODES", help=_NODES_HELP)
    undrain.add_argument("--reason", default=None, help="why they may return (recorded)")
    _common(undrain, "undrain")
    undrain.set_defaults(func=run_undrain)


def _common(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the recorded action as JSON (a list of them for a hostlist of several)",
    )
    parser.add_argument(
        "--max-nodes",
        type=int,
        default=DEFAULT_MAX_NODES,
        metavar="N",
        help=f"refuse to {verb} more than N nodes at once, so a mistyped range cannot take "
        f"out a cluster (default {DEFAULT_MAX_NODES})",
    )
    add_api_arguments(parser)


def target_nodes(text: str, max_nodes: int, verb: str) -> tuple[str, ...]:
    """The nodes a drain/undrain names: one, or a hostlist of at most ``max_nodes``."""
    try:
        names = hostlist.expand(text)
    except ValueError as exc:
        raise SupervisorError(str(exc)) from None
    if not names:
        raise SupervisorError(f"no node named: give a node or a hostlist to {verb}")
    if len(names) > max_nodes:
        raise SupervisorError(
            f"{text!r} names {len(names)} nodes, more than --max-nodes {max_nodes}: "
            f"check the expression, or raise --max-nodes to {verb} them all"
        )
    return names


def run_drain(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise SupervisorError("--reason must not be empty: say why the node is drained")
    nodes = target_nodes(args.nodes, args.max_nodes, "drain")
    client = client_for(args)
    return _each(nodes, lambda n: client.drain(n, args.reason), "drain", args.json)


def run_undrain(args: argparse.Namespace) -> int:
    nodes = target_nodes(args.nodes, args.max_nodes, "undrain")
    client = client_for(args)
    return _each(nodes, lambda n: client.undrain(n, args.reason), "undrain", args.json)


def _each(nodes: tuple[str, ...], act: Callable[[str], ActionRow], verb: str, as_json: bool) -> int:
    """One request per node; one node's answer exactly as before, several reported in turn.

    Exit 0 when every action succeeded, 1 when one was refused or failed, 2 when the daemon
    refused a request (unknown node...). An unreachable or failing daemon stops at once.
    """
    if len(nodes) == 1:
        return report_action(act(nodes[0]), as_json=as_json)
    out = console()
    rows: list[ActionRow] = []
    refused: list[str] = []
    code = 0
    for node in nodes:
        try:
            row = act(node)
        except ApiError as exc:
            if exc.status >= 500:  # trouble in the daemon, not about this node: stop here
                raise
            # the daemon refused this node (unknown, bad state): go on with the others
            print(f"trainwarden: error: {node}: {exc}", file=sys.stderr)
            refused.append(node)
            code = 2
            continue
        rows.append(row)
        if as_json:
            code = max(code, 1 if row.status == "failed" or row.verdict == "block" else 0)
        else:
            code = max(code, report_action(row, as_json=False))
            out.print()
    if as_json:
        print_json(rows)
        return code
    done = [r for r in rows if r.status != "failed" and r.verdict != "block"]
    summary = f"{verb} {hostlist.compress(nodes)}: {len(nodes)} nodes, {len(done)} done"
    if len(rows) > len(done):
        summary += f", {len(rows) - len(done)} refused or failed"
    if refused:
        summary += f", {len(refused)} not accepted ({hostlist.compress(refused)})"
    out.print(summary, markup=False)
    return code
