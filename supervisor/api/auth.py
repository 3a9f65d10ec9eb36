"""Who is asking the daemon, and what they may do: operator roles, as Slurm's AdminLevel.

Three roles, each including the ones below it: a *viewer* reads, an *operator* drains,
undrains, approves, rejects, restarts runs and closes incidents, an *admin* also adds runs
(a run carries a command, a working directory and an environment the daemon submits).

On the login node the API is a Unix socket: the kernel tells the daemon the caller's uid
(``SO_PEERCRED``), so nobody types a password and nobody can claim to be someone else.
The uid's user name and groups are looked up (NSS: pwd, grp, getgrouplist) at request
time, so adding a user to a group gives the group's role without restarting the daemon.
Remote callers, over TCP and TLS only, present a bearer token; the daemon keeps a hash
of each token (in a file only its own user may read) with its principal's name and role.
"""

from __future__ import annotations

import asyncio
import enum
import grp
import hashlib
import hmac
import os
import pwd
import re
import secrets
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trainwarden.supervisor.errors import ConfigError, SupervisorError

__all__ = [
    "DEFAULT_API_SOCKET",
    "ROLE_ENV",
    "ROLE_FLAG",
    "Authenticator",
    "Forbidden",
    "Principal",
    "Role",
    "RoleMap",
    "TokenEntry",
    "Tokens",
    "Unauthenticated",
    "hash_token",
    "new_token",
    "parse_members",
    "peer_uid",
    "private_file",
    "token_line",
]

# Where the daemon serves its API and the CLI calls it (systemd: RuntimeDirectory=trainwarden).
DEFAULT_API_SOCKET = "/run/trainwarden/api.sock"
TOKEN_HASH = "sha256"
# user and group names as NSS hands them out (sssd may add @DOMAIN); no spaces or commas
_MEMBER = re.compile(r"^@?[A-Za-z0-9_][A-Za-z0-9_.@-]{0,255}\$?$")
_PRINCIPAL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Unauthenticated(SupervisorError):
    """The daemon does not know who asks (TCP without a valid token): HTTP 401."""


class Forbidden(SupervisorError):
    """The caller is known but lacks the role the request needs: HTTP 403."""


class Role(enum.IntEnum):
    """An operator role; a higher one includes every lower one."""

    NONE = 0
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """``viewer``, ``operator`` or ``admin``; ValueError with the choices otherwise."""
        try:
            role = cls[text.strip().upper()]
        except KeyError:
            role = cls.NONE
        if role is cls.NONE:
            raise ValueError(f"unknown role {text!r}: use viewer, operator or admin")
        return role


