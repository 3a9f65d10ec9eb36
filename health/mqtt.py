"""Small MQTT helpers shared by the agent and the training reporter."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.health import config
from trainwarden.health.errors import HealthError

DEFAULT_PORT = 1883


def parse_broker(spec: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"host"``, ``"[::1]:1883"``) to ``(host, port)``; clear error if bad."""
    text = spec.strip()
    if not text:
        raise HealthError("broker address is empty; expected HOST:PORT, e.g. 127.0.0.1:1883")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise HealthError(f"broker address {spec!r} has an unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise HealthError(f"broker address {spec!r}: expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise HealthError(f"broker address {spec!r} has no host")
    if not port_text:
        return host, DEFAULT_PORT
    try:
        port = int(port_text)
    except ValueError:
        raise HealthError(f"broker address {spec!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise HealthError(f"broker address {spec!r}: port {port} is out of range 1-65535")
    return host, port


def short_hostname() -> str:
    """This machine's name without the domain (``nid001234.alps`` -> ``nid001234``)."""
    return socket.gethostname().split(".")[0] or "localhost"


@dataclass(frozen=True)
class MqttAuth:
    """Credentials and TLS for a broker that does not allow anonymous clients.

    The password comes from a file (never the command line, where ``ps`` shows it). With
    a CA file the connection uses TLS and checks the broker's certificate; a client
    certificate and key may be given too (per-node identities for the ACLs).
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        username: str | None = None,
        password_file: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        default_username: str | None = None,
    ) -> MqttAuth:
        """Arguments win over TRAINWARDEN_MQTT_USERNAME / _PASSWORD_FILE / _CA / _CERT / _KEY.
        ``default_username`` is the user name when a password file comes without one (a
        node agent: its node name, the identity the broker's ACL binds its topics to)."""
        e = os.environ if env is None else env
        username = username or e.get("TRAINWARDEN_MQTT_USERNAME") or None
        password_file = password_file or e.get("TRAINWARDEN_MQTT_PASSWORD_FILE") or None
        if username is None and password_file:
            username = default_username
        password = None
        if password_file:
            try:
                password = Path(password_file).read_text().strip()
            except OSError as exc:
                raise HealthError(
                    f"cannot read the MQTT password file {password_file}: {exc.strerror or exc}"
                ) from None
            if username is None:
                raise HealthError("an MQTT password file was given without a username")
        auth = cls(
            username,
            password,
            tls_ca or e.get("TRAINWARDEN_MQTT_CA") or None,
            tls_cert or e.get("TRAINWARDEN_MQTT_CERT") or None,
            tls_key or e.get("TRAINWARDEN_MQTT_KEY") or None,
        )
        for what, path in (
            ("CA", auth.tls_ca),
            ("certificate", auth.tls_cert),
            ("key", auth.tls_key),
        ):
            if path and not Path(path).is_file():
                raise HealthError(f"MQTT TLS {what} file {path} does not exist")
        return auth

    def aiomqtt_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiomqtt.Client``."""
        # Deferred: aiomqtt pulls in asyncio, which training ranks (via the reporter) must not load.
        import aiomqtt  # noqa: PLC0415

        kw: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.tls_ca or self.tls_cert:
            kw["tls_params"] = aiomqtt.TLSParameters(
                ca_certs=self.tls_ca, certfile=self.tls_cert, keyfile=self.tls_key
            )
        return kw

    def apply_to_paho(self, client: Any) -> None:
        """Configure a ``paho.mqtt.client.Client`` the same way."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls_ca or self.tls_cert:
            client.tls_set(ca_certs=self.tls_ca, certfile=self.tls_cert, keyfile=self.tls_key)


def add_auth_arguments(parser: Any) -> None:
    """``--mqtt-username``/``--mqtt-password-file``/``--mqtt-ca``/``--mqtt-cert``/``--mqtt-key``,
    each with its variable and its key in the configuration file's shared ``[mqtt]`` table."""
    for key, name, help_text in (
        ("username", "TRAINWARDEN_MQTT_USERNAME", "broker user name"),
        ("password_file", "TRAINWARDEN_MQTT_PASSWORD_FILE", "file holding the broker password"),
        ("ca", "TRAINWARDEN_MQTT_CA", "CA file: connect with TLS"),
        ("cert", "TRAINWARDEN_MQTT_CERT", "client certificate for TLS"),
        ("key", "TRAINWARDEN_MQTT_KEY", "client key for TLS"),
    ):
        flag = "--mqtt-" + key.replace("_", "-")
        action = parser.add_argument(flag, default=None, help=f"{help_text} (default ${name})")
        config.shared(config.env(action, name), key)


def auth_from_args(args: Any, default_username: str | None = None) -> MqttAuth:
    return MqttAuth.from_env(
        default_username=default_username,
        username=args.mqtt_username,
        password_file=args.mqtt_password_file,
        tls_ca=args.mqtt_ca,
        tls_cert=args.mqtt_cert,
        tls_key=args.mqtt_key,
    )
