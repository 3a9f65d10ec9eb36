"""trainwarden's Hugging Face and Lightning callbacks on the real frameworks: a job with the
callback reports every optimizer step and its checkpoints to a relay socket bound here (the
node agent's side, read datagram by datagram), and a ``checkpoint-now`` request left in the
agent's control file makes the framework save at once; that save is reported, and it is a
complete checkpoint of its layout at the step it names."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from framework_jobs import START_S, job_env, needs_hf, needs_pl

from trainwarden.health.control import control_dir, write_request
from trainwarden.health.report import (
    MAX_RELAY_DATAGRAM_BYTES,
    CheckpointReport,
    ControlMessage,
    StepReport,
    parse_relayed,
)
from trainwarden.supervisor.checkpoints import scan

pytestmark = pytest.mark.integration
torch = pytest.importorskip("torch")

NODE, RUN = "n1", "cb1"
STEPS = 30
# the example job with the callback added, as a user adds it: one line, in the job's script
WITH_CALLBACK = """\
import sys
from trainwarden.examples.frameworks.{job} import main
from trainwarden.health.integrations.{integration} import trainwarden_callback
sys.exit(main(sys.argv[1:], [trainwarden_callback()]))
"""


class Relay:
    """The node agent's relay socket: every datagram a rank sends, parsed as the agent does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.msgs: list[StepReport | CheckpointReport] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._halt.is_set():
            try:
                data = self.sock.recv(MAX_RELAY_DATAGRAM_BYTES + 1)
            except TimeoutError:
                continue
            self.msgs.append(parse_relayed(data, NODE))

    def steps(self) -> list[int]:
        return [s.step for m in self.msgs if isinstance(m, StepReport) for s in m.samples]

    def checkpoints(self) -> list[tuple[int, str]]:
        return [(m.step, m.path) for m in self.msgs if isinstance(m, CheckpointReport)]

    def wait(self, what: str, pred: Callable[[], bool], job: Any, within: float) -> None:
        deadline = time.monotonic() + within
        while not pred():
            assert job.proc.poll() is None, f"job exited before {what}:\n{job.tail()}"
            assert time.monotonic() < deadline, f"no {what} in {within:.0f} s:\n{job.tail()}"
            time.sleep(0.05)

    def close(self) -> None:
        self._halt.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def relay() -> Iterator[Relay]:
    short = Path(tempfile.mkdtemp(prefix="twf-"))  # a socket path has ~100 bytes at most
    r = Relay(short / "relay.sock")
    yield r
    r.close()
    shutil.rmtree(short, ignore_errors=True)


def run_with_callback(
    tmp_path: Path, relay: Relay, start_job: Any, job: str, integration: str, args: list[str]
) -> tuple[int, int]:
    """Start the job with the callback, ask for a checkpoint once it reports steps; (the
    last step reported before the request, the step the requested save reported)."""
    env = job_env(
        tmp_path,
        TRAINWARDEN_RELAY=str(relay.path),
        TRAINWARDEN_RUN=RUN,
        TRAINWARDEN_ATTEMPT="1",
        TRAINWARDEN_NODE=NODE,
        RANK="0",
        STEP_SLEEP="0.15",  # the request is taken well before the last step
    )
    code = WITH_CALLBACK.format(job=job, integration=integration)
    proc = start_job("-c", [code, *args], tmp_path / f"{job}.log", env)
    relay.wait("first step report", lambda: bool(relay.steps()), proc, START_S)
    before = max(relay.steps())
    write_request(
        control_dir(relay.path),
        ControlMessage(run=RUN, command="checkpoint-now", request_id="req-1", ts=time.time()),
    )
    relay.wait("checkpoint report", lambda: bool(relay.checkpoints()), proc, 30)
    assert proc.finish() == 0, proc.tail()
    deadline = time.monotonic() + 5  # the last datagrams, sent as the reporter closed
    while max(relay.steps()) < STEPS and time.monotonic() < deadline:
        time.sleep(0.05)
    saved = relay.checkpoints()[0][0]
    return before, saved


@needs_hf
def test_the_hf_callback_reports_steps_and_saves_on_request(
    tmp_path: Path, relay: Relay, start_job: Any
) -> None:
    out = tmp_path / "out"
    # no save of its own before the end: the one in the middle is the requested one
    args = ["--output-dir", str(out), "--steps", str(STEPS), "--save-steps", "1000"]
    before, saved = run_with_callback(tmp_path, relay, start_job, "hf_trainer", "hf", args)
    assert relay.steps() == list(range(1, STEPS + 1))  # every optimizer step, once
    assert {(m.attempt, m.rank, m.node, m.run) for m in relay.msgs} == {(1, 0, NODE, RUN)}
    assert before < saved < STEPS
    reported = relay.checkpoints()
    assert reported[0] == (saved, str(out / f"checkpoint-{saved}"))
    # and the Trainer's own save at the end (save_strategy="steps" saves the final step)
    assert reported[1:] == [(STEPS, str(out / f"checkpoint-{STEPS}"))]
    found = scan(out, "hf", exhaustive=True)
    assert [(j.info.step, j.validation.valid) for j in found.checkpoints] == [
        (STEPS, True),
        (saved, True),
    ]


@needs_pl
def test_the_lightning_callback_reports_steps_and_saves_on_request(
    tmp_path: Path, relay: Relay, start_job: Any
) -> None:
    ck = tmp_path / "ck"
    every = 25  # one ModelCheckpoint save, after the requested one
    args = ["--ckpt-dir", str(ck), "--steps", str(STEPS), "--save-steps", str(every)]
    before, saved = run_with_callback(
        tmp_path, relay, start_job, "lightning_job", "lightning", args
    )
    assert relay.steps() == list(range(1, STEPS + 1))
    assert {(m.attempt, m.rank, m.node, m.run) for m in relay.msgs} == {(1, 0, NODE, RUN)}
    assert before < saved < every
    requested = ck / f"trainwarden-step={saved}.ckpt"
    assert relay.checkpoints() == [
        (saved, str(requested)),
        (every, str(ck / f"epoch=0-step={every}.ckpt")),  # ModelCheckpoint's, reported too
    ]
    loaded = torch.load(requested, map_location="cpu", weights_only=False)
    assert loaded["global_step"] == saved
    found = scan(ck, "lightning", exhaustive=True)
    assert [(j.info.step, j.validation.valid) for j in found.checkpoints] == [
        (every, True),
        (saved, True),
    ]
