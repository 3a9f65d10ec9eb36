"""The operator API over real HTTP: routes, JSON shapes, and a clear 4xx for every bad input."""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from memory_service import MemoryService
from prometheus_client import CollectorRegistry
from unix_http import on_socket, session

from trainwarden.supervisor.api.contract import (
    ActionRow,
    EventRow,
    Explanation,
    NodeDetail,
    NodeRow,
    RunRow,
)
from trainwarden.supervisor.api.server import (
    ApiServer,
    create_app,
    create_metrics_app,
)
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.errors import SupervisorError

# the caller over the socket is this test process: its user is recorded as who
ME = pwd.getpwuid(os.getuid()).pw_name
RUN_SPEC: dict[str, Any] = {
    "name": "finetune-7b",
    "scheduler": "local",
    "command": ["python", "train.py", "--lr", "3e-4"],
    "nodes": 2,
    "checkpoint_dir": "/scratch/ckpt/finetune-7b",
    "env": {"OMP_NUM_THREADS": "8"},
    "target_step": 5000,
}


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    return body


async def _error(resp: aiohttp.ClientResponse, status: int) -> str:
    body = await _json(resp, status)
    assert set(body) == {"error"}
    assert "Traceback" not in body["error"]
    return str(body["error"])


# --- reading -----------------------------------------------------------------------------------


async def test_nodes_are_listed_as_rows(http: aiohttp.ClientSession) -> None:
    body = await _json(await http.get("/api/v1/nodes"), 200)
    rows = [NodeRow.model_validate(r) for r in body]
    assert [r.name for r in rows] == ["nid001", "nid002", "nid003", "nid004"]
    failed = rows[2]
    assert failed.state == "failed" and failed.conditions == ["GpuFatal"]
    assert failed.run == "pretrain"
    assert rows[3].drained_by == "external" and rows[3].drain_reason == "maintenance"


async def test_one_node_in_detail(http: aiohttp.ClientSession, service: MemoryService) -> None:
    body = await _json(await http.get("/api/v1/nodes/nid003"), 200)
    node = NodeDetail.model_validate(body)
    assert (node.name, node.state, node.run, node.conditions) == (
        "nid003",
        "failed",
        "pretrain",
        ["GpuFatal"],
    )
    (cond,) = node.condition_details
    assert (cond.type, cond.evidence) == ("GpuFatal", [1])
    assert "XID 79" in cond.reason and cond.since == service.events[0].ts
    assert [e.id for e in node.events] == [1] and [a.id for a in node.actions] == [1]
    assert service.calls[-1] == ("node_detail", {"node": "nid003"})
    drained = NodeDetail.model_validate(await _json(await http.get("/api/v1/nodes/nid004"), 200))
    assert drained.drained_by == "external" and drained.drained_at == 1_800_000_000 - 7200


async def test_an_unknown_or_invalid_node_is_404_or_400(http: aiohttp.ClientSession) -> None:
    message = await _error(await http.get("/api/v1/nodes/nid009"), 404)
    assert message == "unknown node 'nid009'"
    assert "invalid node name '-x'" in await _error(await http.get("/api/v1/nodes/-x"), 400)
    # a node's actions are its own routes, never mistaken for a node name
    assert await _error(await http.get("/api/v1/nodes/nid001/drain"), 405)


async def test_runs_are_listed_as_rows(http: aiohttp.ClientSession) -> None:
    body = await _json(await http.get("/api/v1/runs"), 200)
    (run,) = [RunRow.model_validate(r) for r in body]
    assert (run.name, run.attempt, run.restarts, run.last_checkpoint_step) == (
        "pretrain",
        2,
        1,
        1000,
    )


async def test_events_filters_reach_the_service(
    http: aiohttp.ClientSession, service: MemoryService
) -> None:
    body = await _json(
        await http.get(
            "/api/v1/events",
            params={"node": "nid003", "kind": "fault", "limit": "5", "since_id": "0"},
        ),
        200,
    )
    rows = [EventRow.model_validate(r) for r in body]
    assert [(r.kind, r.node) for r in rows] == [("fault", "nid003")]
    assert rows[0].data == {"code": 79, "gpu": 2}
    assert service.calls[-1] == (
        "list_events",
        {"limit": 5, "node": "nid003", "run": None, "kind": "fault", "since_id": 0},
    )


async def test_events_default_limit_and_order(
    http: aiohttp.ClientSession, service: MemoryService
) -> None:
    body = await _json(await http.get("/api/v1/events"), 200)
    assert [r["id"] for r in body] == [2, 1]  # newest first
    assert service.calls[-1][1]["limit"] == 100


