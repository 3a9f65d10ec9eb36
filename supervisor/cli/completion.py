"""``trainwarden completion bash|zsh|fish``: a shell completion script for ``trainwarden``.

The script is generated from the argparse tree itself (every command, sub-command, option
and choice), so it cannot drift from the commands; no completion library is needed, and
the shell runs no Python while completing. Install, e.g.::

    trainwarden completion bash > /etc/bash_completion.d/trainwarden
    trainwarden completion zsh > "${fpath[1]}/_trainwarden"
    trainwarden completion fish > ~/.config/fish/completions/trainwarden.fish
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

SHELLS = ("bash", "zsh", "fish")
PROG = "trainwarden"
# Words a completion offers are plain: anything else (spaces, quotes, globs) is left out
# rather than quoted differently for each shell.
_PLAIN = re.compile(r"^[A-Za-z0-9_.:/@+=,%-]+$")


@dataclass(frozen=True)
class Command:
    """One node of the command tree: ``path`` is ``("trainwarden", "deploy", "show")``."""

    path: tuple[str, ...]
    subcommands: tuple[tuple[str, str], ...]  # (name, help)
    options: tuple[tuple[str, str], ...]  # (option string, help)
    value_options: tuple[str, ...]  # those of ``options`` that take a value
    option_choices: tuple[tuple[str, tuple[str, ...]], ...]
    positional_choices: tuple[str, ...]

    @property
    def key(self) -> str:
        return " ".join(self.path)


def _help(action: argparse.Action, prog: str) -> str:
    """The first sentence of an action's help, with ``%(default)s`` and the like filled in."""
    text = action.help or ""
    if "%" in text:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % {**vars(action), "prog": prog}
    text = " ".join(text.split())
    return re.split(r"(?<=[.;:])\s|\s\(", text, maxsplit=1)[0].rstrip(".;:")


def _plain(words: Any) -> tuple[str, ...]:
    return tuple(str(w) for w in words if _PLAIN.match(str(w)))


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = (PROG,)) -> Iterator[Command]:
    """Every command of the tree, parents before their sub-commands."""
    subs: list[tuple[str, str]] = []
    children: list[tuple[str, argparse.ArgumentParser]] = []
    options: list[tuple[str, str]] = []
    values: list[str] = []
    choices: list[tuple[str, tuple[str, ...]]] = []
    positional: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in cast(dict[str, argparse.ArgumentParser], action.choices).items():
                subs.append((name, " ".join(helps.get(name, "").split())))
                children.append((name, sub))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if not action.option_strings:
            positional += _plain(action.choices or ())
            continue
        takes_value = action.nargs != 0
        for opt in action.option_strings:
            options.append((opt, _help(action, parser.prog)))
            if takes_value:
                values.append(opt)
                if action.choices:
                    choices.append((opt, _plain(action.choices)))
    yield Command(
        path, tuple(subs), tuple(options), tuple(values), tuple(choices), tuple(positional)
    )
    for name, sub in children:
        yield from walk(sub, (*path, name))


def full_parser() -> argparse.ArgumentParser:
    """The whole command tree. Loaded by name: the package root sits above every layer (it
    loads the command modules the same way), and completion alone needs all of them."""
    root = importlib.import_module("trainwarden.cli")
    return cast(argparse.ArgumentParser, root.build_parser())


# -- bash and zsh: the same tables (POSIX ``case``), a walker per shell ---------------------


def _sh_table(name: str, rows: list[tuple[str, tuple[str, ...]]]) -> str:
    lines = [f"{name}() {{", '    case "$1" in']
    for key, words in rows:
        if words:
            lines.append(f"    {shlex.quote(key)}) echo {shlex.quote(' '.join(words))} ;;")
    lines += ["    esac", "}"]
    return "\n".join(lines)


def _sh_tables(commands: list[Command]) -> str:
    fn = f"_{PROG}"
    choice_rows = [(f"{c.key}|{opt}", words) for c in commands for opt, words in c.option_choices]
    choice_rows += [(f"{c.key}|", c.positional_choices) for c in commands]
    return "\n\n".join(
        (
            _sh_table(
                f"{fn}_subcommands",
                [(c.key, _plain(n for n, _ in c.subcommands)) for c in commands],
            ),
            _sh_table(
                f"{fn}_options", [(c.key, _plain(o for o, _ in c.options)) for c in commands]
            ),
            _sh_table(f"{fn}_value_options", [(c.key, c.value_options) for c in commands]),
            # "$1|$2": the command and an option, or the command and nothing (its positionals)
            _sh_table(f"{fn}_choices_of", choice_rows).replace('case "$1" in', 'case "$1|$2" in'),
        )
    )


_BASH_MAIN = r"""
_trainwarden() {
    local cur=${COMP_WORDS[COMP_CWORD]} cmd=trainwarden w i skip=0 opt="" words
    COMPREPLY=()
    # Follow the sub-commands typed so far, stepping over options and their values
    # (bash splits `--opt=value` into `--opt`, `=`, `value`).
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if ((skip)); then
            [[ $w == "=" ]] || skip=0
            continue
        fi
        case $w in
        --*=*) ;;
        -*) if [[ " $(_trainwarden_value_options "$cmd") " == *" $w "* ]]; then
                skip=1
                opt=$w
            fi ;;
        *) if [[ " $(_trainwarden_subcommands "$cmd") " == *" $w "* ]]; then
                cmd="$cmd $w"
            fi ;;
        esac
    done
    if ((skip)); then
        [[ $cur == "=" ]] && cur=""
        words=$(_trainwarden_choices_of "$cmd" "$opt")
        # no choices: empty, and `complete -o default` offers file names
        [[ -n $words ]] && COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_trainwarden_options "$cmd")" -- "$cur"))
        return 0
    fi
    words="$(_trainwarden_subcommands "$cmd") $(_trainwarden_choices_of "$cmd" "")"
    [[ -n ${words// /} ]] && COMPREPLY=($(compgen -W "$words" -- "$cur"))
    return 0
}

complete -o default -F _trainwarden trainwarden
"""

