"""Fixtures: a private real Slurm cluster for the session, a fresh trainwarden stack (private
Mosquitto, SQLite, daemon, one agent per Slurm node) for each scenario."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HarnessError, SlurmTestCluster, Stack, time_scale


@pytest.fixture(scope="session")
def e2e_cluster() -> Iterator[SlurmTestCluster]:
    cluster = SlurmTestCluster()
    was_up = Path(cluster.state_dir / "run" / "slurmctld.pid").exists()
    try:
        cluster.start()
    except HarnessError as exc:
        if "needs root" in str(exc) and not os.environ.get("CI"):
            pytest.skip(f"Slurm cannot be installed here: {exc}")
        pytest.fail(f"test Slurm cluster did not start: {exc}")
    print(
        f"\nslurm e2e cluster ({len(cluster.nodes)} nodes, {cluster.state_dir}) "
        f"up in {cluster.start_s:.1f} s; start-up waits scaled x{time_scale():.2f}"
    )
    yield cluster
    if not was_up and not os.environ.get("TW_SLURM_KEEP"):
        cluster.stop()


@pytest.fixture
def stack(e2e_cluster: SlurmTestCluster, tmp_path: Path) -> Iterator[Stack]:
    e2e_cluster.clean_slate()
    s = Stack(e2e_cluster, tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        # shown by pytest only when the test fails
        sys.stderr.write(s.logs())
        sys.stderr.write("\n--- sinfo -R\n" + e2e_cluster.slurm("sinfo", "-R", check=False))
