"""Policy files: the shipped default loads; broken files are rejected naming the exact place."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.cli import main
from trainwarden.health.probes.base import Action, Severity
from trainwarden.policies.errors import PolicyError
from trainwarden.policies.model import ActionKind, ConditionType, EventKind
from trainwarden.policies.rules import load_policy, parse_policy

GOOD = """\
version: 1
rules:
  - name: dead
    when: {condition: NodeDead}
    then: [drain, restart-run]
"""


def test_shipped_default_has_the_demo_rules() -> None:
    p = load_policy()
    by_cond = {r.when.condition: r.then for r in p.rules if r.when.status}
    assert by_cond[ConditionType.NODE_DEAD] == (ActionKind.DRAIN, ActionKind.RESTART_RUN)
    assert by_cond[ConditionType.GPU_FATAL] == (ActionKind.DRAIN, ActionKind.RESTART_RUN)
    assert by_cond[ConditionType.RUN_HUNG] == (ActionKind.RESTART_RUN,)
    assert by_cond[ConditionType.NODE_UNHEALTHY] == (ActionKind.DRAIN,)
    assert by_cond[ConditionType.STRAGGLER] == (ActionKind.ALERT,)
    failed = p.rule("run-failed")
    assert failed is not None and failed.when.event is EventKind.ATTEMPT_ENDED


def test_minimal_policy_uses_default_guards() -> None:
    p = parse_policy(GOOD, "x.yaml")
    assert p.guards.drains.max_per_window == 8
    assert p.rules[0].name == "dead"


def test_durations_and_percentages() -> None:
    p = parse_policy(
        GOOD + "guards:\n  drains: {window: 90m, max_cluster_fraction: '10%'}\n  cooldown: 1.5h\n",
        "x.yaml",
    )
    assert p.guards.drains.window_s == 5400.0
    assert p.guards.drains.max_cluster_fraction == pytest.approx(0.10)
    assert p.guards.cooldown_s == 5400.0


def test_xid_overrides_reach_the_catalogue() -> None:
    p = parse_policy(GOOD + "xid:\n  overrides: {94: 'fatal:drain', 13: info}\n", "x.yaml")
    cat = p.xid_catalog()
    assert cat.classify(94).severity is Severity.FATAL
    assert cat.classify(94).action is Action.DRAIN
    assert cat.classify(13).severity is Severity.INFO


BROKEN = [
    ("version: 1\nrules: [\n", "x.yaml:3:1: not valid YAML"),
    ("", "the file is empty"),
    ("- 1\n", "x.yaml:1:1: <top level>: expected a mapping"),
    ("version: 2\nrules: []\n", "x.yaml:1:10: version: unsupported policy version 2"),
    ("rules: []\n", "missing required key 'version'"),
    (GOOD + "rulez: []\n", "x.yaml:6:1: rulez: unknown key 'rulez'"),
    (
        GOOD.replace("NodeDead", "NodeDed"),
        "x.yaml:4:23: rules[0].when.condition: 'NodeDed' is not one of",
    ),
    (
        GOOD.replace("[drain, restart-run]", "[drain, reboot]"),
        "x.yaml:5:19: rules[0].then[1]: 'reboot' is not one of",
    ),
    (GOOD.replace("[drain, restart-run]", "[]"), "rules[0].then: must not be empty"),
    (GOOD.replace("NodeDead", "RunHung"), "rules[0].then[0]: 'drain' needs a node"),
    (
        GOOD + "  - name: dead\n    when: {condition: GpuFatal}\n    then: [alert]\n",
        "x.yaml:6:11: rules[1].name: duplicate rule name 'dead'",
    ),
    (
        GOOD + "guards:\n  drains: {max_per_window: -1}\n",
        "x.yaml:7:28: guards.drains.max_per_window: -1 is out of range",
    ),
    (
        GOOD + "guards:\n  cooldown: 10 minutes\n",
        "x.yaml:7:13: guards.cooldown: expected a duration like 30s",
    ),
    (
        GOOD + "guards:\n  drains: {max_cluster_fraction: 1.5}\n",
        "guards.drains.max_cluster_fraction: 1.5 is out of range [0.0, 1.0]",
    ),
    (
        GOOD + "xid:\n  overrides: {94: 'deadly'}\n",
        "x.yaml:7:19: xid.overrides.94: XID override for 94",
    ),
    (
        GOOD + "  - name: rep\n    when: {event: fault, count: 3}\n    then: [drain]\n",
        "rules[1].when.within: count 3 needs a window",
    ),
    (
        GOOD + "  - name: ev\n    when: {event: fault, condition: GpuFatal}\n    then: [drain]\n",
        "rules[1].when: give exactly one of 'condition' or 'event'",
    ),
    (
        GOOD
        + "  - name: ck\n    when: {condition: Straggler}\n    then: [drain, checkpoint-now]\n",
        "rules[1].then: checkpoint-now must come first",
    ),
    (GOOD.replace("version: 1\n", "version: 1\nversion: 1\n"), "version: duplicate key"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_policy_names_the_place(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "x.yaml")
    assert expected in str(info.value), str(info.value)


def test_all_problems_reported_at_once() -> None:
    text = GOOD.replace("NodeDead", "Nope") + "guards:\n  cooldown: soon\n  bogus: 1\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "x.yaml")
    assert len(info.value.problems) == 3


def test_cli_check_default_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "gpu-fatal: GpuFatal set -> drain, restart-run" in out


def test_cli_check_broken_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("NodeDead", "NodeDed"))
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4:23: rules[0].when.condition: 'NodeDed'" in err
    assert "Traceback" not in err


def test_cli_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "policy file not found" in capsys.readouterr().err


def test_cli_show_prints_a_valid_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "show"]) == 0
    assert parse_policy(capsys.readouterr().out, "shown").rules
