"""Entry point of the ``trainwarden`` console script.

Each command lives in its own module under ``supervisor.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Modules keep their heavy imports inside ``func`` so ``trainwarden --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from health.errors import TrainwardenError

# The explicit list of command modules (no import side effects decide what exists).
COMMAND_MODULES: tuple[str, ...] = (
    "agent", "policy", "sim", "nodes", "drain", "runs", "events", "actions", "stragglers", "db",
    "vet", "hw",
    "daemon", "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainwarden",
        description="Fault-tolerant supervisor for large GPU training runs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"supervisor.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except TrainwardenError as exc:
        print(f"trainwarden: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
