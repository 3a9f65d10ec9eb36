"""What a training rank calls to report its progress: steps, checkpoints; and hear requests.

Built to be cheap on every one of 16,000 ranks: ``step_done`` only appends a tuple to a
bounded buffer under a lock (a few microseconds); a background thread batches samples
into one :class:`~trainwarden.health.report.StepReport` per ~2 s and sends it. The
first step of an attempt and every checkpoint are flushed at once. The training loop
never waits for the network, and nothing here raises into it.

Two transports:

- **MQTT** (``TRAINWARDEN_BROKER``): each rank publishes with its own paho-mqtt client.
  When the broker is away, samples wait in the bounded buffer and the overflow is
  dropped and counted.
- **The node agent's relay** (``TRAINWARDEN_RELAY=<socket path>``, or on its own when
  the agent's socket :data:`~trainwarden.health.report.DEFAULT_RELAY_PATH` answers and
  the rank reports under this host's name): each batch is one datagram to the agent's
  Unix socket (a batch too big for one is split), and the agent publishes all its ranks'
  reports as one ``NodeSteps`` message per flush -- one broker message per node every
  5 s instead of one per rank every 2 s, and no broker connection per rank. Checkpoints
  go through the relay too and the agent forwards them at once, unchanged, on its node's
  checkpoint topic; if the relay fails and the rank has an MQTT connection, it publishes
  them itself. With the shipped broker ACL only the relay reaches the daemon: the node's
  topics carry its broker identity, which the daemon checks against the run's
  allocation. When the agent is absent (no socket, agent dead, its queue full for
  ~40 ms) a batch is dropped and counted -- never retried, never blocking.
  ``TRAINWARDEN_RELAY=off`` forces MQTT.

Control messages (``checkpoint-now``): over MQTT, or, with the relay, from the file the
node's agent leaves for the run beside its socket (:mod:`trainwarden.health.control`:
ranks hold no broker credentials, the agent does). With the relay and a broker
configured, the rank whose local rank (``LOCAL_RANK``/``SLURM_LOCALID``) is 0 also keeps
an MQTT connection that only subscribes to the run's control topic (an anonymous test
broker); the other ranks connect to nothing. A training loop must share the request among
its ranks (examples/train.py all-reduces the flag, as it must anyway). Without broker and
relay the reporter is a no-op that never fails.

Deliberately free of torch and asyncio: it is imported by training scripts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from trainwarden.health.control import ControlWatch, control_dir
from trainwarden.health.errors import TrainwardenError
from trainwarden.health.mqtt import MqttAuth, parse_broker, short_hostname
from trainwarden.health.report import (
    DEFAULT_RELAY_PATH,
    MAX_RELAY_DATAGRAM_BYTES,
    CheckpointReport,
    ControlMessage,
    StepReport,
    StepSample,
    check_name,
    checkpoint_topic,
    control_topic,
    encode,
    parse_message,
    steps_topic,
)

log = logging.getLogger(__name__)

_Sample = tuple[int, float, float | None, float]  # step, step_s, compute_s, ts
_RELAY_OFF = frozenset({"off", "none", "no", "0", "false"})
_RELAY_RETRIES_S = (0.005, 0.01, 0.025)  # the agent's receive queue is full: brief backoff
_RELAY_WARN_EVERY_S = 60.0


def relay_from_env(env: dict[str, str], node: str | None = None) -> str | None:
    """The relay socket a rank should use, or None for MQTT.

    ``TRAINWARDEN_RELAY`` names it (``off`` disables the relay); unset or empty, the
    agent's default socket is used if an agent is listening on it and the rank reports
    under this host's own name (a rank that claims another node's name -- a simulation,
    a test -- would only have its reports rejected by this node's agent).
    """
    value = (env.get("TRAINWARDEN_RELAY") or "").strip()
    if value:
        return None if value.lower() in _RELAY_OFF else value
    if (node or short_hostname()) != short_hostname():
        return None
    return DEFAULT_RELAY_PATH if relay_listening(DEFAULT_RELAY_PATH) else None


def relay_listening(path: str) -> bool:
    """Whether an agent is bound to the datagram socket ``path`` (a stale file is not)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(path)
    except OSError:
        return False
    return True


