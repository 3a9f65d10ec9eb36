"""The store, used from asyncio: every call runs in ONE dedicated thread, in order, and an
outage of the database is survived.

One thread keeps SQLite happy and makes writes ordered; high-volume inputs (heartbeats,
node report times) are coalesced into a :class:`StoreBatch` and written in one transaction
per flush instead of one write per message.

Two kinds of call. :meth:`AsyncStore.call` is for reads and for writes whose result the
caller needs before it may go on (an event's id, the id of the action it is about to carry
out): it raises :class:`StoreUnavailable` while the database is away, and the caller holds
its work until the database is back. :meth:`AsyncStore.write` is for writes nothing waits
on (an action's result, an attempt's end, conditions): while the database is away they
queue in memory, bounded and counted, and are written in their order when it returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from trainwarden.supervisor.errors import StoreError
from trainwarden.supervisor.store.base import StoreUnavailable
from trainwarden.supervisor.store.records import StoreBatch

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_WAITING_WRITES = 100_000  # ~ hours of action results and attempts; heartbeats coalesce
HEARTBEAT_WRITE_S = 10.0  # how often nodes' last-seen times are written


@dataclass(frozen=True)
class _Write:
    what: str
    fn: Callable[[], Any]


class AsyncStore:
    """Wraps a synchronous store; ``call`` and ``write`` run store methods in its thread."""

    def __init__(
        self,
        store: Any,
        *,
        max_waiting: int = MAX_WAITING_WRITES,
        heartbeat_every_s: float = HEARTBEAT_WRITE_S,
    ) -> None:
        self.store = store
        self.batch = StoreBatch()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tw-store")
        self.last_flush_s = 0.0
        self.last_batch_size = 0
        self.waiting: deque[_Write] = deque()  # writes made while the database was away
        self.max_waiting = max_waiting
        self.down_since: float | None = None  # wall time of the outage's first failure
        self.last_error = ""
        self.dropped = 0  # waiting writes dropped at the bound (an outage of many hours)
        self.rejected = 0  # writes the database refused (never retried: they cannot succeed)
        self.outages = 0
        self.heartbeat_every_s = heartbeat_every_s
        self._beats_at = float("-inf")
        self._draining = False

    @property
    def available(self) -> bool:
        return self.down_since is None

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` after every waiting write (so it sees them); raises StoreUnavailable
        while the database is away, StoreError when it refuses."""
        if self.waiting and not await self.recover():
            raise StoreUnavailable(f"the database is unavailable: {self.last_error}")
        return await self.direct(fn, *args, **kwargs)

    async def direct(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` now, ahead of waiting writes (the leader lease, which must not wait
        behind an outage's backlog)."""
        try:
            result = await self._run(fn, *args, **kwargs)
        except StoreUnavailable as exc:
            self._down(exc)
            raise
        if not self.waiting:
            self._up()
        return result

    async def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Write now, or, while the database is away, queue the write to be made in order
        when it is back. Never raises: a write the database refuses is logged and counted."""
        item = _Write(getattr(fn, "__name__", "write"), partial(fn, *args, **kwargs))
        if self.waiting or not self.available:
            self._queue(item)
            return
        try:
            await self._run(item.fn)
        except StoreUnavailable as exc:
            self._down(exc)
            self._queue(item)
        except StoreError as exc:
            self._refused(item, exc)

    async def recover(self) -> bool:
        """Make the waiting writes, in order, in the store thread; True when none is left
        (the database is back), False when it is still away."""
        if not self.waiting:
            if self.available:
                return True
            try:  # nothing waits: see whether the database answers again
                await self._run(self.store.lease, "trainwarden-daemon")
            except StoreUnavailable as exc:
                self._down(exc)
                return False
            self._up()
            return True
        self._draining = True
        try:
            error = await self._run(self._drain)
        finally:
            self._draining = False
        if error is not None:
            self._down(error)
            return False
        self._up()
        return True

    def _drain(self) -> StoreUnavailable | None:
        """In the store thread: write what waits until done or the database fails again."""
        while self.waiting:
            item = self.waiting[0]
            try:
                item.fn()
            except StoreUnavailable as exc:
                return exc
            except StoreError as exc:
                self._refused(item, exc)
            self.waiting.popleft()
        return None

    def _queue(self, item: _Write) -> None:
        if len(self.waiting) >= self.max_waiting and not self._draining:
            self.waiting.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "the database has been away too long: %d waiting write(s) dropped "
                    "(at most %d are kept)",
                    self.dropped,
                    self.max_waiting,
                )
        self.waiting.append(item)

    def _refused(self, item: _Write, exc: StoreError) -> None:
        self.rejected += 1
        log.error("the database refused a write (%s), not retried: %s", item.what, exc)

    def _down(self, exc: StoreError) -> None:
        self.last_error = str(exc)
        if self.down_since is None:
            self.down_since = time.time()
            self.outages += 1
            log.error("the database is unavailable; holding what must be recorded: %s", exc)

    def _up(self) -> None:
        if self.down_since is not None:
            log.warning(
                "the database is back after %.1f s; what waited is written",
                time.time() - self.down_since,
            )
            self.down_since = None
            self.last_error = ""

    async def flush(self, *, force: bool = False) -> int:
        """Write what was batched; returns how many items were written. Heartbeats (only
        each node's last-seen time, for the next start) go every ``heartbeat_every_s``:
        at 20,000 nodes a row per node per tick would keep the database busy for nothing.
        While the database is away the batch keeps coalescing and is written later."""
        if not len(self.batch) or self.waiting or not self.available:
            return 0
        now = time.monotonic()
        beats = force or now - self._beats_at >= self.heartbeat_every_s
        if not beats and not (self.batch.events or self.batch.conditions or self.batch.nodes):
            return 0
        batch, self.batch = self.batch, StoreBatch()
        if beats:
            self._beats_at = now
        else:
            self.batch.heartbeats, batch.heartbeats = batch.heartbeats, {}
        started = time.perf_counter()
        size = len(batch)
        try:
            await self._run(self.store.write_batch, batch)
        except StoreUnavailable as exc:
            self._down(exc)
            self.batch = _merge(batch, self.batch)
            return 0
        except StoreError as exc:
            self.rejected += 1
            log.error("the database refused a batch of %d item(s): %s", size, exc)
            return 0
        self.last_flush_s = time.perf_counter() - started
        self.last_batch_size = size
        return size

    def status(self) -> dict[str, Any]:
        """For /healthz and the metrics."""
        return {
            "available": self.available,
            "down_since": self.down_since,
            "error": self.last_error or None,
            "writes_waiting": len(self.waiting),
            "writes_dropped": self.dropped,
            "writes_refused": self.rejected,
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _merge(older: StoreBatch, newer: StoreBatch) -> StoreBatch:
    """``older`` then ``newer`` as one batch (heartbeats: the latest of each node wins)."""
    older.events.extend(newer.events)
    older.conditions.extend(newer.conditions)
    older.nodes.extend(newer.nodes)
    for node, ts in newer.heartbeats.items():
        older.heartbeat(node, ts)
    return older
