"""Per-step, per-rank trace CSVs: load and validate them, or convert ByteDance's summaries.

The documented format (one line per rank per step)::

    step,rank,node,compute_s[,step_s][,group][,ts]

``group`` names ranks that do the same work (e.g. one pipeline stage): the only fair peers
of each other; without it every rank is a peer of every other. Every bad line is an error
that names the line, so a broken trace never yields a silently wrong analysis.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trainwarden.supervisor.errors import SupervisorError

REQUIRED = ("step", "rank", "node", "compute_s")
OPTIONAL = ("step_s", "group", "ts")
MAX_SECONDS = 86_400.0  # a step longer than a day is not a measurement


class TraceError(SupervisorError):
    """A trace file is missing, unreadable or has a bad line."""


@dataclass(frozen=True)
class TraceRow:
    step: int
    rank: int
    node: str
    compute_s: float
    step_s: float | None = None
    group: str | None = None
    ts: float | None = None


def _int(text: str, name: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise TraceError(f"{where}: {name} {text!r} is not a whole number") from None
    if value < 0:
        raise TraceError(f"{where}: {name} {value} is negative")
    return value


def _seconds(text: str, name: str, where: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise TraceError(f"{where}: {name} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or value > MAX_SECONDS:
        raise TraceError(
            f"{where}: {name} {text.strip()} is not a time in seconds between 0 and {MAX_SECONDS:g}"
        )
    return value


def parse_rows(lines: Iterable[str], source: str) -> list[TraceRow]:
    """Validate a trace given as CSV text lines; raises :class:`TraceError` naming the line."""
    reader = csv.DictReader(lines)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise TraceError(
            f"{source}:1: missing column(s) {', '.join(missing)} "
            f"(need {','.join(REQUIRED)}; optional {','.join(OPTIONAL)})"
        )
    reader.fieldnames = header
    rows: list[TraceRow] = []
    seen: dict[tuple[int, int], int] = {}
    for record in reader:
        line = reader.line_num
        where = f"{source}:{line}"
        if None in record or any(record.get(c) is None for c in REQUIRED):
            raise TraceError(f"{where}: expected {len(header)} fields")
        node = record["node"].strip()
        if not node:
            raise TraceError(f"{where}: node is empty")
        step = _int(record["step"], "step", where)
        rank = _int(record["rank"], "rank", where)
        if (step, rank) in seen:
            raise TraceError(
                f"{where}: step {step} of rank {rank} already given on line {seen[(step, rank)]}"
            )
        seen[(step, rank)] = line
        opt = {c: (record.get(c) or "").strip() for c in OPTIONAL}
        rows.append(
            TraceRow(
                step=step,
                rank=rank,
                node=node,
                compute_s=_seconds(record["compute_s"], "compute_s", where),
                step_s=_seconds(opt["step_s"], "step_s", where) if opt["step_s"] else None,
                group=opt["group"] or None,
                ts=_seconds_any(opt["ts"], where) if opt["ts"] else None,
            )
        )
    if not rows:
        raise TraceError(f"{source}: no data lines")
    return rows


def _seconds_any(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{where}: ts {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{where}: ts {text} must be a non-negative time")
    return value


def load_trace(path: str | Path) -> list[TraceRow]:
    """Read and validate a trace file in the documented format."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            return parse_rows(fh, p.name)
    except OSError as exc:
        raise TraceError(f"cannot read trace {str(p)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"trace {str(p)!r} is not UTF-8 text") from None


def bytedance_rows(path: str | Path, *, gpus_per_node: int = 8) -> Iterator[TraceRow]:
    """Convert ByteDance StragglerAnalysis ``per_step_per_rank_*.csv`` to the documented format.

    Their columns are ``trace,step,rank,dp_rank,stage,step_start,step_end,compute_s,...``:
    ``group`` is the pipeline stage, ``step_s`` is ``step_end - step_start``, ``ts`` is
    ``step_end``, and the trace has no hosts, so ``node`` is ``node<rank // gpus_per_node>``
    (their jobs ran on 8-GPU machines, global ranks numbered node by node).
    """
    p = Path(path)
    with p.open(newline="", encoding="utf-8") as fh:
        for record in csv.DictReader(fh):
            start, end = float(record["step_start"]), float(record["step_end"])
            rank = int(record["rank"])
            yield TraceRow(
                step=int(record["step"]),
                rank=rank,
                node=f"node{rank // gpus_per_node}",
                compute_s=float(record["compute_s"]),
                step_s=round(end - start, 6),
                group=f"stage{record['stage']}",
                ts=round(end, 6),
            )


def write_trace(rows: Iterable[TraceRow], path: str | Path) -> None:
    """Write rows in the documented format (all optional columns)."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow([*REQUIRED, *OPTIONAL])
        for r in rows:
            out.writerow(
                [
                    r.step,
                    r.rank,
                    r.node,
                    r.compute_s,
                    "" if r.step_s is None else r.step_s,
                    r.group or "",
                    "" if r.ts is None else r.ts,
                ]
            )
