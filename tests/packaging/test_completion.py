"""``trainwarden completion bash|zsh|fish``: scripts made from the argparse tree, checked by
the shells themselves (zsh and fish only where installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from trainwarden.cli import ORDER, SHARED, build_parser, main
from trainwarden.supervisor.cli.completion import script, walk


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def _bash(code: str) -> str:
    done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_tree_has_every_command_and_its_options() -> None:
    commands = {c.key: c for c in walk(build_parser())}
    top = [name for name, _ in commands["trainwarden"].subcommands]
    assert set(top) == set(ORDER) | set(SHARED)
    assert [n for n, _ in commands["trainwarden deploy"].subcommands] == ["show", "write"]
    assert commands["trainwarden completion"].positional_choices == ("bash", "zsh", "fish")
    agent = commands["trainwarden agent"]
    assert "--broker" in agent.value_options and "--once" not in agent.value_options
    assert dict(agent.option_choices)["--log-format"] == ("text", "json")


def test_bash_script_parses_and_registers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trainwarden.bash"
    path.write_text(_script("bash", capsys))
    _bash(f"bash -n {path}")
    out = _bash(f"source {path} && complete -p trainwarden")
    assert out.strip() == "complete -o default -F _trainwarden trainwarden"


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["trainwarden", "de"], ["demo", "deploy"]),
        (["trainwarden", "deploy", ""], ["show", "write"]),
        (["trainwarden", "deploy", "show", "trainwarden-a"], ["trainwarden-agent.service"]),
        (["trainwarden", "completion", ""], ["bash", "zsh", "fish"]),
        (["trainwarden", "agent", "--bro"], ["--broker"]),
        # a value is stepped over, the sub-command stays agent
        (["trainwarden", "agent", "--broker", "h:1", "--log-f"], ["--log-format"]),
        (["trainwarden", "agent", "--log-format", ""], ["text", "json"]),
        (["trainwarden", "agent", "--log-format", "=", "j"], ["json"]),  # --log-format=j
        (["trainwarden", "deploy", "write", ""], []),  # file names, from `-o default`
    ],
)
def test_bash_completes(
    words: list[str], expected: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trainwarden.bash"
    path.write_text(_script("bash", capsys))
    quoted = " ".join(f"'{w}'" for w in words)
    out = _bash(
        f"source {path}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        'COMPREPLY=(); _trainwarden; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    assert [ln for ln in out.splitlines() if ln] == expected


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "_trainwarden"
    path.write_text(_script("zsh", capsys))
    done = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # sourced the way ~/.zshrc does: it registers itself with compinit
    code = (
        f"autoload -Uz compinit && compinit -u -d {tmp_path}/.zcompdump && source {path} "
        "&& print -r -- $_comps[trainwarden]"
    )
    done = subprocess.run(
        ["zsh", "-f", "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0 and done.stdout.strip() == "_trainwarden", done.stderr


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_script_parses_and_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trainwarden.fish"
    path.write_text(_script("fish", capsys))
    done = subprocess.run(["fish", "-n", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    code = (
        f"source {path}; complete -C 'trainwarden deploy '; "
        "complete -C 'trainwarden daemon --mode '"
    )
    done = subprocess.run(
        ["fish", "--no-config", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    got = [ln.split("\t")[0] for ln in done.stdout.splitlines()]
    assert got[:2] == ["show", "write"] and set(got[2:]) == {"enforce", "dry-run", "approve"}


def test_every_shell_gets_a_script() -> None:
    parser = build_parser()
    for shell in ("bash", "zsh", "fish"):
        assert "deploy" in script(shell, parser)
