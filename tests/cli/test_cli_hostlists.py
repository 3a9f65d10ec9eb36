"""Slurm hostlists wherever the CLI names nodes: daemon --local-nodes, drain/undrain NODES,
nodes --node, events --node, and the runs table's NODES column."""

from __future__ import annotations

import json
import os
import pwd
from typing import Any, Protocol

import pytest

from trainwarden.cli import build_parser, main
from trainwarden.supervisor.cli.daemon import build_config
from trainwarden.supervisor.errors import ConfigError

ME = pwd.getpwuid(os.getuid()).pw_name  # who the daemon records: this process's user

Capture = pytest.CaptureFixture[str]


class Daemon(Protocol):  # the `daemon` fixture of conftest.py
    url: str
    service: Any  # tests/api/memory_service.py: MemoryService


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- daemon --local-nodes ----------------------------------------------------------------------


def _daemon_config(*argv: str) -> Any:
    args = build_parser(("daemon",)).parse_args(["daemon", "--scheduler", "local", *argv])
    return build_config(args)


def test_local_nodes_takes_a_twenty_thousand_node_hostlist() -> None:
    cfg = _daemon_config("--local-nodes", "nid[000000-019999]", "--db", "sqlite://")
    assert len(cfg.local_nodes) == 20_000
    assert cfg.local_nodes[:2] == ("nid000000", "nid000001")
    assert cfg.local_nodes[-1] == "nid019999"


