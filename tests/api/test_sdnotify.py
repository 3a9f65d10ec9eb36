"""systemd notify over real AF_UNIX datagram sockets (path, abstract); watchdog in virtual time."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainwarden.health.clock import VirtualClock
from trainwarden.supervisor.daemon.sdnotify import Notifier, run_watchdog, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def test_ready_reaches_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving 2688 nodes")
    assert sock.recv(4096).decode().split("\n") == [
        "READY=1",
        f"MAINPID={os.getpid()}",
        "STATUS=serving 2688 nodes",
    ]
    assert notifier.status("line one\nline two")
    assert sock.recv(4096) == b"STATUS=line one line two"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"trainwarden-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()
    finally:
        sock.close()


def test_no_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False


def test_a_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False
    assert "cannot notify systemd" in caplog.text


def test_fields_are_checked(listener: tuple[socket.socket, str]) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": listener[1]})
    with pytest.raises(ValueError, match="expected one KEY=VALUE line"):
        notifier.notify("READY")


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert (
        watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    )
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


class _Done(Exception):
    pass


@pytest.mark.integration  # waits out a 0.5 s socket timeout to prove no more pings came
async def test_watchdog_pings_only_while_alive(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    clock = VirtualClock(start=0.0)
    pattern = [True, True, False, False, True]
    seen: list[float] = []

    def alive() -> bool:
        if len(seen) == len(pattern):
            raise _Done
        seen.append(clock.monotonic())
        return pattern[len(seen) - 1]

    with pytest.raises(_Done):
        await run_watchdog(notifier, 15.0, clock, alive)
    assert seen == [0.0, 15.0, 30.0, 45.0, 60.0]
    sock.settimeout(0.5)
    pings = []
    with pytest.raises(TimeoutError):
        while True:
            pings.append(sock.recv(4096))
    assert pings == [b"WATCHDOG=1"] * 3  # none while the main loop was not alive
    notifier.close()
