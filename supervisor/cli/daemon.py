"""``trainwarden daemon``: the login-node service.

Its operator API is a Unix socket (``--api PATH``) whose callers are known by uid and given
roles (``--viewers``, ``--operators``, ``--admins``); remote operators use ``--api-tcp`` with
TLS and bearer tokens; ``/metrics`` and ``/healthz`` have their own listener (``--metrics``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable
from typing import Any

from trainwarden.health.config import SHARED_SECTION, ConfigFile, env, layered, resolve, shared
from trainwarden.health.logsetup import (
    add_log_format_argument,
    configure_logging,
    package_version,
)
from trainwarden.health.mqtt import add_auth_arguments, auth_from_args
from trainwarden.health.report import NAME_PATTERN
from trainwarden.policies import hostlist
from trainwarden.supervisor.api.auth import (
    DEFAULT_API_SOCKET,
    ROLE_ENV,
    Role,
    RoleMap,
    parse_members,
)
from trainwarden.supervisor.daemon.process import DaemonConfig, run_daemon
from trainwarden.supervisor.daemon.supervisor import CoreConfig
from trainwarden.supervisor.errors import ConfigError
from trainwarden.supervisor.store.engine import default_url

NAME_RE = re.compile(NAME_PATTERN)
log = logging.getLogger(__name__)


def _hostport(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", str(default_port))
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ConfigError(f"{text!r} is not HOST:PORT") from None


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "daemon",
        help="run the supervisor daemon (login node)",
        description="Subscribe to agents and ranks, detect failures, drain and restart. "
        "Every option is also a key of the configuration file's [daemon] table (--config); "
        "`trainwarden config show --for daemon` prints what is in effect and why.",
    )
    arg = p.add_argument
    env(
        arg(
            "--db",
            default=None,
            help="database URL (default $TRAINWARDEN_DB_URL or a SQLite file in the state dir)",
        ),
        "TRAINWARDEN_DB_URL",
    )
    broker = arg("--broker", default="127.0.0.1:1883", help="MQTT broker HOST:PORT")
    shared(env(broker, "TRAINWARDEN_BROKER"), "broker")
    env(
        arg(
            "--api",
            metavar="PATH",
            default=DEFAULT_API_SOCKET,
            help="the operator API's Unix socket (mode 0666: the caller's role decides) "
            f"(default $TRAINWARDEN_API_SOCKET or {DEFAULT_API_SOCKET})",
        ),
        "TRAINWARDEN_API_SOCKET",
    )
    env(
        arg(
            "--metrics",
            metavar="HOST:PORT",
            default="127.0.0.1:8470",
            help="serve GET /metrics and /healthz, read-only and without credentials, on "
            "HOST:PORT (default $TRAINWARDEN_METRICS_BIND or 127.0.0.1:8470)",
        ),
        "TRAINWARDEN_METRICS_BIND",
    )
    env(
        arg(
            "--api-tcp",
            metavar="HOST:PORT",
            default=None,
            help="also serve the API on TCP for remote operators (off by default); needs "
            "--api-tls-cert, --api-tls-key and --api-tokens ($TRAINWARDEN_API_TCP)",
        ),
        "TRAINWARDEN_API_TCP",
    )
    env(arg("--api-tls-cert", metavar="FILE", default=None), "TRAINWARDEN_API_TLS_CERT")
    env(arg("--api-tls-key", metavar="FILE", default=None), "TRAINWARDEN_API_TLS_KEY")
    env(
        arg(
            "--api-tokens",
            metavar="FILE",
            default=None,
            help="the TCP API's principals: NAME ROLE sha256:HEX per line (trainwarden token "
            "new prints one); owned by the daemon's user, mode 0600; reread on SIGHUP",
        ),
        "TRAINWARDEN_API_TOKENS",
    )
    for role, flag, what in (
        (Role.VIEWER, "--viewers", "read nodes, runs, events, actions (default '*': everyone)"),
        (Role.OPERATOR, "--operators", "also drain, undrain, approve, reject, restart, close"),
        (Role.ADMIN, "--admins", "also add runs; root and the daemon's user always are"),
    ):
        members = arg(
            flag,
            metavar="LIST",
            default="*" if role is Role.VIEWER else "",
            help=f"users, @groups or '*', comma-separated, who may {what} "
            f"(default ${ROLE_ENV[role]})",
        )
        env(members, ROLE_ENV[role])
    env(arg("--scheduler", choices=["local", "slurm"], default="slurm"), "TRAINWARDEN_SCHEDULER")
    arg(
        "--local-nodes",
        default="",
        metavar="HOSTLIST",
        help="local scheduler: its nodes, as a Slurm hostlist (n1,n2, nid[000000-019999], "
        "rack[1-2]-n[01-16]; repeats dropped)",
    )
    arg("--local-log-dir", default="/tmp/trainwarden-local")
    env(arg("--slurm-conf", default=None, help="slurm.conf (default $SLURM_CONF)"), "SLURM_CONF")
    env(
        arg("--policy", default=None, help="policy file (default: the shipped policy)"),
        "TRAINWARDEN_POLICY",
    )
    env(
        arg("--mode", choices=["enforce", "dry-run", "approve"], default="enforce"),
        "TRAINWARDEN_MODE",
    )
    arg("--heartbeat-misses", type=float, default=3.0)
    arg(
        "--will-confirm",
        type=float,
        default=2.0,
        help="seconds after a last will without heartbeat before a node is dead",
    )
    arg("--hang-floor", type=float, default=30.0)
    arg("--hang-k", type=float, default=2.0)
    arg(
        "--startup-timeout",
        type=float,
        default=1800.0,
        help="seconds an attempt may take to its first step before it is hung",
    )
    arg(
        "--client-id",
        default="trainwarden-daemon",
        help="MQTT client id; the broker keeps this daemon's session under it (a broker "
        "with use_username_as_clientid, as shipped, uses the user name instead)",
    )
    arg(
        "--lease-ttl",
        type=_positive,
        default=15.0,
        metavar="S",
        help="leader lease: a standby takes over this long after the leader stops renewing",
    )
    add_auth_arguments(p)
    arg("--log-level", default="INFO")
    add_log_format_argument(p)
    p.set_defaults(func=run)
    layered(p, "daemon")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1.0 <= value <= 3600.0:
        raise argparse.ArgumentTypeError(f"{text} s is outside 1 s to 3600 s")
    return value


def local_nodes(text: str) -> tuple[str, ...]:
    """``--local-nodes``: a Slurm hostlist -> its node names; ConfigError when unreadable."""
    try:
        names = hostlist.expand(text)
    except ValueError as exc:
        raise ConfigError(f"--local-nodes: {exc}") from None
    for name in names:
        if not NAME_RE.match(name):
            raise ConfigError(
                f"--local-nodes: {name!r} is not a node name (letters, digits, '.', '_', '-'; "
                "at most 128 characters)"
            )
    return names


def api_socket(text: str) -> str:
    """``--api``: the socket's path. An old ``HOST:PORT`` value gets the sentence that
    explains where its two roles went (the API to a socket, /metrics to ``--metrics``)."""
    value = text.strip()
    if not value:
        raise ConfigError(
            f"--api: give the path of the API's socket (default {DEFAULT_API_SOCKET})"
        )
    if "/" not in value and re.fullmatch(r"\[?[\w.:-]*\]?:\d+", value):
        raise ConfigError(
            f"--api {text!r}: --api now takes the path of the operator API's Unix socket "
            f"(default {DEFAULT_API_SOCKET}), where callers are known by their uid. For "
            "/metrics and /healthz on HOST:PORT use --metrics HOST:PORT (default "
            "127.0.0.1:8470); for remote operators --api-tcp HOST:PORT with --api-tls-cert, "
            "--api-tls-key and --api-tokens"
        )
    return os.path.abspath(value)


def role_map(args: argparse.Namespace) -> RoleMap:
    return RoleMap(
        admins=parse_members(args.admins, "--admins"),
        operators=parse_members(args.operators, "--operators"),
        viewers=parse_members(args.viewers, "--viewers"),
    )


def build_config(args: argparse.Namespace) -> DaemonConfig:
    """The daemon's configuration from its arguments (filled in from the environment and
    the configuration file first); ConfigError names a bad one."""
    args = resolve(args)
    bhost, bport = _hostport(args.broker, 1883)
    mhost, mport = _hostport(args.metrics, 8470)
    thost, tport = _hostport(args.api_tcp, 0) if args.api_tcp else (None, 0)
    return DaemonConfig(
        db_url=args.db or default_url(),
        broker_host=bhost,
        broker_port=bport,
        api_socket=api_socket(args.api),
        api_tcp_host=thost,
        api_tcp_port=tport,
        api_tls_cert=args.api_tls_cert or None,
        api_tls_key=args.api_tls_key or None,
        api_tokens=args.api_tokens or None,
        metrics_host=mhost,
        metrics_port=mport,
        roles=role_map(args),
        scheduler=args.scheduler,
        local_nodes=local_nodes(args.local_nodes),
        local_log_dir=args.local_log_dir,
        slurm_conf=args.slurm_conf,
        policy_file=args.policy,
        mode=args.mode,
        client_id=args.client_id,
        mqtt_auth=auth_from_args(args),
        lease_ttl_s=args.lease_ttl,
        core=CoreConfig(
            heartbeat_misses=args.heartbeat_misses,
            will_confirm_s=args.will_confirm,
            hang_floor_s=args.hang_floor,
            hang_k=args.hang_k,
            startup_timeout_s=args.startup_timeout,
        ),
    )


def rereader(given: argparse.Namespace, first: ConfigFile) -> Callable[[], DaemonConfig]:
    """What SIGHUP calls: ``given`` (the arguments as parsed) resolved again against the
    file, as the daemon's environment still is (a changed ``daemon.env`` needs a restart).
    A file read at start that is now gone, or now names no setting at all (being rewritten,
    truncated), is refused: read as no file, it would put every setting, the roles among
    them, back to its default."""

    def settings(f: ConfigFile) -> int:
        return sum(len(f.table(section)) for section in ("daemon", SHARED_SECTION))

    def reread() -> DaemonConfig:
        again = resolve(given)
        now: ConfigFile = again.config_file
        if first.found and not now.found:
            raise ConfigError(f"{now.path} was read at start and is gone now")
        if settings(first) and not settings(now):
            raise ConfigError(
                f"{now.path} names no setting now (it named {settings(first)} at start); "
                "restart the daemon to run with the defaults"
            )
        return build_config(again)

    return reread


def run(args: argparse.Namespace) -> int:
    given = args  # as parsed: SIGHUP resolves it again against the file
    args = resolve(args)
    configure_logging(args.log_level, args.log_format)
    cfg = build_config(args)
    if os.environ.get("TRAINWARDEN_API_BIND"):  # said once, not at every SIGHUP
        log.warning(
            "$TRAINWARDEN_API_BIND is no longer read: the API is a Unix socket (--api, "
            "$TRAINWARDEN_API_SOCKET), /metrics is on --metrics ($TRAINWARDEN_METRICS_BIND)"
        )
    file = args.config_file
    log.info("configuration file %s%s", file.path, "" if file.found else " (absent: not read)")
    log.info(
        "trainwarden %s daemon starting (scheduler %s, mode %s, database %s)",
        package_version(),
        cfg.scheduler,
        cfg.mode,
        cfg.db_url.split("://", 1)[0],
    )
    try:
        return run_daemon(cfg, reread=rereader(given, file))
    finally:
        log.info("trainwarden %s daemon stopped", package_version())
