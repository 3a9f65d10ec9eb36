"""systemd's notify protocol, in the few lines it takes: READY, STATUS, STOPPING, WATCHDOG.

The daemon runs as ``Type=notify`` with ``WatchdogSec``: it says READY=1 once the store,
the broker and the API are up, and pings the watchdog only while its main loop is alive,
so systemd restarts a daemon that is wedged (not merely one that crashed). Everything is a
no-op when ``$NOTIFY_SOCKET`` is absent (a terminal, a test, another init system).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

from trainwarden.health.clock import Clock

__all__ = ["Notifier", "run_watchdog", "watchdog_interval"]

log = logging.getLogger("trainwarden.sdnotify")


def _address(raw: str) -> str | bytes:
    """``@name`` is Linux's abstract namespace: a leading NUL byte on the wire."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


class Notifier:
    """Sends notify messages to ``$NOTIFY_SOCKET``; every method is a no-op without it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = _address(raw) if raw else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (e.g. ``"READY=1"``) in one datagram; True if it was sent.

        A failure is logged, never raised: the service manager is not a reason to stop.
        """
        if self.address is None:
            return False
        for f in fields:
            if "=" not in f or "\n" in f:
                raise ValueError(f"invalid notify field {f!r}: expected one KEY=VALUE line")
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %r: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={status}")
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text.replace(chr(10), ' ')}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None if not asked.

    ``$WATCHDOG_PID``, when set, must be this process: a child that inherited the
    environment must not ping on its parent's behalf.
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


async def run_watchdog(
    notifier: Notifier,
    interval_s: float,
    clock: Clock,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Ping the watchdog every ``interval_s`` while ``alive()`` says the daemon is healthy.

    Runs until cancelled. When ``alive()`` turns false, pings stop and systemd restarts
    the service after ``WatchdogSec``; they resume if it turns true again first.
    """
    if interval_s <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval_s}")
    was_alive = True
    while True:
        ok = alive() if alive is not None else True
        if ok:
            notifier.watchdog()
        elif was_alive:
            log.error("main loop not alive: withholding the systemd watchdog ping")
        was_alive = ok
        await clock.sleep(interval_s)
