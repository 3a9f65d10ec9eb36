"""``trainwarden demo``: the whole product on an embedded default, in about a minute.

An MQTT broker embedded in this process, SQLite in a temporary folder, four simulated nodes
each with its agent, the example PyTorch job (torchrun on gloo, DCP checkpoints) running on
them through the ``local`` back-end. At a chosen step a fatal XID is injected into one
node's simulated GPU -- and, as a real "GPU fell off the bus" does, the rank on that node
dies. The daemon must detect it, drain the node, and restart the run from its last valid
checkpoint on the remaining nodes, which then reaches its final step.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from trainwarden.health.agent import Agent, AgentConfig
from trainwarden.health.probes.registry import ProbeConfig
from trainwarden.health.sim.hardware import SimulatedHardware
from trainwarden.policies.model import ConditionType, Event, EventKind
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import operations as ops
from trainwarden.supervisor.daemon.broker import EmbeddedBroker
from trainwarden.supervisor.daemon.process import Daemon, DaemonConfig
from trainwarden.supervisor.daemon.supervisor import CoreConfig, Supervisor
from trainwarden.supervisor.errors import ConfigError
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.model.lifecycle import RunPhase
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade

EXAMPLE = Path(str(resources.files("trainwarden.examples") / "train.py"))


SCENARIOS = ("gpu-fault", "straggler", "hang")


@dataclass
class DemoConfig:
    scenario: str = "gpu-fault"  # gpu-fault | straggler | hang
    slowdown: float = 2.0  # straggler scenario: how much slower the victim's rank runs
    nodes: int = 4
    steps: int = 60
    ckpt_every: int = 10
    fault_at_step: int = 35
    fault: str = "xid:79"
    step_time_s: float = 0.25
    timeout_s: float = 170.0
    keep: bool = False
    workdir: str | None = None


@dataclass
class DemoResult:
    scenario: str = "gpu-fault"
    fault: dict[str, Any] = field(default_factory=dict)
    detected_after_s: float | None = None
    drained: list[str] = field(default_factory=list)
    restarts: int = 0
    resumed_from_step: int | None = None
    last_checkpoint_before_fault: int | None = None
    final_step: int | None = None
    target_step: int = 0
    steps_lost: int | None = None
    checkpoint_interval: int = 0
    wall_s: float = 0.0
    recovered: bool = False
    # where the run's wall time went (supervisor.goodput): ETTR = productive / wall time
    ettr: float | None = None
    goodput: dict[str, Any] = field(default_factory=dict)
    workdir: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Timeline:
    """Prints the story as it happens: one line per event that matters to a person."""

    SHOWN = {
        EventKind.FAULT,
        EventKind.NODE_OFFLINE,
        EventKind.CONDITION_CHANGED,
        EventKind.ACTION,
        EventKind.RUN_STARTED,
        EventKind.CHECKPOINT_SAVED,
        EventKind.ATTEMPT_ENDED,
        EventKind.RUN_PROGRESS_STALLED,
    }

    def __init__(self, out: TextIO, t0: float) -> None:
        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self.t0 = t0
        self.seen = 0

    def say(self, text: str, style: str = "") -> None:
        self.console.print(
            f"[dim]t+{time.time() - self.t0:6.1f}s[/dim]  "
            + (f"[{style}]{text}[/{style}]" if style else text)
        )

    def show(self, history: list[Event]) -> None:
        for ev in history:
            if ev.id is None or ev.id <= self.seen:
                continue
            self.seen = ev.id
            if ev.kind not in self.SHOWN:
                continue
            style = {
                EventKind.FAULT: "bold red",
                EventKind.ACTION: "bold yellow",
                EventKind.RUN_STARTED: "green",
                EventKind.CONDITION_CHANGED: "red",
            }.get(ev.kind, "")
            who = ev.node or ev.run or ""
            self.console.print(
                f"[dim]t+{ev.ts - self.t0:6.1f}s[/dim]  {ev.kind.value:<17} "
                f"{who:<6} " + (f"[{style}]{ev.message}[/{style}]" if style else ev.message)
            )


async def run_demo(cfg: DemoConfig, out: TextIO) -> DemoResult:
    if not EXAMPLE.is_file():
        raise ConfigError(
            f"the example training job is missing: {EXAMPLE} (run the demo from "
            "a checkout of trainwarden)"
        )
    started = time.time()
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="trainwarden-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    if cfg.scenario not in SCENARIOS:
        raise ConfigError(f"unknown demo scenario {cfg.scenario!r}: use one of {SCENARIOS}")
    result = DemoResult(
        scenario=cfg.scenario,
        target_step=cfg.steps,
        checkpoint_interval=cfg.ckpt_every,
        workdir=str(work),
    )
    policy = _scenario_policy(cfg)
    tl = Timeline(out, started)
    names = [f"n{i}" for i in range(1, cfg.nodes + 1)]
    db_url = f"sqlite:///{work / 'trainwarden.db'}"
    await asyncio.to_thread(upgrade, db_url)
    tl.say(f"work dir {work}; store {db_url}")
    async with EmbeddedBroker(port=0) as broker:
        tl.say(f"embedded MQTT broker on 127.0.0.1:{broker.port}")
        sched = LocalScheduler(names, work / "logs")
        dcfg = _daemon_config(db_url, broker.port, names, policy, _api_socket(work))
        daemon = Daemon(dcfg, scheduler=sched)
        stop = asyncio.Event()
        dtask = asyncio.create_task(daemon.run(stop))
        hw = {n: SimulatedHardware(n, gpus=4, state_dir=work / "hw" / n) for n in names}
        agent_stop = asyncio.Event()
        agents = _start_agents(hw, broker.port, work, agent_stop)
        try:
            sup = await _wait_until_reporting(daemon, names, tl)
            spec = _run_spec(cfg, work / "checkpoints", broker.port)
            run = await ops.add_run(sup, "demo", "local", spec, "demo")
            injected_at = await _follow(cfg, run, sup, sched, hw, tl, result)
            await _record_outcome(cfg, result, run, sup, sched, injected_at)
        finally:
            agent_stop.set()
            await asyncio.gather(*agents, return_exceptions=True)
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(dtask, 30)
            for job in list(sched._jobs):
                await sched.cancel(job)
    result.wall_s = round(time.time() - started, 1)
    if not cfg.keep and cfg.workdir is None and result.recovered:
        shutil.rmtree(work, ignore_errors=True)
    tl.say(
        ("RECOVERED" if result.recovered else "NOT RECOVERED")
        + f": final step {result.final_step}/{cfg.steps}, resumed from step "
        f"{result.resumed_from_step}, drained {result.drained}, "
        f"{result.wall_s:.0f} s" + (f", ETTR {result.ettr:.2f}" if result.ettr is not None else ""),
        "bold green" if result.recovered else "bold red",
    )
    return result


def _scenario_policy(cfg: DemoConfig) -> str | None:
    """The policy file the scenario needs; None for the shipped default."""
    if cfg.scenario == "straggler":  # a policy that evicts stragglers (checkpoint first)
        return str(resources.files("trainwarden.policies").joinpath("data/evict-stragglers.yaml"))
    return None


def _api_socket(work: Path) -> str:
    """The demo daemon's API socket: in the work dir, or in a short temporary dir when the
    work dir's path is too long for a Unix socket."""
    path = work / "api.sock"
    if len(str(path)) <= 100:
        return str(path)
    return str(Path(tempfile.mkdtemp(prefix="tw-demo-")) / "api.sock")


