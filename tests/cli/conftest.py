"""Fixtures: the operator API on a real Unix socket, served from a background thread.

The CLI is synchronous (urllib), so the server runs its own event loop in a thread.
The in-memory service is the one the API tests use (tests/api/memory_service.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from trainwarden.supervisor.api.server import ApiServer, Endpoint, create_app
from trainwarden.supervisor.daemon.metrics import Metrics


def _load_memory_service() -> Any:
    name = "trainwarden_tests_memory_service"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "api" / "memory_service.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


memory_service = _load_memory_service()
# who the daemon records: the user of this test process, known from the socket
ME = pwd.getpwuid(os.getuid()).pw_name


@dataclass
class Daemon:
    url: str
    service: Any  # MemoryService


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    service = memory_service.seeded()
    loop = asyncio.new_event_loop()
    sock_dir = tempfile.mkdtemp(prefix="tw-", dir="/tmp")
    server = ApiServer(
        create_app(service, Metrics(CollectorRegistry())),
        endpoints=[Endpoint(path=os.path.join(sock_dir, "api.sock"))],
    )
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="api-server", daemon=True)
    thread.start()
    assert started.wait(10), "the API server did not start"
    monkeypatch.setenv("TRAINWARDEN_API", server.url)
    monkeypatch.setenv("USER", "tester")  # ignored: the daemon records the socket's caller
    monkeypatch.delenv("SUDO_USER", raising=False)
    try:
        yield Daemon(server.url, service)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
