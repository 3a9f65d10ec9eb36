"""The store, used from asyncio: every call runs in ONE dedicated thread, in order.

One thread keeps SQLite happy and makes writes ordered; high-volume inputs (heartbeats,
node report times) are coalesced into a :class:`StoreBatch` and written in one transaction
per flush instead of one write per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from trainwarden.supervisor.store.records import StoreBatch

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncStore:
    """Wraps a synchronous store; ``call`` runs a store method in the store thread."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.batch = StoreBatch()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tw-store")
        self.last_flush_s = 0.0
        self.last_batch_size = 0

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    async def flush(self) -> int:
        """Write what was batched; returns how many items were written."""
        if not len(self.batch):
            return 0
        batch, self.batch = self.batch, StoreBatch()
        started = time.perf_counter()
        size = len(batch)
        await self.call(self.store.write_batch, batch)
        self.last_flush_s = time.perf_counter() - started
        self.last_batch_size = size
        return size

    def close(self) -> None:
        self._pool.shutdown(wait=True)
