"""The operator's views (issue #13 item 7): one node in detail, ``events --follow``, one
order for tables and JSON (oldest first, ``--reverse``), and what an event led to."""

from __future__ import annotations

import json
import os
import pwd
from typing import Any, Protocol

import pytest

from trainwarden.cli import main
from trainwarden.policies.model import ActionKind, Actor, Verdict
from trainwarden.supervisor.cli import events as events_cli
from trainwarden.supervisor.store.records import ActionStatus

Capture = pytest.CaptureFixture[str]
ME = pwd.getpwuid(os.getuid()).pw_name


class Daemon(Protocol):  # the `daemon` fixture of conftest.py
    url: str
    service: Any  # tests/api/memory_service.py: MemoryService


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- nodes NODE ----------------------------------------------------------------------------------


def test_one_node_in_detail(daemon: Daemon, capsys: Capture) -> None:
    code, out, err = run(capsys, "nodes", "nid003")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["node", "nid003", "failed"]
    assert lines[1].split() == ["scheduler", "allocated"]
    assert lines[2].split() == ["run", "pretrain"]
    assert any(line.startswith("last heartbeat  2027-01-15 ") for line in lines)
    cond = next(line for line in lines if line.startswith("GpuFatal"))
    assert "XID 79 on gpu 2: GPU has fallen off the bus" in cond and cond.split()[-1] == "1"
    assert "events (the newest 1)" in lines and "actions (the newest 1)" in lines
    event = lines[lines.index("events (the newest 1)") + 2]
    assert event.split()[:1] == ["1"] and "fault" in event
    action = lines[lines.index("actions (the newest 1)") + 2]
    assert "drain" in action and "rule gpu-fatal-drain" in action and "pending" in action


def test_a_drained_node_says_by_whom_why_and_when(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "drain", "nid002", "--reason", "HBM errors")
    assert code == 0
    code, out, _ = run(capsys, "nodes", "nid002")
    lines = out.splitlines()
    assert lines[0].split() == ["node", "nid002", "drained"]
    assert next(x for x in lines if x.startswith("drained by")).split() == [
        "drained",
        "by",
        "operator",
    ]
    assert "drain reason    HBM errors" in out
    when = next(x for x in lines if x.startswith("drained at"))
    assert when.split()[2] == "2027-01-15"  # the memory service's clock (2027)
    assert "conditions: none true" in lines
    # the drain's action and its event are the node's
    assert f"operator {ME}" in out and "succeeded" in out and "drain by operator" in out


def test_one_node_as_json(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "nodes", "nid003", "--json")
    assert code == 0
    node = json.loads(out)
    assert (node["name"], node["state"], node["conditions"]) == ("nid003", "failed", ["GpuFatal"])
    assert node["condition_details"][0]["type"] == "GpuFatal"
    assert [e["id"] for e in node["events"]] == [1]
    assert [a["id"] for a in node["actions"]] == [1]
    code, out, _ = run(capsys, "nodes", "nid004", "--json")
    node = json.loads(out)
    assert (node["drained_by"], node["drain_reason"]) == ("external", "maintenance")
    assert node["drained_at"] == 1_800_000_000 - 7200


def test_an_unknown_node_is_one_line(daemon: Daemon, capsys: Capture) -> None:
    assert run(capsys, "nodes", "nid009") == (2, "", "trainwarden: error: unknown node 'nid009'\n")
    code, out, err = run(capsys, "nodes", "nid003", "--state", "failed", "--all")
    assert (code, out) == (2, "")
    assert err == (
        "trainwarden: error: `trainwarden nodes nid003` shows one node; --all and --state "
        "filter the list of nodes (leave out NODE to list them)\n"
    )
    code, _, err = run(capsys, "nodes", "nid[001-002]")
    assert code == 2 and "list several with --node HOSTLIST" in err
    assert [c for c in daemon.service.calls if c[0] == "node_detail"] == [
        ("node_detail", {"node": "nid009"})  # the refused one never asked the daemon
    ]


# --- one order: oldest first, --reverse ----------------------------------------------------------


def test_events_json_is_oldest_first_like_the_table(daemon: Daemon, capsys: Capture) -> None:
    for i in range(3):
        daemon.service.add_event("fault", f"fault {i}", node="nid001")
    code, out, _ = run(capsys, "events", "--json")
    assert code == 0 and [e["id"] for e in json.loads(out)] == [1, 2, 3, 4, 5]
    code, out, _ = run(capsys, "events")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["1", "2", "3", "4", "5"]
    # --limit: the newest N, still shown oldest first
    code, out, _ = run(capsys, "events", "--json", "--limit", "2")
    assert [e["id"] for e in json.loads(out)] == [4, 5]
    code, out, _ = run(capsys, "events", "--limit", "2")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["4", "5"]
    code, out, _ = run(capsys, "events", "--json", "--limit", "2", "--reverse")
    assert [e["id"] for e in json.loads(out)] == [5, 4]
    code, out, _ = run(capsys, "events", "--limit", "2", "--reverse")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["5", "4"]
    code, out, _ = run(capsys, "events", "--json", "--node", "nid[001,003]", "--limit", "3")
    assert [e["id"] for e in json.loads(out)] == [3, 4, 5]


