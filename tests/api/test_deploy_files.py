"""deploy/: systemd units, Prometheus config and rules, the Grafana dashboard, checked by
the tools that read them (systemd-analyze, promtool) and against the metrics the daemon has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from trainwarden.health import config
from trainwarden.health.report import MAX_PAYLOAD_BYTES, TOPIC_PREFIX
from trainwarden.supervisor.cli.config import effective, side_settings, toml_value
from trainwarden.supervisor.daemon.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROM = DEPLOY / "prometheus"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed"
)


def _run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def _sample_names() -> set[str]:
    m = Metrics(CollectorRegistry())
    m.detection("x", 1.0)
    m.action("drain", "allow", "succeeded")
    m.message("heartbeat")
    m.message_rejected("invalid")
    m.store_flush(0.1, 1)
    m.run_known("r")  # a run's series: restarts, goodput buckets, checkpoint advice
    m.run_restarted("r")
    m.api_request("GET", "/metrics", 200, 0.01)
    return {s.name for family in m.registry.collect() for s in family.samples}


def _metric_refs(expr: str) -> set[str]:
    return set(re.findall(r"\btrainwarden_[a-z_]+\b", expr))


# --- systemd -------------------------------------------------------------------------------------


@pytest.mark.integration  # runs systemd-analyze
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", ["trainwarden-daemon.service", "trainwarden-agent.service"])
def test_units_verify(unit: str, tmp_path: Path) -> None:
    # ExecStart must name an existing binary for verify: point it at this venv's script.
    text = (DEPLOY / unit).read_text()
    text = text.replace(
        "/opt/trainwarden/.venv/bin/trainwarden", str(Path(sys.executable).parent / "trainwarden")
    )
    (tmp_path / unit).write_text(text)
    proc = _run("systemd-analyze", "verify", "--man=no", f"./{unit}", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_daemon_unit_is_notify_with_watchdog_and_hardening() -> None:
    text = (DEPLOY / "trainwarden-daemon.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=60s",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "StateDirectory=trainwarden",
    ):
        assert f"\n{line}\n" in text, line


@pytest.mark.parametrize("unit", ["trainwarden-daemon.service", "trainwarden-agent.service"])
def test_units_read_the_config_file_and_shadow_none_of_its_keys(unit: str) -> None:
    text = (DEPLOY / unit).read_text()
    start = re.search(r"^ExecStart=(\S+) (\w+) --config (\S+)", text, re.M)
    assert start is not None and start.group(3) == config.DEFAULT_PATH, unit
    # an Environment= default would beat the file's key: only the env files override
    variables = {s.env for settings in side_settings().values() for s in settings.items}
    defaults = re.findall(r"^Environment=(\w+)=", text, re.M)
    assert not set(defaults) & variables, unit


def _shipped_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    section = ""
    for line in (DEPLOY / "trainwarden.toml").read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        sections.setdefault(section, []).append(line)
    return sections


def test_shipped_config_lists_every_key_at_its_default() -> None:
    sections = _shipped_sections()
    for side, settings in side_settings().items():
        for s in settings.items:
            value = toml_value(s.default) if s.default is not None else " # unset by default"
            line = f"#{s.key} ={'' if s.default is None else ' '}{value}"
            assert line in sections[side], f"[{side}] {line!r}: `trainwarden config example`"
    shared = {s.shared for v in side_settings().values() for s in v.items if s.shared}
    assert {ln[1:].partition(" =")[0] for ln in sections["mqtt"] if " = " in ln} == shared


@pytest.mark.parametrize("side", ["daemon", "agent", "cli"])
def test_shipped_config_is_valid_for_every_side(side: str) -> None:
    values, file = effective(side, config_path=str(DEPLOY / "trainwarden.toml"), env={})
    assert file.found
    chosen = {v.setting.key: v.value for v in values if v.source.kind == "file"}
    expected = {
        "daemon": {"mode", "mqtt_username", "mqtt_password_file"},
        "agent": {"broker", "expect_gpus", "storage", "mqtt_password_file", "mqtt_ca"},
        "cli": set(),
    }
    assert set(chosen) == expected[side]  # what daemon.env and agent.env used to set


# --- mosquitto -----------------------------------------------------------------------------------


def test_mosquitto_limits_match_the_wire_format() -> None:
    conf = (DEPLOY / "mosquitto" / "trainwarden.conf").read_text()
    assert f"\nmax_packet_size {MAX_PAYLOAD_BYTES + 1024}\n" in conf  # + topic and header
    assert "\nallow_anonymous false\n" in conf
    acl = (DEPLOY / "mosquitto" / "trainwarden.acl").read_text()
    assert f"\npattern write {TOPIC_PREFIX}/node/%u/#\n" in acl
    assert f"\ntopic read {TOPIC_PREFIX}/#\n" in acl


# --- prometheus ----------------------------------------------------------------------------------


def test_alert_rules_use_only_existing_metrics() -> None:
    names = _sample_names() | {"up"}
    rules = yaml.safe_load((PROM / "trainwarden.rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "TrainwardenNodeFailed",
        "TrainwardenIncidentOpen",
        "TrainwardenRestartStorm",
        "TrainwardenDetectionSlow",
    }
    for alert in alerts:
        assert _metric_refs(alert["expr"]) <= names, alert["alert"]


def test_every_alert_has_a_runbook_section_in_the_deploy_readme() -> None:
    rules = yaml.safe_load((PROM / "trainwarden.rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    headings = {
        line.removeprefix("### ").strip().lower()
        for line in (DEPLOY / "README.md").read_text().splitlines()
        if line.startswith("### ")
    }
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "deploy/README.md", alert["alert"]
        assert anchor == alert["alert"].lower() and anchor in headings, alert["alert"]


@pytest.mark.integration  # runs promtool
@needs_promtool
def test_promtool_checks_config_and_rules() -> None:
    proc = _run("promtool", "check", "config", PROM / "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.integration  # runs promtool
@needs_promtool
def test_alert_rule_unit_tests() -> None:
    proc = _run("promtool", "test", "rules", PROM / "trainwarden.rules.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- grafana -------------------------------------------------------------------------------------


def _dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "trainwarden.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_uses_only_existing_metrics() -> None:
    names = _sample_names()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        assert _metric_refs(expr) <= names, expr


@pytest.mark.integration  # runs promtool
@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule for promtool."""
    exprs = [
        e.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$instance", ".*")
        for e in _dashboard_exprs()
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = _run("promtool", "check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
