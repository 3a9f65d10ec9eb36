"""Batched store writes per second on SQLite and PostgreSQL; prints ONE JSON object.

    python bench/store_batch.py --json [--batches N] [--pg-url URL | --no-pg]

Two loads, each as the daemon's flusher writes them (``Store.write_batch``, one
transaction per batch): (a) batches of 1,000 events; (b) a realistic half-second flush of
an Alps-size cluster: 20,000 nodes heartbeating every 5 s is 2,000 heartbeats, plus 200
events and 20 condition changes. SQLite runs on a temporary file; PostgreSQL on a
throwaway database created next to --pg-url's and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from trainwarden.policies.model import Condition, ConditionType, Event, EventKind  # noqa: E402
from trainwarden.supervisor.store.migrate import upgrade  # noqa: E402
from trainwarden.supervisor.store.records import StoreBatch  # noqa: E402
from trainwarden.supervisor.store.store import open_store  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def events_batch(i: int, size: int = 1000) -> StoreBatch:
    b = StoreBatch()
    b.add_events(
        [
            Event(
                ts=i + k / size,
                kind=EventKind.FAULT,
                node=f"nid{k % 2688:06d}",
                message="XID 79: GPU has fallen off the bus",
                data={"xid": 79, "gpu": k % 4},
            )
            for k in range(size)
        ]
    )
    return b


def flush_batch(i: int) -> StoreBatch:
    b = events_batch(i, 200)
    for k in range(2000):
        b.heartbeat(f"nid{(i * 2000 + k) % 20000:06d}", float(i))
    b.conditions.extend(
        Condition(
            f"nid{(i * 20 + k) % 20000:06d}",
            ConditionType.NODE_DEGRADED,
            i % 2 == 0,
            "ib link flapping",
            since=float(i),
        )
        for k in range(20)
    )
    return b


def measure(url: str, make: Callable[[int], StoreBatch], batches: int, unit: int) -> dict[str, Any]:
    times: list[float] = []
    cpu: list[float] = []
    with open_store(url) as store:
        store.write_batch(make(-1))  # warm up: connections, statement caches
        for i in range(batches):
            batch = make(i)
            t0, c0 = time.perf_counter(), time.process_time()
            store.write_batch(batch, now=float(i))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    total = sum(times)
    return {
        "batches": batches,
        "items_per_batch": unit,
        "median_batch_ms": round(statistics.median(times) * 1000, 2),
        "max_batch_ms": round(max(times) * 1000, 2),
        # this process's CPU per batch: steadier than wall time on a shared machine
        "median_client_cpu_ms": round(statistics.median(cpu) * 1000, 2),
        "items_per_s": round(unit * batches / total),
    }


def run_all(url: str, batches: int) -> dict[str, Any]:
    upgrade(url)
    return {
        "events_1000": measure(url, events_batch, batches, 1000),
        "flush_2000hb_200ev_20cond": measure(url, flush_batch, batches, 2220),
    }


@contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    name = f"tw_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the JSON result (the default)")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--pg-url", default=PG_ADMIN, help="an existing database to connect through")
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    result: dict[str, Any] = {"benchmark": "store_batch"}
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = run_all(f"sqlite:///{tmp}/bench.db", args.batches)
    if not args.no_pg:
        with pg_database(args.pg_url) as url:
            result["postgresql"] = run_all(url, args.batches)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
