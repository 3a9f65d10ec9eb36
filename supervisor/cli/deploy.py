"""``trainwarden deploy show [FILE]`` and ``trainwarden deploy write DIR``: the deploy files.

The units, env files, broker configuration, Prometheus rules, Grafana dashboard and Slurm
scripts of the repository's ``deploy/`` folder ship inside the package (``trainwarden/deploy``
links to it), so an installed trainwarden hands out the files that match its own version
instead of sending operators to a checkout of some other one.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from trainwarden.supervisor.errors import SupervisorError


def _root() -> Traversable:
    return resources.files("trainwarden") / "deploy"


def _walk(node: Traversable, prefix: str) -> list[str]:
    names: list[str] = []
    for child in node.iterdir():
        if child.name.startswith(".") or child.name == "__pycache__":
            continue
        name = f"{prefix}{child.name}"
        names += _walk(child, name + "/") if child.is_dir() else [name]
    return names


def deploy_files() -> list[str]:
    """The shipped deploy files, as paths relative to ``deploy/`` with ``/``, sorted."""
    root = _root()
    if not root.is_dir():
        raise SupervisorError(f"this installation has no deploy files (looked in {root})")
    return sorted(_walk(root, ""))


def _resource(name: str) -> Traversable:
    node = _root()
    for part in name.split("/"):
        node = node / part
    return node


def _mode(name: str) -> int:
    """0o755 for the scripts (executable in the package), 0o644 for everything else."""
    with resources.as_file(_resource(name)) as path:
        executable = bool(path.stat().st_mode & stat.S_IXUSR)
    return 0o755 if executable else 0o644


def write_all(dest: Path, force: bool = False) -> list[Path]:
    """Write every deploy file under ``dest``; nothing at all if one exists and not ``force``."""
    names = deploy_files()
    targets = [dest.joinpath(*name.split("/")) for name in names]
    existing = [str(t) for t in targets if t.exists() or t.is_symlink()]
    if existing and not force:
        raise SupervisorError(
            f"{len(existing)} of the files exist already, nothing written (--force "
            f"overwrites them): {', '.join(existing)}"
        )
    written: list[Path] = []
    for name, target in zip(names, targets, strict=True):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink():
                target.unlink()  # write a file, never through a link to somewhere else
            target.write_bytes(_resource(name).read_bytes())
            os.chmod(target, _mode(name))
        except OSError as exc:
            raise SupervisorError(f"cannot write {target}: {exc}") from exc
        written.append(target)
    return written


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="list, print or write the shipped deploy files",
        description="The deploy files of this version (systemd units and env files, "
        "Mosquitto configuration and ACL, Prometheus rules, Grafana dashboard, Slurm "
        "health check; see README.md among them).",
    )
    sub = parser.add_subparsers(dest="deploy_command", metavar="ACTION")
    sub.required = True
    show = sub.add_parser("show", help="list the deploy files, or print one")
    show.add_argument(
        "file",
        nargs="?",
        choices=_choices(),
        metavar="FILE",
        help="a file as listed (e.g. trainwarden-agent.service); none: list them",
    )
    show.set_defaults(func=run_show)
    write = sub.add_parser("write", help="write all deploy files into a directory")
    write.add_argument("dir", metavar="DIR", help="directory to write into (created if absent)")
    write.add_argument("--force", action="store_true", help="overwrite files that exist")
    write.set_defaults(func=run_write)


def _choices() -> list[str] | None:
    """The files, for argparse and shell completion; None (anything goes) when the package
    has none, so that ``deploy show`` still runs and says so."""
    try:
        return deploy_files()
    except SupervisorError:
        return None


def run_show(args: argparse.Namespace) -> int:
    if args.file is None:
        for name in deploy_files():
            print(name)
        return 0
    if args.file not in deploy_files():
        raise SupervisorError(f"no deploy file {args.file!r}; `trainwarden deploy show` lists them")
    sys.stdout.flush()
    sys.stdout.buffer.write(_resource(args.file).read_bytes())
    sys.stdout.flush()
    return 0


def run_write(args: argparse.Namespace) -> int:
    for path in write_all(Path(args.dir), force=args.force):
        print(f"wrote {path}")
    return 0
