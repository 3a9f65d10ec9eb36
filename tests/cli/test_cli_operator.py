"""The operator CLI against a real API server: tables, --json, and one clear line per error."""

from __future__ import annotations

import io
import json
import os
import pwd
import socket
import time
from pathlib import Path
from typing import Any, Protocol

import pytest
from rich.console import Console

from trainwarden.cli import main
from trainwarden.supervisor.api.client import ApiUnreachableError, OperatorClient, resolve_api
from trainwarden.supervisor.api.contract import Explanation
from trainwarden.supervisor.cli.actions import STATUSES
from trainwarden.supervisor.cli.render import render_explanation
from trainwarden.supervisor.errors import SupervisorError
from trainwarden.supervisor.store.records import ActionStatus

Capture = pytest.CaptureFixture[str]
ME = pwd.getpwuid(os.getuid()).pw_name  # who the daemon records: this process's user


class Daemon(Protocol):  # the `daemon` fixture of conftest.py
    url: str
    service: Any  # tests/api/memory_service.py: MemoryService


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- nodes -------------------------------------------------------------------------------------


def test_nodes_table(daemon: Daemon, capsys: Capture) -> None:
    code, out, err = run(capsys, "nodes")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == [
        "NODE",
        "STATE",
        "SCHEDULER",
        "RUN",
        "HEARTBEAT",
        "CONDITIONS",
        "DRAINED",
        "DRAIN",
    ]
    nid003 = next(line for line in lines if line.startswith("nid003"))
    assert nid003.split()[:4] == ["nid003", "failed", "allocated", "pretrain"]
    assert "GpuFatal" in nid003
    nid004 = next(line for line in lines if line.startswith("nid004"))
    assert "external: maintenance" in nid004
    assert lines[-1] == "4 nodes: 1 drained, 1 failed, 2 healthy"


def test_nodes_table_shows_how_long_ago_a_node_was_drained(daemon: Daemon, capsys: Capture) -> None:
    node = daemon.service.nodes["nid004"]
    daemon.service.nodes["nid004"] = node.model_copy(update={"drained_at": time.time() - 7300})
    code, out, _ = run(capsys, "nodes")
    assert code == 0
    lines = out.splitlines()
    drained = lines[0].index("DRAINED")
    nid004 = next(line for line in lines if line.startswith("nid004"))
    assert nid004[drained:].split() == ["2h", "ago", "external:", "maintenance"]
    nid001 = next(line for line in lines if line.startswith("nid001"))
    assert nid001[drained:].startswith("-")
    code, out, _ = run(capsys, "nodes", "--json", "--state", "drained")
    assert json.loads(out)[0]["drained_at"] == pytest.approx(time.time() - 7300, abs=60)


def test_nodes_json_is_the_rows(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "nodes", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["nid001", "nid002", "nid003", "nid004"]
    assert rows[2]["conditions"] == ["GpuFatal"] and rows[2]["state"] == "failed"
    code, out, _ = run(capsys, "nodes", "--json", "--state", "drained")
    assert [r["name"] for r in json.loads(out)] == ["nid004"]


def test_nodes_all_lists_the_unknown_reporters(daemon: Daemon, capsys: Capture) -> None:
    from trainwarden.supervisor.api.contract import UnknownReporterRow

    ghost = UnknownReporterRow(
        name="ghost7",
        first_seen=daemon.service.now - 60,
        last_seen=daemon.service.now - 5,
        messages=12,
        last_topic="trainwarden/v1/node/ghost7/heartbeat",
    )
    daemon.service.unknown.append(ghost)
    code, out, _ = run(capsys, "nodes")
    assert code == 0 and "ghost7" not in out  # only with --all
    code, out, _ = run(capsys, "nodes", "--all")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("ghost7"))
    assert line.split()[:2] == ["ghost7", "12"]
    assert "1 unknown reporter(s)" in out and "nid001" in out
    code, out, _ = run(capsys, "nodes", "--all", "--json")
    both = json.loads(out)
    assert [u["name"] for u in both["unknown_reporters"]] == ["ghost7"]
    assert len(both["nodes"]) == 4


# --- drain / undrain -----------------------------------------------------------------------------


