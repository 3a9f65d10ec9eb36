"""The installed layout: everything under ``trainwarden.``, nothing else at the top level, so
trainwarden installs beside supervisord (whose import name is ``supervisor``).

supervisord (PyPI ``supervisor``) is a dev dependency, installed in the same environment.
The wheel is built offline from a copy of the checkout and installed with ``--target``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import trainwarden

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _run(*args: str, cwd: Path, env_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if env_path is not None:
        env = {"PYTHONPATH": str(env_path), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "trainwarden"
    shutil.copytree(
        REPO,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench"
        ),
    )
    out = src.parent / "dist"
    done = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        str(src),
        "-w",
        str(out),
        cwd=src.parent,
    )
    assert done.returncode == 0, done.stderr
    [whl] = out.glob("trainwarden-*.whl")
    return whl


def test_the_wheel_installs_only_the_trainwarden_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "trainwarden",
        f"trainwarden-{trainwarden.__version__}.dist-info",
    }
    for data in (
        "trainwarden/health/data/xid_catalog.csv",
        "trainwarden/policies/data/default.yaml",
        "trainwarden/supervisor/sim/scenarios/single-gpu-failure.yaml",
        "trainwarden/migrations/versions/0001_initial_schema.py",
        "trainwarden/migrations/alembic.ini",
        "trainwarden/examples/train.py",
        "trainwarden/examples/slurm/train.sbatch",
        "trainwarden/deploy/trainwarden-agent.service",
        "trainwarden/deploy/mosquitto/trainwarden.conf",
        "trainwarden/deploy/grafana/trainwarden.json",
    ):
        assert data in names
    # every file of the one deploy/ folder, no copy of its own
    deploy = REPO / "deploy"
    shipped = {n.removeprefix("trainwarden/deploy/") for n in names if "/deploy/" in n}
    assert shipped == {p.relative_to(deploy).as_posix() for p in deploy.rglob("*") if p.is_file()}


def test_the_installed_wheel_is_self_contained(wheel: Path, tmp_path: Path) -> None:
    """Outside a checkout: the deploy files, the demo's training job, completion."""
    target = tmp_path / "site"
    done = _run(
        sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
        str(wheel), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cli = [sys.executable, "-m", "trainwarden"]
    done = _run(*cli, "deploy", "write", str(tmp_path / "etc"), cwd=tmp_path, env_path=target)
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "etc" / "trainwarden-agent.service"
    assert f"wrote {unit}" in done.stdout.splitlines()
    assert unit.read_bytes() == (REPO / "deploy" / "trainwarden-agent.service").read_bytes()
    assert (tmp_path / "etc" / "slurm" / "trainwarden-healthcheck.sh").stat().st_mode & 0o111
    check = (
        "from trainwarden.supervisor.demo import EXAMPLE;"
        f"assert EXAMPLE.is_file() and str(EXAMPLE).startswith({str(target)!r}), EXAMPLE;"
        "print(EXAMPLE)"
    )
    done = _run(sys.executable, "-c", check, cwd=tmp_path, env_path=target)
    assert done.returncode == 0, done.stderr
    done = _run(
        sys.executable, "-m", "trainwarden.examples.train", "--help", cwd=tmp_path,
        env_path=target,
    )  # fmt: skip
    assert done.returncode == 0 and "--ckpt-every" in done.stdout, done.stderr
    done = _run(*cli, "completion", "bash", cwd=tmp_path, env_path=target)
    assert done.returncode == 0 and "complete -o default -F _trainwarden" in done.stdout


def test_the_wheel_works_beside_supervisord(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = _run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--target",
        str(target),
        str(wheel),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    check = (
        "import json, sys, supervisor.supervisord, trainwarden;"
        f"assert trainwarden.__file__.startswith({str(target)!r}), trainwarden.__file__;"
        "assert 'site-packages' in supervisor.supervisord.__file__;"
        "from trainwarden.cli import main;"
        "sys.exit(main(['sim', 'single-gpu-failure', '--json']))"
    )
    done = _run(sys.executable, "-c", check, cwd=tmp_path, env_path=target)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["scenario"] == "single-gpu-failure" and figures["drains"] == 1


def test_the_development_install_coexists_with_supervisord(tmp_path: Path) -> None:
    version = _run(str(Path(sys.executable).parent / "trainwarden"), "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == (
        f"trainwarden {trainwarden.__version__}"
    )
    done = _run(
        sys.executable,
        "-c",
        "import supervisor.supervisord, trainwarden.supervisor.sim",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
