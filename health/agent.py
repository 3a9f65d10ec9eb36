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

**The relay** (``AgentConfig.relay_path``, ``trainwarden agent --relay``): the agent also
listens on a Unix datagram socket for its node's training ranks
(:class:`~trainwarden.health.reporter.Reporter` with a relay). Each datagram is one
``StepReport`` or ``CheckpointReport``, checked by
:func:`~trainwarden.health.report.parse_relayed` -- the daemon's checks, plus: the
report must name this node. Anything else (not JSON, a bad field, another node's
report, over 64 KiB) is rejected and counted in :attr:`Agent.relay_stats`, and the next
datagram is handled as usual. Step reports wait in a queue bounded in count and bytes
(overflow dropped, counted, logged at most every 10 s) and go out as one ``NodeSteps``
message (QoS 1, ``trainwarden/v1/node/<node>/steps``, each within the broker's payload
limit) every ``relay_flush_interval_s`` (5 s), or at once when a rank's first report of
an attempt arrives (the daemon's "run started" and hang detection wait on it).
Checkpoint reports are forwarded at once, unchanged, on the node's own checkpoint topic
(``trainwarden/v1/node/<node>/checkpoint``): they are rare and the restart path needs
them. The socket is bound for the agent's whole
life, so ranks keep reporting while the broker is away; what is queued then goes out
after the reconnect.

Who may write to the socket: its mode (``relay_mode``, 0666 by default) decides. Ranks
run as the job's user, not the agent's, so the default lets every local user report;
a local user can then report steps for any run *on this node*, and nothing more: the
agent relays only this node's reports, under the node's broker identity, and the daemon
counts them only for a run whose current attempt is allocated this node, for ranks inside
its world size. Use 0660 and a group shared by the job users (the socket takes the
directory's group when the directory is setgid) to narrow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import stat
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
from pydantic import ValidationError

from trainwarden.health.clock import Clock, SystemClock
from trainwarden.health.control import control_dir, write_request
from trainwarden.health.errors import ReportError
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
    MAX_NODE_STEP_REPORTS,
    MAX_PAYLOAD_BYTES,
    MAX_RELAY_DATAGRAM_BYTES,
    TOPIC_PREFIX,
    CheckpointReport,
    ControlMessage,
    FaultModel,
    FaultReport,
    HealthReport,
    Heartbeat,
    NodeStatus,
    NodeSteps,
    ProbeReport,
    StepReport,
    check_name,
    encode,
    node_checkpoint_topic,
    node_steps_topic,
    node_topic,
    parse_message,
    parse_relayed,
)

if TYPE_CHECKING:
    from trainwarden.health.hardware import Hardware

log = logging.getLogger(__name__)

_FAULT_QUEUE_MAX = 1000
_WATCH_POLL_S = 0.25
_RELAY_CHECKPOINTS_MAX = 256
_RELAY_READ_BURST = 256  # datagrams read per wake-up before other work gets a turn
_RELAY_SEEN_MAX = 4096  # (run, rank) pairs remembered to tell an attempt's first report
_RELAY_RCVBUF = 4 * 1024 * 1024
_RELAY_LOG_EVERY_S = 10.0
# room left in a NodeSteps payload for its envelope: {"v":1,"kind":..,"node":..,"ts":..}
_NODE_STEPS_ENVELOPE = 1024
CONTROL_TOPICS = f"{TOPIC_PREFIX}/run/+/control"  # the daemon's requests to runs' ranks


@dataclass
class RelayStats:
    """What the relay did; ``rejected`` by reason: oversized, wrong-node, invalid."""

    datagrams: int = 0
    steps_received: int = 0  # StepReports accepted into the queue
    steps_dropped: int = 0  # StepReports accepted but dropped: the queue was full
    checkpoints_received: int = 0
    checkpoints_dropped: int = 0
    rejected: int = 0
    rejected_by: dict[str, int] = field(default_factory=dict)
    batches_published: int = 0  # NodeSteps messages
    steps_published: int = 0  # StepReports inside them
    checkpoints_published: int = 0


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
    # the relay for the node's training ranks (module docstring); None: no relay
    relay_path: str | None = None
    relay_mode: int = 0o666
    relay_flush_interval_s: float = 5.0
    relay_queue_max: int = 4096  # StepReports waiting (a node's ranks, ~a minute's worth)
    relay_queue_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        check_name("node", self.node)
        if self.report_interval_s <= 0 or self.heartbeat_interval_s <= 0:
            raise ValueError("report and heartbeat intervals must be positive")
        if self.relay_flush_interval_s <= 0:
            raise ValueError("the relay's flush interval must be positive")
        if not 0 <= self.relay_mode <= 0o777:
            raise ValueError(f"relay socket mode {self.relay_mode:o} is not a file mode")

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
        self.relay_stats = RelayStats()
        self.oversized = 0  # messages refused before publishing: over MAX_PAYLOAD_BYTES
        self.controls_forwarded = 0  # control messages left for this node's ranks
        self.relay_bound = threading.Event()  # set while the relay socket is listening
        self._relay_sock: socket.socket | None = None
        self._relay_steps: deque[tuple[StepReport, int]] = deque()
        self._relay_bytes = 0
        self._relay_ckpts: deque[CheckpointReport] = deque()
        self._relay_seen: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._relay_urgent = False
        self._relay_wake = asyncio.Event()
        self._log_at: dict[str, float] = {}
        self._log_suppressed: dict[str, int] = {}

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
        self._open_relay(loop)
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
            self._close_relay(loop)

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
            if self._relay_sock is not None:
                tasks.append(asyncio.create_task(self._relay_loop(client)))
                tasks.append(asyncio.create_task(self._control_loop(client)))
            stopper = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _cancel_all([*tasks, stopper])
            if stopper in done:
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    await self._relay_publish(client)  # what the ranks sent last
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
        await self._publish_on(client, node_topic(self.config.node, kind), payload, qos)

    async def _publish_on(
        self, client: aiomqtt.Client, topic: str, payload: bytes, qos: int = 1
    ) -> None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            # The broker disconnects a client that sends a packet over its limit, which
            # publishes this node's last will: refuse it here, count it, carry on.
            self.oversized += 1
            log.error(
                "not publishing %d bytes on %s: over the %d-byte limit (%d refused so far)",
                len(payload),
                topic,
                MAX_PAYLOAD_BYTES,
                self.oversized,
            )
            return
        async with asyncio.timeout(self.config.network_timeout_s + 1):
            await client.publish(topic, payload, qos=qos, timeout=self.config.network_timeout_s)

    async def _control_loop(self, client: aiomqtt.Client) -> None:
        """The daemon's control messages for runs, left where this node's ranks look
        (:mod:`trainwarden.health.control`): they report through the relay and hold no
        broker credentials of their own. A bad message is logged and skipped."""
        assert self.config.relay_path is not None
        where = control_dir(self.config.relay_path)
        await client.subscribe(CONTROL_TOPICS, qos=1)
        async for message in client.messages:
            try:
                raw = message.payload
                payload = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
                msg = parse_message(str(message.topic), payload)
                if not isinstance(msg, ControlMessage):
                    raise ReportError(f"a {msg.kind} message on {message.topic}")
                await asyncio.to_thread(write_request, where, msg)
            except (ReportError, OSError) as exc:
                log.warning("agent %s: control message not passed on: %s", self.config.node, exc)
                continue
            self.controls_forwarded += 1

    # --- the relay ---------------------------------------------------------------------

    def _open_relay(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the relay socket; trouble is logged and the agent runs without a relay."""
        path = self.config.relay_path
        if path is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            where = Path(path)
            where.parent.mkdir(parents=True, exist_ok=True)
            if where.exists() or where.is_symlink():
                if not stat.S_ISSOCK(where.lstat().st_mode):
                    raise OSError(f"{path} exists and is not a socket")
                if _listening(path):
                    raise OSError(f"another agent is listening on {path}")
                where.unlink()  # left behind by an agent that did not stop cleanly
            sock.setblocking(False)
            sock.bind(path)
            os.chmod(path, self.config.relay_mode)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RELAY_RCVBUF)
            loop.add_reader(sock.fileno(), self._relay_readable, sock)
        except OSError as exc:
            sock.close()
            log.error(
                "agent %s: relay socket %s unavailable (%s); this node's ranks must publish "
                "to the broker themselves",
                self.config.node,
                path,
                exc,
            )
            return
        self._relay_sock = sock
        self.relay_bound.set()
        log.info(
            "agent %s: relaying ranks' reports from %s (mode %o)",
            self.config.node,
            path,
            self.config.relay_mode,
        )

    def _close_relay(self, loop: asyncio.AbstractEventLoop) -> None:
        sock, self._relay_sock = self._relay_sock, None
        if sock is None:
            return
        self.relay_bound.clear()
        with contextlib.suppress(Exception):
            loop.remove_reader(sock.fileno())
        sock.close()
        if self.config.relay_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.config.relay_path)

    def _relay_readable(self, sock: socket.socket) -> None:
        """Reader callback: take what is waiting (a burst at most), never raise."""
        for _ in range(_RELAY_READ_BURST):
            try:
                data = sock.recv(MAX_RELAY_DATAGRAM_BYTES + 1)  # longer: cut, then rejected
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._log_limited("recv", "agent %s: relay socket: %s", self.config.node, exc)
                return
            try:
                self.relay_datagram(data)
            except Exception:  # a bug in one datagram's handling must not stop the relay
                log.exception("agent %s: relaying a datagram failed", self.config.node)

    def relay_datagram(self, data: bytes) -> bool:
        """Check one datagram from a rank and queue it; False if rejected or dropped."""
        st = self.relay_stats
        st.datagrams += 1
        try:
            msg = parse_relayed(data, self.config.node)
        except ReportError as exc:
            text = str(exc)
            reason = (
                "oversized"
                if "-byte limit" in text
                else "wrong-node"
                if "claims node" in text
                else "invalid"
            )
            st.rejected += 1
            st.rejected_by[reason] = st.rejected_by.get(reason, 0) + 1
            self._log_limited(
                f"reject-{reason}", "agent %s: relay rejected: %s", self.config.node, text
            )
            return False
        if isinstance(msg, CheckpointReport):
            if len(self._relay_ckpts) >= _RELAY_CHECKPOINTS_MAX:
                st.checkpoints_dropped += 1
                self._log_limited(
                    "ckpt-full", "agent %s: relay checkpoint queue full", self.config.node
                )
                return False
            self._relay_ckpts.append(msg)
            st.checkpoints_received += 1
            self._relay_wake.set()
            return True
        size = len(encode(msg))
        cfg = self.config
        if (
            len(self._relay_steps) >= cfg.relay_queue_max
            or self._relay_bytes + size > cfg.relay_queue_bytes
        ):
            st.steps_dropped += 1
            self._log_limited(
                "steps-full",
                "agent %s: relay queue full (%d reports); dropped %d step report(s) so far",
                cfg.node,
                len(self._relay_steps),
                st.steps_dropped,
            )
            return False
        self._relay_steps.append((msg, size))
        self._relay_bytes += size
        st.steps_received += 1
        key = (msg.run, msg.rank)
        if self._relay_seen.get(key) != msg.attempt:  # a rank's first report of an attempt
            self._relay_urgent = True
            self._relay_wake.set()
        self._relay_seen[key] = msg.attempt
        self._relay_seen.move_to_end(key)
        while len(self._relay_seen) > _RELAY_SEEN_MAX:
            self._relay_seen.popitem(last=False)
        return True

    async def _relay_loop(self, client: aiomqtt.Client) -> None:
        interval = self.config.relay_flush_interval_s
        next_at = self.clock.monotonic() + interval
        while True:
            await self._sleep_or_stop(max(0.0, next_at - self.clock.monotonic()), self._relay_wake)
            self._relay_wake.clear()
            due = self.clock.monotonic() >= next_at
            if due:
                next_at = self.clock.monotonic() + interval
            await self._relay_publish(client, steps=due or self._relay_urgent)

    async def _relay_publish(self, client: aiomqtt.Client, steps: bool = True) -> None:
        """Checkpoints, then (if ``steps``) every queued step report in NodeSteps messages.

        What a failed publish carried goes back to the front of its queue for the next
        connection; the error is raised (the session ends and reconnects).
        """
        st = self.relay_stats
        while self._relay_ckpts:
            ckpt = self._relay_ckpts.popleft()
            try:
                topic = node_checkpoint_topic(ckpt.node)  # under this node's broker identity
                await self._publish_on(client, topic, encode(ckpt))
            except BaseException:
                self._relay_ckpts.appendleft(ckpt)
                raise
            st.checkpoints_published += 1
        if not steps:
            return
        self._relay_urgent = False
        budget = MAX_PAYLOAD_BYTES - _NODE_STEPS_ENVELOPE
        while self._relay_steps:
            batch: list[tuple[StepReport, int]] = []
            used = 0
            while self._relay_steps and len(batch) < MAX_NODE_STEP_REPORTS:
                size = self._relay_steps[0][1] + 1  # and a comma
                if batch and used + size > budget:
                    break
                batch.append(self._relay_steps.popleft())
                used += size
            self._relay_bytes -= sum(size for _, size in batch)
            msg = NodeSteps(
                node=self.config.node, ts=self.clock.now(), reports=[r for r, _ in batch]
            )
            try:
                await self._publish_on(client, node_steps_topic(self.config.node), encode(msg))
            except BaseException:
                self._relay_steps.extendleft(reversed(batch))
                self._relay_bytes += sum(size for _, size in batch)
                raise
            st.batches_published += 1
            st.steps_published += len(batch)

    def _log_limited(self, key: str, fmt: str, *args: object) -> None:
        """A warning at most every 10 s per ``key``, saying how many were held back."""
        now = self.clock.monotonic()
        last = self._log_at.get(key)
        if last is not None and now - last < _RELAY_LOG_EVERY_S:
            self._log_suppressed[key] = self._log_suppressed.get(key, 0) + 1
            return
        self._log_at[key] = now
        held = self._log_suppressed.pop(key, 0)
        log.warning(fmt + (f" ({held} more like it not logged)" if held else ""), *args)

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


def _listening(path: str) -> bool:
    """Whether a socket is bound at ``path`` (a stale file refuses the connection)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(path)
    except OSError:
        return False
    return True


def _offer(queue: asyncio.Queue[list[Fault]], faults: list[Fault]) -> None:
    try:
        queue.put_nowait(faults)
    except asyncio.QueueFull:
        log.error("fault queue full; dropping %d fault(s)", len(faults))