def test_drain_records_who_and_why(daemon: Daemon, capsys: Capture) -> None:
    code, out, err = run(capsys, "drain", "nid002", "--reason", "HBM errors, ticket 4711")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("action 2: drain nid002 at ")
    assert f"by operator {ME}: HBM errors, ticket 4711" in out
    assert "verdict allow, status succeeded: done" in out
    assert daemon.service.calls[-1] == (
        "drain",
        {"node": "nid002", "reason": "HBM errors, ticket 4711", "who": ME},
    )
    assert daemon.service.nodes["nid002"].state == "drained"


def test_who_is_the_caller_never_a_name_given(
    daemon: Daemon, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")  # an environment variable proves nothing
    code, out, _ = run(capsys, "drain", "nid001", "--reason", "x", "--json")
    assert code == 0 and json.loads(out)["who"] == ME
    with pytest.raises(SystemExit) as exc:
        main(["undrain", "nid001", "--who", "bob", "--json"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--who is no longer accepted: the daemon records who you are" in err
    assert "Traceback" not in err
    assert daemon.service.nodes["nid001"].state == "drained"  # the undrain never went out
    code, out, _ = run(capsys, "undrain", "nid001", "--json")
    row = json.loads(out)
    assert code == 0 and (row["kind"], row["who"]) == ("undrain", ME)
    assert row["reason"] == "returned to service by an operator"


def test_drain_unknown_node_prints_the_servers_sentence(daemon: Daemon, capsys: Capture) -> None:
    code, out, err = run(capsys, "drain", "nosuchnode", "--reason", "x")
    assert (code, out) == (2, "")
    assert err == "trainwarden: error: unknown node 'nosuchnode'\n"


def test_drain_needs_a_reason(daemon: Daemon, capsys: Capture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["drain", "nid001"])
    assert exc.value.code == 2
    assert "--reason" in capsys.readouterr().err
    code, _, err = run(capsys, "drain", "nid001", "--reason", "  ")
    assert code == 2 and "--reason must not be empty" in err
    assert daemon.service.nodes["nid001"].state == "healthy"


def test_failed_action_exits_1(daemon: Daemon, capsys: Capture) -> None:
    daemon.service.fail_scheduler = True
    code, out, _ = run(capsys, "drain", "nid001", "--reason", "x")
    assert code == 1 and "status failed: scheduler refused" in out


def test_unreachable_daemon_is_one_line(tmp_path: Path, capsys: Capture) -> None:
    path = tmp_path / "api.sock"
    code, out, err = run(capsys, "nodes", "--api", str(path))
    assert (code, out) == (2, "")
    assert err == (
        f"trainwarden: error: cannot reach the trainwarden daemon at {path}: no such socket "
        "(is the daemon running here? elsewhere: --api or $TRAINWARDEN_API)\n"
    )
    left = socket.socket(socket.AF_UNIX)  # a socket file nobody listens on
    left.bind(str(path))
    left.close()
    code, out, err = run(capsys, "nodes", "--api", str(path))
    assert err == (
        f"trainwarden: error: cannot reach the trainwarden daemon at {path}: Connection refused\n"
    )


def test_invalid_api_address(capsys: Capture) -> None:
    code, _, err = run(capsys, "runs", "--api", "localhost:8470")
    assert code == 2
    assert err == (
        "trainwarden: error: invalid API address 'localhost:8470': give the daemon's socket "
        "path (default /run/trainwarden/api.sock) or https://HOST:PORT\n"
    )
    code, _, err = run(capsys, "runs", "--api", "http://login1:8470")
    assert code == 2 and "is not served over plain http" in err


def test_api_address_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRAINWARDEN_API", raising=False)
    assert resolve_api(None) == "unix:/run/trainwarden/api.sock"
    monkeypatch.setenv("TRAINWARDEN_API", "https://login1:9000/")
    assert resolve_api(None) == "https://login1:9000"
    assert resolve_api("unix:///tmp/x.sock") == resolve_api("/tmp/x.sock") == "unix:/tmp/x.sock"
    monkeypatch.chdir(tmp_path)
    assert resolve_api("./api.sock") == f"unix:{tmp_path}/api.sock"


def test_a_daemon_that_never_answers_times_out(tmp_path: Path) -> None:
    path = tmp_path / "slow.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)  # accepts into the backlog, never replies
        with pytest.raises(
            ApiUnreachableError,
            match=f"cannot reach the trainwarden daemon at {path}: no answer within 0.3 s",
        ):
            OperatorClient(str(path), timeout_s=0.3).nodes()


# --- runs --------------------------------------------------------------------------------------


def test_runs_table_and_json(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "runs")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["RUN", "SCHEDULER", "STATE"]
    assert lines[1].split() == [
        "pretrain",
        "slurm",
        "running",
        "2",
        "1",
        "nid[001-003]",
        "1200/10000",
        "1000",
        "500",
        "reporter",
    ]
    code, out, _ = run(capsys, "runs", "--json")
    (row,) = json.loads(out)
    assert row["name"] == "pretrain" and row["nodes"] == ["nid001", "nid002", "nid003"]


def test_runs_add(
    daemon: Daemon, capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(
        capsys,
        "runs",
        "add",
        "llm-70b",
        "--scheduler",
        "slurm",
        "--nodes",
        "512",
        "--checkpoint-dir",
        "ckpt",
        "--target-step",
        "250000",
        "--env",
        "NCCL_DEBUG=WARN",
        "--env",
        "EMPTY=",
        "--ranks-per-node",
        "4",
        "--checkpoint-format",
        "megatron",
        "--progress",
        "megatron",
        "--",
        "/opt/jobs/train.sbatch",
        "--config",
        "70b.yaml",
    )
    assert (code, err) == (0, "")
    assert out == "run llm-70b added (slurm, 512 nodes): state pending, attempt 0\n"
    spec = daemon.service.specs["llm-70b"]
    assert spec.command == ["/opt/jobs/train.sbatch", "--config", "70b.yaml"]
    assert spec.checkpoint_dir == str(tmp_path / "ckpt")
    assert spec.env == {"NCCL_DEBUG": "WARN", "EMPTY": ""}
    assert (spec.nodes, spec.target_step) == (512, 250000)
    assert (spec.ranks_per_node, spec.checkpoint_format, spec.progress) == (
        4,
        "megatron",
        "megatron",
    )
    assert daemon.service.calls[-1][1]["who"] == ME
    code, _, err = run(
        capsys,
        "runs",
        "add",
        "llm-70b",
        "--scheduler",
        "slurm",
        "--nodes",
        "1",
        "--checkpoint-dir",
        "/c",
        "--",
        "x",
    )
    assert code == 2 and err == "trainwarden: error: a run named 'llm-70b' already exists\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["r1", "--nodes", "1", "--checkpoint-dir", "/c"], "no command given: put it after `--`"),
        (
            ["r1", "--nodes", "1", "--checkpoint-dir", "/c", "--env", "NOEQUALS", "--", "x"],
            "--env 'NOEQUALS' is not of the form KEY=VALUE",
        ),
        (
            ["bad name", "--nodes", "1", "--checkpoint-dir", "/c", "--", "x"],
            "invalid run name: String should match pattern",
        ),
        (
            ["r1", "--nodes", "0", "--checkpoint-dir", "/c", "--", "x"],
            "invalid run nodes: Input should be greater than or equal to 1",
        ),
        (
            ["r1", "--nodes", "1", "--checkpoint-dir", "/c", "--env", "1X=y", "--", "x"],
            "invalid run env: '1X' is not a valid environment variable name",
        ),
        (
            ["r1", "--nodes", "1", "--checkpoint-dir", "/c", "--progress", "regex:(", "--", "x"],
            "invalid run progress:",
        ),
        (
            ["r1", "--nodes", "1", "--checkpoint-dir", "/c", "--ranks-per-node", "0", "--", "x"],
            "invalid run ranks_per_node: Input should be greater than or equal to 1",
        ),
    ],
)
def test_runs_add_refuses_bad_input(
    daemon: Daemon, capsys: Capture, argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "runs", "add", *argv[:1], "--scheduler", "local", *argv[1:])
    assert code == 2 and err.startswith(f"trainwarden: error: {message}")
    assert set(daemon.service.runs) == {"pretrain"}


def test_runs_restart(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "runs", "restart", "pretrain", "--reason", "loss spike")
    assert code == 0 and "restart-run run pretrain" in out
    assert daemon.service.runs["pretrain"].attempt == 3
    code, _, err = run(capsys, "runs", "restart", "ghost", "--reason", "x")
    assert code == 2 and err == "trainwarden: error: unknown run 'ghost'\n"
    daemon.service.fail_scheduler = True
    code, _, err = run(capsys, "runs", "restart", "pretrain", "--reason", "x")
    assert code == 2 and "sbatch: error: Batch job submission failed" in err


# --- events / actions ----------------------------------------------------------------------------


def test_events_table_oldest_first(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "events")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "KIND", "NODE", "RUN", "MESSAGE"]
    assert lines[1].split()[0] == "1" and "XID 79 on gpu 2" in lines[1]
    assert lines[2].split()[0] == "2" and "run-started" in lines[2]


def test_events_filters_and_json(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(
        capsys, "events", "--json", "--node", "nid003", "--kind", "fault", "--limit", "7"
    )
    assert code == 0 and [e["id"] for e in json.loads(out)] == [1]
    assert daemon.service.calls[-1][1] == {
        "limit": 7,
        "node": "nid003",
        "run": None,
        "kind": "fault",
        "since_id": None,
    }
    code, out, _ = run(capsys, "events", "--run", "nobody")
    assert (code, out) == (0, "no events\n")
    code, _, err = run(capsys, "events", "--limit", "0")
    assert code == 2 and err == "trainwarden: error: limit must be between 1 and 10000, got 0\n"


def test_explain_event(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "events", "--explain", "1")
    assert code == 0
    assert out.splitlines()[:3] == [
        "event 1",
        "  fault: XID 79 on gpu 2: GPU has fallen off the bus",
        "  led to action 1 (drain)",
    ]
    assert "evidence" in out.splitlines()
    code, _, err = run(capsys, "events", "--explain", "404")
    assert code == 2 and err == "trainwarden: error: unknown event 404\n"


def test_actions_table_and_explain(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "actions", "--status", "pending")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "KIND", "TARGET", "BY", "VERDICT", "STATUS", "REASON"]
    assert "rule gpu-fatal-drain" in lines[1] and "queued" in lines[1]
    code, out, _ = run(capsys, "actions", "--explain", "1", "--json")
    exp = json.loads(out)
    assert exp["subject"] == "action 1" and exp["events"][0]["id"] == 1
    code, out, _ = run(capsys, "actions", "--status", "failed")
    assert out == "no actions with status failed\n"


def test_approve_and_reject(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "approve", "1")
    assert code == 0 and f"verdict queued, status approved: approved by {ME}" in out
    code, _, err = run(capsys, "reject", "1", "--reason", "too late")
    assert code == 2
    assert err == "trainwarden: error: action 1 is not awaiting approval (status approved)\n"
    code, _, err = run(capsys, "approve", "99")
    assert code == 2 and err == "trainwarden: error: unknown action 99\n"


def test_reject(daemon: Daemon, capsys: Capture) -> None:
    code, out, _ = run(capsys, "reject", "1", "--reason", "node is fine", "--json")
    row = json.loads(out)
    assert code == 0 and (row["status"], row["result"]) == (
        "rejected",
        f"rejected by {ME}: node is fine",
    )


def test_status_choices_match_the_store() -> None:
    assert set(STATUSES) == {s.value for s in ActionStatus}


def test_errors_are_supervisor_errors() -> None:
    assert issubclass(ApiUnreachableError, SupervisorError)


def test_explanation_without_lines_shows_the_action(daemon: Daemon) -> None:
    action = daemon.service.actions[0]
    out = Console(width=200, record=True, file=io.StringIO())
    render_explanation(
        out, Explanation(subject="action 1", action=action, events=daemon.service.events[:1])
    )
    text = out.export_text()
    assert "by rule gpu-fatal-drain: GpuFatal: XID 79 on gpu 2" in text
    assert "guard max-drains-per-window: pass (0/4)" in text
    assert "evidence: events 1" in text
    assert "XID 79 on gpu 2: GPU has fallen off the bus" in text


def test_runs_goodput_prints_the_buckets_and_the_json(daemon: Daemon, capsys: Capture) -> None:
    code, out, err = run(capsys, "runs", "goodput", "pretrain")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("run pretrain: ETTR 0.900 over 100 s of wall time")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["productive"][-1] == "90.0%" and rows["rework"][-1] == "10.0%"
    assert "no checkpoint-interval advice yet" in out
    code, out, _ = run(capsys, "runs", "goodput", "pretrain", "--json")
    doc = json.loads(out)
    assert doc["ettr"] == 0.9 and sum(doc["buckets"].values()) == doc["wall_s"]
    code, _, err = run(capsys, "runs", "goodput", "nope")
    assert code == 2 and "unknown run 'nope'" in err
