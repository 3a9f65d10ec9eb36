"""The daemon's Prometheus metrics, on a private registry handed in by the caller.

Names follow the Prometheus conventions (namespace ``trainwarden_``, base units,
``_total`` on counters). No label takes a node name: at 20,000 nodes that would be
20,000 series per metric. Labels are kinds, states, verdicts and run names (runs are
few and added by operators); free-text inputs such as rejection reasons are mapped
onto a fixed set so a hostile or broken sender cannot grow the series count.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

from trainwarden import __version__
from trainwarden.policies.model import ActionKind, ConditionType, Verdict
from trainwarden.supervisor.api.contract import NODE_STATES
from trainwarden.supervisor.goodput import BUCKETS as GOODPUT_BUCKETS

__all__ = ["DETECTION_BUCKETS", "REJECT_REASONS", "Metrics", "rejection_reason"]

NAMESPACE = "trainwarden"
DETECTION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000)
API_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)

# Why a message from the bus was refused; anything else is counted as "other".
REJECT_REASONS = frozenset(
    {
        "oversized",
        "not-json",
        "version",
        "unknown-kind",
        "invalid",
        "topic",
        "replayed",
        "unknown-node",  # a name the scheduler does not list
        "roster",  # a rank or node outside the run's current attempt
        "checkpoint",  # a checkpoint report not found complete on disk
        "other",
    }
)
# Where an internal error was caught and the daemon carried on.
HANDLER_STAGES = ("message", "tick", "decide")
# Substrings of trainwarden.health.report.parse_message's sentences, in the order they are tried.
_REJECT_PATTERNS = (
    ("-byte limit", "oversized"),
    ("in the same agent session", "replayed"),
    ("unexpected topic", "topic"),
    ("is not JSON", "not-json"),
    (", not an object", "not-json"),
    ("schema version", "version"),
    ("unknown kind", "unknown-kind"),
    ("does not belong on topic", "topic"),
    ("claims node", "topic"),
    ("claims run", "topic"),
    (" payload on ", "invalid"),
)
RUN_STATES = ("pending", "running", "restarting", "held", "completed", "gave-up")


def rejection_reason(message: str) -> str:
    """The category (one of :data:`REJECT_REASONS`) of a ``parse_message`` error sentence."""
    for needle, reason in _REJECT_PATTERNS:
        if needle in message:
            return reason
    return "other"


class Metrics:
    """All metrics of one daemon, with one method per thing that happens."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        ns = NAMESPACE
        self.node_state = Gauge(
            "nodes", "Compute nodes by state.", ["state"], namespace=ns, registry=r
        )
        self.runs_state = Gauge(
            "runs", "Supervised runs by state.", ["state"], namespace=ns, registry=r
        )
        self.incidents_open = Gauge(
            "incidents_open", "Cluster-wide incidents now open.", namespace=ns, registry=r
        )
        self.leader = Gauge(
            "leader", "1 while this daemon holds the leader lease.", namespace=ns, registry=r
        )
        # which version runs where (``max by (version) (trainwarden_build_info)`` in a
        # rollout), and the process's own CPU, memory and file descriptors (process_*)
        self.build_info = Gauge(
            "build_info",
            "1, labelled with the running trainwarden and Python versions.",
            ["version", "python"],
            namespace=ns,
            registry=r,
        )
        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)
        ProcessCollector(registry=r)
        self.handler_errors_total = Counter(
            "handler_errors",
            "Internal errors caught while handling a message or a tick; the daemon went on.",
            ["stage"],
            namespace=ns,
            registry=r,
        )
        for stage in HANDLER_STAGES:
            self.handler_errors_total.labels(stage=stage)
        self.bus_lag_seconds = Gauge(
            "bus_lag_seconds",
            "Median age of recent messages on arrival: how far behind the bus the daemon is.",
            namespace=ns,
            registry=r,
        )
        self.verdicts_suspended = Gauge(
            "verdicts_suspended",
            "1 while missed-heartbeat verdicts are suspended (disconnected, or behind).",
            namespace=ns,
            registry=r,
        )
        self.broker_connected = Gauge(
            "broker_connected",
            "1 while the daemon is connected to the MQTT broker.",
            namespace=ns,
            registry=r,
        )
        self.store_available = Gauge(
            "store_available",
            "1 while the database answers; 0 while what must be recorded waits for it.",
            namespace=ns,
            registry=r,
        )
        self.store_waiting = Gauge(
            "store_waiting",
            "Work waiting for the database: writes, and decisions held until recorded.",
            ["kind"],
            namespace=ns,
            registry=r,
        )
        self.store_lost_total = Counter(
            "store_lost",
            "Writes lost: refused by the database, or dropped at the bound in a long outage.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        for kind in ("writes", "decisions"):
            self.store_waiting.labels(kind=kind)
        for reason in ("refused", "dropped"):
            self.store_lost_total.labels(reason=reason)
        self.store_available.set(1)
        self._lost = {"refused": 0, "dropped": 0}
        self.detections_total = Counter(
            "detections", "Conditions detected, by kind.", ["kind"], namespace=ns, registry=r
        )
        self.detection_latency_seconds = Histogram(
            "detection_latency_seconds",
            "Time from the evidence (report timestamp) to the detection, by kind.",
            ["kind"],
            buckets=DETECTION_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.actions_total = Counter(
            "actions",
            "Actions decided, by kind, verdict and status.",
            ["kind", "verdict", "status"],
            namespace=ns,
            registry=r,
        )
        self.messages_total = Counter(
            "messages",
            "Messages accepted from the bus, by kind.",
            ["kind"],
            namespace=ns,
            registry=r,
        )
        self.rejected_messages_total = Counter(
            "rejected_messages",
            "Messages from the bus refused, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.store_flush_seconds = Histogram(
            "store_flush_seconds",
            "Duration of one store flush (one transaction).",
            buckets=FLUSH_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.store_batch_size = Histogram(
            "store_batch_size",
            "Rows written by one store flush.",
            buckets=BATCH_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.run_restarts_total = Counter(
            "run_restarts", "Restarts of a run.", ["run"], namespace=ns, registry=r
        )
        # where a run's wall time went (supervisor.goodput); ETTR = productive / sum
        self.run_seconds_total = Counter(
            "run_seconds",
            "A run's settled wall time, by goodput bucket (productive, rework, ...).",
            ["run", "bucket"],
            namespace=ns,
            registry=r,
        )
        self.run_checkpoint_interval_advised_seconds = Gauge(
            "run_checkpoint_interval_advised_seconds",
            "Young/Daly checkpoint interval advised for a run (0: no advice yet).",
            ["run"],
            namespace=ns,
            registry=r,
        )
        self._run_seconds: dict[tuple[str, str], float] = {}
        # every known label value exported at 0 from the start: increase() then sees the
        # first drain that fails, the first detection, the first rejection
        for kind in ActionKind:
            for verdict in Verdict:
                self.actions_total.labels(kind=kind.value, verdict=verdict.value, status="skipped")
            for status in ("succeeded", "failed"):
                for verdict in (Verdict.ALLOW, Verdict.DRY_RUN):
                    self.actions_total.labels(kind=kind.value, verdict=verdict.value, status=status)
        for ctype in ConditionType:
            self.detections_total.labels(kind=ctype.value)
        for reason in REJECT_REASONS:
            self.rejected_messages_total.labels(reason=reason)
        self.api_requests_total = Counter(
            "api_requests",
            "Operator API requests, by route and status code.",
            ["method", "route", "code"],
            namespace=ns,
            registry=r,
        )
        self.api_request_duration_seconds = Histogram(
            "api_request_duration_seconds",
            "Operator API request duration, by route.",
            ["route"],
            buckets=API_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self._run_states: set[str] = set(RUN_STATES)
        self.set_node_states({})
        self.set_run_states({})

    # --- gauges set from counts ----------------------------------------------------------

    def set_node_states(self, counts: Mapping[str, int]) -> None:
        """Set the node gauge from ``{state: count}``; states absent from ``counts`` read 0.

        An unexpected state is counted as ``unknown`` rather than creating a new series.
        """
        totals = dict.fromkeys(NODE_STATES, 0)
        for state, count in counts.items():
            key = state if state in totals else "unknown"
            totals[key] += count
        for state, count in totals.items():
            self.node_state.labels(state=state).set(count)

    def set_run_states(self, counts: Mapping[str, int]) -> None:
        """Set the run gauge from ``{state: count}``; states seen before and absent now read 0."""
        self._run_states.update(counts)
        for state in self._run_states:
            self.runs_state.labels(state=state).set(counts.get(state, 0))

    def set_incidents_open(self, count: int) -> None:
        self.incidents_open.set(count)

    def set_leader(self, leader: bool) -> None:
        self.leader.set(1 if leader else 0)

    def set_broker_connected(self, connected: bool) -> None:
        self.broker_connected.set(1 if connected else 0)

    # --- things that happen --------------------------------------------------------------

    def detection(self, kind: str, latency_s: float | None = None) -> None:
        """A condition became true; ``latency_s`` from the evidence's timestamp, if known."""
        self.detections_total.labels(kind=kind).inc()
        if latency_s is not None:
            self.detection_latency_seconds.labels(kind=kind).observe(max(0.0, latency_s))

    def action(self, kind: str, verdict: str, status: str) -> None:
        self.actions_total.labels(kind=str(kind), verdict=str(verdict), status=str(status)).inc()

    def message(self, kind: str, count: int = 1) -> None:
        self.messages_total.labels(kind=kind).inc(count)

    def message_rejected(self, reason: str) -> None:
        """Count a refused message by category.

        ``reason`` is one of :data:`REJECT_REASONS` or the whole ReportError sentence, which
        is classified by :func:`rejection_reason` (what cannot be classified is "other").
        """
        key = reason if reason in REJECT_REASONS else rejection_reason(reason)
        self.rejected_messages_total.labels(reason=key).inc()

    def handler_error(self, stage: str) -> None:
        self.handler_errors_total.labels(stage=stage).inc()

    def hearing(self, lag_s: float, suspended: bool) -> None:
        self.bus_lag_seconds.set(lag_s)
        self.verdicts_suspended.set(1 if suspended else 0)

    def store(self, available: bool, writes: int, decisions: int, lost: Mapping[str, int]) -> None:
        """The store's state; ``lost`` holds running totals (refused, dropped)."""
        self.store_available.set(1 if available else 0)
        self.store_waiting.labels(kind="writes").set(writes)
        self.store_waiting.labels(kind="decisions").set(decisions)
        for reason, total in lost.items():
            if total > self._lost.get(reason, 0):
                self.store_lost_total.labels(reason=reason).inc(total - self._lost[reason])
                self._lost[reason] = total

    def store_flush(self, duration_s: float, rows: int) -> None:
        self.store_flush_seconds.observe(max(0.0, duration_s))
        self.store_batch_size.observe(rows)

    def run_known(self, run: str) -> None:
        """A run is supervised: its restart counter and time buckets are exported at 0."""
        self.run_restarts_total.labels(run=run)
        for bucket in GOODPUT_BUCKETS:
            self.run_seconds_total.labels(run=run, bucket=bucket)
        self.run_checkpoint_interval_advised_seconds.labels(run=run)

    def run_goodput(self, run: str, buckets: Mapping[str, float]) -> None:
        """Move the run's time counters up to ``buckets`` (running totals). A bucket that
        shrank (time re-classified, e.g. a newest checkpoint found invalid) is left as is:
        counters only go up."""
        for bucket in GOODPUT_BUCKETS:
            total = buckets.get(bucket, 0.0)
            seen = self._run_seconds.get((run, bucket), 0.0)
            if total > seen:
                self.run_seconds_total.labels(run=run, bucket=bucket).inc(total - seen)
                self._run_seconds[(run, bucket)] = total

    def run_advice(self, run: str, interval_s: float) -> None:
        self.run_checkpoint_interval_advised_seconds.labels(run=run).set(interval_s)

    def run_restarted(self, run: str) -> None:
        self.run_restarts_total.labels(run=run).inc()

    def api_request(self, method: str, route: str, code: int, duration_s: float) -> None:
        self.api_requests_total.labels(method=method, route=route, code=str(code)).inc()
        self.api_request_duration_seconds.labels(route=route).observe(max(0.0, duration_s))

    # --- exposition ----------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated from an Accept header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def names(self) -> Iterable[str]:
        """Every metric family name in the registry (for tests and docs)."""
        return sorted({m.name for m in self.registry.collect()})
