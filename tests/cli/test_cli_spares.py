"""``trainwarden runs add --spares K`` reaches the daemon as RunSpecIn.spares."""

from __future__ import annotations

from pathlib import Path

from test_cli_operator import Capture, Daemon, run


def test_runs_add_spares(daemon: Daemon, capsys: Capture, tmp_path: Path) -> None:
    argv = ["runs", "add", "r-spare", "--scheduler", "slurm", "--nodes", "3"]
    code, _, err = run(
        capsys, *argv, "--checkpoint-dir", str(tmp_path), "--spares", "1", "--", "x.sbatch"
    )
    assert (code, err) == (0, "")
    assert daemon.service.specs["r-spare"].spares == 1


def test_runs_add_negative_spares_is_refused(
    daemon: Daemon, capsys: Capture, tmp_path: Path
) -> None:
    argv = ["runs", "add", "r-bad", "--scheduler", "slurm", "--nodes", "3"]
    code, _, err = run(
        capsys, *argv, "--checkpoint-dir", str(tmp_path), "--spares", "-1", "--", "x.sbatch"
    )
    assert code == 2 and "spares" in err
