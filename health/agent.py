"""The node agent: probes the node on an interval and publishes what it finds over MQTT.

One :class:`Agent` per node (the demo runs several in one process). Per connection it
registers a last will (``NodeStatus offline, "connection lost"``) so the broker
announces the node's death the moment the TCP connection drops, publishes ``online``,
then runs side by side:

- a health report every ``report_interval_s`` (QoS 1);
- a heartbeat every ``heartbeat_interval_s`` (never delayed by a slow probe), at QoS 0: a
  lost one is replaced by the next, no acknowledgement is worth its cost at 20,000 nodes,
  and the broker does not queue stale heartbeats for a daemon that is restarting;
- fault events (XIDs) forwarded at once: each watcher's blocking ``poll`` runs in its
  own daemon thread and feeds an asyncio queue that outlives reconnects;
- a watchdog that notices the broker going away.

When the broker goes away the agent reconnects with bounded exponential backoff.
Probe trouble never stops it (the runner turns exceptions and hangs into ``unknown``),
and every network await is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt
from pydantic import ValidationError

from trainwarden.health.clock import Clock, SystemClock
from trainwarden.health.mqtt import MqttAuth
from trainwarden.health.probes.base import (
    Action,
    CheckResult,
    EventWatcher,
    Fault,
    Health,
    Probe,
    worst,
)
from trainwarden.health.probes.registry import ProbeConfig, build_probes, build_watchers
from trainwarden.health.probes.runner import run_probes
from trainwarden.health.report import (
    FaultModel,
    FaultReport,
    HealthReport,
    Heartbeat,
    NodeStatus,
    ProbeReport,
    check_name,
    encode,
    node_topic,
)

if TYPE_CHECKING:
    from trainwarden.health.hardware import Hardware

log = logging.getLogger(__name__)

_FAULT_QUEUE_MAX = 1000
_WATCH_POLL_S = 0.25


@dataclass(frozen=True)
class AgentConfig:
    """How one agent talks to the broker and how often it reports."""

    node: str
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    # the message budget (docs/scale.md): 20,000 nodes send 4,000 heartbeats/s and ~670
    # health reports/s at these intervals; faults are sent at once, whatever the interval
    report_interval_s: float = 30.0
    heartbeat_interval_s: float = 5.0
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    keepalive_s: int = 10  # a silent (not closed) connection is declared dead after 1.5x this
    network_timeout_s: float = 5.0  # connect, publish, disconnect
    reconnect_min_s: float = 0.5
    # capped so every agent is back within the daemon's grace after a broker outage
    reconnect_max_s: float = 5.0
    auth: MqttAuth = field(default_factory=MqttAuth)

    def __post_init__(self) -> None:
        check_name("node", self.node)
        if self.report_interval_s <= 0 or self.heartbeat_interval_s <= 0:
            raise ValueError("report and heartbeat intervals must be positive")

    @property
    def client_id(self) -> str:
        return f"tw-agent-{self.node}"


class Agent:
    """Probes one node and publishes its health; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        hardware: Hardware,
        clock: Clock | None = None,
        *,
        probes: Sequence[Probe] | None = None,
        watchers: Sequence[EventWatcher] | None = None,
    ) -> None:
        self.config = config
        self.hardware = hardware
        self.clock: Clock = clock or SystemClock()
        self._probes = (
            list(probes)
            if probes is not None
            else build_probes(config.probes, hardware, self.clock)
        )
        self._watchers = (
            list(watchers) if watchers is not None else build_watchers(config.probes, hardware)
        )
        self._report_seq = 0
        self._heartbeat_seq = 0
        self.connections = 0  # successful connects, for tests and logs
        self.faults_published = 0

    # --- one probe round -----------------------------------------------------------------

    async def collect(self) -> HealthReport:
        """Run every probe once (bounded by the probe timeout) and build the report."""
        start = self.clock.monotonic()
        try:
            results = await run_probes(self._probes, self.config.probes.timeout_s, self.clock)
        except Exception as exc:  # the runner should not raise; the agent must not die if it does
            log.exception("probe runner failed")
            results = [
                CheckResult("agent", Health.UNKNOWN, f"probe runner failed: {exc}", Action.INSPECT)
            ]
        report = HealthReport(
            node=self.config.node,
            ts=self.clock.now(),
            seq=self._report_seq,
            overall=worst([r.health for r in results]),
            probes=[_probe_report(r) for r in results],
        )
        self._report_seq += 1
        log.debug("probe round took %.3f s", self.clock.monotonic() - start)
        return report

    # --- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; reconnects on its own, returns only when stopped."""
        loop = asyncio.get_running_loop()
        faults: asyncio.Queue[list[Fault]] = asyncio.Queue(_FAULT_QUEUE_MAX)
        halt = threading.Event()
        threads = [
            threading.Thread(
                target=self._watch,
                args=(w, loop, faults, halt),
                name=f"tw-watch-{self.config.node}-{w.name}",
                daemon=True,
            )
            for w in self._watchers
        ]
        for t in threads:
            t.start()
        delay = self.config.reconnect_min_s
        try:
            while not stop.is_set():
                try:
                    await self._session(stop, faults)
                    delay = self.config.reconnect_min_s
                except aiomqtt.MqttError as exc:
                    log.warning(
                        "agent %s: broker %s:%d: %s; retrying in %.1f s",
                        self.config.node,
                        self.config.broker_host,
                        self.config.broker_port,
                        exc,
                        delay,
                    )
                    await self._sleep_or_stop(delay, stop)
                    delay = min(self.config.reconnect_max_s, delay * 2)
                except Exception:  # a bug must not take the node's agent down for good
                    log.exception(
                        "agent %s: unexpected error; restarting the session in %.1f s",
                        self.config.node,
                        self.config.reconnect_max_s,
                    )
                    await self._sleep_or_stop(self.config.reconnect_max_s, stop)
        finally:
            halt.set()

    async def _session(self, stop: asyncio.Event, faults: asyncio.Queue[list[Fault]]) -> None:
        """One broker connection, from connect to stop or loss (raises MqttError on loss)."""
        cfg = self.config
        will = NodeStatus(
            node=cfg.node, state="offline", reason="connection lost", ts=self.clock.now()
        )
        client = aiomqtt.Client(
            cfg.broker_host,
            cfg.broker_port,
            identifier=cfg.client_id,
            clean_session=True,
            keepalive=cfg.keepalive_s,
            timeout=cfg.network_timeout_s,
            will=aiomqtt.Will(node_topic(cfg.node, "status"), encode(will), qos=1),
            **cfg.auth.aiomqtt_kwargs(),
        )
        try:
            async with asyncio.timeout(cfg.network_timeout_s + 1):
                await client.__aenter__()
        except TimeoutError as exc:
            raise aiomqtt.MqttError(f"connect timed out after {cfg.network_timeout_s} s") from exc
        try:
            self.connections += 1
            if self.connections > 1:
                log.info("agent %s: reconnected to the broker", cfg.node)
            await self._publish(
                client,
                "status",
                encode(NodeStatus(node=cfg.node, state="online", ts=self.clock.now())),
            )
            tasks = [
                asyncio.create_task(self._report_loop(client)),
                asyncio.create_task(self._heartbeat_loop(client)),
                asyncio.create_task(self._fault_loop(client, faults)),
                asyncio.create_task(self._watchdog(client)),
            ]
            stopper = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _cancel_all([*tasks, stopper])
            if stopper in done:
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    await self._publish(
                        client,
                        "status",
                        encode(
                            NodeStatus(
                                node=cfg.node,
                                state="offline",
                                reason="agent stopped",
                                ts=self.clock.now(),
                            )
                        ),
                    )
                return
            for t in done:
                failure = t.exception()
                if isinstance(failure, TimeoutError):
                    raise aiomqtt.MqttError("publish timed out") from failure
                if failure is not None:
                    raise failure
            raise aiomqtt.MqttError("connection ended")
        finally:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
                async with asyncio.timeout(cfg.network_timeout_s + 1):
                    await client.__aexit__(None, None, None)

    async def _publish(
        self, client: aiomqtt.Client, kind: str, payload: bytes, qos: int = 1
    ) -> None:
        async with asyncio.timeout(self.config.network_timeout_s + 1):
            await client.publish(
                node_topic(self.config.node, kind),
                payload,
                qos=qos,
                timeout=self.config.network_timeout_s,
            )

    async def _report_loop(self, client: aiomqtt.Client) -> None:
        interval = self.config.report_interval_s
        next_at = self.clock.monotonic()
        while True:
            try:
                payload = encode(await self.collect())
            except Exception:  # skip one round rather than drop the connection
                log.exception("agent %s: building the health report failed", self.config.node)
            else:
                await self._publish(client, "health", payload)
            next_at += interval
            await self.clock.sleep(max(0.0, next_at - self.clock.monotonic()))

    async def _heartbeat_loop(self, client: aiomqtt.Client) -> None:
        interval = self.config.heartbeat_interval_s
        next_at = self.clock.monotonic()
        while True:
            beat = Heartbeat(
                node=self.config.node,
                ts=self.clock.now(),
                seq=self._heartbeat_seq,
                interval_s=interval,
            )
            self._heartbeat_seq += 1
            await self._publish(client, "heartbeat", encode(beat), qos=0)
            next_at += interval
            await self.clock.sleep(max(0.0, next_at - self.clock.monotonic()))

    async def _fault_loop(self, client: aiomqtt.Client, faults: asyncio.Queue[list[Fault]]) -> None:
        while True:
            batch = await faults.get()
            report = FaultReport(
                node=self.config.node, ts=self.clock.now(), faults=[FaultModel.of(f) for f in batch]
            )
            try:
                await self._publish(client, "fault", encode(report))
            except BaseException:
                # not delivered: put it back for the next connection (front of the line
                # is lost in a Queue, but the faults themselves are kept)
                with contextlib.suppress(asyncio.QueueFull):
                    faults.put_nowait(batch)
                raise
            self.faults_published += len(batch)
            log.info(
                "agent %s: published %d fault(s): %s",
                self.config.node,
                len(batch),
                ", ".join(f.kind for f in batch),
            )

    @staticmethod
    async def _watchdog(client: aiomqtt.Client) -> None:
        """Return (raise) when the connection drops: the message iterator ends with it."""
        async for _ in client.messages:
            pass

    async def _sleep_or_stop(self, seconds: float, stop: asyncio.Event) -> None:
        sleeper = asyncio.create_task(self.clock.sleep(seconds))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([sleeper, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_all([sleeper, stopper])

    def _watch(
        self,
        watcher: EventWatcher,
        loop: asyncio.AbstractEventLoop,
        out: asyncio.Queue[list[Fault]],
        halt: threading.Event,
    ) -> None:
        """Thread body: block in ``watcher.poll`` and hand faults to the event loop."""
        while not halt.is_set():
            try:
                found = watcher.poll(_WATCH_POLL_S)
            except Exception:
                log.exception("watcher %s failed; retrying in 1 s", watcher.name)
                halt.wait(1.0)
                continue
            if not found:
                continue
            try:
                loop.call_soon_threadsafe(_offer, out, list(found))
            except RuntimeError:  # the loop is closed: the agent is gone
                return


def _probe_report(result: CheckResult) -> ProbeReport:
    """The wire form of one result; one that does not fit the schema never spoils the report."""
    try:
        return ProbeReport.of(result)
    except ValidationError:
        pass
    name = result.probe if len(result.probe) <= 64 else result.probe[:61] + "..."
    trimmed = dataclasses.replace(
        result,
        probe=name or "unnamed",
        reason=result.reason[:2000],
        faults=tuple(
            dataclasses.replace(
                f,
                kind=f.kind[:64],
                detail=f.detail[:2000],
                cause=f.cause[:256] if f.cause else f.cause,
            )
            for f in result.faults
        ),
        duration_s=max(0.0, result.duration_s) if math.isfinite(result.duration_s) else 0.0,
    )
    try:
        return ProbeReport.of(trimmed)
    except ValidationError as exc:
        return ProbeReport(
            probe=name or "unnamed",
            health=Health.UNKNOWN,
            reason=f"result does not fit the report schema: {exc.errors()[0]['msg']}"[:2000],
            action=Action.INSPECT,
        )


async def _cancel_all(tasks: Sequence[asyncio.Task[Any]], timeout_s: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again if one swallowed it.

    Python 3.11's ``asyncio.wait_for`` (used inside aiomqtt) can swallow a cancellation
    when the awaited operation completes at the same moment; a single ``cancel()`` is
    then not enough to end a loop task.
    """
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending and loop.time() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    if pending:
        log.error("%d agent task(s) ignored cancellation", len(pending))
    for t in tasks:  # retrieve outcomes so asyncio does not warn about them
        if t.done() and not t.cancelled():
            t.exception()


def _offer(queue: asyncio.Queue[list[Fault]], faults: list[Fault]) -> None:
    try:
        queue.put_nowait(faults)
    except asyncio.QueueFull:
        log.error("fault queue full; dropping %d fault(s)", len(faults))
