"""The configuration file: flag > environment > file > default for daemon, agent and CLI,
`trainwarden config show` with each value's source, and errors that name file:line."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Protocol

import pytest

from trainwarden.cli import build_parser, main
from trainwarden.health import config
from trainwarden.supervisor.api.client import cli_config, client_for, resolve_api
from trainwarden.supervisor.cli.config import effective, render_example, side_settings
from trainwarden.supervisor.cli.daemon import build_config

Capture = pytest.CaptureFixture[str]


class Daemon(Protocol):  # the `daemon` fixture of conftest.py
    url: str
    service: Any


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of this machine, and no /etc file, decides a value here."""
    for name in list(os.environ):
        if name.startswith("TRAINWARDEN_") or name == "SLURM_CONF":
            monkeypatch.delenv(name)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.toml"))


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "trainwarden.toml"
    path.write_text(text)
    return str(path)


def _resolved(command: str, argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    args = build_parser((command,)).parse_args([command, *argv])
    return config.resolve(args, env)


def _sources(args: argparse.Namespace) -> dict[str, str]:
    return {k: str(v.source) for k, v in config.values(args).items()}


def _run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- precedence --------------------------------------------------------------------------------

DAEMON_FILE = """\
[mqtt]
broker = "broker.example:1883"

[daemon]
mode = "approve"
heartbeat_misses = 5
viewers = "@hpc"
policy = "/etc/trainwarden/site-policy.yaml"
"""


@pytest.mark.parametrize(
    ("argv", "env", "mode", "source"),
    [
        ([], {}, "approve", "FILE:5"),
        ([], {"TRAINWARDEN_MODE": "dry-run"}, "dry-run", "env TRAINWARDEN_MODE"),
        (["--mode", "enforce"], {"TRAINWARDEN_MODE": "dry-run"}, "enforce", "flag --mode"),
    ],
)
def test_daemon_flag_beats_env_beats_file(
    tmp_path: Path, argv: list[str], env: dict[str, str], mode: str, source: str
) -> None:
    path = _file(tmp_path, DAEMON_FILE)
    args = _resolved("daemon", ["--config", path, *argv], env)
    assert args.mode == mode
    assert _sources(args)["mode"] == source.replace("FILE", path)


def test_daemon_file_beats_default_and_mqtt_is_shared(tmp_path: Path) -> None:
    path = _file(tmp_path, DAEMON_FILE)
    args = _resolved("daemon", ["--config", path, "--hang-k", "4"], {})
    src = _sources(args)
    assert (args.broker, src["broker"]) == ("broker.example:1883", f"{path}:2")
    assert (args.heartbeat_misses, src["heartbeat_misses"]) == (5.0, f"{path}:6")  # float()
    assert (args.policy, src["policy"]) == ("/etc/trainwarden/site-policy.yaml", f"{path}:8")
    assert (args.hang_k, src["hang_k"]) == (4.0, "flag --hang-k")
    assert (args.hang_floor, src["hang_floor"]) == (30.0, "default")
    assert (args.api, src["api"]) == ("/run/trainwarden/api.sock", "default")


def test_daemon_config_is_built_from_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, DAEMON_FILE + 'metrics = "0.0.0.0:9470"\ndb = "sqlite://"\n')
    args = build_parser(("daemon",)).parse_args(["daemon", "--config", path])
    cfg = build_config(args)
    assert (cfg.metrics_host, cfg.metrics_port) == ("0.0.0.0", 9470)
    assert (cfg.broker_host, cfg.broker_port) == ("broker.example", 1883)
    assert cfg.mode == "approve" and cfg.core.heartbeat_misses == 5.0
    assert cfg.policy_file == "/etc/trainwarden/site-policy.yaml"


def test_agent_precedence_and_its_own_table_beats_mqtt(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        '[mqtt]\nbroker = "shared:1883"\nca = "/etc/ca.pem"\n\n'
        '[agent]\nbroker = "login1:8883"\ninterval = 10\nexpect_gpus = 4\n'
        'storage = ["/a", "/b"]\n',
    )
    env = {"TRAINWARDEN_EXPECT_GPUS": "8", "TRAINWARDEN_CONFIG": path}
    args = _resolved("agent", ["--interval", "2"], env)
    src = _sources(args)
    assert (args.broker, src["broker"]) == ("login1:8883", f"{path}:6")  # [agent] wins
    assert (args.mqtt_ca, src["mqtt_ca"]) == ("/etc/ca.pem", f"{path}:3")  # from [mqtt]
    assert (args.interval, src["interval"]) == (2.0, "flag --interval")
    assert (args.expect_gpus, src["expect_gpus"]) == (8, "env TRAINWARDEN_EXPECT_GPUS")
    assert (args.storage, src["storage"]) == (["/a", "/b"], f"{path}:9")
    assert (args.heartbeat, src["heartbeat"]) == (5.0, "default")
    args = _resolved("agent", ["--storage", "/c"], env)
    assert args.storage == ["/c"]  # a flag replaces the file's list


