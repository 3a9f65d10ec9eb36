"""The Slurm scripts in deploy/slurm drive `trainwarden vet` and act on its exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each test runs a deploy/slurm script under bash, which starts `trainwarden vet`.
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRAINWARDEN = str(Path(sys.executable).parent / "trainwarden")


def script(name: str, vet_args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        TRAINWARDEN_BIN=TRAINWARDEN,
        TRAINWARDEN_VET_ARGS=vet_args,
        SCONTROL="echo",
        SLURMD_NODENAME="nid001",
        TRAINWARDEN_VET_TIMEOUT="3",
        TRAINWARDEN_STORAGE=str(tmp_path),
    )
    return subprocess.run(
        ["bash", str(ROOT / "deploy/slurm" / name)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_drains_on_critical(tmp_path: Path) -> None:
    proc = script("trainwarden-healthcheck.sh", "--simulate ib-link-down", tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("update NodeName=nid001 State=DRAIN Reason=trainwarden: ")
    assert "InfiniBand mlx5_0/1 is DOWN" in proc.stdout


def test_healthcheck_leaves_warnings_alone(tmp_path: Path) -> None:
    proc = script("trainwarden-healthcheck.sh", "--simulate pcie-degraded", tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == ""  # no scontrol call


@pytest.mark.parametrize(
    ("vet_args", "rc"), [("--simulate ecc-dbe", 1), ("--simulate thermal-throttle", 0)]
)
def test_prolog_fails_only_on_critical(tmp_path: Path, vet_args: str, rc: int) -> None:
    proc = script("prolog-vet.sh", vet_args, tmp_path)
    assert proc.returncode == rc
    if rc:
        assert "uncorrectable ECC" in proc.stderr
