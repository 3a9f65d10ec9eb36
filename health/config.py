"""One configuration file for the daemon, the agent and the CLI.

``/etc/trainwarden/trainwarden.toml`` (or ``--config FILE``, or ``$TRAINWARDEN_CONFIG``) has a
table per side, ``[daemon]``, ``[agent]`` and ``[cli]``, and ``[mqtt]`` for the broker settings
daemon and agent share. No key is listed here: a side's keys are the ``dest`` names of its
argparse options (:func:`layered` walks the parser), so a new flag gets a file key, its
environment variable if it declares one next to the option (:func:`env`), and a line in
``trainwarden config show`` without another edit. Every setting: flag > environment > file >
default. Lives in ``health/``, the lowest layer, because the agent needs it as much as the
daemon and the CLI do.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import tomllib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trainwarden.health.errors import HealthError

__all__ = [
    "DEFAULT_PATH",
    "PATH_ENV",
    "SECTIONS",
    "ConfigFile",
    "ConfigFileError",
    "Setting",
    "Settings",
    "Source",
    "Unset",
    "Value",
    "env",
    "flag_only",
    "layered",
    "resolve",
    "shared",
    "values",
]

DEFAULT_PATH = "/etc/trainwarden/trainwarden.toml"
PATH_ENV = "TRAINWARDEN_CONFIG"
SHARED_SECTION = "mqtt"
SECTIONS = ("daemon", "agent", "cli", SHARED_SECTION)
_SETTINGS_DEST = "config_settings"  # the parser's Settings, in every namespace it makes
_VALUES_DEST = "config_values"  # the resolved Values, in a resolved namespace
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# What each option declares next to its add_argument call (argparse has no place for it).
_ENV: weakref.WeakKeyDictionary[argparse.Action, str] = weakref.WeakKeyDictionary()
_SHARED: weakref.WeakKeyDictionary[argparse.Action, str] = weakref.WeakKeyDictionary()
_FLAG_ONLY: weakref.WeakSet[argparse.Action] = weakref.WeakSet()


class ConfigFileError(HealthError):
    """A configuration file or variable that cannot be used; the message says where."""


def env(action: argparse.Action, name: str) -> argparse.Action:
    """Declare ``name`` as the environment variable of ``action``'s setting."""
    _ENV[action] = name
    return action


def shared(action: argparse.Action, key: str) -> argparse.Action:
    """The setting may also come from the shared ``[mqtt]`` table, as ``key`` there."""
    _SHARED[action] = key
    return action


def flag_only(action: argparse.Action) -> argparse.Action:
    """A one-shot switch (``--once``, ``--json``): a file or a variable must not set it."""
    _FLAG_ONLY.add(action)
    return action


class Unset:
    """A layered option's argparse default. argparse leaves it where a flag is absent, so a
    parsed value that is not one came from the command line; it prints as the real default,
    for ``%(default)s`` in help texts."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)

    __repr__ = __str__


@dataclass(frozen=True)
class Source:
    """Where a value came from: ``kind`` and the flag, variable or ``file:line``."""

    kind: Literal["flag", "env", "file", "default"]
    where: str = ""

    def __str__(self) -> str:
        if self.kind in ("flag", "env"):
            return f"{self.kind} {self.where}"
        return self.where or self.kind


Kind = Literal["value", "switch", "list"]


@dataclass(frozen=True)
class Setting:
    """One option of one side, as a file key."""

    section: str
    key: str
    option: str  # its long flag
    default: Any
    kind: Kind = "value"
    env: str | None = None
    shared: str | None = None  # its key in [mqtt]
    help: str = ""
    action: argparse.Action | None = field(default=None, compare=False, repr=False)

    def parse(self, raw: Any, where: str) -> Any:
        """A file value (TOML types) or a variable's text as the flag would give it;
        ConfigFileError naming ``where`` when it is not one."""
        name = where if where.startswith("$") else f"{where}: [{self.section}] {self.key}"
        if self.kind == "switch":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
                return raw.strip().lower() in _TRUE
            raise ConfigFileError(f"{name}: {raw!r} is not true or false")
        if self.kind == "list":
            items = raw.split() if isinstance(raw, str) else raw
            if not isinstance(items, list):
                raise ConfigFileError(f'{name}: expected a list, e.g. ["a", "b"]')
            return [self._one(item, name) for item in items]
        return self._one(raw, name)

    def _one(self, raw: Any, name: str) -> Any:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ConfigFileError(
                f"{name}: expected a string or a number, not {_toml_type(raw)} {raw!r}"
            )
        text = raw if isinstance(raw, str) else str(raw)
        convert = self.action.type if self.action is not None else None
        try:
            value = convert(text) if callable(convert) else text
        except argparse.ArgumentTypeError as exc:
            raise ConfigFileError(f"{name}: {exc}") from None
        except (TypeError, ValueError):
            what = {"int": "a whole number", "float": "a number"}
            kind = what.get(getattr(convert, "__name__", ""), "a valid value")
            raise ConfigFileError(f"{name}: {text!r} is not {kind}") from None
        choices = self.action.choices if self.action is not None else None
        if choices is not None and value not in choices:
            raise ConfigFileError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value


@dataclass(frozen=True)
class Value:
    """A setting's effective value and where it came from."""

    setting: Setting
    value: Any
    source: Source


