"""``trainwarden config show`` and ``trainwarden config example``: the configuration file.

``show`` prints the settings the daemon, the agent and the CLI would run with here, each with
where it came from (flag, env VAR, file:line, default), as TOML with the sources as comments,
or ``--json``; ``example`` prints a file with every key commented out at its default (how
deploy/trainwarden.toml was made). Both read the options from the commands' own parsers, so
neither can drift from them.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from trainwarden.health import config
from trainwarden.health.cli import agent as agent_cli
from trainwarden.supervisor.api.client import add_api_arguments, cli_config, cli_settings
from trainwarden.supervisor.cli import daemon as daemon_cli
from trainwarden.supervisor.errors import ConfigError

SIDES = ("daemon", "agent", "cli")
WIDTH = 92


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Fresh ``daemon`` and ``agent`` parsers, made by the commands' own ``register``."""
    top = argparse.ArgumentParser(prog="trainwarden")
    sub = top.add_subparsers()
    daemon_cli.register(sub)
    agent_cli.register(sub)
    return {name: sub.choices[name] for name in ("daemon", "agent")}


def side_settings() -> dict[str, config.Settings]:
    """Each side's settings, in option order."""
    out = {name: parser.get_default("config_settings") for name, parser in _parsers().items()}
    return {**out, "cli": cli_settings()}


def effective(
    side: str,
    argv: Sequence[str] = (),
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[list[config.Value], config.ConfigFile]:
    """The values ``trainwarden <side> ARGV`` would run with, and the file it would read."""
    e = os.environ if env is None else env
    if side == "cli":
        parser = argparse.ArgumentParser(prog="trainwarden config show --for cli --")
        add_api_arguments(parser)
        args = parser.parse_args(list(argv))
        file = config.ConfigFile.load(config_path, e)
        return list(cli_config(args, config_path=config_path, env=e).values()), file
    extra = ["--config", config_path] if config_path else []
    args = config.resolve(_parsers()[side].parse_args([*argv, *extra]), e)
    return list(config.values(args).values()), args.config_file


def toml_value(value: Any) -> str:
    """``value`` as TOML (JSON's string escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _left(v: config.Value) -> str:
    if v.value is None:
        return f"# {v.setting.key} (unset)"
    return f"{v.setting.key} = {toml_value(v.value)}"


def render_text(sections: Mapping[str, list[config.Value]], file: config.ConfigFile) -> str:
    state = "" if file.found else "; absent, nothing read"
    lines = [f"# configuration file: {file.path} ({file.origin}{state})"]
    for side, found in sections.items():
        lines += ["", f"[{side}]"]
        rows = [(_left(v), v) for v in found]
        width = min(max(len(left) for left, _ in rows), 48)
        for left, v in rows:
            source = str(v.source)
            if v.source.kind == "file" and v.setting.key not in file.table(side):
                source += f" ([{config.SHARED_SECTION}] {v.setting.shared})"
            lines.append(f"{left:<{width}}  # {source}")
    return "\n".join(lines) + "\n"


def render_json(sections: Mapping[str, list[config.Value]], file: config.ConfigFile) -> str:
    out: dict[str, Any] = {
        "file": {"path": file.path, "source": str(file.origin), "found": file.found}
    }
    for side, found in sections.items():
        out[side] = {
            v.setting.key: {
                "value": v.value,
                "source": v.source.kind,
                "where": v.source.where or None,
                "option": v.setting.option,
                "env": v.setting.env,
            }
            for v in found
        }
    return json.dumps(out, indent=2, default=str)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(
        text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False
    )


def _example_entry(s: config.Setting, shared_as: str | None = None) -> list[str]:
    names = [s.option] + ([f"${s.env}"] if s.env and f"${s.env}" not in s.help else [])
    choices = s.action.choices if s.action is not None else None
    if choices:
        names.append(f"one of {', '.join(map(str, choices))}")
    if s.shared and shared_as is None:
        names.append(f"[{config.SHARED_SECTION}] {s.shared}")
    lines = _comment(f"{s.help} ({', '.join(names)})" if s.help else f"({', '.join(names)})")
    key = shared_as or s.key
    value = toml_value(s.default) if s.default is not None else " # unset by default"
    return [*lines, f"#{key} ={'' if s.default is None else ' '}{value}", ""]


EXAMPLE_HEAD = """\
# trainwarden.toml: the settings of `trainwarden daemon` ([daemon]), `trainwarden agent`
# ([agent]) and the operator CLI ([cli]); [mqtt] holds broker settings both daemon and agent
# read where their own table has no such key. One file may serve the login and the compute
# nodes. Keys are the commands' long options with '_' for '-'; every key is shown below
# commented out, at its default. For every setting a flag beats the environment, which beats
# this file, which beats the default: `trainwarden config show` prints what is in effect
# and where each value came from. Read from /etc/trainwarden/trainwarden.toml, --config FILE
# or $TRAINWARDEN_CONFIG; an unknown key or a bad value stops the command, naming its line.
"""


def render_example(settings: Mapping[str, config.Settings]) -> str:
    lines = [EXAMPLE_HEAD]
    shared: dict[str, config.Setting] = {}
    for side in SIDES:
        lines.append(f"[{side}]")
        lines.append("")
        for s in settings[side].items:
            lines += _example_entry(s)
            if s.shared:
                shared.setdefault(s.shared, s)
    lines.append(f"[{config.SHARED_SECTION}]")
    lines += _comment("Shared by daemon and agent; a key of [daemon] or [agent] wins.")
    lines.append("")
    for key, s in shared.items():
        lines += _example_entry(s, shared_as=key)
    return "\n".join(lines).rstrip("\n") + "\n"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "config",
        help="show the effective configuration, or print an example file",
        description="The configuration file (/etc/trainwarden/trainwarden.toml, --config "
        "FILE or $TRAINWARDEN_CONFIG) of the daemon, the agent and the CLI.",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    show = sub.add_parser(
        "show",
        help="print the settings in effect and where each came from",
        description="The settings daemon, agent and CLI would run with here, each with its "
        "source: flag, env VAR, FILE:LINE or default. Give a command's flags after '--' "
        "(with --for) to see what that command line would run with.",
    )
    show.add_argument(
        "--config",
        metavar="FILE",
        help=f"the file (default $TRAINWARDEN_CONFIG, else {config.DEFAULT_PATH})",
    )
    show.add_argument("--for", dest="side", choices=SIDES, help="one side only")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("argv", nargs="*", metavar="ARGS", help="that side's flags, after --")
    show.set_defaults(func=run_show)
    example = sub.add_parser(
        "example", help="print a file with every key commented out at its default"
    )
    example.set_defaults(func=run_example)


def run_show(args: argparse.Namespace) -> int:
    if args.argv and args.side is None:
        raise ConfigError("config show: flags after -- need --for daemon, agent or cli")
    sections: dict[str, list[config.Value]] = {}
    file = config.ConfigFile.load(args.config)  # one file for every side
    for side in [args.side] if args.side else SIDES:
        sections[side], file = effective(side, args.argv, args.config)
    print(render_json(sections, file) if args.json else render_text(sections, file), end="")
    if args.json:
        print()
    return 0


def run_example(args: argparse.Namespace) -> int:
    print(render_example(side_settings()), end="")
    return 0