@pytest.mark.parametrize(
    ("text", "nodes"),
    [
        ("n1,n2,n[5-8]", ("n1", "n2", "n5", "n6", "n7", "n8")),
        ("n1,n2", ("n1", "n2")),  # the plain comma list as before
        ("n1", ("n1",)),
        ("", ()),
        ("rack[1-2]-n[01-02]", ("rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02")),
        ("n[1-3],n2", ("n1", "n2", "n3")),  # a node once
    ],
)
def test_local_nodes_hostlists(text: str, nodes: tuple[str, ...]) -> None:
    assert _daemon_config("--local-nodes", text, "--db", "sqlite://").local_nodes == nodes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nid[000000-019999", "--local-nodes: unbalanced '[' in hostlist"),
        ("n[3-1]", "--local-nodes: descending range '3-1'"),
        ("n1,,n2", "--local-nodes: empty item in hostlist 'n1,,n2'"),
        ("n[0-9999999]", "--local-nodes: hostlist 'n[0-9999999]' stands for more than 1,000,000"),
        ("bad/name", "--local-nodes: 'bad/name' is not a node name"),
    ],
)
def test_bad_local_nodes_are_one_line_exit_2(capsys: Capture, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--local-nodes"):
        _daemon_config("--local-nodes", text)
    # through the CLI: the usual one line, exit 2, before anything starts
    code, out, err = run(capsys, "daemon", "--scheduler", "local", "--local-nodes", text)
    assert (code, out) == (2, "")
    assert err.startswith(f"trainwarden: error: {message}") and err.count("\n") == 1
    assert "Traceback" not in err


def test_daemon_help_mentions_hostlists(capsys: Capture) -> None:
    with pytest.raises(SystemExit):
        main(["daemon", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--local-nodes HOSTLIST" in out and "nid[000000-019999]" in out


# --- drain / undrain NODES ----------------------------------------------------------------------


def test_drain_a_hostlist_is_one_operator_action_per_node(daemon: Daemon, capsys: Capture) -> None:
    code, out, err = run(capsys, "drain", "nid[001-002]", "--reason", "rack PDU swap")
    assert (code, err) == (0, "")
    drains = [c for c in daemon.service.calls if c[0] == "drain"]
    assert drains == [
        ("drain", {"node": "nid001", "reason": "rack PDU swap", "who": ME}),
        ("drain", {"node": "nid002", "reason": "rack PDU swap", "who": ME}),
    ]
    assert daemon.service.nodes["nid001"].state == "drained"
    assert daemon.service.nodes["nid002"].state == "drained"
    heads = [line for line in out.splitlines() if line.startswith("action ")]
    assert [h.split()[:4] for h in heads] == [
        ["action", "2:", "drain", "nid001"],
        ["action", "3:", "drain", "nid002"],
    ]
    assert out.splitlines()[-1] == "drain nid[001-002]: 2 nodes, 2 done"


def test_drain_a_hostlist_goes_on_past_a_refused_node(daemon: Daemon, capsys: Capture) -> None:
    # nid004 is already drained (by someone else), nid009 does not exist
    code, out, err = run(capsys, "drain", "nid[001,004,009]", "--reason", "x")
    assert code == 2
    assert err.splitlines() == [
        "trainwarden: error: nid004: node 'nid004' is already drained (maintenance)",
        "trainwarden: error: nid009: unknown node 'nid009'",
    ]
    assert daemon.service.nodes["nid001"].state == "drained"
    assert out.splitlines()[-1] == (
        "drain nid[001,004,009]: 3 nodes, 1 done, 2 not accepted (nid[004,009])"
    )


def test_drain_a_hostlist_json_is_a_list(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "drain", "nid001,nid002", "--reason", "x", "--json")
    rows = json.loads(out)
    assert code == 0 and [(r["kind"], r["node"]) for r in rows] == [
        ("drain", "nid001"),
        ("drain", "nid002"),
    ]
    # one node stays one object, as before
    code, out, _ = run(capsys, "undrain", "nid001", "--json")
    assert code == 0 and json.loads(out)["node"] == "nid001"


def test_failed_drains_of_a_hostlist_exit_1(daemon: Daemon, capsys: Capture) -> None:
    daemon.service.fail_scheduler = True
    code, out, _ = run(capsys, "drain", "nid[001-002]", "--reason", "x")
    assert code == 1
    assert out.splitlines()[-1] == "drain nid[001-002]: 2 nodes, 0 done, 2 refused or failed"


def test_undrain_a_hostlist(daemon: Daemon, capsys: Capture) -> None:
    run(capsys, "drain", "nid[001-002]", "--reason", "x")
    code, out, err = run(capsys, "undrain", "nid[001-002]", "--reason", "fixed")
    assert (code, err) == (0, "")
    assert daemon.service.nodes["nid001"].state == "healthy"
    assert daemon.service.nodes["nid002"].state == "healthy"
    assert out.splitlines()[-1] == "undrain nid[001-002]: 2 nodes, 2 done"


def test_drain_refuses_too_many_nodes_before_asking(daemon: Daemon, capsys: Capture) -> None:
    calls = len(daemon.service.calls)
    code, out, err = run(capsys, "drain", "nid[000000-019999]", "--reason", "typo")
    assert (code, out) == (2, "")
    assert err == (
        "trainwarden: error: 'nid[000000-019999]' names 20000 nodes, more than --max-nodes 32: "
        "check the expression, or raise --max-nodes to drain them all\n"
    )
    assert len(daemon.service.calls) == calls  # nothing was sent
    code, _, err = run(
        capsys, "drain", "nid[001-004]", "--reason", "x", "--max-nodes", "3"
    )  # the bound is the operator's to raise
    assert code == 2 and "names 4 nodes, more than --max-nodes 3" in err


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("nid[001-", "unbalanced '[' in hostlist 'nid[001-'"),
        ("nid[3-1]", "descending range '3-1'"),
        ("nid1,,nid2", "empty item in hostlist"),
    ],
)
def test_drain_bad_hostlist_is_one_line(
    daemon: Daemon, capsys: Capture, bad: str, message: str
) -> None:
    code, out, err = run(capsys, "drain", bad, "--reason", "x")
    assert (code, out) == (2, "")
    assert err.startswith(f"trainwarden: error: {message}") and err.count("\n") == 1


def test_drain_help_says_hostlist(capsys: Capture) -> None:
    with pytest.raises(SystemExit):
        main(["drain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Slurm hostlist" in out and "--max-nodes" in out


# --- nodes --node / events --node ---------------------------------------------------------------


def test_nodes_filtered_by_a_hostlist(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "nodes", "--json", "--node", "nid[002-003],nid999")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["nid002", "nid003"]
    code, out, _ = run(capsys, "nodes", "--node", "nid[002-003]", "--state", "failed")
    assert code == 0 and out.splitlines()[-1] == "1 nodes: 1 failed"
    code, out, _ = run(capsys, "nodes", "--node", "gpu[1-9]")
    assert (code, out) == (0, "no nodes known among gpu[1-9]\n")
    code, _, err = run(capsys, "nodes", "--node", "nid[2-1]")
    assert code == 2 and err.startswith("trainwarden: error: --node: descending range '2-1'")


def test_events_for_a_hostlist_asks_per_node_and_merges(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "events", "--json", "--node", "nid[001-003]")
    assert code == 0
    rows = json.loads(out)
    assert rows and all(r["node"] in ("nid001", "nid002", "nid003") for r in rows)
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    asked = [c[1]["node"] for c in daemon.service.calls if c[0] == "list_events"]
    assert asked == ["nid001", "nid002", "nid003"]
    # one name is one request, exactly as before
    code, _, _ = run(capsys, "events", "--json", "--node", "nid003")
    assert daemon.service.calls[-1][1]["node"] == "nid003"


def test_events_for_a_hostlist_keeps_the_newest_limit(daemon: Daemon, capsys: Capture) -> None:
    svc = daemon.service
    for i in range(5):
        svc.add_event("fault", f"f{i}", node="nid001")
        svc.add_event("fault", f"g{i}", node="nid002")
    code, out, _ = run(capsys, "events", "--json", "--node", "nid[001-002]", "--limit", "3")
    rows = json.loads(out)
    newest = sorted((e for e in svc.events if e.node in ("nid001", "nid002")), key=lambda e: e.id)
    assert code == 0 and [r["id"] for r in rows] == [e.id for e in newest[-3:]]


def test_events_refuses_a_huge_hostlist(daemon: Daemon, capsys: Capture) -> None:
    code, _, err = run(capsys, "events", "--node", "nid[000000-019999]")
    assert code == 2
    assert err.startswith("trainwarden: error: --node 'nid[000000-019999]' names 20000 nodes;")
    code, _, err = run(capsys, "events", "--node", "nid[1-")
    assert code == 2 and "--node: unbalanced '['" in err


# --- runs: the NODES column ---------------------------------------------------------------------


def test_runs_table_prints_nodes_as_a_hostlist(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "runs")
    assert code == 0 and "nid[001-003]" in out.splitlines()[1].split()
    many = [f"nid{i:06d}" for i in range(0, 2000, 2)]
    daemon.service.runs["pretrain"] = daemon.service.runs["pretrain"].model_copy(
        update={"nodes": many}
    )
    code, out, _ = run(capsys, "runs")
    assert "nid[000000,000002,000004,000006,...] (1000)" in out
