"""Parsers of Slurm's output, on text captured from the test cluster (Slurm 22.05.8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.scheduler import slurm_parse as sp
from trainwarden.supervisor.scheduler.base import JobState, NodeState

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("n1", ("n1",)),
        ("n[1-3,5]", ("n1", "n2", "n3", "n5")),
        ("n[1,3]", ("n1", "n3")),
        ("n1,n2", ("n1", "n2")),
        ("gpu[08-11]", ("gpu08", "gpu09", "gpu10", "gpu11")),
        ("nid[001-002]-ib,login1", ("nid001-ib", "nid002-ib", "login1")),
        ("r[1-2]n[1-2]", ("r1n1", "r1n2", "r2n1", "r2n2")),
        ("", ()),
        ("(null)", ()),
    ],
)
def test_expand_hostlist(text: str, names: tuple[str, ...]) -> None:
    assert sp.expand_hostlist(text) == names


@pytest.mark.parametrize("bad", ["n[1-3", "n1-3]", "n[a-b]", "n[3-1]", "n1,,n2"])
def test_expand_hostlist_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="hostlist"):
        sp.expand_hostlist(bad)


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("PENDING", JobState.PENDING),
        ("RUNNING", JobState.RUNNING),
        ("COMPLETING", JobState.COMPLETING),
        ("COMPLETED", JobState.COMPLETED),
        ("FAILED", JobState.FAILED),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("CANCELLED by 0", JobState.CANCELLED),
        ("TIMEOUT", JobState.TIMEOUT),
        ("BOOT_FAIL", JobState.NODE_FAIL),
        ("OUT_OF_MEMORY", JobState.FAILED),
        ("REQUEUED", JobState.PENDING),
        ("something-new", JobState.UNKNOWN),
    ],
)
def test_job_state(text: str, state: JobState) -> None:
    assert sp.job_state(text) is state


@pytest.mark.parametrize(
    ("base", "flags", "state"),
    [
        ("idle", [], NodeState.IDLE),
        ("allocated", [], NodeState.ALLOCATED),
        ("mixed", [], NodeState.ALLOCATED),
        ("idle", ["DRAIN"], NodeState.DRAINED),
        ("allocated", ["DRAIN"], NodeState.DRAINING),
        ("idle", ["COMPLETING", "DRAIN"], NodeState.DRAINING),
        ("idle", ["NOT_RESPONDING"], NodeState.IDLE),  # also right after every RESUME
        ("down", ["NOT_RESPONDING"], NodeState.DOWN),
        ("down", ["DRAIN"], NodeState.DOWN),
        ("future", [], NodeState.UNKNOWN),
    ],
)
def test_node_state(base: str, flags: list[str], state: NodeState) -> None:
    assert sp.node_state(base, flags) is state


def test_sinfo_json_capture() -> None:
    nodes = {n.name: n for n in sp.parse_sinfo_json((DATA / "sinfo-22.05.json").read_text())}
    assert list(nodes) == [f"n{i}" for i in range(1, 9)]
    assert nodes["n1"].state is NodeState.ALLOCATED
    assert nodes["n2"].state is NodeState.DRAINED
    assert nodes["n2"].reason == "trainwarden: xid 79 (gpu fell off the bus)"
    assert nodes["n6"].state is NodeState.DRAINING
    assert nodes["n7"].state is NodeState.IDLE  # killed slurmd, not yet DOWN: idle*
    assert nodes["n8"].state is NodeState.IDLE


def test_squeue_json_tagged_capture() -> None:
    tagged = sp.parse_squeue_tagged((DATA / "squeue-22.05.json").read_text())
    assert tagged == [("4", "demo-run")]


def test_json_errors_become_retryable() -> None:
    text = '{"meta": {}, "errors": [{"error": "Unspecified error", "errno": -1}], "nodes": []}'
    with pytest.raises(SchedulerError, match="Unspecified error") as info:
        sp.parse_sinfo_json(text)
    assert info.value.retryable


def test_json_garbage() -> None:
    with pytest.raises(SchedulerError, match="not JSON"):
        sp.parse_sinfo_json("sinfo: error: something")


def test_scontrol_records_capture() -> None:
    lines = (DATA / "scontrol-jobs-22.05.txt").read_text().splitlines()
    jobs = [sp.parse_record(ln) for ln in lines]
    by_id = {j["JobId"]: j for j in jobs}
    assert by_id["4"]["Comment"] == "trainwarden:demo-run"
    assert by_id["4"]["JobState"] == "RUNNING"
    assert sp.expand_hostlist(by_id["4"]["NodeList"]) == ("n1", "n3")
    assert by_id["6"]["JobState"] == "FAILED"
    assert sp.exit_code(by_id["6"]["ExitCode"]) == 3
    lines = (DATA / "scontrol-nodes-22.05.txt").read_text().splitlines()
    nodes = [sp.parse_record(ln) for ln in lines]
    by_name = {n["NodeName"]: n for n in nodes}
    assert by_name["n2"]["State"] == "IDLE+DRAIN"
    assert by_name["n2"]["Reason"].startswith("trainwarden: xid 79 (gpu fell off the bus) [root@")
    assert by_name["n7"]["State"] == "DOWN+NOT_RESPONDING"
    assert by_name["n1"]["Partitions"] == "main"


@pytest.mark.parametrize(("text", "code"), [("0:0", 0), ("3:0", 3), ("0:9", 137), ("", None)])
def test_exit_code(text: str, code: int | None) -> None:
    assert sp.exit_code(text) == code