def _local_rank(env: dict[str, str]) -> int:
    for key in ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        with contextlib.suppress(ValueError):
            return int(env.get(key, ""))
    return 0


@dataclass
class ReporterStats:
    """Counters a job (or a test) can read; ``dropped`` are samples never sent."""

    steps_queued: int = 0
    steps_sent: int = 0
    steps_dropped: int = 0
    batches_sent: int = 0
    checkpoints_sent: int = 0
    checkpoints_dropped: int = 0
    control_received: int = 0
    relay_errors: int = 0  # datagrams the agent's socket did not take


class Reporter:
    """One rank's connection to the bus. Thread-safe; all methods return promptly.

    ``relay``: the node agent's socket; steps and checkpoints then go there instead of to
    ``broker``, which (if given) is used only for control messages, and only when
    ``control`` is true (local rank 0). See the module docstring.
    """

    def __init__(
        self,
        broker: str | None,
        run: str,
        attempt: int,
        rank: int,
        node: str | None = None,
        group: str | None = None,
        *,
        flush_interval_s: float = 2.0,
        max_pending: int = 10_000,
        client_id: str | None = None,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,  # measures steps; batching uses real time
        auth: MqttAuth | None = None,
        relay: str | None = None,
        control: bool = True,
    ) -> None:
        self.run = check_name("run", run)
        self.node = check_name("node", node or short_hostname())
        self.attempt, self.rank, self.group = attempt, rank, group
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.stats = ReporterStats()
        self._now, self._mono = now, monotonic
        self._lock = threading.Lock()
        self._pending: list[_Sample] = []
        self._ckpts: list[CheckpointReport] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._ckpt_requested = threading.Event()
        self._first_sent = False
        self._last_step_mono = monotonic()
        self._compute_acc = 0.0
        self._compute_marked = False
        self._compute_since: float | None = None
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self.relay = relay
        self._sock: socket.socket | None = None
        self._relay_warned_at: float | None = None
        self.enabled = broker is not None or relay is not None
        self._auth = auth or MqttAuth()
        if broker is not None and (relay is None or control):
            host, port = parse_broker(broker)
            self._start_mqtt(host, port, client_id or f"tw-rank-{self.run}-{attempt}-{rank}")
        self._control: ControlWatch | None = None
        if relay is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)  # a full agent queue is EAGAIN, never a wait
            self._sock = sock
            self._control = ControlWatch(control_dir(relay), self.run)
        if self.enabled:
            self._thread = threading.Thread(
                target=self._flusher, name="trainwarden-reporter", daemon=True
            )
            self._thread.start()

    # --- construction ---------------------------------------------------------------

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **kwargs: Any) -> Reporter:
        """Configure from TRAINWARDEN_BROKER/RELAY/RUN/ATTEMPT/NODE/GROUP, RANK, LOCAL_RANK.

        Neither broker nor relay, or a configuration that does not parse, gives a no-op
        reporter (with a warning for the latter): monitoring must never stop a training job.
        """
        e = dict(os.environ if env is None else env)
        broker = e.get("TRAINWARDEN_BROKER") or None
        run = e.get("TRAINWARDEN_RUN") or "unnamed"
        try:
            attempt = int(e.get("TRAINWARDEN_ATTEMPT", "0"))
            rank = int(e.get("RANK", "0"))
            if "relay" not in kwargs:
                kwargs["relay"] = relay_from_env(e, e.get("TRAINWARDEN_NODE") or None)
            kwargs.setdefault("control", _local_rank(e) == 0)
            kwargs.setdefault("auth", MqttAuth.from_env(e) if broker else None)
            return cls(
                broker,
                run,
                attempt,
                rank,
                e.get("TRAINWARDEN_NODE") or None,
                e.get("TRAINWARDEN_GROUP") or None,
                **kwargs,
            )
        except (ValueError, TrainwardenError) as exc:
            log.warning("trainwarden reporter disabled: %s", exc)
            return cls(None, "unnamed", 0, 0, "localhost")

    def _start_mqtt(self, host: str, port: int, client_id: str) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self._auth.apply_to_paho(client)
        client.max_queued_messages_set(1000)
        client.reconnect_delay_set(min_delay=1, max_delay=15)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        client.connect_async(host, port, keepalive=30)
        client.loop_start()

    # --- called by the training loop ---------------------------------------------------

    def step_done(self, step: int, step_s: float | None = None) -> None:
        """Record a finished step; ``step_s`` defaults to the time since the previous call."""
        mono = self._mono()
        measured = mono - self._last_step_mono
        self._last_step_mono = mono
        if not self.enabled:
            self._compute_marked, self._compute_acc = False, 0.0
            return
        compute_s = self._compute_acc if self._compute_marked else None
        self._compute_marked, self._compute_acc = False, 0.0
        sample = (step, max(0.0, measured if step_s is None else step_s), compute_s, self._now())
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self.stats.steps_dropped += 1
                return
            self._pending.append(sample)
            self.stats.steps_queued += 1
        if not self._first_sent and (self._sock is not None or self._connected.is_set()):
            self._wake.set()  # the first step goes out at once (on_connect wakes it otherwise)

    def compute_start(self) -> None:
        """Mark the start of the compute section (time outside collective communication)."""
        self._compute_since = self._mono()

    def compute_end(self) -> None:
        if self._compute_since is not None:
            self._compute_acc += self._mono() - self._compute_since
            self._compute_marked = True
            self._compute_since = None

    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        """``with reporter.compute(): ...`` around forward/backward (several per step add up)."""
        self.compute_start()
        try:
            yield
        finally:
            self.compute_end()

    def checkpoint_saved(self, step: int, path: str) -> None:
        """Announce a finished checkpoint; sent at once (QoS 1)."""
        if not self.enabled:
            return
        report = CheckpointReport(
            run=self.run,
            attempt=self.attempt,
            rank=self.rank,
            node=self.node,
            step=step,
            path=path,
            ts=self._now(),
        )
        with self._lock:
            if len(self._ckpts) >= 100:
                self.stats.checkpoints_dropped += 1
                return
            self._ckpts.append(report)
        self._wake.set()

    def checkpoint_requested(self) -> bool:
        """True once after a ``checkpoint-now`` control message arrived for this run (over
        MQTT, or in the control file the node's agent keeps beside its relay socket)."""
        relayed = self._control is not None and self._control.checkpoint_requested()
        if self._ckpt_requested.is_set():
            self._ckpt_requested.clear()
            return True
        return relayed

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the broker connection (tests, job start-up)."""
        return self._connected.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is pending (waiting at most ``timeout_s``) and disconnect."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._thread = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.disconnect()
            with contextlib.suppress(Exception):
                self._client.loop_stop()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- background side -----------------------------------------------------------------

    def _on_connect(
        self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any = None
    ) -> None:
        if getattr(reason, "is_failure", False):
            return
        client.subscribe(control_topic(self.run), qos=1)
        self._connected.set()
        self._wake.set()

    def _on_disconnect(
        self, _client: Any, _userdata: Any, _flags: Any, _reason: Any, _props: Any = None
    ) -> None:
        self._connected.clear()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            msg = parse_message(message.topic, message.payload)
        except TrainwardenError as exc:
            log.warning("ignoring control message: %s", exc)
            return
        if isinstance(msg, ControlMessage) and msg.command == "checkpoint-now":
            self.stats.control_received += 1
            self._ckpt_requested.set()

    def _flusher(self) -> None:
        next_flush = time.monotonic() + self.flush_interval_s
        while True:
            self._wake.wait(max(0.0, next_flush - time.monotonic()))
            self._wake.clear()
            stopping = self._stop.is_set()
            due = time.monotonic() >= next_flush
            try:
                if self._sock is not None or self._connected.is_set():
                    self._send_checkpoints()
                    if due or stopping or not self._first_sent:
                        self._send_steps()
            except Exception:  # never let the reporter thread die
                log.exception("trainwarden reporter: publishing failed")
            if due:
                next_flush = time.monotonic() + self.flush_interval_s
            if stopping:
                with self._lock:
                    self.stats.steps_dropped += len(self._pending)
                    self.stats.checkpoints_dropped += len(self._ckpts)
                    self._pending, self._ckpts = [], []
                return

    def _send_checkpoints(self) -> None:
        with self._lock:
            ckpts, self._ckpts = self._ckpts, []
        for report in ckpts:
            if self._sock is not None and self._relay_send(encode(report)):
                self.stats.checkpoints_sent += 1
                continue
            if self._client is None or not self._connected.is_set():
                self.stats.checkpoints_dropped += 1
                continue
            info = self._client.publish(checkpoint_topic(self.run), encode(report), qos=1)
            if info.rc == 0:
                self.stats.checkpoints_sent += 1
                self._wait_published(info)
            else:
                self.stats.checkpoints_dropped += 1

    def _send_steps(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            report = StepReport(
                run=self.run,
                attempt=self.attempt,
                rank=self.rank,
                node=self.node,
                group=self.group,
                samples=[StepSample(step=s, step_s=d, compute_s=c, ts=t) for s, d, c, t in batch],
            )
        except ValidationError as exc:
            log.warning(
                "trainwarden reporter: dropping %d invalid step samples: %s",
                len(batch),
                exc.errors()[0]["msg"],
            )
            self.stats.steps_dropped += len(batch)
            return
        if self._sock is not None:
            self._relay_steps(report)
            self._first_sent = True  # sent or dropped: batching from here on either way
            return
        info = self._client.publish(steps_topic(self.run, self.rank), encode(report), qos=1)
        if info.rc == 0:
            self.stats.steps_sent += len(batch)
            self.stats.batches_sent += 1
            self._first_sent = True
            if self._stop.is_set():
                self._wait_published(info)
        else:
            self.stats.steps_dropped += len(batch)

    def _relay_steps(self, report: StepReport) -> None:
        """Send ``report`` to the agent, split into datagrams that fit the relay's limit."""
        payload = encode(report)
        n = len(report.samples)
        if len(payload) > MAX_RELAY_DATAGRAM_BYTES and n > 1:
            half = n // 2
            for part in (report.samples[:half], report.samples[half:]):
                self._relay_steps(report.model_copy(update={"samples": part}))
            return
        if len(payload) <= MAX_RELAY_DATAGRAM_BYTES and self._relay_send(payload):
            self.stats.steps_sent += n
            self.stats.batches_sent += 1
        else:
            self.stats.steps_dropped += n

    def _relay_send(self, payload: bytes) -> bool:
        """One datagram to the agent; False (counted, logged now and then) if not taken."""
        assert self._sock is not None and self.relay is not None
        error: OSError | None = None
        for backoff in (*_RELAY_RETRIES_S, None):
            try:
                self._sock.sendto(payload, self.relay)
                return True
            except BlockingIOError as exc:  # the agent's queue is full: it may catch up
                error = exc
                if backoff is None:
                    break
                time.sleep(backoff)
            except OSError as exc:  # no socket, no agent, not allowed: drop
                error = exc
                break
        self.stats.relay_errors += 1
        now = time.monotonic()
        if self._relay_warned_at is None or now - self._relay_warned_at >= _RELAY_WARN_EVERY_S:
            self._relay_warned_at = now
            log.warning(
                "trainwarden reporter: the node agent's relay %s did not take a report (%s); "
                "%d step(s) dropped so far",
                self.relay,
                error,
                self.stats.steps_dropped,
            )
        return False

    @staticmethod
    def _wait_published(info: Any) -> None:
        with contextlib.suppress(Exception):
            info.wait_for_publish(timeout=2.0)