# what an operator changes to give someone a role (named in every refusal)
ROLE_FLAG = {
    Role.VIEWER: "trainwarden daemon --viewers",
    Role.OPERATOR: "trainwarden daemon --operators",
    Role.ADMIN: "trainwarden daemon --admins",
}
ROLE_ENV = {
    Role.VIEWER: "TRAINWARDEN_VIEWERS",
    Role.OPERATOR: "TRAINWARDEN_OPERATORS",
    Role.ADMIN: "TRAINWARDEN_ADMINS",
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``via`` is ``unix uid N`` (the socket) or ``token``."""

    name: str
    role: Role
    via: str

    @property
    def who(self) -> str:
        """What the daemon records as who acted: the user name (``uid:N`` without a passwd
        entry) for the socket, ``NAME (token)`` for a token, so the two never read alike."""
        return f"{self.name} (token)" if self.via == "token" else self.name

    def describe(self) -> str:
        """The caller in a sentence: ``user alice (uid 1001)`` or ``token alice``."""
        if self.via.startswith("unix "):
            return f"user {self.name} ({self.via.removeprefix('unix ')})"
        return f"token {self.name}"

    def refusal(self, need: Role, doing: str) -> str:
        """Why this caller may not do ``doing``, and where the role is given."""
        has = "has no role" if self.role is Role.NONE else f"has role {self.role.label}"
        where = (
            "the role of a token is set in the daemon's tokens file"
            if self.via == "token"
            else ROLE_FLAG[need]
        )
        return f"{self.describe()} {has}; {doing} needs role {need.label} ({where})"


def parse_members(text: str | None, flag: str) -> tuple[str, ...]:
    """A comma list of users, ``@group``s and ``*`` (every local user); ConfigError names
    the first entry that cannot be a user or group name."""
    out: list[str] = []
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry != "*" and not _MEMBER.match(entry):
            raise ConfigError(
                f"{flag}: {entry!r} is not a user, @group or '*' (a comma list, e.g. "
                "alice,@hpc-ops)"
            )
        if entry not in out:
            out.append(entry)
    return tuple(out)


@dataclass(frozen=True)
class RoleMap:
    """Who has which role. root and the daemon's own user are always admins: they own the
    daemon's files already, so refusing them would protect nothing."""

    admins: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    viewers: tuple[str, ...] = ("*",)

    def members(self) -> Iterable[tuple[Role, tuple[str, ...]]]:
        return (
            (Role.ADMIN, self.admins),
            (Role.OPERATOR, self.operators),
            (Role.VIEWER, self.viewers),
        )

    def validate(self) -> None:
        """Refuse a name NSS does not know, at start: a typo in ``--operators`` would
        otherwise leave the on-call operator without rights at 3 a.m., silently."""
        for role, entries in self.members():
            flag = ROLE_FLAG[role]
            for entry in entries:
                if entry == "*":
                    continue
                if entry.startswith("@"):
                    try:
                        grp.getgrnam(entry[1:])
                    except KeyError:
                        raise ConfigError(
                            f"{flag}: there is no group {entry[1:]!r} on this host "
                            f"(`getent group {entry[1:]}` finds nothing)"
                        ) from None
                else:
                    try:
                        pwd.getpwnam(entry)
                    except KeyError:
                        raise ConfigError(
                            f"{flag}: there is no user {entry!r} on this host "
                            f"(`getent passwd {entry}` finds nothing); for a group write @{entry}"
                        ) from None

    def role_of(self, uid: int, name: str | None, groups: frozenset[str]) -> Role:
        if uid == 0 or uid == os.geteuid():
            return Role.ADMIN
        for role, entries in self.members():
            for entry in entries:
                if entry == "*":
                    return role
                if entry.startswith("@"):
                    if entry[1:] in groups:
                        return role
                elif name is not None and entry == name:
                    return role
        return Role.NONE

    def principal_for_uid(self, uid: int) -> Principal:
        """The caller behind a uid, its groups and role looked up now (NSS may block:
        call it off the event loop)."""
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:  # a uid without a passwd entry (a container's, a deleted user's)
            return Principal(f"uid:{uid}", self.role_of(uid, None, frozenset()), f"unix uid {uid}")
        groups: set[str] = set()
        try:
            gids = os.getgrouplist(entry.pw_name, entry.pw_gid)
        except OSError:
            gids = [entry.pw_gid]
        for gid in gids:
            try:
                groups.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                continue
        role = self.role_of(uid, entry.pw_name, frozenset(groups))
        return Principal(entry.pw_name, role, f"unix uid {uid}")


def peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a connected Unix socket; None for TCP."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    _pid, uid, _gid = _CREDS.unpack(raw)
    return int(uid)


# --- tokens -----------------------------------------------------------------------------------


def new_token() -> str:
    """A fresh bearer token: 256 random bits (so an unsalted hash is enough to keep)."""
    return "tw_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the daemon's tokens file keeps of a token."""
    return f"{TOKEN_HASH}:{hashlib.sha256(token.encode()).hexdigest()}"


def token_line(name: str, role: Role, token: str) -> str:
    """One line of the daemon's tokens file: ``NAME ROLE sha256:HEX``."""
    if not _PRINCIPAL.match(name):
        raise SupervisorError(
            f"invalid token name {name!r}: letters, digits, '.', '_', '@' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return f"{name} {role.label} {hash_token(token)}"


def private_file(path: str, what: str, *, owners: Iterable[int]) -> os.stat_result:
    """Refuse a secret file that others may read or write, or that someone else owns; the
    sentence says how to fix it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SupervisorError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SupervisorError(f"{what} {path} is not a regular file")
    allowed = set(owners)
    if st.st_uid not in allowed:
        names = " or ".join(sorted(_user_name(u) for u in allowed))
        raise SupervisorError(
            f"{what} {path} belongs to {_user_name(st.st_uid)}, not {names}: "
            "a file someone else owns can be changed behind your back"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SupervisorError(
            f"{what} {path} is readable or writable by group or others (mode {mode:04o}): "
            f"chmod 600 {path}"
        )
    return st


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@dataclass(frozen=True)
class TokenEntry:
    """One principal of the tokens file."""

    name: str
    role: Role
    digest: bytes


class Tokens:
    """The daemon's tokens file: ``NAME ROLE sha256:HEX`` per line, ``#`` comments."""

    def __init__(self, entries: Iterable[TokenEntry], source: str = "") -> None:
        self.entries = tuple(entries)
        self.source = source

    @classmethod
    def load(cls, path: str) -> Tokens:
        """Read and check the file; ConfigError with the file, line and fix otherwise."""
        try:
            private_file(path, "the tokens file", owners={os.geteuid(), 0})
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except SupervisorError as exc:
            raise ConfigError(f"--api-tokens: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-tokens: cannot read {path}: {exc}") from None
        entries: dict[str, TokenEntry] = {}
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"--api-tokens {path}, line {number}"
            if len(words) != 3:
                raise ConfigError(f"{where}: expected NAME ROLE {TOKEN_HASH}:HEX")
            name, role_text, digest_text = words
            if not _PRINCIPAL.match(name):
                raise ConfigError(f"{where}: {name!r} is not a principal name")
            try:
                role = Role.parse(role_text)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            scheme, _, hexdigest = digest_text.partition(":")
            try:
                digest = bytes.fromhex(hexdigest)
            except ValueError:
                digest = b""
            if scheme != TOKEN_HASH or len(digest) != hashlib.sha256().digest_size:
                raise ConfigError(
                    f"{where}: {digest_text[:20]!r} is not a {TOKEN_HASH}:HEX token hash "
                    "(trainwarden token new prints the line to add)"
                )
            if name in entries:
                raise ConfigError(f"{where}: {name!r} is listed twice")
            entries[name] = TokenEntry(name, role, digest)
        return cls(entries.values(), path)

    def find(self, token: str) -> TokenEntry | None:
        """The entry whose hash matches ``token``; every entry is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for entry in self.entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found


# --- the request's caller ---------------------------------------------------------------------


class Authenticator:
    """Turns a connection (and its ``Authorization`` header) into a :class:`Principal`."""

    def __init__(self, roles: RoleMap | None = None, tokens: Tokens | None = None) -> None:
        self.roles = roles or RoleMap()
        self.tokens = tokens

    async def identify(self, sock: Any, authorization: str | None) -> Principal:
        """The caller; Unauthenticated (401) when there is no way to know who it is."""
        uid = peer_uid(sock)
        if uid is not None:  # the Unix socket: the kernel vouches for the uid
            return await asyncio.to_thread(self.roles.principal_for_uid, uid)
        if self.tokens is None:
            raise Unauthenticated(
                "this listener knows no tokens, so it cannot tell who you are: use the "
                "daemon's Unix socket on the login node"
            )
        scheme, _, credential = (authorization or "").strip().partition(" ")
        if not authorization:
            raise Unauthenticated(
                "no credentials: over TCP the daemon needs a bearer token "
                "(trainwarden ... --token-file FILE; an admin mints one with trainwarden token new)"
            )
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer TOKEN'")
        entry = self.tokens.find(credential.strip())
        if entry is None:
            raise Unauthenticated(
                "the bearer token is not in the daemon's tokens file (mistyped, or revoked)"
            )
        return Principal(entry.name, entry.role, "token")