def test_actions_json_is_oldest_first_like_the_table(daemon: Daemon, capsys: Capture) -> None:
    for node in ("nid001", "nid002"):
        daemon.service.add_action(
            kind=ActionKind.DRAIN,
            actor=Actor.OPERATOR,
            who="alice",
            node=node,
            reason="test",
            verdict=Verdict.ALLOW,
            status=ActionStatus.SUCCEEDED,
        )
    code, out, _ = run(capsys, "actions", "--json")
    assert code == 0 and [a["id"] for a in json.loads(out)] == [1, 2, 3]
    code, out, _ = run(capsys, "actions")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["1", "2", "3"]
    code, out, _ = run(capsys, "actions", "--json", "--limit", "2")
    assert [a["id"] for a in json.loads(out)] == [2, 3]
    code, out, _ = run(capsys, "actions", "--limit", "2", "--reverse")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["3", "2"]
    code, out, _ = run(capsys, "actions", "--json", "--reverse")
    assert [a["id"] for a in json.loads(out)] == [3, 2, 1]


# --- events --follow -----------------------------------------------------------------------------


class Script:
    """Stands in for the pause between two polls: each pause runs the next step (records
    events in the daemon), and Ctrl-C comes when the steps are done."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if not self.steps:
            raise KeyboardInterrupt
        self.steps.pop(0)()


def test_follow_prints_new_events_until_ctrl_c(
    daemon: Daemon, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = daemon.service
    script = Script(
        lambda: svc.add_event("fault", "XID 48 on gpu 0", node="nid001"),
        lambda: None,  # nothing new: nothing printed
        lambda: [svc.add_event("heartbeat-missed", f"silent {i}", node="nid002") for i in range(3)],
    )
    monkeypatch.setattr(events_cli, "_wait", script)
    code, out, err = run(capsys, "events", "--follow")
    assert (code, err) == (0, "")  # Ctrl-C ends it: exit 0, no traceback
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "KIND", "NODE", "RUN", "MESSAGE"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert lines[3].split()[3:5] == ["fault", "nid001"] and lines[3].endswith("XID 48 on gpu 0")
    assert lines[-1].endswith("silent 2")
    assert script.waits == [events_cli.POLL_S] * 4 and events_cli.POLL_S <= 2


def test_follow_keeps_the_filters_and_prints_json_lines(
    daemon: Daemon, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = daemon.service
    script = Script(
        lambda: (
            svc.add_event("fault", "other node", node="nid001"),
            svc.add_event("fault", "XID 79 again", node="nid003"),
            svc.add_event("condition-changed", "not a fault", node="nid003"),
        )
    )
    monkeypatch.setattr(events_cli, "_wait", script)
    code, out, err = run(
        capsys, "events", "--follow", "--json", "--node", "nid003", "--kind", "fault"
    )
    assert (code, err) == (0, "")
    rows = [json.loads(line) for line in out.splitlines()]  # one JSON object a line
    assert [(r["id"], r["message"]) for r in rows] == [
        (1, "XID 79 on gpu 2: GPU has fallen off the bus"),
        (4, "XID 79 again"),
    ]
    follows = [c[1] for c in svc.calls if c[0] == "list_events" and c[1].get("oldest_first")]
    assert follows and all(
        (c["node"], c["kind"], c["run"]) == ("nid003", "fault", None) for c in follows
    )


def test_follow_reads_forward_without_gaps(
    daemon: Daemon, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst larger than one request's batch arrives between two polls: every event is
    printed once, in order (read forward from the last id, never "the newest N")."""
    svc = daemon.service
    monkeypatch.setattr(events_cli, "FOLLOW_BATCH", 4)
    burst = lambda: [svc.add_event("fault", f"burst {i}", node="nid001") for i in range(10)]  # noqa: E731
    monkeypatch.setattr(events_cli, "_wait", Script(burst))
    code, out, _ = run(capsys, "events", "--follow", "--json", "--limit", "1")
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == list(range(2, 13))


def test_follow_since_id_and_several_nodes(
    daemon: Daemon, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = daemon.service
    for node in ("nid001", "nid002", "nid004"):
        svc.add_event("fault", f"on {node}", node=node)
    script = Script(lambda: svc.add_event("fault", "late", node="nid002"))
    monkeypatch.setattr(events_cli, "_wait", script)
    code, out, _ = run(
        capsys, "events", "--follow", "--json", "--since-id", "1", "--node", "nid[001-002]"
    )
    assert code == 0
    assert [json.loads(line)["message"] for line in out.splitlines()] == [
        "on nid001",
        "on nid002",
        "late",
    ]


def test_follow_refuses_what_it_cannot_do(daemon: Daemon, capsys: Capture) -> None:
    code, _, err = run(capsys, "events", "--follow", "--reverse")
    assert code == 2 and "--follow prints events as they come, oldest first" in err
    code, _, err = run(capsys, "events", "--follow", "--explain", "1")
    assert code == 2 and "--explain shows one event; it cannot --follow" in err


# --- events --explain: what an event led to ------------------------------------------------------


def test_explain_event_lists_the_actions_it_led_to(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "events", "--explain", "1")
    assert code == 0
    lines = out.splitlines()
    start = lines.index("led to")
    assert lines[start + 1].split() == [
        "ID",
        "TIME",
        "KIND",
        "TARGET",
        "BY",
        "VERDICT",
        "STATUS",
        "RESULT",
    ]
    row = lines[start + 2]
    assert row.split()[0] == "1" and "rule gpu-fatal-drain" in row and "pending" in row
    code, out, _ = run(capsys, "events", "--explain", "1", "--json")
    exp = json.loads(out)
    assert [(a["id"], a["status"]) for a in exp["followed"]] == [(1, "pending")]
    code, out, _ = run(capsys, "events", "--explain", "2")
    assert "led to" not in out.splitlines()
