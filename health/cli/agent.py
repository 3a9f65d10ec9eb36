"""``trainwarden agent``: run the node agent, or one probe round with ``--once``.

The agent also relays its node's training ranks' step reports (``--relay``): ranks send
them to a local Unix datagram socket instead of each holding a broker connection, and
the agent publishes them batched, one ``NodeSteps`` message per node every
``--relay-flush`` seconds (see :mod:`trainwarden.health.agent`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from trainwarden.health import config
from trainwarden.health.agent import Agent, AgentConfig
from trainwarden.health.errors import HealthError
from trainwarden.health.hardware import Hardware
from trainwarden.health.logsetup import add_log_format_argument, configure_logging, package_version
from trainwarden.health.mqtt import add_auth_arguments, auth_from_args, parse_broker, short_hostname
from trainwarden.health.probes.network import NetThresholds
from trainwarden.health.probes.registry import ProbeConfig, real_hardware
from trainwarden.health.report import DEFAULT_RELAY_PATH, check_name
from trainwarden.health.sim.hardware import SimulatedHardware

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "agent",
        help="run the health agent on this node",
        description="Probe this node's GPUs, interconnect, storage and host and publish the "
        "results over MQTT (or print one round with --once). The agent also relays the step "
        "reports of this node's training ranks: ranks whose reporter finds the relay socket "
        "(or is given TRAINWARDEN_RELAY) send their reports there instead of connecting to "
        "the broker, and the agent publishes them batched, one message per node per flush, "
        "after the same checks as the daemon's; a report naming another node is rejected. "
        "Checkpoint reports are forwarded at once. Any local user who can write the socket "
        "can report steps for any run on this node (the default mode 666 lets every job "
        "user's ranks in -- the ranks do not run as the agent's user); use --relay-mode 660 "
        "and a group shared with the job users to narrow it. Every option is also a key of "
        "the configuration file's [agent] table (--config).",
    )
    p.add_argument("--node", help="node name (default: the short hostname)")
    broker = p.add_argument(
        "--broker",
        default="127.0.0.1:1883",
        metavar="HOST:PORT",
        help="MQTT broker (default: $TRAINWARDEN_BROKER, else %(default)s)",
    )
    config.shared(config.env(broker, "TRAINWARDEN_BROKER"), "broker")
    p.add_argument(
        "--interval",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between health reports (default: %(default)s)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between heartbeats (default: %(default)s)",
    )
    expect = p.add_argument(
        "--expect-gpus",
        type=int,
        metavar="N",
        help="GPUs this node must have (fewer is a fault; default $TRAINWARDEN_EXPECT_GPUS)",
    )
    config.env(expect, "TRAINWARDEN_EXPECT_GPUS")
    p.add_argument(
        "--storage",
        action="append",
        default=[],
        metavar="PATH",
        help="filesystem to check (repeatable; default: /tmp)",
    )
    p.add_argument(
        "--probe-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="time limit of one probe (default: %(default)s)",
    )
    p.add_argument(
        "--simulate",
        action="append",
        default=[],
        metavar="FAULT",
        help="use simulated hardware with this fault injected (repeatable)",
    )
    p.add_argument(
        "--simulated-hardware",
        metavar="STATE_DIR",
        help="use simulated hardware kept in STATE_DIR (faults can be injected "
        "there by another process while the agent runs)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=4,
        metavar="N",
        help="GPUs of the simulated hardware (default: %(default)s)",
    )
    once = p.add_argument(
        "--once",
        action="store_true",
        help="run one probe round, print it and exit (no broker needed)",
    )
    config.flag_only(once)
    config.flag_only(p.add_argument("--json", action="store_true", help="print the report as JSON"))
    fabric = p.add_argument(
        "--fabric-domain",
        default=None,
        metavar="NAME",
        help="the leaf switch / rack / Slingshot group this node's links hang off "
        "(site topology); link faults name it as their shared cause "
        "(default $TRAINWARDEN_FABRIC_DOMAIN)",
    )
    config.env(fabric, "TRAINWARDEN_FABRIC_DOMAIN")
    relay = p.add_argument(
        "--relay",
        metavar="PATH",
        help="Unix datagram socket the node's training ranks report to ('off': no relay; "
        f"default: $TRAINWARDEN_RELAY, else {DEFAULT_RELAY_PATH} -- but only for the real "
        "node agent: with simulated hardware or a --node other than the host name, the "
        "relay is off unless given)",
    )
    config.env(relay, "TRAINWARDEN_RELAY")
    p.add_argument(
        "--relay-mode",
        default="666",
        metavar="OCTAL",
        help="file mode of the relay socket: who may report steps to it (default: "
        "%(default)s, every local user; 660 for the socket's group only)",
    )
    p.add_argument(
        "--relay-flush",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between the relay's batched step-report messages; a rank's first "
        "report of an attempt and checkpoints go at once (default: %(default)s)",
    )
    add_auth_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_log_format_argument(p)
    p.set_defaults(func=run)
    config.layered(p, "agent")


def run(args: argparse.Namespace) -> int:
    args = config.resolve(args)
    configure_logging("DEBUG" if args.verbose else "INFO", args.log_format)
    node = check_name("node", args.node or short_hostname())
    if args.interval <= 0 or args.heartbeat <= 0 or args.probe_timeout <= 0:
        raise HealthError("--interval, --heartbeat and --probe-timeout must be positive")
    if args.expect_gpus is not None and args.expect_gpus < 0:
        raise HealthError("--expect-gpus must not be negative")
    if args.gpus < 0:
        raise HealthError("--gpus must not be negative")
    if args.relay_flush <= 0:
        raise HealthError("--relay-flush must be positive")
    try:
        relay_mode = int(args.relay_mode, 8)
    except ValueError:
        raise HealthError(f"--relay-mode {args.relay_mode!r} is not an octal mode") from None
    if not 0 <= relay_mode <= 0o777:
        raise HealthError(f"--relay-mode {args.relay_mode!r} is not a file mode (000-777)")
    host, port = parse_broker(args.broker)
    # A simulated node created just now has a kernel log of its own: read it from the
    # start, so faults given with --simulate show in the first round.
    fresh_sim = bool(args.simulate) and args.simulated_hardware is None
    probe_config = ProbeConfig(
        expected_gpus=args.expect_gpus,
        storage_paths=tuple(args.storage),
        timeout_s=args.probe_timeout,
        kmsg_from_start=fresh_sim,
        network=NetThresholds(fabric_domain=args.fabric_domain),
    )
    try:
        hardware = _hardware(args, node, probe_config)
    except (OSError, ValueError) as exc:
        raise HealthError(f"cannot set up the simulated hardware: {exc}") from exc
    if args.node is None and args.simulated_hardware:
        node = hardware.node  # an existing simulated node keeps the name it was created with
    agent_config = AgentConfig(
        node=node,
        broker_host=host,
        broker_port=port,
        report_interval_s=args.interval,
        heartbeat_interval_s=args.heartbeat,
        probes=probe_config,
        auth=auth_from_args(args, default_username=node),  # the node is its broker user
        relay_path=_relay_path(args, node),
        relay_mode=relay_mode,
        relay_flush_interval_s=args.relay_flush,
    )
    agent = Agent(agent_config, hardware)
    if args.once:
        report = asyncio.run(agent.collect())
        if args.json:
            print(report.model_dump_json(indent=2))
        else:
            _print_table(report.model_dump(mode="json"))
        return 0
    asyncio.run(_serve(agent))
    return 0


def _relay_path(args: argparse.Namespace, node: str) -> str | None:
    """The relay socket, or None. By default (and from ``$TRAINWARDEN_RELAY``, which the
    node's ranks read too) only the node's real agent binds one: a simulated node (demo,
    tests) sharing this host would take the real node's ranks."""
    value = args.relay
    if config.values(args)["relay"].source.kind in ("env", "default"):
        if args.simulate or args.simulated_hardware or node != short_hostname():
            return None
        value = value or DEFAULT_RELAY_PATH
    value = value.strip()
    return None if value.lower() in ("", "off", "none") else value


def _hardware(args: argparse.Namespace, node: str, probe_config: ProbeConfig) -> Hardware:
    if args.simulate or args.simulated_hardware:
        sim = SimulatedHardware(node, gpus=args.gpus, state_dir=args.simulated_hardware)
        for fault in args.simulate:
            sim.inject(fault)
        return sim
    return real_hardware(probe_config)


async def _serve(agent: Agent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # The version in the journal at every start and stop: which agent ran when, after upgrades.
    cfg, ver = agent.config, package_version()
    log.info(
        "trainwarden agent %s starting: node %s, broker %s:%d",
        ver,
        cfg.node,
        cfg.broker_host,
        cfg.broker_port,
        extra={"version": ver, "node": cfg.node},
    )
    try:
        await agent.run(stop)
    finally:
        log.info(
            "trainwarden agent %s stopped: node %s",
            ver,
            cfg.node,
            extra={"version": ver, "node": cfg.node},
        )


def _print_table(report: dict[str, Any]) -> None:
    print(f"node {report['node']}: {report['overall']}")
    width = max([len(p["probe"]) for p in report["probes"]] + [8])
    for probe in report["probes"]:
        print(f"  {probe['probe']:<{width}}  {probe['health']:<10} {probe['reason']}")
        for fault in probe["faults"]:
            print(f"      fault {fault['kind']} ({fault['severity']}): {fault['detail']}")
    sys.stdout.flush()