def _toml_type(raw: Any) -> str:
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, dict):
        return "a table"
    return f"a {type(raw).__name__}"


# --- the file ----------------------------------------------------------------------------------

_PART = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(rf"^\s*({_DOTTED})\s*=(.*)$")


def _split(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_PART, dotted)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line of each table and key of a TOML text (tomllib gives none), by its dotted
    path: ``("daemon", "mode") -> 12``. The first line wins; lines inside multi-line strings
    are skipped."""
    table: tuple[str, ...] = ()
    out: dict[tuple[str, ...], int] = {}
    open_quote: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if open_quote is not None:
            if line.count(open_quote) % 2:
                open_quote = None
            continue
        if header := _HEADER.match(line):
            table = _split(header.group(1))
            out.setdefault(table, n)
        elif key := _KEY.match(line):
            path = table + _split(key.group(1))
            for i in range(len(table) + 1, len(path) + 1):
                out.setdefault(path[:i], n)
            rest = key.group(2)
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2:
                    open_quote = quote
    return out


@dataclass(frozen=True)
class ConfigFile:
    """The configuration file in use (or none), its tables and the line of each key."""

    path: str
    origin: Source  # flag --config, env TRAINWARDEN_CONFIG or the default path
    found: bool = False
    data: Mapping[str, Any] = field(default_factory=dict)
    lines: Mapping[tuple[str, ...], int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | None = None, env: Mapping[str, str] | None = None) -> ConfigFile:
        """``path`` (``--config``), else ``$TRAINWARDEN_CONFIG``, else the default file. A
        missing default file is no file; a missing file that was named is an error."""
        e = os.environ if env is None else env
        if path:
            origin = Source("flag", "--config")
        elif e.get(PATH_ENV):
            path, origin = e[PATH_ENV], Source("env", PATH_ENV)
        else:
            path, origin = DEFAULT_PATH, Source("default")
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            if origin.kind == "default":
                return cls(path, origin)
            raise ConfigFileError(f"{path}: no such configuration file ({origin})") from None
        except OSError as exc:
            raise ConfigFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8")
            data = tomllib.loads(text)
        except UnicodeDecodeError:
            raise ConfigFileError(f"{path}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(f"{path}: invalid TOML: {exc}") from None
        found = cls(path, origin, True, data, key_lines(text))
        found.check_sections()
        return found

    def where(self, *path: str) -> str:
        """``file:line`` of a key (or table), or the file alone when the line is unknown."""
        for i in range(len(path), 0, -1):
            if (line := self.lines.get(path[:i])) is not None:
                return f"{self.path}:{line}"
        return self.path

    def table(self, section: str) -> Mapping[str, Any]:
        value = self.data.get(section, {})
        return value if isinstance(value, dict) else {}

    def check_sections(self) -> None:
        for name, value in self.data.items():
            if name not in SECTIONS:
                raise ConfigFileError(
                    f"{self.where(name)}: unknown key {name!r}: the file has tables "
                    f"{', '.join(f'[{s}]' for s in SECTIONS)}{_hint(name, SECTIONS)}"
                )
            if not isinstance(value, dict):
                raise ConfigFileError(f"{self.where(name)}: {name} must be a table ([{name}])")


def _hint(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- one side's settings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The settings of one side (``daemon``, ``agent``, ``cli``), in option order."""

    section: str
    items: tuple[Setting, ...]

    def __getitem__(self, key: str) -> Setting:
        for item in self.items:
            if item.key == key:
                return item
        raise KeyError(key)

    def check(self, file: ConfigFile) -> None:
        """Every key of this side's table, and of ``[mqtt]`` if it reads that, is known."""
        keys = {s.key for s in self.items}
        for key in file.table(self.section):
            if key not in keys:
                raise ConfigFileError(
                    f"{file.where(self.section, key)}: unknown key {key!r} in [{self.section}]"
                    f"{_hint(key, keys)}; `trainwarden config show --for {self.section}` "
                    "lists the keys"
                )
        mqtt = {s.shared for s in self.items if s.shared}
        for key in file.table(SHARED_SECTION) if mqtt else ():
            if key not in mqtt:
                raise ConfigFileError(
                    f"{file.where(SHARED_SECTION, key)}: unknown key {key!r} in "
                    f"[{SHARED_SECTION}]{_hint(key, mqtt)} (it has {', '.join(sorted(mqtt))})"
                )

    def resolve(
        self, given: Mapping[str, Any], file: ConfigFile, env: Mapping[str, str]
    ) -> dict[str, Value]:
        """Each setting's value: ``given`` (flags) > ``env`` > ``file`` > default. Every file
        value of this side is checked, even one a flag overrides: a bad file is an error."""
        self.check(file)
        out: dict[str, Value] = {}
        for s in self.items:
            from_file = self._from_file(s, file)
            if s.key in given:
                out[s.key] = Value(s, given[s.key], Source("flag", s.option))
            elif s.env is not None and s.env in env:
                out[s.key] = Value(s, s.parse(env[s.env], f"${s.env}"), Source("env", s.env))
            elif from_file is not None:
                out[s.key] = from_file
            else:
                default = list(s.default) if s.kind == "list" else s.default
                out[s.key] = Value(s, default, Source("default"))
        return out

    def _from_file(self, s: Setting, file: ConfigFile) -> Value | None:
        for section, key in ((self.section, s.key), (SHARED_SECTION, s.shared)):
            table = file.table(section)
            if key is not None and key in table:
                where = file.where(section, key)
                return Value(s, s.parse(table[key], where), Source("file", where))
        return None

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings the command line gave (its values not left :class:`Unset`)."""
        out: dict[str, Any] = {}
        for s in self.items:
            value = getattr(args, s.key, None)
            if not isinstance(value, Unset) and not (s.kind == "list" and value is None):
                out[s.key] = value
        return out


def _kind(action: argparse.Action) -> Kind:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return "switch"
    if isinstance(action, argparse._AppendAction) and action.nargs is None:
        return "list"
    if type(action) is argparse._StoreAction and action.nargs is None:
        return "value"
    raise TypeError(
        f"{action.option_strings[0]}: a {type(action).__name__} cannot be a configuration "
        "setting; mark it flag_only() or make it a plain, switch or append option"
    )


def _default(action: argparse.Action) -> Any:
    """The default argparse would give (a string default goes through ``type``)."""
    value = action.default
    if isinstance(value, str) and callable(action.type):
        value = action.type(value)
    if isinstance(action, argparse._AppendAction):
        value = list(value or [])
    return value


def layered(parser: argparse.ArgumentParser, section: str) -> Settings:
    """Make ``parser``'s options the settings of ``section`` and return them.

    Each option's default becomes an :class:`Unset` (an append option's ``None``), so that a
    given flag can be told apart; ``--config FILE`` is added; the parser's namespaces carry
    the settings for :func:`resolve`. Positional, suppressed and :func:`flag_only` options
    are not settings."""
    items: list[Setting] = []
    for action in parser._actions:
        if (
            not action.option_strings
            or action.help == argparse.SUPPRESS
            or action in _FLAG_ONLY
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            continue
        kind = _kind(action)
        item = Setting(
            section=section,
            key=action.dest,
            option=max(action.option_strings, key=len),
            default=_default(action),
            kind=kind,
            env=_ENV.get(action),
            shared=_SHARED.get(action),
            help=_help(action, parser.prog),
            action=action,
        )
        items.append(item)
        action.default = None if kind == "list" else Unset(item.default)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"configuration file, its [{section}] table (default ${PATH_ENV}, else "
        f"{DEFAULT_PATH}; that one may be absent); flags beat environment beat file",
    )
    settings = Settings(section, tuple(items))
    parser.set_defaults(**{_SETTINGS_DEST: settings})
    return settings


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % {**vars(action), "prog": prog}
    return " ".join(text.split())


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> argparse.Namespace:
    """``args`` of a :func:`layered` parser with every setting filled in (flag > environment
    > file > default), carrying each value's :class:`Source` (see :func:`values`). A
    resolved namespace comes back as it is."""
    if hasattr(args, _VALUES_DEST):
        return args
    settings: Settings = getattr(args, _SETTINGS_DEST)
    e = os.environ if env is None else env
    file = ConfigFile.load(getattr(args, "config", None), e)
    resolved = settings.resolve(settings.given(args), file, e)
    out = argparse.Namespace(**vars(args))
    for key, value in resolved.items():
        setattr(out, key, value.value)
    setattr(out, _VALUES_DEST, resolved)
    out.config_file = file
    return out


def values(args: argparse.Namespace) -> dict[str, Value]:
    """The values of a :func:`resolve`-d namespace, with their sources, in option order."""
    found: dict[str, Value] = getattr(resolve(args), _VALUES_DEST)
    return found
