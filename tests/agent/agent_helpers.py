"""Helpers for the agent tests: a paho subscriber and a private Mosquitto."""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from trainwarden.health.errors import ReportError
from trainwarden.health.report import parse_message


class Collector:
    """Subscribes to ``topic``; ``get`` returns (arrival monotonic time, topic, parsed message)."""

    def __init__(self, topic: str, port: int = 1883) -> None:
        self.q: queue.Queue[tuple[float, str, Any]] = queue.Queue()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(5), f"could not subscribe on Mosquitto at 127.0.0.1:{port}"

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        at = time.monotonic()
        try:
            msg = parse_message(m.topic, m.payload)
        except ReportError as exc:  # kept, so a test fails with the reason instead of waiting
            msg = exc
        self.q.put((at, m.topic, msg))

    def wait_for(self, pred: Callable[[Any], bool], timeout: float = 5.0) -> tuple[float, Any]:
        """The first message matching ``pred`` (others are discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("expected message did not arrive in time")
            try:
                at, _topic, msg = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if isinstance(msg, ReportError):
                raise AssertionError(f"invalid message on {_topic}: {msg}")
            if pred(msg):
                return at, msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateMosquitto:
    """A throwaway ``mosquitto`` on its own port (never touch the shared test broker)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"private mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None
