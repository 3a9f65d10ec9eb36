"""Real framework jobs (transformers, lightning; the dev extra) as processes: none outlives
its test."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from framework_jobs import Job


@pytest.fixture
def start_job() -> Iterator[Callable[[Path | str, Sequence[str], Path, Mapping[str, str]], Job]]:
    started: list[Job] = []

    def start(script: Path | str, args: Sequence[str], log: Path, env: Mapping[str, str]) -> Job:
        job = Job.python(script, args, log, env)
        started.append(job)
        return job

    yield start
    for job in started:
        job.stop()
