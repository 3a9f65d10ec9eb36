"""`trainwarden stragglers analyze` on the real ByteDance traces and on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from straggler_sim import DATA

from trainwarden.cli import main


def analyze(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["stragglers", "analyze", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_ar_flags_rank_0_and_nothing_else(capsys) -> None:
    code, out, _ = analyze(capsys, str(DATA / "bytedance_AR.csv"), "--json")
    assert code == 0
    result = json.loads(out)
    ranks = {f["rank"] for f in result["flagged"] if f["rank"] is not None}
    assert ranks == {0}
    node_flags = [f for f in result["flagged"] if f["rank"] is None]
    assert [f["node"] for f in node_flags] == ["node0"]
    for f in result["flagged"]:
        assert set(f) >= {"node", "rank", "from_step", "score"}
        assert f["score"] > 2.0  # ~2.4x its stage-0 peers
        assert f["from_step"] >= 16
    assert result["stage_imbalance"] == []  # stage 3 is ~5 % slower: below the finding level


def test_st_flags_nothing_and_reports_the_stage_imbalance(capsys) -> None:
    code, out, _ = analyze(capsys, str(DATA / "bytedance_ST.csv"), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["flagged"] == []
    (imb,) = result["stage_imbalance"]
    assert imb["slowest_group"] == "stage3"
    assert imb["slow_ranks"] == [6, 7]
    assert 1.5 < imb["ratio"] < 1.8
    assert "partitioning" in imb["finding"]


def test_human_output(capsys) -> None:
    code, out, _ = analyze(capsys, str(DATA / "bytedance_AR.csv"))
    assert code == 0
    assert "FLAGGED rank 0 (node0): from step" in out
    code, out, _ = analyze(capsys, str(DATA / "bytedance_ST.csv"))
    assert "no straggler flagged" in out and "STAGE IMBALANCE" in out


def test_bad_input_exits_2_naming_the_line(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("step,rank,node,compute_s\n1,0,n0,1.0\n1,1,n0,oops\n")
    code, out, err = analyze(capsys, str(bad))
    assert code == 2 and out == ""
    assert "bad.csv:3: compute_s 'oops' is not a number" in err
    assert "Traceback" not in err


def test_missing_columns_exit_2(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "cols.csv"
    bad.write_text("step,rank,compute_s\n1,0,1.0\n")
    code, _, err = analyze(capsys, str(bad), "--json")
    assert code == 2 and "missing column(s) node" in err


def test_original_bytedance_columns_are_refused_with_guidance(capsys) -> None:
    src = Path("/work/shared/data/stragglers/bytedance_AR/per_step_per_rank_AR.csv")
    if not src.exists():
        pytest.skip("/work/shared is not beside this checkout")
    code, _, err = analyze(capsys, str(src))
    assert code == 2 and "missing column(s) node" in err
