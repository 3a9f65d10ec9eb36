"""A real-Mosquitto subscriber that collects parsed messages for the reporter tests."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from trainwarden.health.report import parse_message

BROKER = "127.0.0.1:1883"


class Collector:
    """Subscribes to a topic filter; ``get`` returns (arrival monotonic time, parsed message)."""

    def __init__(self, topic: str) -> None:
        self.q: queue.Queue[tuple[float, Any]] = queue.Queue()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex}")

        def on_connect(c: Any, *_: Any) -> None:
            c.subscribe(topic, qos=1)

        def on_subscribe(*_: Any) -> None:
            ready.set()

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            self.q.put((time.monotonic(), parse_message(m.topic, m.payload)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        assert ready.wait(5), "could not subscribe on the test Mosquitto at 127.0.0.1:1883"

    def get(self, timeout: float = 5.0) -> tuple[float, Any]:
        return self.q.get(timeout=timeout)

    def drain(self, quiet_s: float = 0.3) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self.q.get(timeout=quiet_s)[1])
            except queue.Empty:
                return out

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def run_name() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def collector(run_name: str) -> Iterator[Collector]:
    c = Collector(f"trainwarden/v1/run/{run_name}/#")
    yield c
    c.close()
