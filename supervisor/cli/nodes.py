"""``trainwarden nodes``: every compute node, its state, its run and why (and since when) it
is drained; ``trainwarden nodes NODE``: one node in detail, with what happened to it."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from trainwarden.policies import hostlist
from trainwarden.supervisor.api.client import add_api_arguments, client_for
from trainwarden.supervisor.api.contract import UnknownReporterRow
from trainwarden.supervisor.cli.render import console, fmt_age, print_json, render_node, table
from trainwarden.supervisor.errors import SupervisorError

STATE_STYLE = {
    "healthy": "green",
    "suspect": "yellow",
    "failed": "bold red",
    "draining": "magenta",
    "drained": "red",
    "vetting": "cyan",
    "unknown": "dim",
}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "nodes",
        help="list compute nodes and their state",
        description="List the compute nodes the daemon knows, with state, run and conditions; "
        "or show one NODE in detail: its drain, conditions, newest events and actions.",
    )
    parser.add_argument(
        "name",
        nargs="?",
        default=None,
        metavar="NODE",
        help="show this node in detail instead of the list",
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows for scripts")
    parser.add_argument(
        "--all",
        action="store_true",
        help="also the unknown reporters: names that published as nodes although the "
        "scheduler has no such node (counted and ignored by the daemon)",
    )
    parser.add_argument("--state", default=None, help="only nodes in this state")
    parser.add_argument(
        "--node",
        default=None,
        metavar="HOSTLIST",
        help="only these nodes: a name or a Slurm hostlist (nid[000010-000019],login1)",
    )
    add_api_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name is not None:
        return _detail(args)
    wanted = _wanted(args.node)
    rows = client_for(args).nodes()
    if args.state:
        rows = [r for r in rows if r.state == args.state]
    if wanted is not None:
        rows = [r for r in rows if r.name in wanted]
    unknown = client_for(args).unknown_reporters() if args.all else []
    if args.json:
        if args.all:
            print_json(
                {
                    "nodes": [r.model_dump(mode="json") for r in rows],
                    "unknown_reporters": [u.model_dump(mode="json") for u in unknown],
                }
            )
        else:
            print_json(rows)
        return 0
    out = console()
    if unknown:
        _print_unknown(out, unknown)
    if not rows:
        out.print(
            "no nodes known"
            + (f" in state {args.state}" if args.state else "")
            + (f" among {args.node}" if args.node else ""),
            markup=False,
        )
        return 0
    listing = table(
        "NODE", "STATE", "SCHEDULER", "RUN", "HEARTBEAT", "CONDITIONS", "DRAINED", "DRAIN"
    )
    for r in rows:
        drain = f"{r.drained_by}: {r.drain_reason or ''}".rstrip(": ") if r.drained_by else ""
        listing.add_row(
            r.name,
            f"[{STATE_STYLE.get(r.state, '')}]{r.state}[/]",
            r.scheduler_state or "-",
            r.run or "-",
            fmt_age(r.last_heartbeat_at),
            ",".join(r.conditions) or "-",
            fmt_age(r.drained_at) if r.drained_by else "-",
            escape(drain),
        )
    out.print(listing)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    out.print(f"{len(rows)} nodes: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


def _detail(args: argparse.Namespace) -> int:
    """``nodes NODE``: the list's filters make no sense for one node, so they are refused."""
    given = [
        flag
        for flag, value in (("--all", args.all), ("--state", args.state), ("--node", args.node))
        if value
    ]
    if given:
        raise SupervisorError(
            f"`trainwarden nodes {args.name}` shows one node; {' and '.join(given)} "
            "filter the list of nodes (leave out NODE to list them)"
        )
    if any(c in args.name for c in "[],"):
        raise SupervisorError(
            f"NODE is one node, not {args.name!r}: list several with --node HOSTLIST"
        )
    node = client_for(args).node(args.name)
    if args.json:
        print_json(node)
    else:
        render_node(console(), node, state_style=STATE_STYLE.get(node.state, ""))
    return 0


def _print_unknown(out: Any, unknown: list[UnknownReporterRow]) -> None:
    listing = table("UNKNOWN REPORTER", "MESSAGES", "FIRST SEEN", "LAST SEEN", "LAST TOPIC")
    for u in unknown:
        listing.add_row(
            u.name, str(u.messages), fmt_age(u.first_seen), fmt_age(u.last_seen), u.last_topic
        )
    out.print(listing)
    out.print(
        f"{len(unknown)} unknown reporter(s): not nodes of the scheduler's, ignored "
        "(a misnamed agent, a retired node still running, or a forged message)"
    )


def _wanted(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    try:
        return frozenset(hostlist.expand(text))
    except ValueError as exc:
        raise SupervisorError(f"--node: {exc}") from None