def test_an_empty_variable_is_a_value(tmp_path: Path) -> None:
    path = _file(tmp_path, '[daemon]\napi_tcp = "10.0.0.5:8471"\n')
    args = _resolved("daemon", ["--config", path], {"TRAINWARDEN_API_TCP": ""})
    assert args.api_tcp == "" and _sources(args)["api_tcp"] == "env TRAINWARDEN_API_TCP"


def test_a_new_flag_gets_a_file_key_and_a_variable() -> None:
    parser = argparse.ArgumentParser(prog="x")
    config.env(parser.add_argument("--brand-new", type=int, default=3), "TRAINWARDEN_BRAND_NEW")
    config.flag_only(parser.add_argument("--once", action="store_true"))
    settings = config.layered(parser, "agent")
    assert [s.key for s in settings.items] == ["brand_new"]
    assert settings["brand_new"].env == "TRAINWARDEN_BRAND_NEW"
    assert settings["brand_new"].default == 3
    args = parser.parse_args([])
    assert config.resolve(args, {"TRAINWARDEN_BRAND_NEW": "7"}).brand_new == 7
    with pytest.raises(TypeError, match="flag_only"):
        other = argparse.ArgumentParser()
        other.add_argument("--n", nargs="+")
        config.layered(other, "agent")


def test_every_daemon_and_agent_option_is_a_setting() -> None:
    settings = side_settings()
    for side in ("daemon", "agent"):
        parser = build_parser((side,))
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        options = {
            a.dest
            for a in sub.choices[side]._actions
            if a.option_strings and a.dest not in ("help", "config", "once", "json")
        }
        assert options == {s.key for s in settings[side].items}, side


# --- the CLI's [cli] ------------------------------------------------------------------------


def test_cli_api_and_token_file_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    path = _file(tmp_path, f'[cli]\napi = "https://login1.example:8471/"\ntoken_file = "{token}"\n')
    monkeypatch.setenv("TRAINWARDEN_CONFIG", path)
    assert resolve_api(None) == "https://login1.example:8471"
    client = client_for(argparse.Namespace(api=None, token_file=None, api_ca=None))
    assert (client.base_url, client.token) == ("https://login1.example:8471", "s3cret")
    values = cli_config()
    assert str(values["token_file"].source) == f"{path}:3"
    monkeypatch.setenv("TRAINWARDEN_API", "/tmp/env.sock")
    assert resolve_api(None) == "unix:/tmp/env.sock"  # env beats file
    assert resolve_api("/tmp/flag.sock") == "unix:/tmp/flag.sock"  # flag beats env


