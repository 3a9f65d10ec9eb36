"""The commands as operators and Slurm run them: exit codes and one explained line per check."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainwarden.cli import main

TRAINWARDEN = str(Path(sys.executable).parent / "trainwarden")


def tw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRAINWARDEN, *args], check=False, capture_output=True, text=True, timeout=timeout
    )


def check_lines(out: str) -> dict[str, str]:
    """check name -> its line; every line has a status word and a reason."""
    lines = out.strip().splitlines()
    assert lines[-1].startswith("vet ")
    checks = {}
    for line in lines[:-1]:
        status, name, reason = line.split(maxsplit=2)
        assert status in {"OK", "WARNING", "CRITICAL", "UNKNOWN"}
        assert reason.strip()
        checks[name] = line
    return checks


@pytest.mark.integration  # runs the console script in a fresh interpreter
def test_vet_this_machine_without_gpus() -> None:
    proc = tw("vet")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    checks = check_lines(proc.stdout)
    assert {"gpu", "network", "storage:/tmp", "host", "gpu-compute"} <= set(checks)
    assert "Traceback" not in proc.stderr


@pytest.mark.integration  # runs the console script in a fresh interpreter
def test_vet_expecting_gpus_here_is_critical() -> None:
    proc = tw("vet", "--expect-gpus", "4")
    assert proc.returncode == 2
    gpu = check_lines(proc.stdout)["gpu"]
    assert gpu.startswith("CRITICAL") and "expected 4 GPUs" in gpu


@pytest.mark.integration  # runs the console script in a fresh interpreter
@pytest.mark.parametrize(
    ("fault", "check", "words"),
    [
        ("xid:79", "gpu", "XID 79"),
        ("gpu-lost", "gpu", "fallen off the bus"),
        ("ecc-dbe", "gpu", "uncorrectable ECC"),
        ("ib-link-down", "network", "DOWN"),
    ],
)
def test_vet_simulated_critical(fault: str, check: str, words: str) -> None:
    proc = tw("vet", "--simulate", fault)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = check_lines(proc.stdout)[check]
    assert line.startswith("CRITICAL") and words in line
    assert f"(simulated: {fault})" in proc.stdout


@pytest.mark.integration  # runs the console script in a fresh interpreter
def test_vet_storage_hang_returns_within_timeout() -> None:
    t0 = time.monotonic()
    proc = tw("vet", "--simulate", "storage-hang", "--timeout", "2")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2
    assert elapsed < 2 + 4  # probe timeout plus interpreter start-up
    (line,) = [v for k, v in check_lines(proc.stdout).items() if k.startswith("storage:")]
    assert line.startswith("CRITICAL") and "storage hung" in line


@pytest.mark.integration  # runs the console script in a fresh interpreter
def test_vet_json_and_repeated_simulate() -> None:
    proc = tw("vet", "--simulate", "thermal-throttle", "--simulate", "host-oom", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["exit_code"] == 1 and report["status"] == "WARNING"
    health = {c["check"]: c["health"] for c in report["checks"]}
    assert health["gpu"] == "degraded" and health["host"] == "degraded"
    assert report["simulated"] == ["thermal-throttle", "host-oom"]
    gpu = next(c for c in report["checks"] if c["check"] == "gpu")
    assert gpu["values"]["gpu0_temperature_c"] == 93.0
    assert gpu["faults"][0]["kind"] == "thermal-throttle"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("vet", "--simulate", "gpu-melted"), "unknown fault 'gpu-melted'"),
        (("vet", "--timeout", "0"), "--timeout must be positive"),
        (("vet", "--disable", "gpus"), "unknown probe 'gpus'"),
        (("hw", "inject", "--state-dir", "/nonexistent/x", "ecc-dbe"), "not a simulated node"),
    ],
)
def test_bad_input_is_a_clear_error(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(list(args)) == 2  # in process: the same entry point, without start-up cost
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.integration  # runs the console script in a fresh interpreter
def test_bad_input_through_the_console_script() -> None:
    proc = tw("vet", "--simulate", "gpu-melted")
    assert proc.returncode == 2
    assert "trainwarden: error: unknown fault 'gpu-melted'; valid faults: xid:<code>" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.integration  # runs the console script in a fresh interpreter
def test_hw_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "node")
    assert main(["hw", "list"]) == 0
    listed = capsys.readouterr().out
    assert "storage-hang" in listed and "xid:<code>[@gpu]" in listed
    assert main(["hw", "init", "--state-dir", d, "--node", "n7", "--gpus", "2"]) == 0
    proc = tw("hw", "inject", "--state-dir", d, "ib-link-down")  # from another process
    assert proc.returncode == 0 and "injected ib-link-down" in proc.stdout
    assert main(["hw", "inject", "--state-dir", d, "ecc-dbe@1"]) == 0
    capsys.readouterr()

    def active() -> list[str]:
        capsys.readouterr()
        assert main(["hw", "list", "--state-dir", d, "--json"]) == 0
        result: list[str] = json.loads(capsys.readouterr().out)["active"]
        return result

    assert active() == ["ib-link-down", "ecc-dbe@1"]
    state = (tmp_path / "node/sys/class/infiniband/mlx5_0/ports/1/state").read_text()
    assert state == "1: DOWN\n"
    assert main(["hw", "clear", "--state-dir", d, "ib-link-down"]) == 0
    assert active() == ["ecc-dbe@1"]
    assert main(["hw", "clear", "--state-dir", d]) == 0
    assert active() == []


def test_vet_lists_the_fault_names_it_can_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vet", "--list-faults", "--json"]) == 0
    names = {f["name"] for f in json.loads(capsys.readouterr().out)["faults"]}
    assert {
        "xid:<code>",
        "gpu-lost",
        "ecc-dbe",
        "row-remap-failure",
        "nvlink-down",
        "pcie-degraded",
        "thermal-throttle",
        "ib-link-down",
        "ib-link-flap",
        "storage-hang",
        "storage-slow",
        "storage-full",
        "gpu-mem-held",
    } <= names


# Runs one node-side command in a fresh interpreter, then prints which trainwarden.supervisor
# modules got loaded: a compute node must run agent, vet and hw without the login-node side.
_LOADED_AFTER = """
import json, sys
from trainwarden.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help exits through argparse
    code = exc.code
loaded = sorted(m for m in sys.modules if m.startswith("trainwarden.supervisor"))
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


@pytest.mark.integration  # a fresh interpreter per command, by design
@pytest.mark.parametrize(
    "argv",
    [
        ("vet", "--json"),
        ("vet", "--simulate", "xid:79", "--window", "0", "--json"),
        ("vet", "--help"),
        ("agent", "--once", "--json", "--node", "sim1", "--simulate", "xid:79"),
        ("hw", "list", "--json"),
    ],
    ids=" ".join,
)
def test_node_side_commands_load_nothing_of_the_supervisor(argv: tuple[str, ...]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED_AFTER, *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["code"] in (0, 1, 2), proc.stderr  # vet: 1 warning / 2 critical on this host
    assert result["loaded"] == []
