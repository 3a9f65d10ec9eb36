"""Daemon ingest cost: how many agent messages per second the supervisor's message path
takes, and what a flush of the batched store writes costs, at Alps-like scale.

Feeds real wire-format messages (heartbeats, health reports, step reports) for N nodes
straight into ``Supervisor.handle`` -- parse, validate, update state, detect -- with a real
SQLite or PostgreSQL store behind it, and flushes the batch the way the daemon does every
0.5 s. Prints one JSON object.

    python bench/ingest.py --json [--nodes 5000] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from trainwarden.health.clock import SystemClock
from trainwarden.health.probes.base import Health
from trainwarden.health.report import (
    HealthReport,
    Heartbeat,
    ProbeReport,
    StepReport,
    StepSample,
    encode,
    node_topic,
    steps_topic,
)
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.supervisor import CoreConfig, Supervisor
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store


def health_report(node: str, seq: int) -> bytes:
    probes = [
        ProbeReport(
            probe=name,
            health=Health.HEALTHY,
            reason="ok",
            values={f"v{i}": float(i) for i in range(12)},
        )
        for name in ("gpu", "network", "storage:/capstor", "host")
    ]
    return encode(
        HealthReport(node=node, ts=time.time(), seq=seq, overall=Health.HEALTHY, probes=probes)
    )


async def measure(nodes: int, rounds: int, url: str) -> dict[str, object]:
    store = AsyncStore(open_store(url))
    names = [f"nid{i:06d}" for i in range(nodes)]
    with tempfile.TemporaryDirectory() as logs:
        sup = Supervisor(
            CoreConfig(),
            SystemClock(),
            store,
            LocalScheduler(names, logs),
            PolicyEngine(load_policy()),
            Metrics(),
        )

        def beat_round(k: int) -> list[tuple[str, bytes]]:
            # each round's heartbeats carry the next sequence number, as an agent's do (a
            # repeated one is a replay, rejected)
            return [
                (
                    node_topic(n, "heartbeat"),
                    encode(Heartbeat(node=n, ts=time.time(), seq=k + 2, interval_s=5.0)),
                )
                for n in names
            ]

        beats = [
            (
                node_topic(n, "heartbeat"),
                encode(Heartbeat(node=n, ts=time.time(), seq=1, interval_s=5.0)),
            )
            for n in names
        ]
        reports = [(node_topic(n, "health"), health_report(n, 1)) for n in names]
        ranks = min(nodes * 4, 16_384)
        # a registered run, so step reports go through the hang and straggler detectors
        await upkeep.sync_scheduler(sup)  # the roster of nodes, as the daemon reads it at start
        run = RunInfo(
            "llm",
            "local",
            RunSpec(command=("true",), nodes=nodes, checkpoint_dir=logs, ranks_per_node=4),
            time.time(),
            attempt=1,
        )
        sup.state.runs["llm"] = run
        sup.state.place(run, names)  # the attempt's allocation: its ranks' reports count
        sup.progress.start_attempt("llm", 1, time.time())

        def step_round(k: int) -> list[tuple[str, bytes]]:
            return [
                (
                    steps_topic("llm", r),
                    encode(
                        StepReport(
                            run="llm",
                            attempt=1,
                            rank=r,
                            node=names[r // 4 % nodes],
                            group=None,
                            samples=[
                                StepSample(
                                    step=3 * k + s,
                                    step_s=5.0,
                                    compute_s=4.0 + 0.01 * (r % 7),
                                    ts=time.time(),
                                )
                                for s in range(1, 4)
                            ],
                        )
                    ),
                )
                for r in range(ranks)
            ]

        for topic, payload in beats:  # first sight of every node (events: node online)
            await sup.handle(topic, payload)
        await store.flush()
        out: dict[str, object] = {"nodes": nodes, "db": url.split(":", 1)[0]}
        for label, make in (
            ("heartbeat", beat_round),
            ("health_report", lambda k: reports),
            ("step_report", step_round),
        ):
            per_round = []
            flushes = []
            for k in range(rounds):
                msgs = make(k)
                t0 = time.perf_counter()
                for topic, payload in msgs:
                    await sup.handle(topic, payload)
                per_round.append(len(msgs) / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                await store.flush()
                flushes.append(time.perf_counter() - t0)
            out[f"{label}_msgs_per_s"] = round(statistics.median(per_round))
            out[f"{label}_us_per_msg"] = round(1e6 / statistics.median(per_round), 1)
            out[f"{label}_flush_ms"] = round(1000 * statistics.median(flushes), 1)
            out[f"{label}_messages_per_round"] = len(msgs)
        t0 = time.perf_counter()
        findings = sup.stragglers.evaluate(time.time())
        out["straggler_evaluate_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        out["straggler_findings"] = len(findings)
        out["rejected"] = sup.rejected
        out["note"] = (
            "one core, one event loop; a node sends a heartbeat every 2-5 s and a "
            "health report every 10 s, a rank one step report every ~2 s"
        )
    store.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--db", default=None, help="database URL (default: a temporary SQLite)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'tw.db'}"
        upgrade(url)
        result = asyncio.run(measure(args.nodes, args.rounds, url))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
