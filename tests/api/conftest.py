"""Fixtures: a real aiohttp server on 127.0.0.1 (free port) over the in-memory service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from memory_service import MemoryService, seeded
from prometheus_client import CollectorRegistry

from trainwarden.supervisor.api.server import ApiServer, create_app
from trainwarden.supervisor.daemon.metrics import Metrics


@pytest.fixture
def service() -> MemoryService:
    return seeded()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def server(service: MemoryService, metrics: Metrics) -> AsyncIterator[ApiServer]:
    api = ApiServer(create_app(service, metrics), "127.0.0.1", 0)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def http(server: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(base_url=server.url, timeout=timeout) as session:
        yield session
