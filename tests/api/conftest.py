"""Fixtures: a real aiohttp server on a Unix socket over the in-memory service; the caller
is this test process (root, or the daemon's own user: an admin either way)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from memory_service import MemoryService, seeded
from prometheus_client import CollectorRegistry
from unix_http import on_socket, session, short_dir

from trainwarden.supervisor.api.server import ApiServer, create_app
from trainwarden.supervisor.daemon.metrics import Metrics


@pytest.fixture
def service() -> MemoryService:
    return seeded()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_dir() as path:
        yield path


@pytest.fixture
async def server(
    service: MemoryService, metrics: Metrics, sock_dir: Path
) -> AsyncIterator[ApiServer]:
    api = on_socket(create_app(service, metrics), sock_dir / "api.sock")
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def http(server: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with session(server) as http:
        yield http
