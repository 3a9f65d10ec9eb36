"""`trainwarden sim llama3-16k`: both variants in one JSON object; the buckets add up."""

from __future__ import annotations

import json
import time

import pytest

from trainwarden.cli import main
from trainwarden.supervisor.goodput import BUCKETS


def test_llama3_16k_json(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    rc = main(["sim", "llama3-16k", "--json"])
    assert time.perf_counter() - t0 < 60
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
