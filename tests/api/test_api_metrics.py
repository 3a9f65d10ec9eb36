"""The daemon's metrics: names, labels, bounded series, and the text exposition."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from trainwarden.health.errors import ReportError
from trainwarden.health.report import parse_message
from trainwarden.supervisor.api.contract import NODE_STATES
from trainwarden.supervisor.daemon.metrics import REJECT_REASONS, Metrics, rejection_reason


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.exposition()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _exercise(m: Metrics) -> None:
    m.set_node_states({"healthy": 2680, "drained": 5, "failed": 3})
    m.set_run_states({"running": 1})
    m.set_incidents_open(1)
    m.set_leader(True)
    m.set_broker_connected(True)
    m.detection("GpuFatal", latency_s=1.7)
    m.detection("NodeDead")
    m.action("drain", "allow", "succeeded")
    m.message("heartbeat", 3)
    m.message_rejected("invalid")
    m.store_flush(0.012, 250)
    m.store(False, 12, 3, {"refused": 1, "dropped": 0})
    m.run_restarted("pretrain")
    m.api_request("GET", "/api/v1/nodes", 200, 0.003)


def test_build_info_names_the_running_version() -> None:
    import platform

    from trainwarden import __version__

    m = Metrics(CollectorRegistry())
    labels = {"version": __version__, "python": platform.python_version()}
    assert m.registry.get_sample_value("trainwarden_build_info", labels) == 1.0
    assert (m.registry.get_sample_value("process_resident_memory_bytes") or 0) > 0


def test_every_family_is_exposed() -> None:
    m = Metrics(CollectorRegistry())
    _exercise(m)
    assert set(m.names()) == {
        "trainwarden_nodes",
        "trainwarden_runs",
        "trainwarden_incidents_open",
        "trainwarden_leader",
        "trainwarden_broker_connected",
        "trainwarden_detections",
        "trainwarden_detection_latency_seconds",
        "trainwarden_actions",
        "trainwarden_messages",
        "trainwarden_rejected_messages",
        "trainwarden_store_flush_seconds",
        "trainwarden_store_batch_size",
        "trainwarden_run_restarts",
        "trainwarden_api_requests",
        "trainwarden_api_request_duration_seconds",
        "trainwarden_handler_errors",
        "trainwarden_bus_lag_seconds",
        "trainwarden_verdicts_suspended",
        "trainwarden_store_available",
        "trainwarden_store_waiting",
        "trainwarden_store_lost",
        "trainwarden_build_info",
        "trainwarden_run_seconds",
        "trainwarden_run_checkpoint_interval_advised_seconds",
        # the process's own (prometheus_client's ProcessCollector)
        "process_cpu_seconds",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    }
    s = _samples(m)
    assert s[("trainwarden_store_available", ())] == 0
    assert s[("trainwarden_store_waiting", (("kind", "decisions"),))] == 3
    assert s[("trainwarden_store_lost_total", (("reason", "refused"),))] == 1
    assert s[("trainwarden_store_lost_total", (("reason", "dropped"),))] == 0
    # exported at 0 before the first internal error, so increase() sees the first one
    assert s[("trainwarden_handler_errors_total", (("stage", "message"),))] == 0
    assert s[("trainwarden_handler_errors_total", (("stage", "tick"),))] == 0
    assert s[("trainwarden_nodes", (("state", "healthy"),))] == 2680
    assert s[("trainwarden_detections_total", (("kind", "GpuFatal"),))] == 1
    assert (
        s[
            (
                "trainwarden_actions_total",
                (("kind", "drain"), ("status", "succeeded"), ("verdict", "allow")),
            )
        ]
        == 1
    )
    assert s[("trainwarden_messages_total", (("kind", "heartbeat"),))] == 3
    assert s[("trainwarden_run_restarts_total", (("run", "pretrain"),))] == 1
    assert s[("trainwarden_incidents_open", ())] == 1
    assert s[("trainwarden_leader", ())] == 1
    assert s[("trainwarden_store_batch_size_sum", ())] == 250
    # 1.7 s lands in the 2 s bucket, not the 1 s one
    lat = "trainwarden_detection_latency_seconds_bucket"
    assert s[(lat, (("kind", "GpuFatal"), ("le", "1.0")))] == 0
    assert s[(lat, (("kind", "GpuFatal"), ("le", "2.0")))] == 1
    assert s[(lat, (("kind", "GpuFatal"), ("le", "60.0")))] == 1
    # a detection without a known latency counts but is not observed
    assert ("trainwarden_detection_latency_seconds_count", (("kind", "NodeDead"),)) not in s


def test_node_gauge_is_set_from_counts_and_bounded() -> None:
    m = Metrics(CollectorRegistry())
    m.set_node_states({"healthy": 4, "failed": 1})
    m.set_node_states({"healthy": 3, "rebooting": 2})  # "failed" gone; an unexpected state
    s = _samples(m)
    states = {dict(k[1])["state"]: v for k, v in s.items() if k[0] == "trainwarden_nodes"}
    assert set(states) == set(NODE_STATES)  # no series for "rebooting"
    assert states["healthy"] == 3 and states["failed"] == 0 and states["unknown"] == 2


def test_run_states_that_disappear_read_zero() -> None:
    m = Metrics(CollectorRegistry())
    m.set_run_states({"running": 2, "paused-by-test": 1})
    m.set_run_states({"running": 1})
    s = _samples(m)
    assert s[("trainwarden_runs", (("state", "paused-by-test"),))] == 0
    assert s[("trainwarden_runs", (("state", "running"),))] == 1
    assert s[("trainwarden_runs", (("state", "gave-up"),))] == 0


def test_rejection_reasons_are_a_fixed_set() -> None:
    m = Metrics(CollectorRegistry())
    m.message_rejected("invalid")
    m.message_rejected("payload on trainwarden/v1/node/x/health is not JSON: ...")
    m.message_rejected("version")
    m.message_rejected("something nobody foresaw")
    s = _samples(m)
    reasons = {
        dict(k[1])["reason"]: v
        for k, v in s.items()
        if k[0] == "trainwarden_rejected_messages_total"
    }
    assert {r: v for r, v in reasons.items() if v} == {
        "invalid": 1,
        "not-json": 1,
        "other": 1,
        "version": 1,
    }
    assert set(reasons) == REJECT_REASONS  # the fixed set, every one exported from the start


def test_labelled_counters_start_at_zero_so_the_first_increment_is_seen() -> None:
    """increase() over a series that appears at its first increment misses that increment:
    the first failed drain would never fire TrainwardenActionsFailing."""
    m = Metrics(CollectorRegistry())
    m.run_known("pretrain")
    s = _samples(m)
    failed = (
        "trainwarden_actions_total",
        (("kind", "drain"), ("status", "failed"), ("verdict", "allow")),
    )
    assert s[failed] == 0
    assert s[("trainwarden_detections_total", (("kind", "GpuFatal"),))] == 0
    assert s[("trainwarden_run_restarts_total", (("run", "pretrain"),))] == 0
    m.action("drain", "allow", "failed")
    m.run_restarted("pretrain")
    s = _samples(m)
    assert s[failed] == 1 and s[("trainwarden_run_restarts_total", (("run", "pretrain"),))] == 1


def test_registries_are_private() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.run_restarted("r")
    assert ("trainwarden_run_restarts_total", (("run", "r"),)) not in _samples(b)


def test_openmetrics_is_negotiated() -> None:
    m = Metrics(CollectorRegistry())
    body, ctype = m.exposition("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    body, ctype = m.exposition(None)
    assert ctype.startswith("text/plain")


@pytest.mark.integration  # runs promtool
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_metric_names() -> None:
    m = Metrics(CollectorRegistry())
    _exercise(m)
    body, _ = m.exposition()
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("trainwarden/v1/node/n1/health", b"x" * (300 * 1024), "oversized"),
        ("trainwarden/v1/node/n1/health", b"{oops", "not-json"),
        ("trainwarden/v1/node/n1/health", b"[1]", "not-json"),
        ("trainwarden/v1/node/n1/health", b'{"v": 9, "kind": "health"}', "version"),
        ("trainwarden/v1/node/n1/health", b'{"v": 1, "kind": "gossip"}', "unknown-kind"),
        (
            "trainwarden/v1/node/n1/heartbeat",
            b'{"v": 1, "kind": "heartbeat", "node": "n1"}',
            "invalid",
        ),
        (
            "trainwarden/v1/node/n2/heartbeat",
            b'{"v": 1, "kind": "heartbeat", "node": "n1", "ts": 1, "seq": 0, "interval_s": 5}',
            "topic",
        ),
        ("elsewhere/x", b"{}", "topic"),
    ],
)
def test_parse_errors_are_classified(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(ReportError) as exc:
        parse_message(topic, payload)
    assert rejection_reason(str(exc.value)) == reason
    m = Metrics(CollectorRegistry())
    m.message_rejected(str(exc.value))
    assert _samples(m)[("trainwarden_rejected_messages_total", (("reason", reason),))] == 1


def test_state_labels_match_the_lifecycle() -> None:
    from trainwarden.supervisor.daemon.metrics import RUN_STATES
    from trainwarden.supervisor.model.lifecycle import NodePhase, RunPhase

    assert set(NODE_STATES) == {p.value for p in NodePhase}
    assert set(RUN_STATES) == {p.value for p in RunPhase}
