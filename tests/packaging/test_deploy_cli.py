"""``trainwarden deploy``: the repository's deploy/ folder, as the package ships it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trainwarden.cli import main
from trainwarden.supervisor.cli.deploy import deploy_files

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _repo_files() -> list[str]:
    return sorted(
        p.relative_to(DEPLOY).as_posix()
        for p in DEPLOY.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def test_the_package_links_the_one_deploy_folder() -> None:
    link = REPO / "trainwarden" / "deploy"
    assert link.is_symlink() and link.resolve() == DEPLOY.resolve()
    assert deploy_files() == _repo_files()
    for name in ("trainwarden-agent.service", "mosquitto/trainwarden.acl", "README.md"):
        assert name in deploy_files()


def test_show_lists_then_prints_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "show"]) == 0
    assert capsys.readouterr().out.splitlines() == _repo_files()
    assert main(["deploy", "show", "trainwarden-agent.service"]) == 0
    assert capsys.readouterr().out == (DEPLOY / "trainwarden-agent.service").read_text()


def test_show_of_an_unknown_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["deploy", "show", "nope.service"])
    assert exc.value.code == 2
    assert "invalid choice: 'nope.service'" in capsys.readouterr().err


def test_write_names_each_file_and_keeps_modes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "etc" / "tw"
    assert main(["deploy", "write", str(dest)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"wrote {dest / name}" for name in _repo_files()]
    for name in _repo_files():
        src, copy = DEPLOY / name, dest / name
        assert copy.read_bytes() == src.read_bytes(), name
        executable = bool(src.stat().st_mode & stat.S_IXUSR)
        assert stat.S_IMODE(copy.stat().st_mode) == (0o755 if executable else 0o644), name
    assert os.access(dest / "slurm" / "trainwarden-healthcheck.sh", os.X_OK)


def test_write_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "d"
    (dest / "mosquitto").mkdir(parents=True)
    (dest / "agent.env").write_text("mine\n")
    outside = tmp_path / "outside"
    outside.write_text("keep\n")
    (dest / "mosquitto" / "trainwarden.acl").symlink_to(outside)
    assert main(["deploy", "write", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "2 of the files exist already, nothing written (--force overwrites them)" in err
    assert str(dest / "agent.env") in err and str(dest / "mosquitto" / "trainwarden.acl") in err
    assert sorted(p.name for p in dest.rglob("*")) == ["agent.env", "mosquitto", "trainwarden.acl"]
    assert (dest / "agent.env").read_text() == "mine\n"

    assert main(["deploy", "write", "--force", str(dest)]) == 0
    assert (dest / "agent.env").read_bytes() == (DEPLOY / "agent.env").read_bytes()
    acl = dest / "mosquitto" / "trainwarden.acl"
    assert (
        not acl.is_symlink()
        and acl.read_bytes() == (DEPLOY / "mosquitto/trainwarden.acl").read_bytes()
    )
    assert outside.read_text() == "keep\n"  # a link is replaced, never written through
