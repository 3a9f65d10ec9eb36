"""Trace CSV loading: every bad line is a clear error that names it."""

from __future__ import annotations

from pathlib import Path

import pytest
from straggler_sim import DATA, SHARED

from trainwarden.supervisor.detectors.stragglers.traces import (
    TraceError,
    bytedance_rows,
    load_trace,
    parse_rows,
    write_trace,
)

GOOD = "step,rank,node,compute_s\n1,0,n0,1.5\n1,1,n0,1.4\n"


def test_minimal_format_loads() -> None:
    rows = parse_rows(GOOD.splitlines(keepends=True), "t.csv")
    assert [(r.step, r.rank, r.node, r.compute_s, r.group) for r in rows] == [
        (1, 0, "n0", 1.5, None),
        (1, 1, "n0", 1.4, None),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("step,rank,compute_s\n1,0,1.0\n", r"t.csv:1: missing column\(s\) node"),
        ("step,rank,node,compute_s\n1,0,n0,abc\n", r"t.csv:2: compute_s 'abc' is not a number"),
        ("step,rank,node,compute_s\n1,0,n0,1\n2,0,n0,-3\n", r"t.csv:3: compute_s -3 is not a time"),
        ("step,rank,node,compute_s\n1,0,n0,1e12\n", r"t.csv:2: compute_s 1e12 is not a time"),
        ("step,rank,node,compute_s\n1,0,n0,nan\n", r"t.csv:2: compute_s nan is not a time"),
        ("step,rank,node,compute_s\nx,0,n0,1\n", r"t.csv:2: step 'x' is not a whole number"),
        ("step,rank,node,compute_s\n1,-1,n0,1\n", r"t.csv:2: rank -1 is negative"),
        ("step,rank,node,compute_s\n1,0,,1\n", r"t.csv:2: node is empty"),
        ("step,rank,node,compute_s\n1,0,n0\n", r"t.csv:2: expected 4 fields"),
        ("step,rank,node,compute_s\n1,0,n0,1\n1,0,n0,2\n", r"t.csv:3: step 1 of rank 0 already"),
        ("step,rank,node,compute_s,step_s\n1,0,n0,1,-1\n", r"t.csv:2: step_s -1 is not a time"),
        ("step,rank,node,compute_s\n", r"t.csv: no data lines"),
    ],
)
def test_bad_lines_name_the_line(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        parse_rows(text.splitlines(keepends=True), "t.csv")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "absent.csv")


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    rows = load_trace(DATA / "bytedance_ST.csv")
    write_trace(rows, tmp_path / "st.csv")
    assert load_trace(tmp_path / "st.csv") == rows


@pytest.mark.skipif(not SHARED.exists(), reason="/work/shared is not beside this checkout")
@pytest.mark.parametrize("trace", ["AR", "ST"])
def test_stored_copies_are_the_documented_conversion(trace: str) -> None:
    src = SHARED / f"bytedance_{trace}" / f"per_step_per_rank_{trace}.csv"
    assert list(bytedance_rows(src)) == load_trace(DATA / f"bytedance_{trace}.csv")