async def test_events_read_forward_oldest_first(
    http: aiohttp.ClientSession, service: MemoryService
) -> None:
    for i in range(3):
        service.add_event("fault", f"fault {i}", node="nid001")
    query = {"since_id": "1", "limit": "2", "order": "oldest"}
    body = await _json(await http.get("/api/v1/events", params=query), 200)
    assert [r["id"] for r in body] == [2, 3]  # the oldest two after 1, not the newest two
    assert service.calls[-1][1]["oldest_first"] is True
    newest = await _json(await http.get("/api/v1/events", params={**query, "order": "newest"}), 200)
    assert [r["id"] for r in newest] == [5, 4]
    message = await _error(await http.get("/api/v1/events", params={"order": "up"}), 400)
    assert message == "order must be newest or oldest, not 'up'"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": "abc"}, "limit must be an integer, got 'abc'"),
        ({"limit": "0"}, "limit must be between 1 and 10000, got 0"),
        ({"limit": "10001"}, "limit must be between 1 and 10000, got 10001"),
        ({"since_id": "-1"}, "since_id must be at least 0, got -1"),
        ({"node": "bad/name"}, "invalid node name 'bad/name'"),
        ({"run": "-run"}, "invalid run name '-run'"),
        ({"kind": "k" * 65}, "kind must be at most 64 characters"),
    ],
)
async def test_bad_event_queries_are_400(
    http: aiohttp.ClientSession, query: dict[str, str], message: str
) -> None:
    assert message in await _error(await http.get("/api/v1/events", params=query), 400)


async def test_actions_by_status(http: aiohttp.ClientSession) -> None:
    body = await _json(await http.get("/api/v1/actions", params={"status": "pending"}), 200)
    (row,) = [ActionRow.model_validate(r) for r in body]
    assert (row.kind, row.actor, row.rule, row.verdict) == (
        "drain",
        "rule",
        "gpu-fatal-drain",
        "queued",
    )
    assert row.guards == [{"guard": "max-drains-per-window", "passed": True, "detail": "0/4"}]
    assert await _json(await http.get("/api/v1/actions?status=succeeded"), 200) == []
    message = await _error(await http.get("/api/v1/actions?status=done"), 400)
    assert message.startswith("unknown action status 'done'; use one of: pending")


async def test_explain_action_and_event(http: aiohttp.ClientSession) -> None:
    body = await _json(await http.get("/api/v1/actions/1/explain"), 200)
    exp = Explanation.model_validate(body)
    assert exp.subject == "action 1"
    assert exp.action is not None and exp.action.id == 1
    assert [e.id for e in exp.events] == [1]
    assert "because GpuFatal: XID 79 on gpu 2" in exp.lines[0]
    exp = Explanation.model_validate(await _json(await http.get("/api/v1/events/1/explain"), 200))
    assert exp.subject == "event 1" and "led to action 1 (drain)" in exp.lines
    assert [(a.id, a.kind, a.status) for a in exp.followed] == [(1, "drain", "pending")]
    exp = Explanation.model_validate(await _json(await http.get("/api/v1/events/2/explain"), 200))
    assert exp.followed == []


async def test_explain_unknown_or_malformed_id(http: aiohttp.ClientSession) -> None:
    assert await _error(await http.get("/api/v1/actions/99/explain"), 404) == "unknown action 99"
    assert await _error(await http.get("/api/v1/events/99/explain"), 404) == "unknown event 99"
    message = await _error(await http.get("/api/v1/events/x1/explain"), 400)
    assert message == "event id must be an integer, got 'x1'"


# --- operator actions -----------------------------------------------------------------------------


async def test_drain_records_an_operator_action(
    http: aiohttp.ClientSession, service: MemoryService
) -> None:
    resp = await http.post("/api/v1/nodes/nid002/drain", json={"reason": "  bad HBM, ticket 4711 "})
    row = ActionRow.model_validate(await _json(resp, 200))
    assert (row.kind, row.actor, row.who, row.node, row.status) == (
        "drain",
        "operator",
        ME,
        "nid002",
        "succeeded",
    )
    assert row.reason == "bad HBM, ticket 4711"  # surrounding whitespace stripped
    assert service.nodes["nid002"].state == "drained"
    assert service.nodes["nid002"].drained_by == "operator"


async def test_drain_unknown_node_is_404(http: aiohttp.ClientSession) -> None:
    resp = await http.post("/api/v1/nodes/nosuchnode/drain", json={"reason": "x"})
    assert await _error(resp, 404) == "unknown node 'nosuchnode'"


