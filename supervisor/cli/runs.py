"""``trainwarden runs``: supervised training runs; ``runs add`` and ``runs restart``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from trainwarden.policies import hostlist
from trainwarden.supervisor.api.client import add_api_arguments, client_for
from trainwarden.supervisor.api.contract import RunSpecIn
from trainwarden.supervisor.checkpoints import FORMAT_CHOICES
from trainwarden.supervisor.cli.render import console, print_json, report_action, table
from trainwarden.supervisor.errors import SupervisorError
from trainwarden.supervisor.model.cluster import DEFAULT_RANKS_PER_NODE

STATE_STYLE = {
    "running": "green",
    "restarting": "yellow",
    "failed": "bold red",
    "completed": "cyan",
    "pending": "dim",
    "stopped": "dim",
}


class _CommandAfterDashes(argparse.ArgumentParser):
    """Takes everything after the first ``--`` as the job's command (``args.job_command``).

    argparse alone cannot mix a leading positional (NAME), options and a trailing
    command that has options of its own, on Python 3.11.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        command: list[str] = []
        if "--" in words:
            cut = words.index("--")
            words, command = words[:cut], words[cut + 1 :]
        ns, extras = super().parse_known_args(words, namespace)
        ns.job_command = command
        return ns, extras


def register(subparsers: Any) -> None:
    runs: argparse.ArgumentParser = subparsers.add_parser(
        "runs",
        help="list supervised runs; add or restart one",
        description="List supervised training runs. `runs add` puts a new run under "
        "supervision; `runs restart` restarts one from its last valid checkpoint.",
    )
    runs.add_argument("--json", action="store_true", help="print JSON rows for scripts")
    add_api_arguments(runs)
    runs.set_defaults(func=run_list)
    sub = runs.add_subparsers(
        dest="runs_command", metavar="{add,restart,goodput}", parser_class=_CommandAfterDashes
    )

    add: argparse.ArgumentParser = sub.add_parser(
        "add",
        help="put a new run under supervision",
        description="Submit a new run. Everything after `--` is the command: for the local "
        "scheduler the command each node runs, for Slurm the sbatch script and its arguments.",
        usage="trainwarden runs add NAME --scheduler {local,slurm} --nodes N "
        "--checkpoint-dir DIR [--target-step N] [--env K=V ...] -- COMMAND...",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--scheduler", choices=("local", "slurm"), required=True)
    add.add_argument("--nodes", type=int, required=True, help="number of nodes")
    add.add_argument(
        "--checkpoint-dir",
        required=True,
        metavar="DIR",
        help="where the run writes checkpoints (made absolute here)",
    )
    add.add_argument(
        "--target-step",
        type=int,
        default=None,
        metavar="N",
        help="the run is complete at this step",
    )
    add.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="environment for the job (repeatable)",
    )
    add.add_argument(
        "--min-nodes",
        type=int,
        default=None,
        metavar="N",
        help="restart on fewer nodes when not enough are healthy, down to N",
    )
    add.add_argument(
        "--spares",
        type=int,
        default=0,
        metavar="K",
        help="slurm: hold K spare nodes in the job; a restart swaps one in without a new sbatch",
    )
    add.add_argument(
        "--ranks-per-node",
        type=int,
        default=DEFAULT_RANKS_PER_NODE,
        metavar="N",
        help="training ranks on each node (default %(default)s): an attempt's world size is "
        "its nodes x N, and reports from ranks outside it are refused",
    )
    add.add_argument(
        "--checkpoint-format",
        default="auto",
        choices=FORMAT_CHOICES,
        help="checkpoint layout restarts look for (default: auto, detected from the directory)",
    )
    add.add_argument(
        "--progress",
        default="reporter",
        metavar="SOURCE",
        help="where step progress comes from: reporter (the ranks call trainwarden's "
        "reporter), or the job's log: auto, megatron, torchtitan, hf, lightning, or "
        "regex:PATTERN with a named group step (optionally step_s); from a log, hangs are "
        "detected, stragglers not",
    )
    add.add_argument(
        "--adopt",
        action="store_true",
        help="do not submit: supervise the job already running with the comment "
        "or name trainwarden:NAME (its ranks report with TRAINWARDEN_RUN=NAME)",
    )
    add.add_argument("--json", action="store_true", help="print the new run as JSON")
    add_api_arguments(add)
    add.set_defaults(func=run_add)

    restart: argparse.ArgumentParser = sub.add_parser(
        "restart",
        help="restart a run from its last valid checkpoint",
        description="Stop RUN and resubmit it from its newest valid checkpoint.",
    )
    restart.add_argument("run", metavar="RUN")
    restart.add_argument("--reason", required=True, help="why (recorded)")
    restart.add_argument("--json", action="store_true", help="print the recorded action as JSON")
    add_api_arguments(restart)
    restart.set_defaults(func=run_restart)

    goodput: argparse.ArgumentParser = sub.add_parser(
        "goodput",
        help="where a run's hours went (ETTR) and the checkpoint interval its failures call for",
        description="Account for RUN's wall time: productive, rework, detection, drain, queue, "
        "start-up, hung, held, checkpoint stalls; ETTR = productive / wall time; and the "
        "Young/Daly checkpoint interval for its measured save cost and interruption rate.",
    )
    goodput.add_argument("run", metavar="RUN")
    goodput.add_argument("--json", action="store_true", help="print the accounting as JSON")
    add_api_arguments(goodput)
    goodput.set_defaults(func=run_goodput)