def test_cli_reaches_the_daemon_the_file_names(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.delenv("TRAINWARDEN_API")
    monkeypatch.setenv(
        "TRAINWARDEN_CONFIG", _file(tmp_path, f"[cli]\napi = {json.dumps(daemon.url)}\n")
    )
    code, out, err = _run(capsys, "nodes", "--json")
    assert code == 0, err
    assert isinstance(json.loads(out), list)


# --- config show ---------------------------------------------------------------------------------


def test_config_show_prints_values_and_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    path = _file(tmp_path, DAEMON_FILE + '\n[cli]\napi = "/tmp/x.sock"\n')
    monkeypatch.setenv("TRAINWARDEN_METRICS_BIND", "127.0.0.1:9999")
    code, out, err = _run(capsys, "config", "show", "--config", path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"# configuration file: {path} (flag --config)"
    assert "[daemon]" in lines and "[agent]" in lines and "[cli]" in lines
    assert any(ln.startswith('mode = "approve"') and ln.endswith(f"# {path}:5") for ln in lines)
    broker = f"# {path}:2 ([mqtt] broker)"
    assert any(
        ln.startswith('broker = "broker.example:1883"') and ln.endswith(broker) for ln in lines
    )
    assert any(ln.endswith("# env TRAINWARDEN_METRICS_BIND") for ln in lines)
    assert any(ln.startswith("hang_k = 2.0") and ln.endswith("# default") for ln in lines)
    assert any(ln.startswith("# db (unset)") for ln in lines)
    code, out, err = _run(
        capsys,
        "config",
        "show",
        "--config",
        path,
        "--for",
        "daemon",
        "--json",
        "--",
        "--hang-k",
        "9",
    )
    assert code == 0, err
    shown = json.loads(out)
    assert set(shown) == {"file", "daemon"}
    assert shown["file"] == {"path": path, "source": "flag --config", "found": True}
    assert shown["daemon"]["hang_k"] == {
        "value": 9.0,
        "source": "flag",
        "where": "--hang-k",
        "option": "--hang-k",
        "env": None,
    }
    assert shown["daemon"]["mode"]["where"] == f"{path}:5"
    assert shown["daemon"]["metrics"]["source"] == "env"


def test_config_show_without_a_file(capsys: Capture) -> None:
    code, out, _ = _run(capsys, "config", "show", "--for", "cli")
    assert code == 0
    assert out.splitlines()[0].endswith("(default; absent, nothing read)")
    assert 'api = "/run/trainwarden/api.sock"' in out


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[daemon]\n\nmdoe = 'x'\n",
            "FILE:3: unknown key 'mdoe' in [daemon] (did you mean 'mode'?)",
        ),
        (
            '[daemon]\nmode = "fast"\n',
            "FILE:2: [daemon] mode: 'fast' is not one of enforce, dry-run, approve",
        ),
        ("[daemon]\n# c\nhang_k = 'steep'\n", "FILE:3: [daemon] hang_k: 'steep' is not a number"),
        (
            "[daemon]\nlease_ttl = 0.5\n",
            "FILE:2: [daemon] lease_ttl: 0.5 s is outside 1 s to 3600 s",
        ),
        (
            "[daemon]\nviewers = ['a']\n",
            "FILE:2: [daemon] viewers: expected a string or a number, not a list",
        ),
        ("[agent]\nstorage = '/a'\n", None),  # a string splits into words, like a variable
        (
            "[agent]\nexpect_gpus = 2.5\n",
            "FILE:2: [agent] expect_gpus: '2.5' is not a whole number",
        ),
        ("[agent]\nverbose = 'maybe'\n", "FILE:2: [agent] verbose: 'maybe' is not true or false"),
        ("[mqtt]\nbrokr = 'x'\n", "FILE:2: unknown key 'brokr' in [mqtt] (did you mean 'broker'?)"),
        ("[cli]\napi = 'x'\n[cli.more]\nk = 1\n", "FILE:3: unknown key 'more' in [cli]"),
        ("\n[deamon]\n", "FILE:2: unknown key 'deamon': the file has tables"),
        ('[daemon]\nmode = "x\n', "FILE: invalid TOML: "),
        ("[daemon]\n'hang.k' = 2\n", "FILE:2: unknown key 'hang.k' in [daemon]"),
    ],
)
def test_bad_files_name_file_and_line(
    tmp_path: Path, capsys: Capture, text: str, message: str | None
) -> None:
    path = _file(tmp_path, text)
    code, _, err = _run(capsys, "config", "show", "--config", path)
    if message is None:
        assert code == 0, err
        return
    assert code == 2
    assert err.startswith("trainwarden: error: " + message.replace("FILE", path)), err
    assert "Traceback" not in err


def test_bad_variable_names_the_variable(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINWARDEN_MODE", "sometimes")
    code, _, err = _run(capsys, "config", "show", "--for", "daemon")
    assert code == 2
    assert err.startswith("trainwarden: error: $TRAINWARDEN_MODE: 'sometimes' is not one of")


def test_a_missing_named_file_is_an_error_a_missing_default_is_not(
    tmp_path: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = str(tmp_path / "gone.toml")
    code, _, err = _run(capsys, "daemon", "--config", gone)
    assert code == 2
    assert err == f"trainwarden: error: {gone}: no such configuration file (flag --config)\n"
    monkeypatch.setenv("TRAINWARDEN_CONFIG", gone)
    code, _, err = _run(capsys, "agent", "--once", "--simulate", "xid:79")
    assert code == 2 and "(env TRAINWARDEN_CONFIG)" in err
    monkeypatch.delenv("TRAINWARDEN_CONFIG")
    values, file = effective("agent")
    assert not file.found and all(v.source.kind == "default" for v in values)


def test_key_lines_finds_dotted_quoted_and_skips_multiline_strings() -> None:
    text = (
        'top = """\n[fake]\nmode = 1\n"""\n'
        "[daemon]\n"
        '"mode" = "x"\n'
        "  mqtt.username = 'u'\n"
        "[ agent ]  # nodes\n"
        "storage = [\n  '/a',\n]\n"
    )
    lines = config.key_lines(text)
    assert lines[("top",)] == 1 and ("fake",) not in lines
    assert lines[("daemon", "mode")] == 6
    assert lines[("daemon", "mqtt", "username")] == 7
    assert lines[("agent", "storage")] == 9


# --- the shipped example -------------------------------------------------------------------------


def test_the_example_is_valid_and_lists_every_key(tmp_path: Path) -> None:
    text = render_example(side_settings())
    # uncommenting every line that has a value gives a file every side accepts as is
    lines = [ln[1:] if ln.startswith("#") and " = " in ln else ln for ln in text.splitlines()]
    path = _file(tmp_path, "\n".join(ln for ln in lines if not ln.endswith("# unset by default")))
    for side in ("daemon", "agent", "cli"):
        values, _ = effective(side, config_path=path)
        assert {v.source.kind for v in values} <= {"file", "default"}
        assert all(v.value == v.setting.default for v in values), side
