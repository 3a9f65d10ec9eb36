"""``trainwarden token new``: mint a bearer token for a remote operator (the TCP API).

The token goes into a file only its holder may read (created 0600, never overwritten); the
daemon keeps only its hash: the line printed here goes into the daemon's tokens file
(``trainwarden daemon --api-tokens FILE``), and the daemon reads it when it starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from trainwarden.supervisor.api.auth import Role, new_token, token_line
from trainwarden.supervisor.errors import SupervisorError

ROLES = ("viewer", "operator", "admin")


def register(subparsers: Any) -> None:
    token: argparse.ArgumentParser = subparsers.add_parser(
        "token",
        help="mint bearer tokens for the daemon's TCP API",
        description="Bearer tokens let operators off the login node use the daemon's API over "
        "TLS (trainwarden daemon --api-tcp). On the login node the CLI needs none: the "
        "daemon's socket knows you by your uid.",
    )
    sub = token.add_subparsers(dest="token_command", metavar="{new}")
    sub.required = True
    new: argparse.ArgumentParser = sub.add_parser(
        "new",
        help="mint a token: write it to FILE (0600), print the daemon's tokens-file line",
        description="Write a new token to FILE (created with mode 0600; an existing file is "
        "never overwritten) and print the line NAME ROLE sha256:HEX for the daemon's tokens "
        "file. Give FILE to its holder; they pass it as --token-file or $TRAINWARDEN_TOKEN_FILE.",
    )
    new.add_argument("name", metavar="NAME", help="who holds it (recorded as 'NAME (token)')")
    new.add_argument("--role", choices=ROLES, required=True, help="what the token may do")
    new.add_argument("--out", metavar="FILE", required=True, help="where to write the token")
    new.set_defaults(func=run_new)


def run_new(args: argparse.Namespace) -> int:
    token = new_token()
    line = token_line(args.name, Role.parse(args.role), token)  # checks the name first
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise SupervisorError(
            f"{args.out} exists: a token file is never overwritten (remove it, or choose "
            "another --out)"
        ) from None
    except OSError as exc:
        raise SupervisorError(f"cannot create {args.out}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(token + "\n")
    print(line)
    print(
        f"wrote the token to {args.out} (mode 0600). Add the line above to the daemon's tokens "
        "file (--api-tokens) and restart the daemon; the holder passes "
        f"--token-file {args.out} (or $TRAINWARDEN_TOKEN_FILE).",
        file=sys.stderr,
    )
    return 0
