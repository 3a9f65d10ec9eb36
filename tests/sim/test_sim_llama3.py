"""`trainwarden sim llama3-16k`: both variants in one JSON object; the buckets add up."""

from __future__ import annotations

import json

import pytest

from trainwarden.cli import main
from trainwarden.supervisor.goodput import BUCKETS


def test_llama3_16k_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sim", "llama3-16k", "--json"])
    f = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert 0 < f["baseline"]["ettr"] < f["ettr"] <= 1
    assert f["checkpoint_interval_advised_s"] == pytest.approx(f["advice"]["interval_s"], abs=0.1)
    assert f["checkpoint_interval_advised_s"] < f["baseline"]["checkpoint_interval_s"]
    for g in (f["goodput"], f["baseline"]["goodput"]):
        assert set(g["buckets"]) == set(BUCKETS)
        assert sum(g["buckets"].values()) == pytest.approx(g["wall_s"], rel=0.01)
    assert f["goodput"]["buckets"]["queue"] == 0  # in-allocation restart
    assert all({"value", "source"} <= set(a) for a in f["assumptions"].values())
    # the simulation and Daly's model agree on what the advised interval gives
    assert f["ettr"] == pytest.approx(f["advice"]["ettr_advised"], abs=0.02)
    assert f["target"]["met"] == (f["ettr"] >= 0.95)
    # the ladder: each change on its own, in order, then asynchronous saves within bounds
    ladder = f["ladder"]
    assert ladder[0]["ettr"] == f["baseline"]["ettr"]
    assert ladder[2]["ettr"] == f["ettr"]
    assert ladder[0]["ettr"] < ladder[1]["ettr"] < ladder[2]["ettr"]  # advice, then spares
    upper, lower = ladder[3], ladder[4]
    assert upper["ettr"] < lower["ettr"]  # a save that slows training while written costs more
    for r in (upper, lower):
        assert r["checkpoint_interval_s"] >= r["persist_s"]  # never before the last is written
        assert r["expected_ettr"] == pytest.approx(r["ettr"], abs=0.02)
    for k in ("async_stage_s", "async_persist_s", "async_write_loss_s"):
        assert f["assumptions"][k]["source"]
