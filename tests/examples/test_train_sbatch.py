"""The example batch script's start, with ``scontrol`` and ``srun`` stood in by scripts
that record what they are given (the real ones run in ``tests/slurm_e2e``). The stand-in
``scontrol`` lists an Alps-sized allocation (2,688 names, a write each), as a real one
writes it in several: the script must read it whole, not die of SIGPIPE under pipefail.

The port a job derives from its id must stay below Linux's ephemeral range (32768-60999):
there an outgoing connection on the node may already hold it, and rank 0 fails to bind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "examples" / "slurm" / "train.sbatch"


def _fake_slurm(bin_dir: Path, record: Path) -> None:
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        "#!/bin/bash\n"
        'case "$1 $2" in\n'
        '  "show hostnames") for i in $(seq 1 2688); do echo "nid00$i"; done ;;\n'
        '  "show node") echo "NodeName=$4 NodeAddr=127.0.0.1 State=ALLOCATED" ;;\n'
        "esac\n"
    )
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {record}\n')
    for f in (scontrol, srun):
        f.chmod(0o755)


def _run(
    tmp_path: Path, job_id: int, port: str | None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    record = tmp_path / f"srun-{job_id}-{port}.args"
    bin_dir = tmp_path / f"bin-{job_id}-{port}"
    _fake_slurm(bin_dir, record)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_NODELIST": "n[1-2]",
        "TW_TRAIN_SCRIPT": str(ROOT / "examples" / "train.py"),
        "TW_CKPT_DIR": str(tmp_path / "ckpt"),
        "TW_LAUNCHER": "srun",
    }
    if port is not None:
        env["TW_MASTER_PORT"] = port
    done = subprocess.run(
        ["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return done, record.read_text().splitlines() if record.exists() else []


def _port(srun_args: list[str]) -> int:
    """The port srun hands the task: the argument after the rank-0 address."""
    return int(srun_args[srun_args.index("127.0.0.1") + 1])


@pytest.mark.parametrize("job_id", [1, 10001, 12000, 31999, 32768, 45000, 60999, 999_999])
def test_the_port_a_job_id_picks_is_below_the_ephemeral_range(tmp_path: Path, job_id: int) -> None:
    done, args = _run(tmp_path, job_id, None)
    assert done.returncode == 0, done.stderr
    assert 20000 <= _port(args) < 32000


def test_tw_master_port_sets_the_port(tmp_path: Path) -> None:
    done, args = _run(tmp_path, 45000, "29500")
    assert done.returncode == 0, done.stderr
    assert _port(args) == 29500


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("abc", "TW_MASTER_PORT=abc is not a port number"),
        ("0", "TW_MASTER_PORT=0 is not a port number"),
        ("80", "TW_MASTER_PORT=80 is outside 1024-65000"),
        ("70000", "TW_MASTER_PORT=70000 is outside 1024-65000"),
        ("123456789012345678901", "TW_MASTER_PORT=123456789012345678901 is outside 1024-65000"),
    ],
)
def test_a_bad_tw_master_port_is_refused_by_name(tmp_path: Path, value: str, said: str) -> None:
    done, args = _run(tmp_path, 7, value)
    assert done.returncode == 2
    assert said in done.stderr and "Traceback" not in done.stderr
    assert args == []  # nothing was launched