_ZSH_MAIN = r"""
_trainwarden() {
    local cur=${words[CURRENT]} cmd=trainwarden w i skip=0 opt=""
    local -a found
    for ((i = 2; i < CURRENT; i++)); do
        w=${words[i]}
        if ((skip)); then
            skip=0
            continue
        fi
        case $w in
        --*=*) ;;
        -*) if [[ " $(_trainwarden_value_options "$cmd") " == *" $w "* ]]; then
                skip=1
                opt=$w
            fi ;;
        *) if [[ " $(_trainwarden_subcommands "$cmd") " == *" $w "* ]]; then
                cmd="$cmd $w"
            fi ;;
        esac
    done
    if ((! skip)) && [[ $cur == --*=* ]]; then
        skip=1
        opt=${cur%%=*}
        compset -P '*='
    fi
    if ((skip)); then
        found=(${=$(_trainwarden_choices_of "$cmd" "$opt")})
        if ((${#found})); then compadd -- $found; else _files; fi
        return
    fi
    if [[ $cur == -* ]]; then
        found=(${=$(_trainwarden_options "$cmd")})
        compadd -- $found
        return
    fi
    found=(${=$(_trainwarden_subcommands "$cmd")} ${=$(_trainwarden_choices_of "$cmd" "")})
    if ((${#found})); then compadd -- $found; else _files; fi
}

if [[ "${funcstack[1]}" == _trainwarden ]]; then
    _trainwarden "$@"  # autoloaded from $fpath
else
    (( $+functions[compdef] )) || { autoload -Uz compinit && compinit; }
    compdef _trainwarden trainwarden
fi
"""


def bash_script(commands: list[Command]) -> str:
    head = f"# bash completion for {PROG} (generated by `{PROG} completion bash`)\n\n"
    return head + _sh_tables(commands) + "\n" + _BASH_MAIN


def zsh_script(commands: list[Command]) -> str:
    head = (
        f"#compdef {PROG}\n# zsh completion for {PROG} (generated by `{PROG} completion zsh`)\n\n"
    )
    return head + _sh_tables(commands) + "\n" + _ZSH_MAIN


# -- fish: one `complete` line per sub-command and option ---------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_table(name: str, rows: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    lines = [f"function {name}", "    switch $argv[1]"]
    for key, words in rows:
        if words:
            lines += [
                f"        case {_fish_quote(key)}",
                f"            printf '%s\\n' {' '.join(words)}",
            ]
    return [*lines, "    end", "end", ""]


_FISH_HEAD = r"""# fish completion for trainwarden (generated by `trainwarden completion fish`)

function __trainwarden_cmd --description 'the sub-commands typed so far'
    set -l cmd trainwarden
    set -l skip 0
    for w in (commandline -opc)[2..-1]
        if test $skip = 1
            set skip 0
            continue
        end
        switch $w
            case '--*=*'
            case '-*'
                if contains -- $w (__trainwarden_value_options $cmd)
                    set skip 1
                end
            case '*'
                if contains -- $w (__trainwarden_subcommands $cmd)
                    set cmd "$cmd $w"
                end
        end
    end
    echo $cmd
end

function __trainwarden_at --description 'true at this command'
    test (__trainwarden_cmd) = "$argv"
end

complete -c trainwarden -e
"""


def fish_script(commands: list[Command]) -> str:
    lines = [_FISH_HEAD]
    lines += _fish_table(
        "__trainwarden_subcommands",
        [(c.key, _plain(n for n, _ in c.subcommands)) for c in commands],
    )
    lines += _fish_table(
        "__trainwarden_value_options", [(c.key, c.value_options) for c in commands]
    )
    for c in commands:
        at = f"-n {_fish_quote('__trainwarden_at ' + c.key)}"
        for name, text in c.subcommands:
            if _PLAIN.match(name):
                lines.append(f"complete -c {PROG} {at} -f -a {name} -d {_fish_quote(text)}")
        if c.positional_choices and not c.subcommands:
            words = " ".join(c.positional_choices)
            lines.append(f"complete -c {PROG} {at} -f -a {_fish_quote(words)}")
        choices = dict(c.option_choices)
        for opt, text in c.options:
            if not _PLAIN.match(opt):
                continue
            flag = f"-l {opt[2:]}" if opt.startswith("--") else f"-s {opt[1:]}"
            if len(opt) > 2 and not opt.startswith("--"):
                flag = f"-o {opt[1:]}"  # a single-dash long option
            kind = ""
            if opt in choices:
                kind = f" -x -a {_fish_quote(' '.join(choices[opt]))}"
            elif opt in c.value_options:
                kind = " -r"
            lines.append(f"complete -c {PROG} {at} {flag}{kind} -d {_fish_quote(text)}")
    return "\n".join(lines) + "\n"


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script of ``shell`` for the commands of ``parser``."""
    commands = list(walk(parser))
    if shell == "bash":
        return bash_script(commands)
    if shell == "zsh":
        return zsh_script(commands)
    return fish_script(commands)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print the completion script of SHELL for trainwarden, made from its "
        "commands and options. bash: `source <(trainwarden completion bash)` in ~/.bashrc, "
        "or save it as /etc/bash_completion.d/trainwarden; zsh: save it as _trainwarden in "
        "a directory of $fpath; fish: save it as ~/.config/fish/completions/trainwarden.fish.",
    )
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(script(args.shell, full_parser()), end="")
    return 0
