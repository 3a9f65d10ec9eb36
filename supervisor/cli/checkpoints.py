"""``trainwarden checkpoints DIR``: which checkpoint a restart would resume from, and why not
the newer ones.

It runs the daemon's own scan (no daemon needed): the layout detected or given, the newest
valid checkpoint, and every newer one with the reason it was refused. Exit 0 when a valid
checkpoint exists, 1 when none does, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from trainwarden.supervisor.checkpoints import FORMAT_CHOICES, LAYOUTS, scan
from trainwarden.supervisor.cli.render import console, table
from trainwarden.supervisor.errors import ConfigError


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "checkpoints",
        help="show the checkpoint a restart would resume from",
        description="Scan a checkpoint directory as a restart does: the layout, the newest "
        "valid checkpoint, and every newer one with the reason it was refused. Exit 0 when a "
        "valid checkpoint exists, 1 when none does, 2 on bad input.",
    )
    parser.add_argument("dir", metavar="DIR", help="the run's checkpoint directory")
    parser.add_argument(
        "--format",
        default="auto",
        choices=FORMAT_CHOICES,
        help="the checkpoint layout (default: auto, detected from the directory)",
    )
    parser.add_argument(
        "--all", action="store_true", help="validate every checkpoint, older ones too"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fmt = args.format  # argparse refuses an unknown one (exit 2, naming the choices)
    if not os.path.exists(args.dir):
        raise ConfigError(f"checkpoint directory {args.dir} does not exist")
    if not os.path.isdir(args.dir):
        raise ConfigError(f"{args.dir} is not a directory")
    result = scan(args.dir, fmt, exhaustive=args.all)
    code = 0 if result.latest_valid is not None else 1
    if args.json:
        data = result.as_dict()
        print(json.dumps(data, indent=2))
        return code
    out = console()
    title = LAYOUTS[result.format].title if result.format else "no known layout"
    out.print(f"{result.root}: {title} ({result.detected})", markup=False)
    for note in result.notes:
        out.print(f"  {note}", markup=False)
    best = result.latest_valid
    if best is None:
        out.print("[bold red]no valid checkpoint[/]: a restart would start from scratch")
    else:
        out.print(f"[green]resume from step {best.step}[/]: ", end="")
        out.print(best.path, markup=False)
    if not result.checkpoints:
        return code
    listing = table("STEP", "VALID", "PATH", "REASON", right=("STEP",))
    for judged in result.checkpoints:
        ok = judged.validation.valid
        listing.add_row(
            str(judged.info.step) if judged.info.step >= 0 else "?",
            "[green]yes[/]" if ok else "[red]no[/]",
            judged.info.path,
            judged.validation.reason,
        )
    out.print(listing)
    return code
