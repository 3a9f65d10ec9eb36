"""A private Mosquitto run with the shipped deploy/mosquitto config, ACL and credentials tool.

Only what must differ on a test machine is rewritten: the files' paths (a temporary
directory) and the listeners' ports (free loopback ports). The password file, the ACL's
per-node part and the certificates come from ``trainwarden-broker-credentials``, so the
tool is tested with the config it is made for. The commented client-certificate listener
is switched on too (``cert_port``).

Used by tests/api/test_deploy_mosquitto.py and tests/agent/test_mqtt_auth.py: add
``tests/infra`` to ``sys.path`` and import :class:`SecureBroker`.
"""

from __future__ import annotations

import os
import pwd
import queue
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
TOOL = DEPLOY / "trainwarden-broker-credentials"
DAEMON = "trainwarden-daemon"


def missing_tools() -> str | None:
    """Why a SecureBroker cannot run here (None: it can)."""
    for tool in ("mosquitto", "mosquitto_passwd", "openssl"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed"
    return None


def skip_without_tools() -> pytest.MarkDecorator:
    reason = missing_tools()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SecureBroker:
    """The shipped broker on three loopback ports: TLS + password (``tls_port``), TLS +
    client certificate (``cert_port``) and plain loopback (``plain_port``)."""

    def __init__(self, nodes: tuple[str, ...] = ("n1", "n2")) -> None:
        # Not under pytest's tmp_path: that is private to the test's user, and Mosquitto
        # started as root drops to the mosquitto user, which must read these files.
        self.dir = Path(tempfile.mkdtemp(prefix="tw-mosquitto-"))
        self.dir.chmod(0o755)
        self.creds = self.dir / "credentials"
        self.tls_port, self.cert_port, self.plain_port = (_free_port() for _ in range(3))
        self.nodes = nodes
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "mosquitto.log"
        self.as_root = False  # no mosquitto user to drop to: Mosquitto warns about that
        self._make_credentials()
        self._write_config()

    # --- files -----------------------------------------------------------------------

    def _make_credentials(self) -> None:
        subprocess.run(
            [
                *(str(TOOL), "-o", str(self.creds), ",".join(self.nodes), "--client-certs"),
                *("--tls", "localhost", "--tls", "127.0.0.1"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"},
        )
        certs = self.dir / "certs"
        certs.mkdir()
        shutil.copy(self.creds / "cluster-ca.pem", certs / "cluster-ca.pem")
        for name in ("broker.pem", "broker.key"):
            shutil.copy(self.creds / "broker" / name, certs / name)
        shutil.copy(self.creds / "trainwarden.passwd", self.dir / "trainwarden.passwd")
        acl = (DEPLOY / "trainwarden.acl").read_text()
        acl += (self.creds / "trainwarden.acl.nodes").read_text()
        (self.dir / "trainwarden.acl").write_text(acl)

    def _write_config(self) -> None:
        conf = (DEPLOY / "trainwarden.conf").read_text()
        # the client-certificate listener, commented in the shipped file, is tested too
        block = re.search(r"\n#listener 8884\n(#.*\n)+", conf)
        assert block is not None, "trainwarden.conf lost its client-certificate listener"
        conf = conf.replace(block[0], block[0].replace("\n#", "\n"))
        for shipped, port in (
            ("listener 8883\n", self.tls_port),
            ("listener 8884\n", self.cert_port),
            ("listener 1883 127.0.0.1\n", self.plain_port),
        ):
            assert f"\n{shipped}" in conf, f"trainwarden.conf lost '{shipped.strip()}'"
            conf = conf.replace(f"\n{shipped}", f"\nlistener {port} 127.0.0.1\n")
        conf = conf.replace("/etc/mosquitto/", f"{self.dir}/")
        conf += "\npersistence false\n"
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("mosquitto")
            except KeyError:
                conf += "user root\n"
                self.as_root = True
            else:
                for path in [self.dir, *self.dir.rglob("*")]:
                    os.chown(path, user.pw_uid, user.pw_gid)
        (self.dir / "mosquitto.conf").write_text(conf)

    # --- what the tests use ----------------------------------------------------------

    def password(self, user: str) -> str:
        sub = "daemon" if user == DAEMON else f"nodes/{user}"
        return (self.creds / sub / "mqtt.password").read_text().strip()

    def password_file(self, user: str) -> Path:
        return self.creds / ("daemon" if user == DAEMON else f"nodes/{user}") / "mqtt.password"

    def client_cert(self, user: str) -> tuple[str, str]:
        d = self.creds / ("daemon" if user == DAEMON else f"nodes/{user}")
        return str(d / "client.pem"), str(d / "client.key")

    @property
    def ca(self) -> str:
        return str(self.creds / "cluster-ca.pem")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self) -> SecureBroker:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [exe, "-c", str(self.dir / "mosquitto.conf")], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        for port in (self.tls_port, self.cert_port, self.plain_port):
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"mosquitto did not start:\n{self.log()}")
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Peer:
    """One MQTT 3.1.1 client (paho, its own network thread): what it receives, whether it
    was let in, and whether the broker dropped it. Every wait is bounded."""

    def __init__(
        self,
        port: int,
        user: str | None = None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        ca: str | None = None,
        cert: tuple[str, str] | None = None,
        will: str | None = None,
        clean: bool = True,
        subscribe: str | None = None,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.accepted = threading.Event()
        self.refused: str | None = None
        self.answered = threading.Event()
        self.dropped = threading.Event()
        self.session_present = False
        self._subscribed = threading.Event()
        self._subscribe = subscribe
        self._closing = False
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            clean_session=clean,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,  # a test looks at who was dropped: they stay down
        )
        if user is not None:
            c.username_pw_set(user, password)
        if ca is not None or cert is not None:
            c.tls_set(
                ca_certs=ca, certfile=cert[0] if cert else None, keyfile=cert[1] if cert else None
            )
        if will is not None:
            c.will_set(will, b"will", qos=1)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda *_: self._subscribed.set()
        c.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        self.client = c
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()

    def _on_connect(self, client: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
        else:
            self.session_present = bool(flags.session_present)
            if self._subscribe is not None:
                client.subscribe(self._subscribe, qos=1)
            else:
                self._subscribed.set()
            self.accepted.set()
        self.answered.set()

    def _on_disconnect(self, client: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        if not self._closing:
            self.dropped.set()

    def wait_accepted(self, timeout: float = 5) -> Peer:
        """Connected (and subscribed, if asked), or AssertionError."""
        assert self.answered.wait(timeout), "the broker did not answer the CONNECT in time"
        assert self.refused is None, f"the broker refused the client: {self.refused}"
        assert self._subscribed.wait(timeout), "the subscription was not acknowledged in time"
        return self

    def publish(self, topic: str, payload: bytes = b"{}") -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        assert info.is_published(), f"no PUBACK for {topic}"

    def until(self, marker: str, timeout: float = 5) -> list[str]:
        """Topics received up to and including ``marker`` (a refused publish is silent in
        MQTT 3.1.1: a marker sent after it by the same client shows it was not passed on)."""
        return [topic for topic, _payload in self.collect(marker, timeout)]

    def collect(self, marker: str, timeout: float = 5) -> list[tuple[str, bytes]]:
        """Messages (topic, payload) received up to and including one on ``marker``."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                seen = [t for t, _ in got]
                raise AssertionError(f"{marker} did not arrive; got {seen}") from None
            if got[-1][0] == marker:
                return got

    def close(self) -> None:
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