async def test_service_refusal_is_400_with_its_sentence(http: aiohttp.ClientSession) -> None:
    resp = await http.post("/api/v1/nodes/nid004/drain", json={"reason": "x"})
    assert await _error(resp, 400) == "node 'nid004' is already drained (maintenance)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "request body is not valid JSON: Expecting property name"),
        (b"\xff\xfe", "request body is not valid JSON"),
        (b"[1, 2]", "request body must be a JSON object, not list"),
        (b"", "invalid request: missing field 'reason'"),
        (b'{"reason": ""}', "invalid request: reason: String should have at least"),
        (b'{"reason": "x", "force": true}', "unknown field 'force'"),
        (b'{"reason": 5}', "reason: Input should be a valid string"),
    ],
)
async def test_malformed_drain_bodies_are_400(
    http: aiohttp.ClientSession, service: MemoryService, body: bytes, message: str
) -> None:
    resp = await http.post(
        "/api/v1/nodes/nid001/drain", data=body, headers={"Content-Type": "application/json"}
    )
    assert message in await _error(resp, 400)
    assert service.nodes["nid001"].state == "healthy"  # nothing changed


async def test_invalid_node_name_in_path_is_400(http: aiohttp.ClientSession) -> None:
    resp = await http.post("/api/v1/nodes/..hidden/drain", json={"reason": "x"})
    assert "invalid node name '..hidden'" in await _error(resp, 400)


async def test_undrain_reason_is_optional(
    http: aiohttp.ClientSession, service: MemoryService
) -> None:
    resp = await http.post("/api/v1/nodes/nid004/undrain", json={})
    row = ActionRow.model_validate(await _json(resp, 200))
    assert row.kind == "undrain" and row.reason == "returned to service by an operator"
    assert service.nodes["nid004"].state == "healthy"


async def test_add_run(http: aiohttp.ClientSession, service: MemoryService) -> None:
    row = RunRow.model_validate(await _json(await http.post("/api/v1/runs", json=RUN_SPEC), 201))
    assert (row.name, row.scheduler, row.state, row.target_step) == (
        "finetune-7b",
        "local",
        "pending",
        5000,
    )
    spec = service.specs["finetune-7b"]
    assert spec.command == ["python", "train.py", "--lr", "3e-4"]
    assert spec.env == {"OMP_NUM_THREADS": "8"}
    assert service.calls[-1][1]["who"] == ME
    again = await _error(await http.post("/api/v1/runs", json=RUN_SPEC), 400)
    assert again == "a run named 'finetune-7b' already exists"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "has space"}, "name: String should match pattern"),
        ({"scheduler": "pbs"}, "scheduler: Input should be 'local' or 'slurm'"),
        ({"nodes": 0}, "nodes: Input should be greater than or equal to 1"),
        ({"command": []}, "command: List should have at least 1 item"),
        ({"command": [" ", "x"]}, "command: the command's first word (the program) is empty"),
        ({"checkpoint_dir": "ckpt"}, "checkpoint_dir: checkpoint_dir 'ckpt' is not an absolute"),
        ({"env": {"1BAD": "x"}}, "env: '1BAD' is not a valid environment variable name"),
        ({"target_step": -1}, "target_step: Input should be greater than or equal to 0"),
        ({"gpus": 4}, "unknown field 'gpus'"),
    ],
)
async def test_invalid_run_specs_are_400(
    http: aiohttp.ClientSession, service: MemoryService, change: dict[str, Any], message: str
) -> None:
    resp = await http.post("/api/v1/runs", json={**RUN_SPEC, **change})
    assert message in await _error(resp, 400)
    assert "finetune-7b" not in service.runs


async def test_restart_run(http: aiohttp.ClientSession, service: MemoryService) -> None:
    resp = await http.post("/api/v1/runs/pretrain/restart", json={"reason": "hung"})
    row = ActionRow.model_validate(await _json(resp, 200))
    assert (row.kind, row.run, row.who) == ("restart-run", "pretrain", ME)
    assert service.runs["pretrain"].restarts == 2
    resp = await http.post("/api/v1/runs/nope/restart", json={"reason": "x"})
    assert await _error(resp, 404) == "unknown run 'nope'"


async def test_scheduler_failure_is_502(
    http: aiohttp.ClientSession, service: MemoryService
) -> None:
    service.fail_scheduler = True
    resp = await http.post("/api/v1/runs/pretrain/restart", json={"reason": "x"})
    assert await _error(resp, 502) == "sbatch: error: Batch job submission failed"


