"""Two daemons on one store: one leads, the other stands by until the lease is free."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.process import Daemon, DaemonConfig
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

# The lease really runs out: over a second of waiting on the wall clock.
pytestmark = pytest.mark.integration


async def test_a_second_daemon_stands_by_until_the_first_lets_go(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    store = AsyncStore(open_store(url))
    cfg = DaemonConfig(db_url=url, lease_ttl_s=0.6)
    first, second = Daemon(cfg), Daemon(cfg)
    stop = asyncio.Event()
    try:
        assert await first._lead(store, stop)
        waiting = asyncio.create_task(second._lead(store, stop))
        await asyncio.sleep(0.3)
        assert not waiting.done() and not second.leader  # standing by
        await first._renew(store, stop)  # the leader keeps its lease by renewing it
        assert first.leader and not stop.is_set()
        await asyncio.sleep(1.0)  # the leader stopped renewing: its lease runs out
        assert await asyncio.wait_for(waiting, 5) is True and second.leader
        await first._renew(store, stop)  # the old leader finds it lost the lease and stops
        assert not first.leader and stop.is_set()
    finally:
        store.close()