def _daemon_config(
    db_url: str, broker_port: int, names: list[str], policy: str | None, api_socket: str
) -> DaemonConfig:
    return DaemonConfig(
        db_url=db_url,
        broker_port=broker_port,
        api_socket=api_socket,
        metrics_port=0,
        scheduler="local",
        local_nodes=tuple(names),
        client_id="trainwarden-demo-daemon",
        policy_file=policy,
        core=CoreConfig(
            will_confirm_s=1.5, hang_floor_s=10.0, startup_timeout_s=120.0, settle_s=2.0
        ),
    )


def _start_agents(
    hw: dict[str, SimulatedHardware], broker_port: int, work: Path, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """One agent task per simulated node, until ``stop`` is set."""
    return [
        asyncio.create_task(
            Agent(
                AgentConfig(
                    node=n,
                    broker_port=broker_port,
                    report_interval_s=5.0,
                    heartbeat_interval_s=1.0,
                    probes=ProbeConfig(expected_gpus=4, storage_paths=(str(work),), timeout_s=3.0),
                ),
                hw[n],
            ).run(stop)
        )
        for n in hw
    ]


async def _wait_until_reporting(daemon: Daemon, names: list[str], tl: Timeline) -> Supervisor:
    """The daemon's supervisor, once it is up and every agent has sent a heartbeat."""
    await _wait(
        lambda: daemon.ready.is_set() and daemon.sup is not None,
        30,
        "the daemon did not start",
    )
    sup = daemon.sup
    assert sup is not None
    tl.say(f"daemon up; operator API {daemon.api_url}, metrics {daemon.metrics_url}")
    await _wait(
        lambda: all(n in sup.state.nodes and sup.state.nodes[n].last_heartbeat_at for n in names),
        20,
        "agents did not report",
    )
    tl.say(f"{len(names)} simulated nodes reporting: {', '.join(names)}")
    return sup


def _run_spec(cfg: DemoConfig, ckpt: Path, broker_port: int) -> RunSpec:
    """The example job under torchrun, one process per node, checkpointing into ``ckpt``."""
    return RunSpec(
        command=(
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes={nnodes}",
            "--node-rank={node_rank}",
            "--nproc-per-node=1",
            "--master-addr={master_addr}",
            "--master-port={master_port}",
            str(EXAMPLE),
            "--steps",
            str(cfg.steps),
            "--ckpt-every",
            str(cfg.ckpt_every),
            "--ckpt-dir",
            str(ckpt),
            "--step-time",
            str(cfg.step_time_s),
        ),
        nodes=cfg.nodes,
        min_nodes=2,
        checkpoint_dir=str(ckpt),
        env={"TRAINWARDEN_BROKER": f"127.0.0.1:{broker_port}", "OMP_NUM_THREADS": "1"},
        target_step=cfg.steps,
    )


async def _follow(
    cfg: DemoConfig,
    run: RunInfo,
    sup: Supervisor,
    sched: LocalScheduler,
    hw: dict[str, SimulatedHardware],
    tl: Timeline,
    result: DemoResult,
) -> float | None:
    """Show the timeline until the run ends (or the demo times out), injecting the scenario's
    fault once the first attempt passes ``fault_at_step``; returns when it was injected."""
    injected_at: float | None = None
    deadline = time.time() + cfg.timeout_s
    while time.time() < deadline:
        tl.show(list(sup.history))
        if run.phase in (RunPhase.COMPLETED, RunPhase.GAVE_UP):
            break
        if (
            injected_at is None
            and run.attempt == 1
            and run.last_step is not None
            and run.last_step >= cfg.fault_at_step
            and run.nodes
        ):
            injected_at = _inject(cfg, run, sched, hw, tl, result)
        await asyncio.sleep(0.2)
    tl.show(list(sup.history))
    return injected_at


def _inject(
    cfg: DemoConfig,
    run: RunInfo,
    sched: LocalScheduler,
    hw: dict[str, SimulatedHardware],
    tl: Timeline,
    result: DemoResult,
) -> float:
    """Inject the scenario's fault on the run's last node; returns the time it was injected."""
    victim = run.nodes[-1]
    kind = {
        "gpu-fault": cfg.fault,
        "straggler": f"slowdown x{cfg.slowdown:g}",
        "hang": "rank frozen",
    }[cfg.scenario]
    result.fault = {"node": victim, "kind": kind, "at_step": run.last_step}
    result.last_checkpoint_before_fault = run.last_checkpoint_step
    injected_at = time.time()
    if cfg.scenario == "gpu-fault":
        hw[victim].inject(cfg.fault)
        sched.crash_processes(victim)  # the rank on that GPU dies with it
    elif cfg.scenario == "straggler":
        sched.throttle(victim, cfg.slowdown)  # e.g. a thermally throttled GPU
    else:
        sched.throttle(victim, float("inf"))  # the rank hangs (SIGSTOP)
    tl.say(
        f"INJECT {kind} on {victim} at step {run.last_step} "
        f"(last checkpoint: step {run.last_checkpoint_step})",
        "bold magenta",
    )
    return injected_at


async def _record_outcome(
    cfg: DemoConfig,
    result: DemoResult,
    run: RunInfo,
    sup: Supervisor,
    sched: LocalScheduler,
    injected_at: float | None,
) -> None:
    """Fill ``result`` from the run, the scheduler and the daemon's history."""
    result.restarts = run.restarts
    result.resumed_from_step = run.resumed_from_step
    result.final_step = run.last_step
    result.drained = sorted(
        n.name for n in await sched.nodes() if n.state.value in ("drained", "draining")
    )
    if injected_at is not None:
        _measure_detection(cfg, result, run, sup, injected_at)
    await sup.store.flush()  # the accounting reads the recorded history
    at_step = result.fault.get("at_step")
    if isinstance(at_step, int):
        # the newest checkpoint of a step the run had reached when the fault struck: one the
        # ranks wrote just before it may still have been being checked on disk at that moment
        written = [
            c.step
            for c in sup.store.store.checkpoints(run.name)
            if c.attempt == 1 and c.valid is not False and c.step <= at_step
        ]
        if written:
            result.last_checkpoint_before_fault = max(written)
    result.recovered = _recovered(cfg, result, run, sup)
    row = await DaemonService(sup).goodput(run.name)
    result.ettr = round(row.ettr, 4)
    result.goodput = {
        "wall_s": round(row.wall_s, 3),
        "buckets": {k: round(v, 3) for k, v in row.buckets.items()},
        "restart_overhead_s": round(row.restart_overhead_s, 3),
        "interruptions": row.interruptions,
    }


def _measure_detection(
    cfg: DemoConfig, result: DemoResult, run: RunInfo, sup: Supervisor, injected_at: float
) -> None:
    """How long after the injection the daemon noticed, and how many steps were lost."""
    victim = result.fault["node"]
    kinds = {
        "gpu-fault": (EventKind.FAULT, EventKind.CONDITION_CHANGED),
        "straggler": (EventKind.STRAGGLER_FLAGGED,),
        "hang": (EventKind.RUN_PROGRESS_STALLED,),
    }[cfg.scenario]
    detected = [
        e.ts
        for e in sup.history
        if e.kind in kinds and e.ts >= injected_at and (e.node == victim or cfg.scenario == "hang")
    ]
    if detected:
        result.detected_after_s = round(min(detected) - injected_at, 3)
    if run.failure_steps and run.failure_steps[0] is not None and run.resumed_from_step is not None:
        result.steps_lost = max(0, run.failure_steps[0] - run.resumed_from_step)


def _recovered(cfg: DemoConfig, result: DemoResult, run: Any, sup: Any) -> bool:
    """What "recovered" means for each scenario."""
    finished = (
        run.phase is RunPhase.COMPLETED
        and result.final_step == cfg.steps
        and bool(result.fault)
        and result.detected_after_s is not None
        and result.restarts >= 1
    )
    victim = result.fault.get("node", "")
    if not finished:
        return False
    if cfg.scenario == "gpu-fault":
        cond = sup.book.get(victim, ConditionType.GPU_FATAL)
        return bool(
            result.drained == [victim]
            and cond is not None
            and cond.status
            and result.resumed_from_step == result.last_checkpoint_before_fault
        )
    if cfg.scenario == "straggler":  # checkpointed before eviction: resumed from a newer one
        return bool(
            result.drained == [victim]
            and result.resumed_from_step is not None
            and result.last_checkpoint_before_fault is not None
            and result.resumed_from_step > result.last_checkpoint_before_fault
        )
    return not result.drained  # a hang restarts the run but drains nobody without evidence


async def _wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not cond():
        if time.time() > deadline:
            raise ConfigError(f"demo: {what} within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)
