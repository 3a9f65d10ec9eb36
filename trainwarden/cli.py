"""Entry point of the ``trainwarden`` console script.

Each command lives in its own module and exposes ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``. Only the module of the command being run is loaded.
Node-side commands (``agent``, ``vet``, ``hw``) live in ``trainwarden.health.cli``, so a
compute node needs nothing of the login-node package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from trainwarden import __version__
from trainwarden.health.errors import TrainwardenError

# The explicit lists of command modules (no import side effects decide what exists).
NODE_COMMANDS: tuple[str, ...] = ("agent", "vet", "hw")
LOGIN_COMMANDS: tuple[str, ...] = (
    "policy",
    "sim",
    "nodes",
    "drain",
    "runs",
    "events",
    "actions",
    "stragglers",
    "db",
    "daemon",
    "demo",
    "token",
    "deploy",
    "completion",
    "checkpoints",
    "config",
)
ORDER: tuple[str, ...] = ("agent", *LOGIN_COMMANDS[:9], "vet", "hw", *LOGIN_COMMANDS[9:])
# commands registered by another command's module
SHARED: dict[str, str] = {
    "undrain": "drain",
    "approve": "actions",
    "reject": "actions",
    "incidents": "actions",
}


def _module_of(command: str) -> str:
    room = "health" if command in NODE_COMMANDS else "supervisor"
    return f"trainwarden.{room}.cli.{command}"


def build_parser(only: Sequence[str] = ORDER) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainwarden",
        description="Fault-tolerant supervisor for large GPU training runs.",
    )
    parser.add_argument("--version", action="version", version=f"trainwarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in only:
        importlib.import_module(_module_of(name)).register(sub)
    return parser


def _commands_for(argv: Sequence[str]) -> Sequence[str]:
    """Only the asked-for command's module (a node-side one loads nothing of the login
    side, and no command pays for the others' imports); every module for ``--help``."""
    first = next((a for a in argv if not a.startswith("-")), None)
    module = SHARED.get(first or "", first)
    return (module,) if module in ORDER else ORDER


def main(argv: Sequence[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_commands_for(args_in))
    args = parser.parse_args(args_in)
    try:
        code: int = args.func(args)
    except TrainwardenError as exc:
        print(f"trainwarden: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
