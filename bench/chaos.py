"""The chaos suite in one command: every case of tests/chaos, its measured figures and its
outcome, as one JSON document (and, with ``--markdown``, a table for docs/chaos.md).

    .venv/bin/python bench/chaos.py                          # ~4-6 min on 2 cores
    .venv/bin/python bench/chaos.py --markdown docs/chaos.md [-k postgres]

Runs ``pytest tests/chaos -q -s -p no:cacheprovider`` (private Mosquitto and PostgreSQL,
the daemon, agents and training jobs as real processes; see tests/chaos/). Each case prints
one line ``{"case": ..., "test": <node id>, ...figures}``; the outcome of each test comes from
pytest's JUnit XML. pytest's own output goes to stderr as it runs; stdout gets the JSON.

Exit status: 0 when every case passed (or was skipped), 1 when one failed or pytest itself
failed, 2 when no case ran at all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PREFIX = '{"case":'


def node_id(classname: str, name: str) -> str:
    """The pytest node id of a JUnit test case (``tests.chaos.test_x`` + ``test_y[p]``)."""
    return classname.replace(".", "/") + ".py::" + name


def outcomes(junit: Path) -> dict[str, dict[str, str]]:
    """Per node id: outcome (passed/failed/error/skipped) and the first line of the message."""
    out: dict[str, dict[str, str]] = {}
    if not junit.is_file():
        return out
    for case in ET.parse(junit).getroot().iter("testcase"):
        nid = node_id(case.get("classname", ""), case.get("name", ""))
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (el.get("message") or el.text or "").strip().splitlines()[0][:500]
                break
        # a failure in teardown after a passed call is reported as an error entry too
        if nid in out and out[nid]["outcome"] != "passed" and outcome == "passed":
            continue
        out[nid] = {"outcome": outcome, "message": message}
    return out


def run_suite(pytest_args: list[str]) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="tw-chaos-bench-") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable, "-m", "pytest", "tests/chaos", "-q", "-s", "-p", "no:cacheprovider",
            f"--junitxml={junit}", "-o", "junit_family=xunit2", *pytest_args,
        ]  # fmt: skip
        started = time.monotonic()
        lines: list[dict[str, Any]] = []
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for raw in proc.stdout:
            at = raw.find(PREFIX)  # pytest -q may have written progress dots before it
            if at >= 0:
                try:
                    lines.append(json.loads(raw[at:]))
                    sys.stderr.write(raw[:at] + ("\n" if at else ""))
                    continue
                except ValueError:
                    pass
            sys.stderr.write(raw)
        rc = proc.wait()
        meta = {
            "command": " ".join(["pytest", *cmd[3:]]).replace(str(junit), "JUNIT"),
            "pytest_exit": rc,
            "wall_s": round(time.monotonic() - started, 1),
        }
        return rc, lines, {**meta, "outcomes": outcomes(junit)}


def collect(
    lines: list[dict[str, Any]], results: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    """One row per test: its case name, outcome, message and figures (tests that printed no
    figures, e.g. because their setup failed, still get a row)."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in lines:
        test = str(line.get("test", ""))
        figures = {k: v for k, v in line.items() if k not in ("case", "test")}
        res = results.get(test, {"outcome": "unknown", "message": ""})
        rows.append({"case": line["case"], "test": test, **res, "figures": figures})
        seen.add(test)
    for test, res in results.items():
        if test not in seen:
            rows.append({"case": test.rsplit("::", 1)[-1], "test": test, **res, "figures": {}})
    return rows


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(doc: dict[str, Any]) -> str:
    out = [
        "# Chaos suite",
        "",
        f"`{doc['command']}`: {doc['passed']} passed, {doc['failed']} failed, "
        f"{doc['skipped']} skipped in {doc['wall_s']} s. "
        "Regenerate with `.venv/bin/python bench/chaos.py --markdown docs/chaos.md`.",
        "",
        "| case | test | result | figures |",
        "| --- | --- | --- | --- |",
    ]
    for row in doc["cases"]:
        figures = [
            f"{k}={_cell(v)}" for k, v in row["figures"].items() if k not in ("failed_checks",)
        ]
        result = "pass" if row["outcome"] == "passed" else row["outcome"]
        if row["outcome"] not in ("passed",) and row["message"]:
            result += f": {_cell(row['message'])}"
        test = row["test"].rsplit("::", 1)[-1]
        out.append(
            f"| {_cell(row['case'])} | `{_cell(test)}` | {result} | {'<br>'.join(figures)} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--markdown", metavar="FILE", help="also write a markdown table to FILE")
    p.add_argument("-k", dest="keyword", help="only the cases pytest -k selects")
    a = p.parse_args()
    rc, lines, meta = run_suite(["-k", a.keyword] if a.keyword else [])
    rows = collect(lines, meta.pop("outcomes"))
    count = {k: sum(1 for r in rows if r["outcome"] == k) for k in ("passed", "skipped")}
    failed = sum(1 for r in rows if r["outcome"] not in ("passed", "skipped"))
    doc: dict[str, Any] = {
        **meta,
        "passed": count["passed"],
        "failed": failed,
        "skipped": count["skipped"],
        "ok": failed == 0 and rc == 0 and bool(rows),
        "cases": rows,
    }
    print(json.dumps(doc, indent=2, default=str))
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(markdown(doc))
    if not rows or count["passed"] + failed == 0:
        return 2
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
