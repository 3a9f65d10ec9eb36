"""`trainwarden policy check [FILE]` and `trainwarden policy show`: validate or print a policy."""

from __future__ import annotations

import argparse
from typing import Any

from trainwarden.policies.rules import default_policy_text, describe_duration, load_policy


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("policy", help="validate or show a policy file")
    sub = parser.add_subparsers(dest="policy_command", metavar="ACTION")
    sub.required = True
    check = sub.add_parser("check", help="validate a policy file (the shipped default if none)")
    check.add_argument("file", nargs="?", help="policy YAML file (default: the shipped policy)")
    check.set_defaults(func=run_check)
    show = sub.add_parser("show", help="print the shipped default policy")
    show.set_defaults(func=run_show)


def run_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)  # PolicyError -> main prints it, exit 2
    gd = policy.guards
    print(
        f"ok: {policy.source}: {len(policy.rules)} rules, {len(policy.xid_overrides)} XID overrides"
    )
    for rule in policy.rules:
        t = rule.when
        when = (
            f"{t.condition.value} {'set' if t.status else 'cleared'}"
            if t.condition
            else f"event {t.event.value if t.event else '?'}"
            + (f" x{t.count} within {describe_duration(t.within_s)}" if t.count > 1 else "")
        )
        print(f"  {rule.name}: {when} -> {', '.join(a.value for a in rule.then)}")
    print(
        f"  guards: drains <= {gd.drains.max_per_window}/{describe_duration(gd.drains.window_s)}, "
        f"<= {gd.drains.max_cluster_fraction:.0%} of cluster, "
        f"<= {gd.drains.max_run_fraction:.0%} of a run; cooldown "
        f"{describe_duration(gd.cooldown_s)}; restart budget {gd.restarts.budget}/"
        f"{describe_duration(gd.restarts.window_s)}; crash loop at "
        f"{gd.crash_loop.same_step_failures} same-step failures; correlation "
        f">= {gd.correlation.min_nodes} nodes in {describe_duration(gd.correlation.window_s)}; "
        f"lemon window {describe_duration(gd.lemon_window_s)}"
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    print(default_policy_text(), end="")
    return 0
