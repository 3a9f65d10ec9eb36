"""``trainwarden db``: create or migrate the store's schema, and say where it stands.

``upgrade`` is the only way the schema changes (Alembic underneath); ``check`` exits 0
when the database is at the revision this trainwarden needs, 1 when it is not, so
deployment scripts and systemd ``ExecStartPre`` can gate the daemon on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from trainwarden.supervisor.store.engine import default_url, mask
from trainwarden.supervisor.store.migrate import current, head_revision, schema_problem, upgrade


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "db",
        help="create, migrate or check the database schema",
        description="Manage the schema of trainwarden's database (SQLite or PostgreSQL). "
        "The URL comes from --url, else $TRAINWARDEN_DB_URL, else "
        "$TRAINWARDEN_STATE_DIR/trainwarden.db (default ~/.local/state/trainwarden).",
    )
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION")
    sub.required = True

    up = sub.add_parser("upgrade", help="create the schema or migrate it to the latest revision")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    _url_arg(up)
    up.set_defaults(func=_upgrade)

    cur = sub.add_parser("current", help="print the revision the database is at")
    _url_arg(cur)
    cur.add_argument("--json", action="store_true", help="print JSON for scripts")
    cur.set_defaults(func=_current)

    chk = sub.add_parser("check", help="exit 0 if the schema is at the revision needed, else 1")
    _url_arg(chk)
    chk.set_defaults(func=_check)


def _url_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        metavar="URL",
        help="database URL, e.g. sqlite:///var/lib/trainwarden/trainwarden.db "
        "or postgresql+psycopg://user@host/trainwarden",
    )


def _url(args: argparse.Namespace) -> str:
    return str(args.url) if args.url else default_url()


def _upgrade(args: argparse.Namespace) -> int:
    url = _url(args)
    before = current(url)
    after = upgrade(url, args.revision)
    if before == after:
        print(f"{mask(url)}: already at revision {after}")
    else:
        print(f"{mask(url)}: upgraded from revision {before or 'none'} to {after}")
    return 0


def _current(args: argparse.Namespace) -> int:
    url = _url(args)
    rev = current(url)
    head = head_revision()
    if args.json:
        print(json.dumps({"url": mask(url), "revision": rev, "head": head, "at_head": rev == head}))
    else:
        print(
            f"{mask(url)}: revision {rev or 'none'}"
            + (" (head)" if rev == head else f" (this trainwarden needs {head})")
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    url = _url(args)
    problem = schema_problem(current(url))
    if problem is not None:
        print(f"trainwarden: {mask(url)}: {problem}", file=sys.stderr)
        return 1
    print(f"{mask(url)}: schema is up to date")
    return 0
