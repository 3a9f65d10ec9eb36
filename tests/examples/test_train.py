"""The example job as real 2-rank torchrun runs: completion, kill + resume, reporting.

Kept to three short launches (torch start-up dominates on a small machine).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from trainwarden.health.report import (
    CheckpointReport,
    ControlMessage,
    StepReport,
    control_topic,
    encode,
    parse_message,
)
from trainwarden.supervisor.daemon.checkpoints import discover, latest_valid, validate

pytest.importorskip("torch")
pytestmark = pytest.mark.integration

TRAIN = Path(__file__).resolve().parents[2] / "examples" / "train.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
STEPS, EVERY = 8, 3
LINE = re.compile(r"^attempt=(\d+) (?:(\w+) )?step=(\d+)(?: loss=(\S+))?(?: params=(\w+))?")


def _env(run: str, attempt: int, resume: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINWARDEN_")}
    env.update(
        TRAINWARDEN_BROKER="127.0.0.1:1883",
        TRAINWARDEN_RUN=run,
        TRAINWARDEN_ATTEMPT=str(attempt),
        TRAINWARDEN_NODE="exnode",
        PYTHONUNBUFFERED="1",
    )
    if resume:
        env["TRAINWARDEN_RESUME_FROM"] = resume
    return env


def _cmd(ckpt: Path, *extra: str) -> list[str]:
    return [
        *TORCHRUN,
        str(TRAIN),
        "--steps",
        str(STEPS),
        "--ckpt-every",
        str(EVERY),
        "--ckpt-dir",
        str(ckpt),
        *extra,
    ]


def _events(ckpt: Path, rank: int) -> list[tuple[int, str, int, str | None, str | None]]:
    path = ckpt / f"progress-rank{rank}.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if m:
            out.append((int(m[1]), m[2] or "step", int(m[3]), m[4], m[5]))
    return out


def _steps(ckpt: Path, rank: int, attempt: int) -> list[int]:
    return [s for a, kind, s, _, _ in _events(ckpt, rank) if a == attempt and kind == "step"]


def _done(ckpt: Path, rank: int) -> tuple[str | None, str | None]:
    done = [(loss, params) for _, kind, _, loss, params in _events(ckpt, rank) if kind == "done"]
    assert done, f"rank {rank} never finished"
    return done[-1]


class Bus:
    def __init__(self, run: str) -> None:
        self.q: queue.Queue[Any] = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex}")
        self.c.on_message = lambda _c, _u, m: self.q.put(parse_message(m.topic, m.payload))
        self.c.connect("127.0.0.1", 1883)
        self.c.subscribe(f"trainwarden/v1/run/{run}/#", qos=1)
        self.c.loop_start()

    def drain(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self.q.get(timeout=0.5))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Any]]]:
    """One uninterrupted run, with its bus traffic."""
    ckpt = tmp_path_factory.mktemp("reference")
    run = f"ex-{uuid.uuid4().hex[:8]}"
    bus = Bus(run)
    time.sleep(0.2)
    out = subprocess.run(
        _cmd(ckpt), env=_env(run, 0), capture_output=True, text=True, timeout=180, check=False
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    yield ckpt, bus.drain()
    bus.close()


def test_runs_to_completion_and_reports(reference: tuple[Path, list[Any]]) -> None:
    ckpt, msgs = reference
    for rank in (0, 1):
        assert _steps(ckpt, rank, 0) == list(range(1, STEPS + 1))
    assert _done(ckpt, 0) == _done(ckpt, 1), "ranks must agree on loss and parameters"
    assert [c.step for c in discover(ckpt)] == [8, 6, 3]
    assert all(validate(c.path).valid for c in discover(ckpt))
    info = latest_valid(ckpt)
    assert info is not None and info.step == STEPS
    steps = {(m.rank, s.step) for m in msgs if isinstance(m, StepReport) for s in m.samples}
    assert steps == {(r, s) for r in (0, 1) for s in range(1, STEPS + 1)}
    assert all(
        s.compute_s is not None and s.compute_s <= s.step_s + 1e-3
        for m in msgs
        if isinstance(m, StepReport)
        for s in m.samples
    )
    ckpts = [m for m in msgs if isinstance(m, CheckpointReport)]
    assert sorted(c.step for c in ckpts) == [3, 6, 8] and {c.rank for c in ckpts} == {0}
    assert ckpts[0].node == "exnode"


def _wait(pred: Any, what: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_checkpoint_now_kill_and_resume_matches(
    reference: tuple[Path, list[Any]], tmp_path: Path
) -> None:
    ref_ckpt, _ = reference
    ckpt = tmp_path / "ckpt"
    run = f"ex-{uuid.uuid4().hex[:8]}"
    bus = Bus(run)
    proc = subprocess.Popen(
        _cmd(ckpt, "--step-time", "0.4"),
        env=_env(run, 0),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait(lambda: 1 in _steps(ckpt, 0, 0), "step 1", proc)
        request = ControlMessage(run=run, command="checkpoint-now", request_id="t1", ts=1.0)
        bus.c.publish(control_topic(run), encode(request), qos=1)

        def asked_ckpt() -> bool:
            return any(kind == "ckpt" and s % EVERY for _, kind, s, _, _ in _events(ckpt, 0))

        _wait(asked_ckpt, "the requested checkpoint", proc)
        _wait(lambda: max(_steps(ckpt, 0, 0)) >= EVERY + 1, f"step {EVERY + 1}", proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the node dies: no cleanup at all
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    killed_at = max(_steps(ckpt, 0, 0))
    assert killed_at < STEPS
    requested = [c.step for c in discover(ckpt) if c.step % EVERY]
    assert requested, "checkpoint-now produced no checkpoint"
    msgs = bus.drain()
    assert requested[0] in {m.step for m in msgs if isinstance(m, CheckpointReport)}

    start = latest_valid(ckpt)
    assert start is not None and start.step <= killed_at
    out = subprocess.run(
        _cmd(ckpt),
        env=_env(run, 1, start.path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    bus.close()
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    for rank in (0, 1):
        first = _steps(ckpt, rank, 0)
        assert first == list(range(1, len(first) + 1)), "attempt 0 skipped no step"
        assert _steps(ckpt, rank, 1) == list(range(start.step + 1, STEPS + 1)), (
            "attempt 1 starts right after its checkpoint and skips nothing"
        )
    assert _done(ckpt, 0) == _done(ref_ckpt, 0), "resumed run ends exactly like the reference"
    print(
        f"\nkilled after step {killed_at}, resumed from step {start.step}; "
        f"final loss/params {_done(ckpt, 0)}"
    )