def run_list(args: argparse.Namespace) -> int:
    rows = client_for(args).runs()
    if args.json:
        print_json(rows)
        return 0
    out = console()
    if not rows:
        out.print("no runs under supervision")
        return 0
    listing = table(
        "RUN",
        "SCHEDULER",
        "STATE",
        "ATTEMPT",
        "RESTARTS",
        "NODES",
        "STEP",
        "CHECKPOINT",
        "RESUMED FROM",
        "PROGRESS",
    )
    for r in rows:
        style = STATE_STYLE.get(r.state, "")
        step = "-" if r.last_step is None else str(r.last_step)
        if r.target_step is not None:
            step += f"/{r.target_step}"
        listing.add_row(
            r.name,
            r.scheduler,
            f"[{style}]{r.state}[/]" if style else r.state,
            str(r.attempt),
            str(r.restarts),
            _nodes(r.nodes),
            step,
            _opt(r.last_checkpoint_step),
            _opt(r.resumed_from_step),
            r.progress or "reporter",
        )
    out.print(listing)
    if any((r.progress or "reporter") != "reporter" for r in rows):
        out.print("runs followed from their log: hangs are detected, stragglers need the reporter")
    return 0


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def run_goodput(args: argparse.Namespace) -> int:
    row = client_for(args).goodput(args.run)
    if args.json:
        print_json(row)
        return 0
    out = console()
    wall = row.wall_s or 0.0
    out.print(
        f"run {row.run}: ETTR {row.ettr:.3f} over {_hours(wall)} of wall time, "
        f"{row.interruptions} interruption(s), restart overhead {_hours(row.restart_overhead_s)}",
        markup=False,
    )
    listing = table("BUCKET", "TIME", "SHARE")
    for bucket, seconds in sorted(row.buckets.items(), key=lambda kv: -kv[1]):
        share = seconds / wall if wall > 0 else 0.0
        listing.add_row(bucket, _hours(seconds), f"{share:.1%}")
    out.print(listing)
    adv = row.advice
    if adv:
        now, before, after = (
            adv.get(k) for k in ("current_interval_s", "ettr_current", "ettr_advised")
        )
        out.print(
            f"checkpoint every {float(adv.get('interval_s') or 0):.0f} s"
            + (f" (now {now:.0f} s)" if isinstance(now, int | float) else "")
            + f" for a save cost of {float(adv.get('checkpoint_cost_s') or 0):.1f} s"
            + (
                f" (asynchronous: written in {persist:.0f} s)"
                if isinstance(persist := adv.get("persist_s"), int | float) and persist > 0
                else ""
            )
            + " and one "
            f"interruption every {float(adv.get('mtbf_s') or 0) / 3600:.1f} h: expected ETTR "
            + (f"{before:.3f} now, " if isinstance(before, int | float) else "")
            + (f"{after:.3f} advised" if isinstance(after, int | float) else "unknown"),
            markup=False,
        )
    else:
        out.print("no checkpoint-interval advice yet (no save cost measured)", markup=False)
    return 0


def run_add(args: argparse.Namespace) -> int:
    command = list(args.job_command)
    if not command:
        raise SupervisorError("no command given: put it after `--`, e.g. -- python train.py")
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SupervisorError(f"--env {item!r} is not of the form KEY=VALUE")
        env[key] = value
    try:
        spec = RunSpecIn(
            name=args.name,
            scheduler=args.scheduler,
            command=command,
            nodes=args.nodes,
            checkpoint_dir=os.path.abspath(args.checkpoint_dir),
            env=env,
            target_step=args.target_step,
            min_nodes=args.min_nodes,
            ranks_per_node=args.ranks_per_node,
            checkpoint_format=args.checkpoint_format,
            progress=args.progress,
            adopt=args.adopt,
            spares=args.spares,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SupervisorError(
            f"invalid run {where}: {first['msg'].removeprefix('Value error, ')}"
        ) from None
    row = client_for(args).add_run(spec)
    if args.json:
        print_json(row)
    else:
        console().print(
            f"run {row.name} added ({row.scheduler}, {len(row.nodes) or spec.nodes} "
            f"nodes): state {row.state}, attempt {row.attempt}",
            markup=False,
        )
    return 0


def run_restart(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise SupervisorError("--reason must not be empty: say why the run is restarted")
    row = client_for(args).restart_run(args.run, args.reason)
    return report_action(row, as_json=args.json)


def _nodes(nodes: list[str]) -> str:
    """A run's nodes as a Slurm hostlist (``nid[000001-000512]``), cut short when long."""
    if not nodes:
        return "-"
    shown = hostlist.compress(nodes)
    if len(shown) <= 40:
        return shown
    cut = shown[:36].rsplit(",", 1)[0]
    more = ",...]" if cut.count("[") > cut.count("]") else ",..."
    return f"{cut}{more} ({len(set(nodes))})"


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)
