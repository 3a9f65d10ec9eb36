"""Small MQTT helpers shared by the agent and the training reporter."""

from __future__ import annotations

import socket

from health.errors import HealthError

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
        host, rest = text[1:end], text[end + 1:]
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
