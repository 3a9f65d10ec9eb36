"""``trainwarden daemon``: wires the broker, the store, the scheduler, the policy and the API.

The MQTT session is persistent (``clean_session=False``, QoS 1 subscriptions) so messages
published while the daemon restarts are delivered when it comes back; the store keeps
everything else. SIGHUP reads the configuration again (the roles and the policy file's
path are taken, a change to anything else is named as needing a restart: ``reload``) and
reloads the policy (an invalid file keeps the last good one); SIGTERM/SIGINT stop cleanly.
systemd: READY=1 once serving, WATCHDOG=1 from the main loop.

The operator API is served on a Unix socket (callers known by uid), and on TCP with TLS
and bearer tokens only when asked; ``/metrics`` and ``/healthz`` on a read-only listener of
their own. SIGHUP also rereads the tokens file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from trainwarden.health.clock import Clock, SystemClock
from trainwarden.health.mqtt import MqttAuth
from trainwarden.health.report import SUBSCRIPTIONS
from trainwarden.policies import hostlist
from trainwarden.policies.engine import Mode, PolicyEngine
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.api.auth import DEFAULT_API_SOCKET, Authenticator, RoleMap, Tokens
from trainwarden.supervisor.api.server import (
    DEFAULT_METRICS_HOST,
    DEFAULT_METRICS_PORT,
    ApiServer,
    Endpoint,
    create_app,
    create_metrics_app,
    create_standby_app,
)
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import operations as ops
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.reconcile import reconcile
from trainwarden.supervisor.daemon.reload import reread
from trainwarden.supervisor.daemon.sdnotify import Notifier
from trainwarden.supervisor.daemon.supervisor import CoreConfig, Supervisor
from trainwarden.supervisor.errors import ConfigError, StoreError, SupervisorError
from trainwarden.supervisor.scheduler.base import Scheduler
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.scheduler.slurm import SlurmScheduler
from trainwarden.supervisor.store.store import open_store

log = logging.getLogger(__name__)
LEASE = "trainwarden-daemon"
LOST_LEASE_EXIT = 75  # EX_TEMPFAIL: another daemon leads now; start again to stand by
LEASE_MARGIN_S = 2.0  # stop acting this long (at most a quarter of the TTL) before expiry
YIELD_EVERY = 200  # messages handled between turns for the other loops
MAX_RECONNECT_S = 2.0  # reconnect back-off cap: the daemon is blind until it is back


@dataclass
class DaemonConfig:
    db_url: str
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    api_socket: str = DEFAULT_API_SOCKET  # the operator API, callers known by uid
    api_tcp_host: str | None = None  # remote operators: TLS and bearer tokens; off by default
    api_tcp_port: int = 0
    api_tls_cert: str | None = None
    api_tls_key: str | None = None
    api_tokens: str | None = None
    metrics_host: str = DEFAULT_METRICS_HOST  # /metrics and /healthz, read-only
    metrics_port: int = DEFAULT_METRICS_PORT
    roles: RoleMap = field(default_factory=RoleMap)
    scheduler: str = "local"  # local | slurm
    local_nodes: tuple[str, ...] = ()
    local_log_dir: str = "/tmp/trainwarden-local"
    slurm_conf: str | None = None
    policy_file: str | None = None
    mode: str = "enforce"
    client_id: str = "trainwarden-daemon"
    tick_s: float = 0.5
    mqtt_auth: MqttAuth = field(default_factory=MqttAuth)
    lease_ttl_s: float = 15.0  # leader lease: a standby daemon takes over after this
    core: CoreConfig = field(default_factory=CoreConfig)


def build_scheduler(cfg: DaemonConfig) -> Scheduler:
    if cfg.scheduler == "local":
        if not cfg.local_nodes:
            raise ConfigError("the local scheduler needs --local-nodes (e.g. n1,n2,n3,n4)")
        log.info(
            "local scheduler nodes: %s (%d)",
            hostlist.compress(cfg.local_nodes),
            len(cfg.local_nodes),
        )
        return LocalScheduler(cfg.local_nodes, cfg.local_log_dir)
    if cfg.scheduler == "slurm":
        return SlurmScheduler(slurm_conf=cfg.slurm_conf)
    raise ConfigError(f"unknown scheduler {cfg.scheduler!r}: use local or slurm")


def build_auth(cfg: DaemonConfig) -> Authenticator:
    """Who may use the API: the role map (every name known to NSS) and, for the TCP
    listener, the tokens; ConfigError names what is wrong or missing."""
    cfg.roles.validate()
    tcp_needs = (
        ("--api-tls-cert", cfg.api_tls_cert),
        ("--api-tls-key", cfg.api_tls_key),
        ("--api-tokens", cfg.api_tokens),
    )
    if cfg.api_tcp_host is None:
        given = [flag for flag, value in tcp_needs if value]
        if given:
            log.warning("%s given without --api-tcp: not used", ", ".join(given))
        return Authenticator(cfg.roles)
    missing = [flag for flag, value in tcp_needs if not value]
    if missing:
        raise ConfigError(
            f"--api-tcp {cfg.api_tcp_host}:{cfg.api_tcp_port} also needs {', '.join(missing)}: "
            "over TCP the daemon knows operators only by a bearer token (--api-tokens, minted "
            "with trainwarden token new), and tokens travel only over TLS"
        )
    assert cfg.api_tokens is not None
    return Authenticator(cfg.roles, Tokens.load(cfg.api_tokens))


def api_endpoints(cfg: DaemonConfig) -> list[Endpoint]:
    """Where the operator API is served: the socket, and TCP with TLS when configured."""
    out = [Endpoint(path=cfg.api_socket)]
    if cfg.api_tcp_host is not None:
        assert cfg.api_tls_cert is not None and cfg.api_tls_key is not None  # build_auth
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cfg.api_tls_cert, cfg.api_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--api-tls-cert {cfg.api_tls_cert} / --api-tls-key {cfg.api_tls_key}: "
                f"cannot load them: {exc}"
            ) from None
        out.append(Endpoint(cfg.api_tcp_host, cfg.api_tcp_port, ssl=context))
    return out


def build_policy(cfg: DaemonConfig) -> PolicyEngine:

    try:
        mode = Mode(cfg.mode)
    except ValueError:
        raise ConfigError(f"unknown mode {cfg.mode!r}: use enforce, dry-run or approve") from None
    return PolicyEngine(load_policy(cfg.policy_file), mode)


class Daemon:
    """One daemon process. ``run`` returns when ``stop`` is set."""

    def __init__(
        self,
        cfg: DaemonConfig,
        *,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        reread: Callable[[], DaemonConfig] | None = None,
    ) -> None:
        self.cfg = cfg
        self._reread = reread  # the configuration read again (the file), on SIGHUP
        self._reloads: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self.clock = clock or SystemClock()
        self._scheduler = scheduler
        self.sup: Supervisor | None = None
        self.api_url: str | None = None  # unix:PATH, for the CLI's --api
        self.api_urls: list[str] = []  # and https://HOST:PORT when served on TCP
        self.metrics_url: str | None = None
        self.auth: Authenticator | None = None
        self.connected = False
        self.ready = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.leader = False
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._handler_errors = 0
        self._lease_until = float("-inf")  # monotonic time the held lease runs out
        self.lost_lease = False
        self._last_tick = self.clock.monotonic()
        self._standby: list[ApiServer] = []
        self._standby_tried = False
        self._leader_seen: str | None = None

    async def _publish(self, topic: str, payload: bytes) -> None:
        if self._client is None:
            raise ConfigError("not connected to the broker")
        await self._client.publish(topic, payload, qos=1)

    async def run(self, stop: asyncio.Event) -> None:

        cfg = self.cfg
        policy = build_policy(cfg)  # refuse to start with an invalid policy
        self.auth = auth = build_auth(cfg)  # ... or roles naming nobody, or TCP without TLS
        endpoints = api_endpoints(cfg)
        store = AsyncStore(await asyncio.to_thread(open_store, cfg.db_url))
        metrics = Metrics()
        notifier = Notifier()
        try:
            led = await self._lead(store, stop, metrics, notifier)
        finally:
            await self._stop_standby()
        if not led:
            store.close()
            return
        scheduler = self._scheduler or build_scheduler(cfg)
        sup = Supervisor(cfg.core, self.clock, store, scheduler, policy, metrics, self._publish)
        self.sup = sup
        metrics.set_leader(True)
        sup.fence = self.fence  # from the first action on, reconcile's included
        loop = asyncio.get_running_loop()
        # the lease is renewed on its own, so a slow tick (a scheduler command timing out)
        # never lets it lapse while this daemon still leads
        self._loops = {"lease": loop.create_task(self._lease_loop(store, stop))}
        await ops.load(sup)
        await reconcile(sup)
        sup.core.hearing.disconnected()  # no silence is judged before the first connect
        service = DaemonService(
            sup,
            broker_connected=lambda: self.connected,
            leader=lambda: self.leader,
            loops=self.loop_problems,
        )
        api, scrape = await self._serve(service, metrics, auth, endpoints)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self._reload)
        self._loops["ingest"] = loop.create_task(self._mqtt_loop(sup, stop))
        self._loops["tick"] = loop.create_task(self._tick_loop(sup, notifier, stop))
        sup.decide_in_background()  # decisions never hold up ingestion
        self._loops["decide"] = loop.create_task(sup.decision_loop())
        tasks = list(self._loops.values())
        try:
            await asyncio.wait_for(self.ready.wait(), 30)
        except TimeoutError:
            log.warning(
                "broker %s:%d not reachable yet; serving and retrying",
                cfg.broker_host,
                cfg.broker_port,
            )
        notifier.ready(f"serving API on {api.url}")
        log.info(
            "trainwarden daemon ready: API %s, metrics %s, broker %s:%d, scheduler %s, mode %s",
            " and ".join(api.urls),
            scrape.url,
            cfg.broker_host,
            cfg.broker_port,
            scheduler.name,
            cfg.mode,
        )
        try:
            await stop.wait()
        finally:
            notifier.stopping()
            await self._shutdown(sup, tasks, api, scrape)

    async def _serve(
        self,
        service: DaemonService,
        metrics: Metrics,
        auth: Authenticator,
        endpoints: list[Endpoint],
    ) -> tuple[ApiServer, ApiServer]:
        """The operator API on its endpoints and the read-only metrics listener."""
        api = ApiServer(create_app(service, metrics, auth), endpoints=endpoints)
        await api.start()
        scrape = ApiServer(create_metrics_app(metrics, service.status), *self._metrics_at())
        try:
            await scrape.start()
        except BaseException:
            await api.stop()
            raise
        self.api_url, self.api_urls, self.metrics_url = api.url, list(api.urls), scrape.url
        return api, scrape

    def _metrics_at(self) -> tuple[str, int]:
        return self.cfg.metrics_host, self.cfg.metrics_port

    async def _shutdown(
        self, sup: Supervisor, tasks: list[asyncio.Task[None]], api: ApiServer, scrape: ApiServer
    ) -> None:
        """Stop the loops and the actions in flight, write what is batched, give the lease up."""
        store = sup.store
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in list(sup.tasks):
            t.cancel()
        await asyncio.gather(*sup.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await store.flush(force=True)
        if self.leader:
            with contextlib.suppress(Exception):
                await store.call(store.store.release_lease, LEASE, self.holder)
        await api.stop()
        await scrape.stop()
        store.close()

    def loop_problems(self) -> list[str]:
        """Why the daemon is not doing its work (empty when it is): a loop that ended, or a
        tick loop that has not come round for a while. Feeds /healthz and the watchdog."""
        out = []
        for name, task in self._loops.items():
            if task.done():
                why = "cancelled" if task.cancelled() else repr(task.exception())
                out.append(f"{name} loop stopped: {why}")
        since = self.clock.monotonic() - self._last_tick
        if since > max(30.0, 20 * self.cfg.tick_s):
            out.append(f"tick loop last completed {since:.0f} s ago")
        return out

    @property
    def holder(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    async def _lead(
        self, store: AsyncStore, stop: asyncio.Event, metrics: Metrics, notifier: Notifier
    ) -> bool:
        """Wait until this daemon holds the leader lease. A standby waits here, visible:
        READY=1 with STATUS=standby, the watchdog fed, /metrics (``trainwarden_leader 0``)
        and /healthz on the metrics listener, the API's socket answering 503."""
        announced = False
        wait_s = self.cfg.lease_ttl_s / 3
        while not stop.is_set():
            started = self.clock.monotonic()
            try:
                held = await store.call(
                    store.store.acquire_lease,
                    LEASE,
                    self.holder,
                    self.cfg.lease_ttl_s,
                )
            except StoreError as exc:  # the database is away: keep standing by, retry
                log.warning("cannot reach the store for the leader lease (%s); retrying", exc)
                held, announced = False, False
                wait_s = min(wait_s * 2, 10.0)
            else:
                wait_s = self.cfg.lease_ttl_s / 3
            if held:
                self.leader = True
                self._lease_until = started + self.cfg.lease_ttl_s
                if self._standby:
                    notifier.status("taking over as the leader")
                return True
            with contextlib.suppress(Exception):  # who leads, for /healthz and the log
                lease = await store.direct(store.store.lease, LEASE)
                self._leader_seen = lease.holder if lease is not None else None
            if not announced:
                log.info(
                    "standing by: %s holds the leader lease", self._leader_seen or "another daemon"
                )
                announced = True
            await self._serve_standby(metrics, notifier)
            notifier.watchdog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)
        return False

    async def _serve_standby(self, metrics: Metrics, notifier: Notifier) -> None:
        if self._standby or self._standby_tried:
            return
        self._standby_tried = True
        metrics.set_leader(False)
        socket_app = create_standby_app(metrics, self._standby_status)
        api = ApiServer(socket_app, endpoints=[Endpoint(path=self.cfg.api_socket)])
        scrape = ApiServer(create_metrics_app(metrics, self._standby_status), *self._metrics_at())
        for what, server in (("its API socket", api), ("/metrics and /healthz", scrape)):
            try:
                await server.start()
            except (OSError, SupervisorError) as exc:
                log.warning("standing by without serving %s: %s", what, exc)
            else:
                self._standby.append(server)
        if api in self._standby:
            self.api_url, self.api_urls = api.url, list(api.urls)
        if scrape in self._standby:
            self.metrics_url = scrape.url
        notifier.ready("standby: another daemon holds the leader lease")

    def _standby_status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "leader": False,
            "standby": True,
            "leader_holder": self._leader_seen,
            "holder": self.holder,
        }

    async def _stop_standby(self) -> None:
        servers, self._standby = self._standby, []
        for server in servers:
            await server.stop()

    def fence(self) -> str | None:
        """Why this daemon must not act on the scheduler now (None: it may): its lease may
        have run out, so another daemon may be leading. Checked before every action, so a
        leader that cannot renew stops acting before its lease can expire."""
        margin = min(LEASE_MARGIN_S, self.cfg.lease_ttl_s / 4)
        left = self._lease_until - margin - self.clock.monotonic()
        if not self.leader or left <= 0:
            return (
                "not carried out: this daemon could not renew its leader lease in time "
                "(another daemon may be leading)"
            )
        return None

    async def _renew(self, store: AsyncStore, stop: asyncio.Event) -> None:
        started = self.clock.monotonic()
        if await store.direct(  # never behind the writes an outage left waiting
            store.store.acquire_lease, LEASE, self.holder, self.cfg.lease_ttl_s
        ):
            self._lease_until = started + self.cfg.lease_ttl_s
        else:
            log.error(
                "lost the leader lease to another daemon; stopping (exit %d, so systemd "
                "starts this daemon again, as a standby)",
                LOST_LEASE_EXIT,
            )
            self.lost_lease = True
            self.leader = False
            if self.sup is not None:
                self.sup.metrics.set_leader(False)
            stop.set()

    def _reload(self) -> None:
        """SIGHUP: :meth:`reload`, off the signal handler (it reads files and asks NSS in
        a thread, never stalling the loop that renews the lease)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> None:
        """The configuration file (see :mod:`.reload`), the policy, and the tokens file (a
        revoked token stops working now), one after the other; each step that fails says
        why and keeps what it had, and the next step runs all the same."""
        async with self._reload_lock:
            for step in (self._reload_config, self._reload_policy_async, self._reload_tokens):
                try:
                    await step()
                except Exception as exc:  # said, and the next step runs all the same
                    log.error("reload: %s failed: %s: %s", step.__name__, type(exc).__name__, exc)

    async def _reload_policy_async(self) -> None:
        self._reload_policy()

    async def _reload_tokens(self) -> None:
        if self.auth is None or self.auth.tokens is None or not self.cfg.api_tokens:
            return
        try:
            tokens = await asyncio.to_thread(Tokens.load, self.cfg.api_tokens)
        except ConfigError as exc:
            log.error("tokens reload failed, keeping the tokens read before: %s", exc)
        else:
            self.auth.tokens = tokens
            log.info("tokens reloaded from %s", self.cfg.api_tokens)

    def _read_again(self) -> DaemonConfig:
        assert self._reread is not None
        new = self._reread()
        new.roles.validate()  # every user and group known to NSS
        return new

    async def _reload_config(self) -> None:
        """Take the settings a running daemon can change (the roles, the policy file) and
        name the others (:func:`.reload.reread`)."""
        if self._reread is None:
            return
        self.cfg = await reread(self.cfg, self._read_again)
        if self.auth is not None:
            self.auth.roles = self.cfg.roles

    def _reload_policy(self) -> None:
        if self.sup is None:
            return
        try:
            new = load_policy(self.cfg.policy_file)
        except Exception as exc:
            log.error("policy reload failed, keeping the last good policy: %s", exc)
            return
        # the same engine with the new rules: drain windows, cooldowns, restart budgets,
        # backoff, incidents and held decisions are kept across the reload
        self.sup.core.reload(new)
        log.info("policy reloaded from %s", self.cfg.policy_file or "the shipped default")

    async def _mqtt_loop(self, sup: Supervisor, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                async with aiomqtt.Client(
                    self.cfg.broker_host,
                    self.cfg.broker_port,
                    identifier=self.cfg.client_id,
                    clean_session=False,
                    keepalive=15,
                    timeout=10,
                    **self.cfg.mqtt_auth.aiomqtt_kwargs(),
                ) as client:
                    self._client = client
                    for topic in SUBSCRIPTIONS:
                        granted = await client.subscribe(topic, qos=1)
                        refused = [g for g in granted if _code(g) >= 0x80]
                        if refused:  # an ACL said no: connected, but deaf to the agents
                            raise aiomqtt.MqttError(
                                f"the broker refused the subscription to {topic} ({refused[0]})"
                            )
                    self.connected = True
                    sup.core.hearing.reconnected()
                    sup.metrics.set_broker_connected(True)
                    self.ready.set()
                    backoff = 0.5
                    handled = 0
                    async for message in client.messages:
                        await self._handle(sup, message)
                        handled += 1
                        if handled % YIELD_EVERY == 0:
                            # a queued backlog never blocks: the iterator does not yield
                            # while messages wait, so give the lease, the tick, the
                            # decisions and the API their turn
                            await asyncio.sleep(0)
            except aiomqtt.MqttError as exc:
                log.warning("broker connection lost (%s); retrying in %.1f s", exc, backoff)
            except Exception:  # never end ingestion quietly: log, count, reconnect
                log.exception("message loop failed; reconnecting in %.1f s", backoff)
                sup.metrics.handler_error("message")
            finally:
                self._client = None
                self.connected = False
                sup.core.hearing.disconnected()
                sup.metrics.set_broker_connected(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_RECONNECT_S)

    async def _handle(self, sup: Supervisor, message: aiomqtt.Message) -> None:
        """One message under a boundary: an internal error is logged and counted, and the
        next message is handled (bad input itself is rejected inside ``handle``)."""
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode()
        try:
            await sup.handle(str(message.topic), bytes(payload))
        except Exception:
            sup.metrics.handler_error("message")
            self._handler_errors += 1
            if self._handler_errors <= 20 or self._handler_errors % 1000 == 0:
                log.exception(
                    "internal error handling a message on %s (%d so far); going on",
                    message.topic,
                    self._handler_errors,
                )

    async def _lease_loop(self, store: AsyncStore, stop: asyncio.Event) -> None:
        """Renew the leader lease every third of its TTL; a store error is retried sooner
        (the fence stops actions if it cannot be renewed in time)."""
        while not stop.is_set():
            wait_s = self.cfg.lease_ttl_s / 3
            try:
                await self._renew(store, stop)
            except Exception as exc:
                log.warning("cannot renew the leader lease (%s); retrying", exc)
                wait_s = min(wait_s, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)

    async def _tick_loop(self, sup: Supervisor, notifier: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await sup.tick()
                sup.metrics.set_node_states(
                    {phase.value: count for phase, count in sup.state.phase_counts.items()}
                )
                runs: dict[str, int] = {}
                for r in sup.state.runs.values():
                    runs[r.phase.value] = runs.get(r.phase.value, 0) + 1
                sup.metrics.set_run_states(runs)
                sup.metrics.set_incidents_open(sum(i.open for i in sup.policy.incidents()))
                if sup.store.last_batch_size:
                    sup.metrics.store_flush(sup.store.last_flush_s, sup.store.last_batch_size)
                    sup.store.last_batch_size = 0
                st = sup.store
                sup.metrics.store(
                    st.available,
                    len(st.waiting),
                    len(sup.held_work),
                    {"refused": st.rejected, "dropped": st.dropped + sup.held_dropped},
                )
                hearing = sup.core.hearing
                sup.metrics.hearing(hearing.lag_s(), hearing.suspended is not None)
                self._last_tick = self.clock.monotonic()
                if not self.loop_problems():  # systemd restarts a daemon that stops working
                    notifier.watchdog()
            except Exception:
                sup.metrics.handler_error("tick")
                log.exception("tick failed; continuing")
            await asyncio.sleep(self.cfg.tick_s)


def _code(granted: object) -> int:
    """A SUBACK entry as a number: the granted QoS, or a reason code (0x80 and up: refused)."""
    value = getattr(granted, "value", granted)
    return value if isinstance(value, int) else 0x80


def run_daemon(
    cfg: DaemonConfig,
    on_ready: Callable[[Daemon], None] | None = None,
    reread: Callable[[], DaemonConfig] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until another daemon took the leader lease
    (``LOST_LEASE_EXIT``: a failure for ``Restart=on-failure``, which brings it back as the
    standby). ``reread`` builds the configuration again for SIGHUP."""
    daemon = Daemon(cfg, reread=reread)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await daemon.run(stop)

    asyncio.run(main())
    return LOST_LEASE_EXIT if daemon.lost_lease else 0