async def test_approve_and_reject(http: aiohttp.ClientSession) -> None:
    row = await _json(await http.post("/api/v1/actions/1/approve", json={}), 200)
    assert (row["status"], row["result"]) == ("approved", f"approved by {ME}")
    again = await _error(await http.post("/api/v1/actions/1/approve", json={}), 400)
    assert again == "action 1 is not awaiting approval (status approved)"
    resp = await http.post("/api/v1/actions/1/reject", json={})
    assert "missing field 'reason'" in await _error(resp, 400)
    resp = await http.post("/api/v1/actions/7/reject", json={"reason": "no"})
    assert await _error(resp, 404) == "unknown action 7"


# --- plumbing -----------------------------------------------------------------------------------


async def test_unknown_route_and_wrong_method_are_json(http: aiohttp.ClientSession) -> None:
    assert await _error(await http.get("/api/v1/gpus"), 404) == (
        "no such endpoint: GET /api/v1/gpus"
    )
    resp = await http.get("/api/v1/nodes/nid001/drain")
    assert await _error(resp, 405) == (
        "method GET is not allowed on /api/v1/nodes/nid001/drain (use POST)"
    )


async def test_oversized_body_is_413(http: aiohttp.ClientSession) -> None:
    resp = await http.post(
        "/api/v1/runs",
        data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert await _error(resp, 413) == "request body is larger than the 1048576-byte limit"


class BrokenService(MemoryService):
    async def list_nodes(self) -> list[NodeRow]:
        raise RuntimeError("database cursor exploded")

    def status(self) -> dict[str, Any]:
        raise OSError("disk gone")


async def test_unexpected_failure_is_500_without_traceback(sock_dir: Path) -> None:
    api = on_socket(create_app(BrokenService(), Metrics(CollectorRegistry())), sock_dir / "b.s")
    async with api, session(api) as http:
        message = await _error(await http.get("/api/v1/nodes"), 500)
        assert message == "internal error: RuntimeError: database cursor exploded"
        body = await _json(await http.get("/healthz"), 503)
        assert body == {"ok": False, "error": "OSError: disk gone"}


async def test_healthz(http: aiohttp.ClientSession, service: MemoryService) -> None:
    body = await _json(await http.get("/healthz"), 200)
    assert body["ok"] is True and body["leader"] is True and body["version"] == "0.1.0"
    service.ok = False
    body = await _json(await http.get("/healthz"), 503)
    assert body["db"] is False


async def test_metrics_endpoint_counts_requests(
    http: aiohttp.ClientSession, service: MemoryService, metrics: Metrics
) -> None:
    await http.get("/api/v1/nodes")
    await http.post("/api/v1/nodes/nosuchnode/drain", json={"reason": "x"})
    assert (await http.get("/metrics")).status == 404  # not on the API's socket
    scrape = ApiServer(create_metrics_app(metrics, service.status), "127.0.0.1", 0)
    async with scrape, aiohttp.ClientSession(base_url=scrape.url) as plain:
        await _metrics_exposition(plain)


async def _metrics_exposition(http: aiohttp.ClientSession) -> None:
    resp = await http.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = await resp.text()
    assert (
        'trainwarden_api_requests_total{code="200",method="GET",route="/api/v1/nodes"} 1.0'
    ) in text
    assert (
        'trainwarden_api_requests_total{code="404",method="POST",'
        'route="/api/v1/nodes/{name}/drain"} 1.0'
    ) in text
    assert 'trainwarden_nodes{state="healthy"} 0.0' in text
    resp = await http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


async def test_server_reports_port_in_use(metrics: Metrics) -> None:
    server = ApiServer(create_metrics_app(metrics, dict), "127.0.0.1", 0)
    async with server:
        assert server.port and server.url == f"http://127.0.0.1:{server.port}"
        other = ApiServer(create_metrics_app(metrics, dict), "127.0.0.1", server.port)
        with pytest.raises(SupervisorError, match=f"cannot serve on 127.0.0.1:{server.port}"):
            await other.start()


async def test_socket_in_use_is_refused_and_a_stale_one_replaced(
    server: ApiServer, sock_dir: Path
) -> None:
    path = sock_dir / "api.sock"
    assert server.url == f"unix:{path}" and oct(path.stat().st_mode & 0o777) == "0o666"
    other = on_socket(create_app(MemoryService(), Metrics(CollectorRegistry())), path)
    with pytest.raises(SupervisorError, match=r"another process \(a daemon\?\) serves on it"):
        await other.start()
    await server.stop()
    assert not path.exists()  # removed on stop
    stale = on_socket(create_app(MemoryService(), Metrics(CollectorRegistry())), path)
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(path))  # a socket file nobody listens on: a daemon that was killed
    left.close()
    async with stale, session(stale) as http:
        assert (await http.get("/healthz")).status == 200
