"""deploy/mosquitto against a real Mosquitto: a node writes only its own topics.

The broker runs on a free local port with the shipped trainwarden.conf and .acl (only the
file paths and the listener address are changed) and a password file made with
mosquitto_passwd. A refused publish is silent in MQTT 3.1.1, so every negative check
is followed by an allowed "marker" message from the same sender: when the marker
arrives, the refused message would have arrived before it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
USERS = {"trainwarden-daemon": "daemon-secret", "nid001": "secret-1", "nid002": "secret-2"}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None,
        reason="mosquitto is not installed",
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("mosquitto")
    passwd = tmp / "trainwarden.passwd"
    for i, (user, password) in enumerate(USERS.items()):
        args = ["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd), user, password]
        subprocess.run(args, check=True, capture_output=True, timeout=30)
    shutil.copy(DEPLOY / "trainwarden.acl", tmp / "trainwarden.acl")
    port = _free_port()
    conf = (DEPLOY / "trainwarden.conf").read_text()
    assert "\nlistener 1883\n" in conf
    conf = conf.replace("/etc/mosquitto/", f"{tmp}/").replace(
        "\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n"
    )
    if os.geteuid() == 0:
        conf += "\nuser root\n"  # keep the test's file permissions readable
    (tmp / "mosquitto.conf").write_text(conf)
    log = (tmp / "mosquitto.log").open("w")
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(tmp / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("mosquitto did not start:\n" + (tmp / "mosquitto.log").read_text())
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _client(port: int, user: str | None, password: str | None = None) -> aiomqtt.Client:
    if user is not None and password is None:
        password = USERS[user]
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        username=user,
        password=password,
        identifier=f"test-{user}-{time.monotonic_ns()}",
        timeout=5,
    )


@pytest.fixture
async def daemon(broker: int) -> AsyncIterator[aiomqtt.Client]:
    async with _client(broker, "trainwarden-daemon") as client:
        await client.subscribe("trainwarden/v1/#", qos=1)
        yield client


async def _received_until(client: aiomqtt.Client, marker: str) -> list[str]:
    """Topics received up to and including ``marker``."""
    topics = []
    async with asyncio.timeout(5):
        async for message in client.messages:
            topics.append(str(message.topic))
            if str(message.topic) == marker:
                return topics
    raise AssertionError("unreachable")


async def test_a_node_writes_only_its_own_topics(broker: int, daemon: aiomqtt.Client) -> None:
    async with _client(broker, "nid001") as node:
        await node.publish("trainwarden/v1/node/nid002/heartbeat", b"forged", qos=1)
        await node.publish("trainwarden/v1/node/nid001/heartbeat", b"{}", qos=1)
    assert await _received_until(daemon, "trainwarden/v1/node/nid001/heartbeat") == [
        "trainwarden/v1/node/nid001/heartbeat"
    ]


async def test_ranks_report_steps_but_cannot_send_control(
    broker: int, daemon: aiomqtt.Client
) -> None:
    async with _client(broker, "nid002") as node:
        await node.publish("trainwarden/v1/run/pretrain/control", b"forged", qos=1)
        await node.publish("trainwarden/v1/run/pretrain/steps/7", b"{}", qos=1)
        await node.publish("trainwarden/v1/run/pretrain/checkpoint", b"{}", qos=1)
    assert await _received_until(daemon, "trainwarden/v1/run/pretrain/checkpoint") == [
        "trainwarden/v1/run/pretrain/steps/7",
        "trainwarden/v1/run/pretrain/checkpoint",
    ]


async def test_a_node_cannot_read_other_nodes_but_gets_control(
    broker: int, daemon: aiomqtt.Client
) -> None:
    async with _client(broker, "nid001") as spy, _client(broker, "nid002") as other:
        await spy.subscribe("trainwarden/v1/#", qos=1)
        await other.publish("trainwarden/v1/node/nid002/health", b"{}", qos=1)
        await daemon.publish("trainwarden/v1/run/pretrain/control", b"{}", qos=1)
        assert await _received_until(spy, "trainwarden/v1/run/pretrain/control") == [
            "trainwarden/v1/run/pretrain/control"
        ]


@pytest.mark.parametrize(("user", "password"), [(None, None), ("nid001", "wrong")])
async def test_unknown_clients_are_refused(
    broker: int, user: str | None, password: str | None
) -> None:
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|[Bb]ad user name"):
        async with _client(broker, user, password or ""):
            pass
