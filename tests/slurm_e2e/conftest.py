"""Fixtures: a private real Slurm cluster for the session, a fresh trainwarden stack (private
Mosquitto, SQLite, daemon, one agent per Slurm node) for each scenario. Parametrising
``stack`` indirectly with YAML text runs the daemon with the shipped policy plus those rules."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO, HarnessError, SlurmTestCluster, Stack


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
    print(f"\nslurm e2e cluster ({len(cluster.nodes)} nodes, {cluster.state_dir}) "
          f"up in {cluster.start_s:.1f} s")
    yield cluster
    if not was_up and not os.environ.get("TW_SLURM_KEEP"):
        cluster.stop()


@pytest.fixture
def stack(e2e_cluster: SlurmTestCluster, tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[Stack]:
    e2e_cluster.clean_slate()
    policy = None
    extra_rules = getattr(request, "param", None)  # indirect parametrisation: site rules
    if extra_rules:
        policy = tmp_path / "site-policy.yaml"
        policy.write_text((REPO / "policies" / "data" / "default.yaml").read_text()
                          + extra_rules)
    s = Stack(e2e_cluster, tmp_path, policy=policy)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        # shown by pytest only when the test fails
        sys.stderr.write(s.logs())
        sys.stderr.write("\n--- sinfo -R\n" + e2e_cluster.slurm("sinfo", "-R", check=False))
