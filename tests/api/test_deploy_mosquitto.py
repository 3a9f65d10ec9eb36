"""deploy/mosquitto against a real Mosquitto: TLS, one identity per node, client id = user
name, and an ACL under which a node speaks only for itself.

The broker runs the shipped trainwarden.conf and .acl with credentials from the shipped
trainwarden-broker-credentials (tests/infra/secure_broker.py); only paths and ports are
changed. A refused publish is silent in MQTT 3.1.1, so every negative check is followed
by an allowed "marker" message from the same sender: when the marker arrives, the refused
message would have arrived before it.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
from secure_broker import DAEMON, Peer, SecureBroker, skip_without_tools

pytestmark = [pytest.mark.integration, skip_without_tools()]

HB1 = "trainwarden/v1/node/n1/heartbeat"
Connect = Callable[..., Peer]


@pytest.fixture(scope="module")
def broker() -> Iterator[SecureBroker]:
    b = SecureBroker(("n1", "n2"))
    try:
        yield b.start()
    finally:
        b.close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    """Peers to close after the test (so no identity is left connected for the next)."""
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


@pytest.fixture
def connect(broker: SecureBroker, peers: list[Peer]) -> Connect:
    """``connect(user, port=None, **kw)``: a Peer with that user's password, let in."""

    def make(user: str, port: int | None = None, **kw: Any) -> Peer:
        kw.setdefault("password", broker.password(user))
        p = Peer(port or broker.plain_port, user, **kw)
        peers.append(p)
        return p.wait_accepted()

    return make


@pytest.fixture
def daemon(connect: Connect) -> Peer:
    return connect(DAEMON, client_id=DAEMON, subscribe="trainwarden/v1/#")


def test_the_shipped_config_starts_without_warnings(broker: SecureBroker) -> None:
    lines = [ln for ln in broker.log().splitlines() if ln.strip()]
    assert any("running" in ln for ln in lines), broker.log()
    noise = [ln for ln in lines if ("Warning" in ln or "Note" in ln or "Error" in ln)]
    if broker.as_root:  # the test machine has no mosquitto user: not the config's doing
        noise = [ln for ln in noise if "should not be run as root" not in ln]
    assert noise == []


@pytest.mark.parametrize("listener", ["plain", "tls"])
@pytest.mark.parametrize(("user", "password"), [(None, None), ("n1", "wrong"), ("n9", "x")])
def test_anonymous_and_unknown_clients_are_refused(
    broker: SecureBroker, peers: list[Peer], listener: str, user: str | None, password: str | None
) -> None:
    port, ca = (broker.plain_port, None) if listener == "plain" else (broker.tls_port, broker.ca)
    p = Peer(port, user, password, ca=ca)
    peers.append(p)
    assert p.answered.wait(5)
    assert p.refused is not None
    assert "authori" in p.refused.lower() or "user name" in p.refused.lower()


def test_a_node_writes_only_its_own_topics(connect: Connect, daemon: Peer) -> None:
    n1 = connect("n1")
    for kind in ("heartbeat", "health", "status", "fault", "steps", "checkpoint"):
        n1.publish(f"trainwarden/v1/node/n2/{kind}", b"forged")
    n1.publish("trainwarden/v1/node/n1/checkpoint")
    n1.publish(HB1)
    assert daemon.until(HB1) == ["trainwarden/v1/node/n1/checkpoint", HB1]


def test_nodes_cannot_write_run_topics(connect: Connect, daemon: Peer) -> None:
    n2 = connect("n2")
    for topic in ("steps/0", "checkpoint", "control"):
        n2.publish(f"trainwarden/v1/run/r1/{topic}", b"forged")
    n2.publish("trainwarden/v1/node/n2/steps")
    assert daemon.until("trainwarden/v1/node/n2/steps") == ["trainwarden/v1/node/n2/steps"]


def test_the_daemon_writes_control_only_and_nodes_read_it(connect: Connect) -> None:
    spy = connect("n1", subscribe="trainwarden/v1/#")
    other = connect("n2")
    d = connect(DAEMON, subscribe="trainwarden/v1/#")  # reads what it could write itself
    other.publish("trainwarden/v1/node/n2/health")  # another node's report: not for n1
    assert d.until("trainwarden/v1/node/n2/health") == ["trainwarden/v1/node/n2/health"]
    d.publish("trainwarden/v1/node/n2/status", b"forged")  # the daemon is no node
    d.publish(f"trainwarden/v1/node/{DAEMON}/status", b"forged")  # nor one named like it
    d.publish("trainwarden/v1/run/r1/steps/0", b"forged")
    d.publish("trainwarden/v1/run/r1/control")
    assert spy.until("trainwarden/v1/run/r1/control") == ["trainwarden/v1/run/r1/control"]
    assert d.until("trainwarden/v1/run/r1/control") == ["trainwarden/v1/run/r1/control"]


