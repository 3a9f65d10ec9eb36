"""Launching the example framework jobs (examples/frameworks/) as real processes, and reading
what they leave: their log (the frameworks' own progress bars) and their checkpoints."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from trainwarden.supervisor.detectors.logprogress.parsers import make_parser, strip_ansi

REPO = Path(__file__).resolve().parents[2]
HF_JOB = REPO / "examples" / "frameworks" / "hf_trainer.py"
PL_JOB = REPO / "examples" / "frameworks" / "lightning_job.py"
# looked up, not imported: importing them takes seconds and they stay out of the test process
HAVE_HF = all(importlib.util.find_spec(m) is not None for m in ("transformers", "accelerate"))
HAVE_PL = importlib.util.find_spec("lightning") is not None
needs_hf = pytest.mark.skipif(not HAVE_HF, reason="needs transformers and accelerate (dev extra)")
needs_pl = pytest.mark.skipif(not HAVE_PL, reason="needs lightning (dev extra)")
START_S = 120.0  # importing transformers or lightning takes seconds on a busy 2-core machine
_EOL = re.compile(r"\r\n|\r|\n")


def job_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without trainwarden's, Slurm's or the jobs' own knobs; offline (no Hub,
    ever), one thread, and a Hugging Face home of the test's own."""
    drop = ("TRAINWARDEN_", "SLURM_", "HANG_", "STEP_SLEEP", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(home / "hf-home"),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Job:
    """One framework job, its stdout and stderr in one log file."""

    def __init__(self, argv: Sequence[str], log: Path, env: Mapping[str, str]) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=log.parent
            )

    @classmethod
    def python(
        cls, script: Path | str, args: Sequence[str], log: Path, env: Mapping[str, str]
    ) -> Job:
        return cls([sys.executable, str(script), *args], log, env)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_line(self, needle: str, within: float = START_S) -> None:
        deadline = time.monotonic() + within
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} first:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} in {within:.0f} s:\n{self.tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as a node dying or an OOM killer does: nothing is flushed or closed."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def finish(self, within: float = 2 * START_S) -> int:
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {within:.0f} s:\n{self.tail()}") from None

    def tail(self, chars: int = 4000) -> str:
        return self.text()[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def bar_steps(text: str, progress: str) -> list[int]:
    """The steps a log's progress-bar redraws show, in order, read by the daemon's parser."""
    parser = make_parser(progress)
    out = []
    for line in _EOL.split(text):
        got = parser.parse(strip_ansi(line))
        if got is not None:
            out.append(got.step)
    return out


def first_trained_step(text: str, progress: str) -> int:
    """The first step after the bar's initial ``0/N`` draw."""
    return next(s for s in bar_steps(text, progress) if s > 0)
