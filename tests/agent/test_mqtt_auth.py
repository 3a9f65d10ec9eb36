"""A broker that refuses anonymous clients: the agent and the reporter log in with a
user name and a password file; without them nothing gets through."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from agent_helpers import PrivateMosquitto
from paho.mqtt.enums import CallbackAPIVersion

from trainwarden.health.agent import Agent, AgentConfig
from trainwarden.health.errors import HealthError
from trainwarden.health.mqtt import MqttAuth
from trainwarden.health.probes.registry import ProbeConfig
from trainwarden.health.report import Heartbeat, StepReport, parse_message
from trainwarden.health.reporter import Reporter
from trainwarden.health.sim.hardware import SimulatedHardware

pytestmark = pytest.mark.integration


@pytest.fixture
def secured(tmp_path: Path) -> tuple[PrivateMosquitto, Path]:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "node7", "s3cret"], check=True)
    broker = PrivateMosquitto(tmp_path)
    broker.conf.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {pw}\npersistence false\nuser root\n"
    )
    (tmp_path / "node7.pw").write_text("s3cret\n")
    broker.start()
    yield broker, tmp_path / "node7.pw"
    broker.stop()


def watch(port: int) -> tuple[mqtt.Client, list[object]]:
    seen: list[object] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
    c.username_pw_set("node7", "s3cret")
    c.on_connect = lambda cl, *_: cl.subscribe("trainwarden/v1/#", qos=1)
    c.on_message = lambda _c, _u, m: seen.append(parse_message(m.topic, m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, seen


async def run_agent(port: int, auth: MqttAuth, tmp: Path, seconds: float) -> None:
    cfg = AgentConfig(
        node="node7",
        broker_port=port,
        heartbeat_interval_s=0.2,
        report_interval_s=5,
        probes=ProbeConfig(storage_paths=(str(tmp),)),
        auth=auth,
        reconnect_max_s=0.5,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        Agent(cfg, SimulatedHardware("node7", state_dir=tmp / "hw")).run(stop)
    )
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_agent_logs_in_with_a_password_file(
    secured: tuple[PrivateMosquitto, Path], tmp_path: Path
) -> None:
    broker, pwfile = secured
    client, seen = watch(broker.port)
    try:
        await run_agent(broker.port, MqttAuth(username="x"), tmp_path, 1.5)  # wrong user
        assert not any(isinstance(m, Heartbeat) for m in seen)
        auth = MqttAuth.from_env({}, username="node7", password_file=str(pwfile))
        await run_agent(broker.port, auth, tmp_path, 1.5)
        assert any(isinstance(m, Heartbeat) and m.node == "node7" for m in seen)
    finally:
        client.loop_stop()


def test_reporter_takes_credentials_from_the_environment(
    secured: tuple[PrivateMosquitto, Path],
) -> None:
    broker, pwfile = secured
    client, seen = watch(broker.port)
    try:
        rep = Reporter.from_env(
            {
                "TRAINWARDEN_BROKER": f"127.0.0.1:{broker.port}",
                "TRAINWARDEN_RUN": "r",
                "RANK": "0",
                "TRAINWARDEN_NODE": "node7",
                "TRAINWARDEN_MQTT_USERNAME": "node7",
                "TRAINWARDEN_MQTT_PASSWORD_FILE": str(pwfile),
            }
        )
        assert rep.wait_connected(5)
        rep.step_done(1, 0.1)
        rep.close()
        deadline = time.monotonic() + 5
        while not any(isinstance(m, StepReport) for m in seen):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        client.loop_stop()


def test_bad_credential_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HealthError, match="cannot read the MQTT password file"):
        MqttAuth.from_env({}, username="u", password_file=str(tmp_path / "missing"))
    (tmp_path / "pw").write_text("x")
    with pytest.raises(HealthError, match="without a username"):
        MqttAuth.from_env({}, password_file=str(tmp_path / "pw"))
    with pytest.raises(HealthError, match="TLS CA file"):
        MqttAuth.from_env({"TRAINWARDEN_MQTT_CA": str(tmp_path / "nope.pem")})