def test_a_client_id_is_its_user_name(connect: Connect, daemon: Peer) -> None:
    n2 = connect("n2", client_id="tw-agent-n2", will="trainwarden/v1/node/n2/status")
    first = connect("n1", client_id="tw-agent-n2")  # n2's id: the broker makes it "n1"
    second = connect("n1", client_id=DAEMON)  # the daemon's id: "n1" again
    second.publish(HB1)
    assert daemon.until(HB1) == [HB1]  # no will of n2's came first
    assert first.dropped.wait(5), "n1's second connection did not replace its first"
    assert not n2.dropped.is_set() and not daemon.dropped.is_set()
    n2.publish("trainwarden/v1/node/n2/heartbeat")
    assert daemon.until("trainwarden/v1/node/n2/heartbeat") == ["trainwarden/v1/node/n2/heartbeat"]
    # the check above can see a will: n2 taking its own id over does publish it
    connect("n2", client_id="whatever")
    assert daemon.until("trainwarden/v1/node/n2/status") == ["trainwarden/v1/node/n2/status"]
    assert n2.dropped.wait(5)


def test_the_daemons_session_is_kept_under_its_user_name(
    connect: Connect, peers: list[Peer]
) -> None:
    d = connect(DAEMON, client_id="daemon-a", clean=False, subscribe="trainwarden/v1/#")
    peers.remove(d)
    d.close()
    connect("n1").publish("trainwarden/v1/node/n1/fault")  # while no daemon is connected
    back = connect(DAEMON, client_id="daemon-b", clean=False)  # another id, same session
    assert back.session_present
    assert back.until("trainwarden/v1/node/n1/fault") == ["trainwarden/v1/node/n1/fault"]


def test_nodes_and_the_daemon_connect_over_tls(broker: SecureBroker, connect: Connect) -> None:
    d = connect(DAEMON, broker.tls_port, ca=broker.ca, subscribe="trainwarden/v1/#")
    connect("n1", broker.tls_port, ca=broker.ca).publish(HB1)
    assert d.until(HB1) == [HB1]


def test_the_tls_listener_refuses_plain_mqtt_and_unknown_brokers(broker: SecureBroker) -> None:
    with pytest.raises((OSError, ssl.SSLError)):  # a broker the cluster CA did not sign
        Peer(broker.tls_port, "n1", broker.password("n1"), ca=broker.client_cert("n1")[0])
    plain = Peer(broker.tls_port, "n1", broker.password("n1"))
    try:
        assert plain.dropped.wait(5)  # a TLS listener closes on a plain CONNECT
        assert not plain.answered.is_set()
    finally:
        plain.close()


def test_a_node_connects_with_its_client_certificate(
    broker: SecureBroker, connect: Connect
) -> None:
    d = connect(DAEMON, subscribe="trainwarden/v1/#")
    # The certificate's CN is the user name, whatever user name the client sends.
    n1 = connect("n2", broker.cert_port, password=None, ca=broker.ca, cert=broker.client_cert("n1"))
    n1.publish("trainwarden/v1/node/n2/heartbeat", b"forged")
    n1.publish(HB1)
    assert d.until(HB1) == [HB1]


def test_the_certificate_listener_wants_a_certificate(broker: SecureBroker) -> None:
    try:
        p = Peer(broker.cert_port, "n1", broker.password("n1"), ca=broker.ca)
    except (OSError, ssl.SSLError):
        return  # refused in the handshake (TLS 1.2)
    try:  # TLS 1.3 refuses after the handshake: the connection is closed unanswered
        assert p.dropped.wait(5)
        assert not p.accepted.is_set()
    finally:
        p.close()


def test_the_credentials_tool_adds_nodes_and_keeps_existing_ones(tmp_path: Path) -> None:
    out = tmp_path / "creds"
    tool = str(
        Path(__file__).resolve().parents[2] / "deploy/mosquitto/trainwarden-broker-credentials"
    )
    (tmp_path / "more.txt").write_text("# rack 2\ngpu7\n\nn01\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool, "-o", str(out), *args], capture_output=True, text=True, timeout=60
        )

    assert run("n[01-02],x.y", f"@{tmp_path / 'more.txt'}").returncode == 0
    users = [ln.split(":")[0] for ln in (out / "trainwarden.passwd").read_text().splitlines()]
    assert users == ["n01", "n02", "x.y", "gpu7", DAEMON]
    first = (out / "nodes/n01/mqtt.password").read_text()
    assert (out / "nodes/n01/mqtt.password").stat().st_mode & 0o777 == 0o600
    assert (out / "trainwarden.passwd").stat().st_mode & 0o777 == 0o600
    assert (out / "nodes/gpu7/mqtt.env").read_text() == "TRAINWARDEN_MQTT_USERNAME=gpu7\n"
    assert run("n01,n03", "--no-daemon").returncode == 0  # n01 kept, n03 added
    assert (out / "nodes/n01/mqtt.password").read_text() == first
    assert run("n01", "--rotate", "--no-daemon").returncode == 0
    assert (out / "nodes/n01/mqtt.password").read_text() != first
    users = [ln.split(":")[0] for ln in (out / "trainwarden.passwd").read_text().splitlines()]
    assert sorted(users) == sorted(["n01", "n02", "x.y", "gpu7", DAEMON, "n03"])
    acl = (out / "trainwarden.acl.nodes").read_text()
    assert (
        sum(ln.startswith("user ") for ln in acl.splitlines()) == 5 and f"user {DAEMON}" not in acl
    )
    bad = run("n1/../x")
    assert bad.returncode == 2 and "invalid node name" in bad.stderr
