"""Two daemons on one store: one leads, the other stands by until the lease is free."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from trainwarden.supervisor.api.client import ApiError, OperatorClient
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.process import Daemon, DaemonConfig
from trainwarden.supervisor.daemon.sdnotify import Notifier
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

# The lease really runs out: over a second of waiting on the wall clock.
pytestmark = pytest.mark.integration


async def test_a_second_daemon_stands_by_until_the_first_lets_go(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    store = AsyncStore(open_store(url))
    sock_dir = tempfile.mkdtemp(prefix="tw-", dir="/tmp")
    cfg = DaemonConfig(
        db_url=url, lease_ttl_s=0.6, api_socket=f"{sock_dir}/api.sock", metrics_port=0
    )
    first, second = Daemon(cfg), Daemon(cfg)
    stop = asyncio.Event()
    # a real sd_notify socket: what systemd would receive from the standby
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(str(tmp_path / "notify"))
    sd.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    metrics = Metrics()
    try:
        assert await first._lead(store, stop, Metrics(), Notifier({}))
        waiting = asyncio.create_task(second._lead(store, stop, metrics, notifier))
        await asyncio.sleep(0.3)
        assert not waiting.done() and not second.leader  # standing by
        # ... visibly: READY=1 with STATUS=standby, the watchdog fed, metrics and health
        sent = []
        while True:
            try:
                sent.append(sd.recv(4096).decode())
            except BlockingIOError:
                break
        assert any("READY=1" in m and "STATUS=standby" in m for m in sent)
        assert any("WATCHDOG=1" in m for m in sent)
        url_, api = second.metrics_url, second.api_url
        assert url_ is not None and api == f"unix:{sock_dir}/api.sock"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url_ + "/metrics").read())
        assert b"trainwarden_leader 0.0" in body
        health = await asyncio.to_thread(lambda: urllib.request.urlopen(url_ + "/healthz").read())
        status = json.loads(health)
        assert status["standby"] is True and status["leader_holder"] == first.holder
        with pytest.raises(urllib.error.HTTPError) as missing:  # no API on the metrics port
            await asyncio.to_thread(lambda: urllib.request.urlopen(url_ + "/api/v1/nodes"))
        assert missing.value.code == 404
        with pytest.raises(ApiError) as refused:  # the socket: a standby names the leader
            await asyncio.to_thread(OperatorClient(api).nodes)
        assert refused.value.status == 503 and first.holder in str(refused.value)
        await first._renew(store, stop)  # the leader keeps its lease by renewing it
        assert first.leader and not stop.is_set()
        await asyncio.sleep(1.0)  # the leader stopped renewing: its lease runs out
        assert await asyncio.wait_for(waiting, 5) is True and second.leader
        await first._renew(store, stop)  # the old leader finds it lost the lease and stops
        assert not first.leader and stop.is_set()
    finally:
        await second._stop_standby()
        sd.close()
        store.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
