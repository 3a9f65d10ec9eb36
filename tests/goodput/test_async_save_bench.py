"""bench/async_save.py on a small model: real DCP saves, and the daemon's ledger reads the
same stall and write time from the step reports as the loop's own clocks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

pytest.importorskip("torch")
from bench.async_save import main  # noqa: E402


def test_the_ledger_times_sync_and_async_saves_as_the_loop_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a small model's write is short: the ledger is told to time writes from 10 ms on (the
    # daemon's 2 s floor keeps a synchronous save's late report from reading as a write)
    args = ["--steps", "20", "--every", "10", "--size-mb", "20", "--persist-min-s", "0.01"]
    rc = main(["--json", *args, "--dir", str(tmp_path)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert doc["saved_mb"] == pytest.approx(20 * 3, rel=0.1)
    for kind in ("sync", "async"):
        saves = sorted(p.name for p in (tmp_path / kind).iterdir())
        assert saves == ["step-00000010", "step-00000020"]  # both written, .metadata last
        assert all((tmp_path / kind / s / ".metadata").is_file() for s in saves)
    sync = doc["sync"]
    assert sync["raw"]["stall_s"] > 0
    if sync["stall_s"] is not None:  # under 1 s (or half a step) a gap is not called a stall
        assert sync["stall_s"] == pytest.approx(sync["raw"]["stall_s"], abs=0.2)
    a = doc["async"]
    assert a["raw"]["persist_s"] > 0.01
    assert a["persist_s"] == pytest.approx(a["raw"]["persist_s"], abs=0.2)
    assert a["stall_s"] == pytest.approx(a["raw"]["stall_s"], abs=0.2)
    assert a["write_loss_s"] >= 0
