"""An MQTT broker inside the process, so ``trainwarden demo`` and development need no service.

A thin async context manager around amqtt's broker (optional dependency, extra
``demo``). Production uses Mosquitto (``deploy/``); nothing in trainwarden depends on
retained messages, which amqtt can leak between sessions, so the embedded broker is
only asked for what Mosquitto does the same way: QoS 0/1 publish/subscribe and last
wills. amqtt's chatty INFO logging (every connection and packet) is turned down.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from trainwarden.supervisor.errors import ConfigError, SupervisorError

_NOISY_LOGGERS = ("amqtt", "transitions")


class EmbeddedBroker:
    """``async with EmbeddedBroker(port=0) as b: ... b.port ...``; port 0 picks a free one."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: int = logging.CRITICAL,
        start_timeout_s: float = 10.0,
    ) -> None:
        if not 0 <= port < 65536:
            raise ConfigError(f"broker port {port} is out of range 0-65535")
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._broker: Any = None
        self._log_level = log_level
        self._start_timeout_s = start_timeout_s

    @property
    def port(self) -> int:
        """The port the broker listens on (known once started)."""
        if self._port is None:
            raise SupervisorError("the embedded broker is not running")
        return self._port

    @property
    def address(self) -> str:
        """``host:port``, the form ``--broker`` and ``TRAINWARDEN_BROKER`` take."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise SupervisorError(
                "the embedded broker needs amqtt: pip install 'trainwarden[demo]'"
            ) from exc
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(self._log_level)
        config = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self._requested_port}"},
            },
            # no $SYS publisher, no packet/event loggers: only anonymous auth
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        broker = Broker(config)
        try:
            async with asyncio.timeout(self._start_timeout_s):
                await broker.start()
        except Exception as exc:
            raise SupervisorError(
                f"embedded broker could not listen on {self.host}:{self._requested_port}: "
                f"{exc.__cause__ or exc}"
            ) from exc
        self._broker = broker
        self._port = self._bound_port(broker)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        self._port = None
        if broker is None:
            return
        try:
            async with asyncio.timeout(self._start_timeout_s):
                await broker.shutdown()
        except Exception as exc:  # shutting down a demo must not raise over the real error
            logging.getLogger(__name__).debug("embedded broker shutdown: %s", exc)

    def _bound_port(self, broker: Any) -> int:
        if self._requested_port:
            return self._requested_port
        # amqtt 0.12 keeps its asyncio servers per listener; read the port the OS chose.
        for server in getattr(broker, "_servers", {}).values():
            for sock in getattr(getattr(server, "instance", None), "sockets", None) or ():
                port: int = sock.getsockname()[1]
                return port
        raise SupervisorError("embedded broker started but its port cannot be found")

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
